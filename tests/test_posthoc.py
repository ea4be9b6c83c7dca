"""Post-hoc detection on a user's own nn.Module (l2ood.posthoc): the head's input is z, the model stays in the loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from l2ood.detectors import Extraction, Head, make_detector
from l2ood.errors import ConfigError
from l2ood.posthoc import PostHoc


class TVStyle(nn.Module):
    """torchvision-like: conv features, pooling, flatten, dropout, then `classifier.1` (a Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.body(x), 1))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_scores_match_the_formulas_on_the_users_model() -> None:
    torch.manual_seed(0)
    model = TVStyle().eval()
    x, y = _data(64, 1)
    ph = PostHoc(model, head="classifier.1", detectors=["feature_norm", "energy", "msp", "mahalanobis", "knn"],
                 device="cpu", batch_size=16, detector_kwargs={"knn": {"k": 5}})
    with pytest.raises(ConfigError, match="fit"):
        ph.score(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10)
    ph.fit(loader)
    test, _ = _data(20, 2)
    s = ph.score(test)
    with torch.no_grad():
        z = torch.flatten(model.body(test), 1)
        logits = model(test)
        ztr = torch.flatten(model.body(x), 1)
    torch.testing.assert_close(s["feature_norm"], z.norm(dim=1))
    torch.testing.assert_close(s["energy"], logits.logsumexp(1))
    torch.testing.assert_close(s["msp"], logits.softmax(1).max(1).values)
    head = Head(model.classifier[1].weight.detach(), model.classifier[1].bias.detach(), "ce")
    for name, kw in (("mahalanobis", {}), ("knn", {"k": 5})):
        ref = make_detector(name, **kw).fit(Extraction(ztr, head.logits(ztr), y), head)
        torch.testing.assert_close(s[name], ref.score(Extraction(z, logits), head), rtol=1e-4, atol=1e-4)


def test_odin_keeps_the_model_in_the_loop() -> None:
    torch.manual_seed(0)
    model = TVStyle().eval()
    x, _ = _data(6, 3)
    ph = PostHoc(model, head="classifier.1", detectors=["odin"], device="cpu",
                 detector_kwargs={"odin": {"temperature": 10.0, "epsilon": 0.01}})
    s = ph.score(x)["odin"]
    xg = x.clone().requires_grad_(True)  # reference: ODIN by hand on the user's model
    out = model(xg)
    nn.functional.cross_entropy(out / 10.0, out.argmax(1), reduction="sum").backward()
    with torch.no_grad():
        ref = (model(x - 0.01 * xg.grad.sign()) / 10.0).softmax(1).max(1).values  # type: ignore[union-attr]
    torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-6)


def test_evaluate_and_bad_heads() -> None:
    torch.manual_seed(0)
    model = TVStyle().eval()
    ph = PostHoc(model, head="classifier.1", detectors=["feature_norm", "energy"], device="cpu")
    ident, _ = _data(40, 4)
    res = ph.evaluate(ident, {"bright": torch.rand(40, 3, 12, 12) * 0.1 + 0.9})
    assert set(res["bright"]) == {"feature_norm", "energy"}
    assert all(0 <= m["auroc"] <= 1 and np.isfinite(m["fpr95"]) for m in res["bright"].values())
    with pytest.raises(ConfigError, match=r"nn\.Linear"):
        PostHoc(model, head="body", device="cpu")
    with pytest.raises(ConfigError, match="unknown detector"):
        PostHoc(model, head="classifier.1", detectors=["nope"], device="cpu")
    uint8 = (ident * 255).round().to(torch.uint8)  # uint8 images are scaled to [0, 1] first
    torch.testing.assert_close(ph.score(uint8)["energy"], ph.score(uint8.float() / 255)["energy"])
