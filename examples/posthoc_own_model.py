"""Post-hoc OoD detection on a model you trained yourself (any PyTorch network: features → linear head).

    python examples/posthoc_own_model.py          # a small network trained here for a few seconds

l2ood's detectors take the penultimate features z and the linear head (W, b). Wrap your network as a
`Classifier` whose backbone returns z, copy your head into it, and every detector works — ‖z‖
(feature_norm), energy, KNN, Mahalanobis, ViM, ... — with no change to your model.
"""

from __future__ import annotations

import argparse

import torch
from _data import gratings, noise
from torch import nn

from l2ood.data import ImageSet
from l2ood.evaluation import evaluate
from l2ood.models import Classifier, ModelConfig
from l2ood.run import Run


class MyNet(nn.Module):
    """Your model: any feature extractor followed by a linear classifier."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten())
        self.classifier = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def to_set(name: str, imgs: object, labels: object = None) -> ImageSet:
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()  # type: ignore[call-overload]
    return ImageSet(name, x, None if labels is None else torch.as_tensor(labels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--small", action="store_true", help="fewer training steps (for the test suite)")
    args = ap.parse_args()
    torch.manual_seed(0)
    xtr, ytr = gratings(600, seed=0)
    xte, yte = gratings(200, seed=1)
    net = MyNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x, y = torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255, torch.as_tensor(ytr)
    for _ in range(100 if args.small else args.steps):  # your usual training loop
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    # wrap: backbone = your feature extractor, head = your linear layer (plain logits: head "ce")
    wrapped = Classifier(net.features, feature_dim=32, num_classes=3, head="ce", mean=[0.0] * 3, std=[1.0] * 3)
    wrapped.fc.load_state_dict(net.classifier.state_dict())
    run = Run.from_model(wrapped.eval(), ModelConfig(in_channels=3, image_size=(32, 32), head="ce"), device="cpu",
                         precision="fp32")
    with torch.no_grad():  # the wrapper gives your model's logits exactly
        assert torch.allclose(run.model(x[:8]).logits, net(x[:8]), atol=1e-5)
    r = evaluate(run, to_set("my test set", xte, yte), [to_set("noise", noise(200))],
                 ["feature_norm", "energy", "knn", "mahalanobis", "vim"], fit_set=to_set("my train set", xtr, ytr))
    print(f"ID accuracy {100 * r.results['id_accuracy']:.1f} %")
    for det, m in r.results["ood"]["noise"]["detectors"].items():
        print(f"{det:14s} AUROC {100 * m['auroc']:.1f}  FPR@95 {100 * m['fpr95']:.1f}")


if __name__ == "__main__":
    main()
