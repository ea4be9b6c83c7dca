"""The post-hoc detectors of the core against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from l2ood.detectors import DETECTORS, Extraction, Head, make_detector


def _ext() -> tuple[Extraction, Head]:
    feats = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [10.0, -5.0, 2.0]])
    head = Head(torch.zeros(3, 2), torch.zeros(3), mode="l2")
    return Extraction(feats, logits), head


def test_feature_norm() -> None:
    ext, head = _ext()
    torch.testing.assert_close(make_detector("feature_norm").score(ext, head),
                               torch.tensor([5.0, 0.0, math.sqrt(2)]))


def test_msp_maxlogit_energy_by_hand() -> None:
    ext, head = _ext()
    row = [1.0, 2.0, 3.0]
    lse = math.log(sum(math.exp(v) for v in row))
    msp = make_detector("msp").score(ext, head)  # log max softmax since 0.2 (saturation-free, same ranking)
    assert msp.dtype == torch.float64
    assert msp[0].item() == pytest.approx(3.0 - lse, rel=1e-12)
    assert msp[1].item() == pytest.approx(-math.log(3), rel=1e-12)
    assert msp[2].item() == pytest.approx(-math.log1p(math.exp(-15.0) + math.exp(-8.0)), rel=1e-12)
    torch.testing.assert_close(make_detector("maxlogit").score(ext, head), torch.tensor([3.0, 0.0, 10.0]))
    energy = make_detector("energy").score(ext, head)
    assert energy[0].item() == pytest.approx(lse, rel=1e-6)
    assert energy[1].item() == pytest.approx(math.log(3), rel=1e-6)
    e2 = DETECTORS["energy"](temperature=2.0).score(ext, head)
    assert e2[0].item() == pytest.approx(2 * math.log(sum(math.exp(v / 2) for v in row)), rel=1e-6)


def test_registry_and_unknown_name() -> None:
    assert {"feature_norm", "msp", "maxlogit", "energy"} <= set(DETECTORS)
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("nope")
    with pytest.raises(ValueError, match="temperature"):
        DETECTORS["energy"](temperature=0.0)
