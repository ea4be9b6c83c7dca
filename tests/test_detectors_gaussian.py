"""Mahalanobis, RMDS and Mahalanobis++ against independent NumPy closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2ood.detectors import DETECTORS, Extraction, Head, make_detector
from l2ood.detectors._blocks import SymmetricGram, blas_threads, block_rows
from l2ood.detectors._gaussian import fit_class_gaussians, precision

C, D = 3, 5


def _data(n: int, seed: int, offset: float = 0.0) -> Extraction:
    """Three anisotropic Gaussian classes in D=5 with distinct means (optionally far from 0)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    means = np.array([[3.0, 0, 0, 1, 0], [0, 3.0, 0, -1, 0], [0, 0, 3.0, 0, 2.0]]) + offset
    mix = np.array([[1.0, 0.3, 0, 0, 0], [0, 0.8, 0.2, 0, 0], [0, 0, 1.5, 0, 0.1],
                    [0.2, 0, 0, 0.5, 0], [0, 0, 0, 0.4, 1.2]])
    z = means[labels] + rng.normal(size=(n, D)) @ mix
    feats = torch.from_numpy(z).float()
    return Extraction(feats, torch.zeros(n, C), torch.from_numpy(labels))


def _head() -> Head:
    return Head(torch.zeros(C, D), torch.zeros(C))


def _np_fit(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    classes = np.unique(y)
    mus = np.stack([z[y == c].mean(axis=0) for c in classes])
    centered = z - mus[np.searchsorted(classes, y)]
    cov = np.cov(centered, rowvar=False, bias=True)  # (1/N) Σ_c Σ_{i∈c} (z_i − μ_c)(z_i − μ_c)ᵀ
    return mus, cov, np.linalg.inv(cov)


def _np_mahalanobis(train: Extraction, test: Extraction) -> np.ndarray:
    z = train.features.double().numpy()
    mus, _, prec = _np_fit(z, train.labels.numpy())
    out = []
    for x in test.features.double().numpy():
        out.append(-min(float((x - mu) @ prec @ (x - mu)) for mu in mus))
    return np.array(out)


def _np_rmds(train: Extraction, test: Extraction) -> np.ndarray:
    z = train.features.double().numpy()
    mus, _, prec = _np_fit(z, train.labels.numpy())
    mu0 = z.mean(axis=0)
    prec0 = np.linalg.inv(np.cov(z, rowvar=False, bias=True))
    out = []
    for x in test.features.double().numpy():
        md0 = float((x - mu0) @ prec0 @ (x - mu0))
        out.append(-min(float((x - mu) @ prec @ (x - mu)) - md0 for mu in mus))
    return np.array(out)


def test_registered() -> None:
    assert {"mahalanobis", "rmds", "mahalanobis++"} <= set(DETECTORS)
    assert all(DETECTORS[n].needs_fit for n in ("mahalanobis", "rmds", "mahalanobis++"))


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_mahalanobis_matches_numpy(offset: float) -> None:
    train, test = _data(400, 0, offset), _data(150, 1, offset)
    scores = make_detector("mahalanobis").fit(train, _head()).score(test, _head())
    assert scores.dtype == torch.float32 and scores.shape == (150,) and scores.device.type == "cpu"
    np.testing.assert_allclose(scores.numpy(), _np_mahalanobis(train, test), rtol=1e-4, atol=1e-5)
    assert (scores <= 0).all()


def test_streaming_chunk_size_invariant() -> None:
    train, test = _data(400, 2, offset=5.0), _data(100, 3, offset=5.0)
    for name in ("mahalanobis", "rmds", "mahalanobis++"):
        small = DETECTORS[name](chunk_size=7).fit(train, _head()).score(test, _head())
        big = DETECTORS[name](chunk_size=10_000).fit(train, _head()).score(test, _head())
        torch.testing.assert_close(small, big, rtol=1e-5, atol=1e-5)


def test_rmds_matches_numpy() -> None:
    train, test = _data(400, 4), _data(150, 5)
    scores = make_detector("rmds").fit(train, _head()).score(test, _head())
    assert scores.dtype == torch.float32 and scores.shape == (150,)
    np.testing.assert_allclose(scores.numpy(), _np_rmds(train, test), rtol=1e-4, atol=1e-4)
    # RMDS = Mahalanobis + MD_0, so it differs from plain Mahalanobis
    maha = make_detector("mahalanobis").fit(train, _head()).score(test, _head())
    assert not torch.allclose(scores, maha)


def test_mahalanobis_pp_equals_mahalanobis_on_normalized_features() -> None:
    train, test = _data(400, 6), _data(150, 7)
    pp = make_detector("mahalanobis++").fit(train, _head()).score(test, _head())

    def normed(e: Extraction) -> Extraction:
        f = e.features / e.features.norm(dim=1, keepdim=True)
        return Extraction(f, e.logits, e.labels)

    ref = make_detector("mahalanobis").fit(normed(train), _head()).score(normed(test), _head())
    torch.testing.assert_close(pp, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pp.numpy(), _np_mahalanobis(normed(train), normed(test)), rtol=1e-4, atol=1e-4)
    # scale invariance: multiplying the test features by a positive constant changes nothing
    scaled = Extraction(test.features * 37.0, test.logits, test.labels)
    det = make_detector("mahalanobis++").fit(train, _head())
    torch.testing.assert_close(det.score(scaled, _head()), pp, rtol=1e-4, atol=1e-4)


def test_mahalanobis_pp_zero_feature_vector() -> None:
    train = _data(300, 8)
    train.features[0] = 0.0
    det = make_detector("mahalanobis++").fit(train, _head())
    s = det.score(Extraction(torch.zeros(2, D), torch.zeros(2, C)), _head())
    assert torch.isfinite(s).all()


@pytest.mark.parametrize("name", ["mahalanobis", "rmds", "mahalanobis++"])
def test_near_class_mean_scores_higher_than_far(name: str) -> None:
    train = _data(500, 9)
    det = make_detector(name).fit(train, _head())
    z, y = train.features, train.labels
    means = torch.stack([z[y == c].mean(0) for c in range(C)])
    far = means * 4.0 + torch.tensor([10.0, -10.0, 5.0, 8.0, -6.0])
    near_s = det.score(Extraction(means, torch.zeros(C, C)), _head())
    far_s = det.score(Extraction(far, torch.zeros(C, C)), _head())
    assert near_s.min() > far_s.max()
    if name == "mahalanobis":
        assert near_s.abs().max() < 1e-3  # distance of a class mean to itself


def test_absent_class_is_skipped() -> None:
    train = _data(400, 10)
    keep = train.labels != 1
    sparse = Extraction(train.features[keep], train.logits[keep], train.labels[keep])
    test = _data(50, 11)
    scores = make_detector("mahalanobis").fit(sparse, _head()).score(test, _head())
    assert torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), _np_mahalanobis(sparse, test), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mahalanobis", "rmds", "mahalanobis++"])
