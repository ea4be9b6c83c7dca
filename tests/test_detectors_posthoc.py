"""ReAct, ASH-S, GEN, L1 norm and ODIN against independent hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2ood.detectors import DETECTORS, Extraction, Head, make_detector
from l2ood.detectors.react import activation_percentile
from l2ood.models import Classifier, ModelConfig, build_model
from l2ood.runtime import resolve_runtime


def _lse(row: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in row))


def _linear(z: list[float], w: list[list[float]], b: list[float]) -> list[float]:
    return [sum(wi * zi for wi, zi in zip(wrow, z, strict=True)) + bc for wrow, bc in zip(w, b, strict=True)]


W4 = [[1.0, 0.0, 0.5, -1.0], [0.0, 2.0, -0.5, 0.25], [-1.0, 1.0, 1.0, 0.0]]
B3 = [0.1, -0.2, 0.3]


def _ce_head(w: list[list[float]] = W4, b: list[float] = B3) -> Head:
    return Head(torch.tensor(w), torch.tensor(b), mode="ce")


# ---------------------------------------------------------------- ReAct


def test_react_clipping_by_hand() -> None:
    head = _ce_head()
    feats = [[0.5, 3.0, 1.0, 7.0], [2.0, 0.0, 2.5, 1.5], [0.0, 0.0, 0.0, 0.0]]
    ext = Extraction(torch.tensor(feats), torch.zeros(3, 3))
    det = DETECTORS["react"]()
    det.threshold = 2.0  # set by hand: entries 3.0, 7.0, 2.5 clip to 2.0
    scores = det.score(ext, head)
    clipped = [[0.5, 2.0, 1.0, 2.0], [2.0, 0.0, 2.0, 1.5], [0.0, 0.0, 0.0, 0.0]]
    for i, z in enumerate(clipped):
        assert scores[i].item() == pytest.approx(_lse(_linear(z, W4, B3)), rel=1e-6)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    # unclipped energy differs for the rows with clipped entries
    assert scores[0].item() != pytest.approx(_lse(_linear(feats[0], W4, B3)), rel=1e-3)


@pytest.mark.parametrize("mode,variant", [("ce", "trained"), ("l2", "trained"), ("logitnorm", "trained"),
                                          ("l2", "raw")])
def test_react_blocked_scoring_equals_one_pass(mode: str, variant: str) -> None:
    """Scores are computed in row blocks (≤ 4 MiB, here 873 rows at D = 600): identical, up to float rounding,
    to clipping all rows at once and taking the energy of their logits, in every head variant."""
    g = torch.Generator().manual_seed(5)
    n, d, c = 2000, 600, 7  # 873 + 873 + 254 rows
    head = Head(torch.randn(c, d, generator=g) / d**0.5, torch.randn(c, generator=g), mode=mode, tau=0.5,
                variant=variant)  # type: ignore[arg-type]
    feats = torch.relu(torch.randn(n, d, generator=g))
    det = DETECTORS["react"]()
    det.threshold = 1.1
    got = det.score(Extraction(feats, torch.zeros(n, c)), head)
    ref = head.logits(feats.clamp(max=1.1)).double().logsumexp(dim=1).float()
    assert got.shape == (n,) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    half = det.score(Extraction(feats.half(), torch.zeros(n, c)), head)  # other input dtypes: converted to fp32
    torch.testing.assert_close(half, det.score(Extraction(feats.half().float(), torch.zeros(n, c)), head))


def test_react_threshold_is_numpy_percentile() -> None:
    g = torch.Generator().manual_seed(1)
    feats = torch.relu(torch.randn(1000, 16, generator=g))
    ext = Extraction(feats, torch.zeros(1000, 3))
    for p in (90.0, 50.0, 99.0):
        det = DETECTORS["react"](percentile=p).fit(ext, _ce_head([[0.0] * 16] * 3))
        assert det.threshold == pytest.approx(float(np.percentile(feats.numpy().astype(np.float64), p)),
                                              rel=1e-9, abs=1e-9)
    assert make_detector("react").percentile == 90.0
    assert DETECTORS["react"].needs_fit and DETECTORS["react"].uses_logits
    with pytest.raises(RuntimeError, match="fit"):
        make_detector("react").score(ext, _ce_head([[0.0] * 16] * 3))


def test_react_subsampled_percentile_is_close() -> None:
    g = torch.Generator().manual_seed(2)
    # uniform(0,1) values sorted over rows: each of the 3 chunks (≤ 8192 rows) holds a different range,
    # so a subsample that missed a chunk would be far off
    feats = torch.rand(40000, generator=g).sort().values.view(20000, 2)
    ext = Extraction(feats, torch.zeros(20000, 1))
    exact = activation_percentile(ext, 90.0)
    approx = activation_percentile(ext, 90.0, seed=0, max_values=10000)  # 40 000 > 10 000: subsample
    again = activation_percentile(ext, 90.0, seed=0, max_values=10000)
    assert approx == again  # seeded
    assert exact == pytest.approx(float(np.percentile(feats.numpy(), 90)), rel=1e-9)
    assert abs(approx - exact) < 0.02


@pytest.mark.parametrize("p", [90.0, 50.0, 0.0, 100.0, 12.5, 99.99])
def test_react_percentile_above_the_cap_is_exact(p: float) -> None:
    """Above ``max_values`` the percentile is still exact (bracket from a sample, one counting pass), also with
    heavy ties (ReLU zeros) and chunks that each hold a different range of values."""
    g = torch.Generator().manual_seed(3)
    relu = torch.relu(torch.randn(20000, 8, generator=g))
    ordered = torch.rand(160000, generator=g).sort().values.view(20000, 8)
    for feats in (relu, ordered):
        ext = Extraction(feats, torch.zeros(20000, 1))
        ref = float(np.percentile(feats.numpy().astype(np.float64), p))
        for seed in (0, 1):
            got = activation_percentile(ext, p, seed=seed, max_values=40000)  # 160 000 entries > 40 000
            assert got == pytest.approx(ref, rel=1e-12, abs=1e-12)


# ---------------------------------------------------------------- ASH-S


def _ash_s_python(z: list[float], k: int) -> list[float]:
    order = sorted(range(len(z)), key=lambda j: z[j], reverse=True)[:k]
    s1 = sum(z)
    s2 = sum(z[j] for j in order)
    scale = math.exp(s1 / s2)
    return [z[j] * scale if j in order else 0.0 for j in range(len(z))]


def test_ash_s_by_hand() -> None:
    z = [0.3, 1.2, 0.0, 2.5, 0.7, 0.1, 1.9, 0.4, 0.05, 0.9]  # D = 10, distinct values
    w = [[(i + 1) * 0.1 * (-1) ** (i + c) for i in range(10)] for c in range(3)]
    b = [0.0, 0.5, -0.5]
    head = _ce_head(w, b)
    ext = Extraction(torch.tensor([z]), torch.zeros(1, 3))
    for p, k in ((90.0, 1), (50.0, 5)):
        shaped = _ash_s_python(z, k)
        assert sum(v != 0 for v in shaped) == k
        expected = _lse(_linear(shaped, w, b))
        got = DETECTORS["ash_s"](percentile=p).score(ext, head)
        assert got[0].item() == pytest.approx(expected, rel=1e-5)
    # p = 90 keeps the single largest value 2.5, scaled by exp(sum / 2.5)
    from l2ood.detectors.ash import ash_s
    out = ash_s(torch.tensor([z]), 90.0)[0]
    assert out[3].item() == pytest.approx(2.5 * math.exp(sum(z) / 2.5), rel=1e-5)
    assert (out != 0).sum().item() == 1
    assert make_detector("ash_s").percentile == 90.0


# ---------------------------------------------------------------- GEN


def _gen_numpy(logits: np.ndarray, m: int, gamma: float) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    top = -np.sort(-p, axis=1)[:, : min(m, p.shape[1])]
    return -(top**gamma * (1 - top) ** gamma).sum(axis=1)


def test_gen_matches_numpy() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(20, 7, generator=g, dtype=torch.float64) * 3
    ext = Extraction(torch.zeros(20, 2), logits.float())
    head = _ce_head([[0.0, 0.0]] * 7, [0.0] * 7)
    for m, gamma in ((3, 0.1), (7, 0.1), (100, 0.1), (2, 0.5)):  # m = 100 > C = 7: capped
        got = DETECTORS["gen"](gamma=gamma, top_m=m).score(ext, head)
        np.testing.assert_allclose(got.numpy(), _gen_numpy(logits.float().double().numpy(), m, gamma),
                                   rtol=1e-5, atol=1e-6)
    d = make_detector("gen")
    assert (d.gamma, d.top_m) == (0.1, 100)
    # confident predictions score higher than uniform ones
    s = d.score(Extraction(torch.zeros(2, 2), torch.tensor([[10.0] + [0.0] * 6, [0.0] * 7])), head)
    assert s[0] > s[1]


# ---------------------------------------------------------------- L1 norm


def test_l1_norm_by_hand() -> None:
    ext = Extraction(torch.tensor([[3.0, -4.0, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), torch.zeros(3, 2))
    got = make_detector("l1_norm").score(ext, _ce_head([[0.0] * 3] * 2, [0.0] * 2))
    torch.testing.assert_close(got, torch.tensor([7.5, 0.0, 3.0]))
    assert not DETECTORS["l1_norm"].uses_logits and not DETECTORS["l1_norm"].needs_fit


# ---------------------------------------------------------------- degenerate inputs


@pytest.mark.parametrize("mode", ["ce", "l2", "t2fnorm", "logitnorm"])
@pytest.mark.parametrize("variant", ["trained", "raw"])
def test_zero_features_and_constant_logits_are_finite(mode: str, variant: str) -> None:
    d, c = 6, 4
    g = torch.Generator().manual_seed(4)
    head = Head(torch.randn(c, d, generator=g), torch.randn(c, generator=g), mode=mode, tau=0.1,
                variant=variant)  # type: ignore[arg-type]
    feats = torch.cat([torch.zeros(2, d), torch.relu(torch.randn(3, d, generator=g))])
    logits = torch.cat([torch.full((2, c), 5.0), torch.randn(3, c, generator=g)])
    ext = Extraction(feats, logits)
    for name in ("react", "ash_s", "gen", "l1_norm"):
        det = make_detector(name)
        if det.needs_fit:
            det.fit(ext, head)
        s = det.score(ext, head)
        # GEN is computed and returned in float64 since 0.2 (log domain, free of saturation: tests/test_saturation.py)
        dtype = torch.float64 if name == "gen" else torch.float32
        assert s.shape == (5,) and s.dtype == dtype and s.device.type == "cpu", name
        assert torch.isfinite(s).all(), name
    # constant logits: GEN equals the uniform-distribution value
    gen = make_detector("gen").score(ext, head)
    assert gen[0].item() == pytest.approx(-c * (1 / c) ** 0.1 * (1 - 1 / c) ** 0.1, rel=1e-5)


def test_uses_logits_flags() -> None:
    for name in ("react", "ash_s", "gen", "odin"):
        assert DETECTORS[name].uses_logits, name
    assert DETECTORS["odin"].needs_model


# ---------------------------------------------------------------- ODIN


def _tiny_model(head: str = "l2") -> Classifier:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, in_channels=1, image_size=(28, 28), head=head,
                                    mean=[0.3], std=[0.25]))
    return model.eval()


def _images(n: int = 12) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(5))


def test_odin_eps0_is_temperature_scaled_msp() -> None:
    rt = resolve_runtime("cpu", "fp32")
    model, x = _tiny_model(), _images()
    for t in (1000.0, 1.0):
        got = DETECTORS["odin"](temperature=t, epsilon=0.0, batch_size=5).score_images(model, x, rt)
        with torch.no_grad():
            ref = (model(x).logits.double() / t).log_softmax(dim=1).max(dim=1).values
        # the log of the temperature-scaled MSP, float64, since 0.2 (saturation-free; same ranking)
        assert got.shape == (12,) and got.dtype == torch.float64 and got.device.type == "cpu"
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="score_images"):
        make_detector("odin").score(Extraction(torch.zeros(1, 2), torch.zeros(1, 2)), _ce_head())


@pytest.mark.parametrize("head", ["l2", "ce"])
def test_odin_perturbation_follows_input_gradient(head: str) -> None:
    rt = resolve_runtime("cpu", "fp32")
    model, x = _tiny_model(head), _images()
    eps, t = 0.01, 1000.0
    det = DETECTORS["odin"](temperature=t, epsilon=eps, batch_size=5)
    x_tilde = det.perturb(model, x)
    # independent gradient: -log softmax(f(x)/T)[argmax], per sample, via autograd.grad w.r.t. x
    xr = x.clone().requires_grad_(True)
    logits = model(xr).logits
    pred = logits.argmax(dim=1)
    nll = -(logits / t).log_softmax(dim=1).gather(1, pred[:, None]).sum()
    (grad,) = torch.autograd.grad(nll, xr)
    assert (grad != 0).float().mean() > 0.99
    torch.testing.assert_close(x_tilde, x - eps * grad.sign(), rtol=0, atol=1e-7)
    # the temperature-scaled MSP does not decrease (increases for most inputs)
    s0 = DETECTORS["odin"](temperature=t, epsilon=0.0).score_images(model, x, rt)
    s1 = det.score_images(model, x, rt)
    assert (s1 >= s0).float().mean() >= 0.9
    assert (s1 > s0).float().mean() >= 0.75
    # batching does not change the scores
    torch.testing.assert_close(s1, DETECTORS["odin"](temperature=t, epsilon=eps, batch_size=12)
                               .score_images(model, x, rt), rtol=1e-5, atol=1e-7)
    # no gradient left in the parameters, mode restored
    assert all(p.grad is None for p in model.parameters())
    model.train()
    det.score_images(model, x, rt)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_odin_temperature_one_increases_msp() -> None:
    rt = resolve_runtime("cpu", "fp32")
    model, x = _tiny_model("ce"), _images()
    s0 = DETECTORS["odin"](temperature=1.0, epsilon=0.0).score_images(model, x, rt)
    s1 = DETECTORS["odin"](temperature=1.0, epsilon=0.02).score_images(model, x, rt)
    assert (s1 > s0).float().mean() >= 0.75


def test_odin_defaults_and_constant_logits() -> None:
    d = make_detector("odin")
    assert (d.temperature, d.epsilon, d.batch_size) == (1000.0, 0.0014, 256)
    rt = resolve_runtime("cpu", "fp32")
    model = _tiny_model("ce")
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
    s = d.score_images(model, _images(4), rt)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s, torch.full((4,), math.log(0.1), dtype=torch.float64))  # log MSP since 0.2
    s_raw = d.score_images(_tiny_model("l2"), torch.zeros(3, 1, 28, 28), rt, variant="raw")
    assert torch.isfinite(s_raw).all()


def test_ash_s_stays_finite_when_exp_would_overflow() -> None:
    from l2ood.detectors.ash import ash_s

    z = torch.ones(2, 100)  # percentile 99 keeps 1 of 100 equal entries: s1/s2 = 100, exp(100) overflows fp32
    out = ash_s(z, percentile=99.0)
    assert torch.isfinite(out).all() and (out > 0).sum(dim=1).tolist() == [1, 1]
    torch.testing.assert_close(ash_s(torch.tensor([[3.0, 1.0, 0.0, 0.0]]), 50.0),
                               torch.tensor([[3.0, 1.0, 0.0, 0.0]]) * torch.tensor(1.0).exp())  # unchanged case
