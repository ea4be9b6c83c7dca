"""Property test: every registered detector returns finite scores of the right shape for random
inputs, including zero feature vectors and constant logits, on every head mode and logit variant."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2ood.detectors import DETECTORS, Extraction, Head, make_detector
from l2ood.models import HEAD_MODES, ModelConfig, build_model
from l2ood.runtime import resolve_runtime

FEATURE_DETECTORS = [n for n, c in DETECTORS.items() if not c.needs_model]
INPUT_DETECTORS = [n for n, c in DETECTORS.items() if c.needs_model]
SMALL = {"knn": {"k": 3}, "vim": {"dim": 4}, "nnguide": {"k": 3}}


@st.composite
def problems(draw: st.DrawFn) -> tuple[Extraction, Extraction, Head, str]:
    seed = draw(st.integers(0, 2**31 - 1))
    d = draw(st.integers(8, 24))
    c = draw(st.integers(2, 6))
    n_test = draw(st.integers(1, 12))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    mode = draw(st.sampled_from(HEAD_MODES))
    variant = draw(st.sampled_from(["trained", "raw"]))
    g = torch.Generator().manual_seed(seed)
    n_train = 4 * c + 16
    y = torch.arange(n_train) % c
    z_train = (torch.randn(n_train, d, generator=g) * scale).relu()
    z_test = torch.randn(n_test, d, generator=g) * scale
    z_test[0] = 0.0  # a zero feature vector
    head = Head(torch.randn(c, d, generator=g), torch.randn(c, generator=g), mode=mode, variant=variant)
    train = Extraction(z_train, head.logits(z_train), y)
    logits = head.logits(z_test)
    if n_test > 1:
        logits[1] = 3.0  # constant logits
    test = Extraction(z_test, logits, None)
    return train, test, head, mode


FLOAT64_SCORES = {"msp", "gen", "entropy", "temp_scale", "klm"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_feature_detector_is_finite(p: tuple[Extraction, Extraction, Head, str]) -> None:
    train, test, head, _ = p
    for name in FEATURE_DETECTORS:
        det = make_detector(name, **SMALL.get(name, {}))
        if det.needs_fit:
            det.fit(train, head)
        s = det.score(test, head)
        assert s.shape == (len(test),), name
        # the softmax family is computed in the log domain and returned in float64 since 0.2 (test_saturation.py)
        assert s.dtype == (torch.float64 if name in FLOAT64_SCORES else torch.float32), name
        assert torch.isfinite(s).all(), (name, s)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**31 - 1), st.sampled_from(HEAD_MODES), st.sampled_from([0.0, 1.0]))
def test_every_input_detector_is_finite(seed: int, mode: str, fill: float) -> None:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=2, head=mode, in_channels=1)).eval()
    x = torch.rand(3, 1, 12, 12)
    x[0] = fill  # constant image
    rt = resolve_runtime("cpu", "fp32")
    for name in INPUT_DETECTORS:
        det = make_detector(name)
        for variant in ("trained", "raw"):
            s = det.score_images(model, x, rt, variant=variant)  # type: ignore[attr-defined]
            assert s.shape == (3,) and torch.isfinite(s).all(), (name, variant, s)
    assert all(p.grad is None for p in model.parameters())


def test_registry_holds_the_issue_list() -> None:
    expected = {"feature_norm", "l1_norm", "msp", "maxlogit", "energy", "odin", "mahalanobis", "rmds",
                "mahalanobis++", "knn", "vim", "react", "ash_s", "gen",
                # issue 14
                "scale", "ash_p", "ash_b", "fdbd", "nnguide", "dice", "she", "klm", "gradnorm", "residual",
                "relation", "rankfeat", "openmax", "temp_scale", "entropy"}
    assert expected <= set(DETECTORS), expected - set(DETECTORS)
    assert len(DETECTORS) >= 28
    import importlib
    import re

    for name, cls in DETECTORS.items():
        mod_doc = importlib.import_module(cls.__module__).__doc__ or ""
        # every detector's module docstring names its paper (with a year) and gives a formula
        assert re.search(r"(19|20)\d\d", mod_doc), f"{name}: docstring must cite the paper"
        assert "=" in mod_doc or "‖" in mod_doc, f"{name}: docstring must give the formula"