def test_score_before_fit_raises(name: str) -> None:
    with pytest.raises(RuntimeError, match="fit"):
        make_detector(name).score(_data(10, 0), _head())


@pytest.mark.parametrize("name", ["mahalanobis", "rmds", "mahalanobis++"])
def test_fit_without_labels_raises(name: str) -> None:
    e = _data(50, 0)
    with pytest.raises(ValueError, match="labels"):
        make_detector(name).fit(Extraction(e.features, e.logits, None), _head())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        DETECTORS["mahalanobis"](chunk_size=0)
    with pytest.raises(ValueError, match="eps"):
        DETECTORS["mahalanobis++"](eps=0.0)


# ---------------------------------------------------------------- numerics of the fit (float64 rank-k updates, inverse)


@pytest.mark.parametrize("threads", [1, 2])  # 1: SciPy ?syrk; more: torch products of the upper block triangle
def test_symmetric_gram_matches_matmul(threads: int) -> None:
    g = torch.Generator().manual_seed(3)
    blocks = [torch.randn(n, 37, generator=g, dtype=torch.float64) * 5 for n in (1, 64, 0, 200)]
    full = torch.cat(blocks)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gram, gram32 = SymmetricGram(37), SymmetricGram(37, torch.float32)
        with blas_threads():
            for b in blocks:
                gram.add(b)
                gram32.add(b)
    finally:
        torch.set_num_threads(before)
    r64, r32 = gram.result(), gram32.result()
    torch.testing.assert_close(r64, full.T @ full, rtol=1e-12, atol=1e-10)
    assert r32.dtype == torch.float64 and torch.equal(r32, r32.T) and torch.equal(r64, r64.T)
    torch.testing.assert_close(r32, full.T @ full, rtol=1e-5, atol=1e-3)
    assert block_rows(512, 8192) == 1024 and block_rows(512, 100) == 100 and block_rows(10**6, 8192) == 64


def test_precision_matches_pinv_on_every_path() -> None:
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    for eigs in (torch.logspace(0, 3, 40, dtype=torch.float64),  # well conditioned: Cholesky path
                 torch.logspace(0, 12, 40, dtype=torch.float64),  # cond 1e12: eigendecomposition
                 torch.cat([torch.zeros(5, dtype=torch.float64), torch.ones(35, dtype=torch.float64)])):  # singular
        cov = (q * eigs) @ q.T
        ref = torch.linalg.pinv(cov, hermitian=True)
        got = precision(cov)
        assert torch.equal(got, got.T)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))


def test_fit_is_float64_accurate_far_from_origin_and_ill_conditioned() -> None:
    """Shifted float64 moments (BLAS dsyrk): accurate at an offset of 1e4 with a within-class covariance of
    condition number ~1e8 (float32 products would lose everything here)."""
    g = torch.Generator().manual_seed(5)
    n, d = 3000, 12
    y = torch.randint(0, 3, (n,), generator=g)
    mix = torch.randn(d, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.3, 0.1, 0.03], dtype=torch.float64)
    z64 = 1e4 + torch.randn(3, d, generator=g, dtype=torch.float64)[y] + torch.randn(n, 4, generator=g,
                                                                                      dtype=torch.float64) @ mix.T
    z64 = z64 + 1e-3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z = z64.float()
    zz = z.double().numpy()
    means = np.stack([zz[y.numpy() == c].mean(axis=0) for c in range(3)])
    centered = zz - means[y.numpy()]
    cov = centered.T @ centered / n
    fit = fit_class_gaussians(Extraction(z, torch.zeros(n, 3), y), chunk_size=700)
    np.testing.assert_allclose(fit.means.numpy(), means, rtol=1e-13)
    np.testing.assert_allclose(fit.cov.numpy(), cov, rtol=1e-9, atol=1e-12 * np.abs(cov).max())
    gm = zz.mean(axis=0)
    np.testing.assert_allclose(fit.global_cov.numpy(), (zz - gm).T @ (zz - gm) / n, rtol=1e-7,
                               atol=1e-10 * np.abs(cov).max())
