"""Post-hoc OoD detection on a model you trained yourself (any PyTorch network: features → linear head).

    python examples/posthoc_own_model.py          # a small network trained here for a few seconds

Name your network's last linear layer: l2ood reads the penultimate features z as that layer's input (a forward
hook) and its weights, so every detector works — ‖z‖ (feature_norm), energy, KNN, Mahalanobis, ViM, ODIN (with
the model in the loop) — with no change to your model (`l2ood.posthoc.PostHoc`). Given the model's input config
(`PostHoc(..., preprocessing="cifar")`), l2ood's image sets work too, `ph.evaluate_benchmark(NAME)` gives the
`l2ood bench` near/far table, and `ph.save` + `ph.calibrate` make a deployable screen
(examples/screen_own_classifier.py).

Extra: none, l2ood alone (``pip install l2ood``).
"""

from __future__ import annotations

import argparse

from _extras import need

need(None)

import torch  # noqa: E402
from _data import gratings, noise  # noqa: E402
from torch import nn  # noqa: E402

from l2ood.posthoc import PostHoc  # noqa: E402


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

    # name the model's linear head; its input is the penultimate feature vector z
    ph = PostHoc(net, head="classifier", detectors=["feature_norm", "energy", "knn", "mahalanobis", "vim", "odin"],
                 device="cpu")
    ph.fit((x, y))  # ID training images (a DataLoader or Dataset works too)
    test = torch.from_numpy(xte).permute(0, 3, 1, 2)  # uint8 is scaled to [0, 1], as the model was trained
    odd = torch.from_numpy(noise(200, size=32)[:, :, :32]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        acc = (net(test.float() / 255).argmax(1) == torch.as_tensor(yte)).float().mean()
    print(f"ID accuracy {100 * float(acc):.1f} %")
    for det, m in ph.evaluate(test, {"noise": odd})["noise"].items():
        print(f"{det:14s} AUROC {100 * m['auroc']:.1f}  FPR@95 {100 * m['fpr95']:.1f}")

if __name__ == "__main__":
    main()
