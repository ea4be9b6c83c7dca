"""NC metrics on synthetic data with known geometry; streaming equals all-at-once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2ood.analysis.collapse import nc_from_tensors, nc_metrics


def simplex_etf(c: int, d: int, scale: float = 3.0) -> torch.Tensor:
    """C unit-norm vectors in R^D (D ≥ C) with pairwise cosine −1/(C−1), times ``scale``."""
    e = torch.eye(c) - torch.full((c, c), 1.0 / c)
    e = e / e.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(d, c, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    return scale * (e.double() @ q.T)


def test_perfect_collapse() -> None:
    c, d, per = 5, 12, 40
    m = simplex_etf(c, d)
    offset = torch.randn(d, dtype=torch.float64)  # a global mean that is not zero
    labels = torch.arange(c).repeat_interleave(per)
    z = (m + offset)[labels]  # zero within-class spread
    w = m.clone()  # self-dual classifier
    logits = (z - offset) @ w.T
    r = nc_from_tensors(z.float(), logits.float(), labels, w.float())
    assert r["nc1"] == pytest.approx(0.0, abs=1e-6)
    assert r["nc2_equinorm"] == pytest.approx(0.0, abs=1e-6)
    assert r["nc2_equiangularity"] == pytest.approx(0.0, abs=1e-6)
    assert r["nc2_max_angle"] == pytest.approx(0.0, abs=1e-6)
    assert r["nc3"] == pytest.approx(0.0, abs=1e-6)
    assert r["nc4"] == 0.0
    # cosines of the centred means are exactly -1/(C-1)
    mc = m - m.mean(0)
    mc = mc / mc.norm(dim=1, keepdim=True)
    cos = (mc @ mc.T)[~torch.eye(c, dtype=torch.bool)]
    torch.testing.assert_close(cos, torch.full_like(cos, -1 / (c - 1)))


def test_random_isotropic_is_not_collapsed() -> None:
    g = torch.Generator().manual_seed(1)
    c, d, per = 4, 16, 2000
    labels = torch.arange(c).repeat_interleave(per)
    z = torch.randn(c * per, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    r = nc_from_tensors(z.float(), (z @ w.T).float(), labels, w.float())
    # Σ_W ≈ I; the C centred class means have squared norms ≈ D/per, spread over C−1 directions, so
    # Σ_B's C−1 non-zero eigenvalues are ≈ D/(C·per) and NC1 = Tr(Σ_W Σ_B⁺)/C ≈ per·(C−1)/D
    expected = per * (c - 1) / d
    assert 0.5 * expected < r["nc1"] < 2.0 * expected
    assert r["nc4"] > 0.5  # random classifier vs nearest centre: mostly disagree
    assert r["nc3"] > 0.5
    assert r["norm_mean"] == pytest.approx(math.sqrt(d), rel=0.05)  # E‖z‖ ≈ √D for N(0, I_D)


def test_streaming_equals_all_at_once() -> None:
    g = torch.Generator().manual_seed(2)
    c, d, n = 6, 10, 997
    labels = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, d, generator=g) + 5 * torch.randn(c, d, generator=g)[labels] + 100.0
    w = torch.randn(c, d, generator=g)
    logits = z @ w.T
    a = nc_from_tensors(z, logits, labels, w, chunk=10_000)
    b = nc_from_tensors(z, logits, labels, w, chunk=7)
    for k in a:
        if isinstance(a[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=1e-12), k
    # and NC1 against a NumPy closed form
    zn, yn = z.double().numpy(), labels.numpy()
    mu = np.stack([zn[yn == k].mean(0) for k in range(c)])
    sw = sum(((zn[yn == k] - mu[k]).T @ (zn[yn == k] - mu[k])) for k in range(c)) / n
    mc = mu - mu.mean(0)
    sb = mc.T @ mc / c
    assert a["nc1"] == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / c, rel=1e-6)
    nc4 = np.mean(np.argmin(((zn[:, None] - mu[None]) ** 2).sum(-1), 1) != logits.argmax(1).numpy())
    assert a["nc4"] == pytest.approx(nc4)


def test_norm_statistics_per_class() -> None:
    z = torch.tensor([[3.0, 4.0], [6.0, 8.0], [1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    r = nc_from_tensors(z, z, y, torch.eye(2))
    assert r["norm_mean_per_class"] == pytest.approx([7.5, 2.0])
    assert r["norm_std_per_class"] == pytest.approx([2.5, 1.0])
    assert r["norm_mean"] == pytest.approx(4.75)


def test_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="two classes"):
        nc_from_tensors(torch.randn(5, 3), torch.randn(5, 2), torch.zeros(5, dtype=torch.long),
                        torch.randn(2, 3))


def test_nc_streamed_through_the_model_equals_in_memory_extraction() -> None:
    from l2ood.data import ImageSet
    from l2ood.detectors import extract, iter_batches
    from l2ood.models import ModelConfig, build_model
    from l2ood.runtime import resolve_runtime

    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, num_classes=3, in_channels=1, image_size=(16, 16)))
    ds = ImageSet(name="x", images=torch.randint(0, 256, (70, 1, 16, 16), dtype=torch.uint8),
                  labels=torch.arange(70) % 3)
    rt = resolve_runtime("cpu", "fp32")
    w = model.fc.weight.detach().float()
    ext = extract(model, ds, rt)
    a = nc_from_tensors(ext.features, ext.logits, ext.labels, w, 3)
    gen = iter_batches(model, ds, rt, batch_size=16)
    next(gen)
    assert torch.is_grad_enabled()  # a suspended generator does not leak no-grad into the caller
    b = nc_metrics(lambda: iter_batches(model, ds, rt, batch_size=16), w, 3)
    for k in ("nc1", "nc2_equinorm", "nc2_equiangularity", "nc3", "nc4", "norm_mean"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
