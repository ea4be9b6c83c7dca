"""KNN (Sun et al., ICML 2022) and ViM (Wang et al., CVPR 2022) against independent computations."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from l2ood.detectors import DETECTORS, Extraction, Head, make_detector
from l2ood.detectors import knn as knn_module
from l2ood.detectors.vim import default_dim


def _ext(z: torch.Tensor, head: Head | None = None) -> Extraction:
    logits = head.logits(z) if head is not None else torch.zeros(z.shape[0], 3)
    return Extraction(z, logits)


def _dummy_head(d: int) -> Head:
    return Head(torch.zeros(3, d), torch.zeros(3), mode="ce")


# ---------------------------------------------------------------------------------------------- KNN


def _unit_np(z: torch.Tensor) -> np.ndarray:
    zz = z.double().numpy()
    return zz / np.maximum(np.linalg.norm(zz, axis=1, keepdims=True), 1e-12)


@pytest.mark.parametrize("k", [1, 2, 5, 7, 13, 53])
@pytest.mark.parametrize(("bank_chunk", "query_chunk"), [(7, 5), (3, 1), (100, 100), (53, 37)])
def test_knn_matches_sklearn(k: int, bank_chunk: int, query_chunk: int) -> None:
    g = torch.Generator().manual_seed(k * 100 + bank_chunk)
    bank = torch.randn(53, 6, generator=g) * torch.rand(53, 1, generator=g) * 5  # varied norms
    query = torch.randn(37, 6, generator=g) * 3
    head = _dummy_head(6)
    det = DETECTORS["knn"](k=k, bank_chunk=bank_chunk, query_chunk=query_chunk, fit_chunk=4)
    scores = det.fit(_ext(bank), head).score(_ext(query), head)
    assert scores.dtype == torch.float32 and scores.shape == (37,) and scores.device.type == "cpu"
    nn = NearestNeighbors(n_neighbors=k).fit(_unit_np(bank))
    dist, _ = nn.kneighbors(_unit_np(query))
    np.testing.assert_allclose(scores.numpy(), -dist[:, k - 1], rtol=0, atol=1e-5)


def test_knn_bank_is_normalized_fp32() -> None:
    z = torch.randn(20, 4, dtype=torch.float64) * 7
    det = make_detector("knn", k=3).fit(_ext(z), _dummy_head(4))
    assert det.bank.dtype == torch.float32 and det.bank.shape == (20, 4)
    torch.testing.assert_close(det.bank.norm(dim=1), torch.ones(20))


def test_knn_chunked_equals_single_chunk() -> None:
    g = torch.Generator().manual_seed(1)
    bank, query = torch.randn(40, 8, generator=g), torch.randn(23, 8, generator=g)
    head = _dummy_head(8)
    one = DETECTORS["knn"](k=4, bank_chunk=10_000, query_chunk=10_000).fit(_ext(bank), head)
    many = DETECTORS["knn"](k=4, bank_chunk=3, query_chunk=5).fit(_ext(bank), head)
    torch.testing.assert_close(many.score(_ext(query), head), one.score(_ext(query), head),
                               rtol=0, atol=1e-6)


def test_knn_never_forms_query_by_bank_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes: list[tuple[int, int]] = []
    inner = knn_module._similarity

    def spy(q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = inner(q, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(knn_module, "_similarity", spy)
    g = torch.Generator().manual_seed(2)
    bank, query = torch.randn(50, 5, generator=g), torch.randn(30, 5, generator=g)
    head = _dummy_head(5)
    DETECTORS["knn"](k=6, bank_chunk=7, query_chunk=4).fit(_ext(bank), head).score(_ext(query), head)
    assert shapes and max(s[0] for s in shapes) <= 4 and max(s[1] for s in shapes) <= 7
    assert sum(s[0] * s[1] for s in shapes) == 30 * 50  # every pair seen exactly once


def test_knn_zero_vectors_give_finite_scores() -> None:
    g = torch.Generator().manual_seed(3)
    bank = torch.randn(10, 4, generator=g)
    query = torch.cat([torch.zeros(2, 4), torch.randn(3, 4, generator=g)])
    head = _dummy_head(4)
    s = make_detector("knn", k=3).fit(_ext(bank), head).score(_ext(query), head)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s[:2], torch.full((2,), -(2.0**0.5)))  # sim 0 to every unit vector
    bank0 = torch.cat([bank, torch.zeros(3, 4)])  # zero rows in the bank too
    s0 = make_detector("knn", k=5).fit(_ext(bank0), head).score(_ext(query), head)
    assert torch.isfinite(s0).all()


def test_knn_k_too_large_and_unfitted() -> None:
    head = _dummy_head(3)
    z = torch.randn(5, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        make_detector("knn").score(_ext(z), head)
    with pytest.raises(ValueError, match="exceeds"):
        make_detector("knn", k=6).fit(_ext(z), head)
    det = make_detector("knn", k=5).fit(_ext(z), head)
    assert torch.isfinite(det.score(_ext(z), head)).all()  # k == bank size is fine
    det.k = 6
    with pytest.raises(ValueError, match="exceeds"):
        det.score(_ext(z), head)
    with pytest.raises(ValueError, match="dimension"):
        make_detector("knn", k=2).fit(_ext(z), head).score(_ext(torch.randn(2, 4)), _dummy_head(4))
    with pytest.raises(ValueError, match="positive integer"):
        make_detector("knn", k=0)


def test_knn_defaults_empty_query_and_memory_estimate() -> None:
    det = make_detector("knn")
    assert det.needs_fit and (det.k, det.query_chunk, det.bank_chunk) == (50, 1024, 16384)
    assert det.params()["k"] == 50
    head = _dummy_head(3)
    det.fit(_ext(torch.randn(60, 3)), head)
    assert det.score(_ext(torch.empty(0, 3)), head).shape == (0,)
    # bank + one q×b similarity block dominate: far below a 10k × 50k distance matrix
    est = det.memory_bytes(50_000, 512)
    assert 4 * 50_000 * 512 < est < 4 * 50_000 * 512 + 80 * 2**20
    assert est < 4 * 10_000 * 50_000


# ---------------------------------------------------------------------------------------------- ViM

D, DIM = 8, 3


def _orthonormal(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def _np_vim(train: np.ndarray, test: np.ndarray, w: np.ndarray, b: np.ndarray, dim: int,
            logits_fn: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Independent NumPy ViM: (scores, residual norms) of ``test``."""
    u = -np.linalg.pinv(w) @ b
    y = train - u
    sigma = y.T @ y / len(train)
    vals, vecs = np.linalg.eigh(sigma)
    order = np.argsort(-vals)
    ns = vecs[:, order[dim:]]
    r_train = np.linalg.norm(y @ ns, axis=1)
    alpha = logits_fn(train).max(axis=1).mean() / r_train.mean()
    r = np.linalg.norm((test - u) @ ns, axis=1)
    lt = logits_fn(test)
    m = lt.max(axis=1)
    energy = m + np.log(np.exp(lt - m[:, None]).sum(axis=1))
    return energy - alpha * r, r


def _subspace_data(seed: int, n: int, off_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients: principal (n × DIM, large variance) and off-subspace (n × D−DIM, small).

    Rows come in pairs ``(a, c), (a, −c)``, so the sample cross-moment ``Σ a cᵀ`` is exactly zero and
    the top-DIM eigenvectors of the second moment span exactly the principal coordinates."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n // 2, DIM)) * np.array([10.0, 8.0, 6.0])
    c = rng.normal(size=(n // 2, D - DIM)) * off_scale
    return np.concatenate([a, a]), np.concatenate([c, -c])


@pytest.mark.parametrize("mode", ["ce", "l2"])
def test_vim_matches_numpy_full_rank_head(mode: str) -> None:
    rng = np.random.default_rng(0)
    q = _orthonormal(D, 5)
    w = rng.normal(size=(12, D))  # C ≥ D: pinv(W)·W = I, so u is exactly recoverable
    u_true = rng.normal(size=D) * 2
    b = -w @ u_true
    a, c = _subspace_data(1, 400, 0.3)
    train = u_true + a @ q[:, :DIM].T + c @ q[:, DIM:].T
    a2, c2 = _subspace_data(2, 50, 1.0)
    test = u_true + a2 @ q[:, :DIM].T + c2 @ q[:, DIM:].T
    head = Head(torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), mode=mode)
    wf, bf = head.weight.double().numpy(), head.bias.double().numpy()
    train_t, test_t = torch.tensor(train, dtype=torch.float32), torch.tensor(test, dtype=torch.float32)

    def logits_np(z: np.ndarray) -> np.ndarray:
        if mode == "l2":
            z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return z @ wf.T + bf

    det = DETECTORS["vim"](dim=DIM, chunk_size=37).fit(_ext(train_t, head), head)
    np.testing.assert_allclose(det.origin.numpy(), u_true, atol=1e-4)
    # residual norm = norm of the off-subspace component (float32 features: ~1e-5 absolute)
    np.testing.assert_allclose(det.residual_norm(test_t).numpy(), np.linalg.norm(c2, axis=1), atol=1e-4)
    # the residual space is the span of Q's last D − DIM columns
    p = det.residual_basis.numpy()
    np.testing.assert_allclose(p @ p.T, q[:, DIM:] @ q[:, DIM:].T, atol=1e-6)
    ref, r_ref = _np_vim(train_t.double().numpy(), test_t.double().numpy(), wf, bf, DIM, logits_np)
    # residual_norm is float64: exact for the fitted (u, P⊥) ...
    r_own = np.linalg.norm((test_t.double().numpy() - det.origin.numpy()) @ p, axis=1)
    np.testing.assert_allclose(det.residual_norm(test_t).numpy(), r_own, rtol=1e-9, atol=1e-9)
    # ... and P⊥ comes from float32 products of the second moment (summed in float64): float32-level
    np.testing.assert_allclose(det.residual_norm(test_t).numpy(), r_ref, rtol=1e-6, atol=1e-6)
    s = det.score(_ext(test_t, head), head)
    assert s.dtype == torch.float32 and s.shape == (50,) and s.device.type == "cpu"
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-5, atol=1e-5)
    if mode == "l2":  # one fit serves the raw variant too, with its own alpha
        raw = head.raw()
        ref_raw, _ = _np_vim(train_t.double().numpy(), test_t.double().numpy(), wf, bf, DIM,
                             lambda z: z @ wf.T + bf)
        np.testing.assert_allclose(det.score(_ext(test_t, raw), raw).numpy(), ref_raw, rtol=1e-5, atol=1e-4)
        assert det.alpha("raw") != pytest.approx(det.alpha("trained"))


def test_vim_float32_products_agree_with_float64_reference() -> None:
    """Σ from float32 products (summed in float64) and float32 projections: scores within ~1e-5 of an
    all-float64 NumPy ViM where the eigenvalues around the split are well separated."""
    g = torch.Generator().manual_seed(7)
    d, dim, n = 64, 16, 6000
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.cat([torch.linspace(8.0, 4.0, dim), torch.linspace(1.0, 0.3, d - dim)]).double()
    train = ((torch.randn(n, d, generator=g, dtype=torch.float64) * scales) @ q.T + 3.0).float()
    test = ((torch.randn(500, d, generator=g, dtype=torch.float64) * scales.flip(0)) @ q.T + 3.0).float()
    head = Head(torch.randn(10, d, generator=g) / 8, torch.randn(10, generator=g), mode="ce")
    wf, bf = head.weight.double().numpy(), head.bias.double().numpy()
    det = DETECTORS["vim"](dim=dim).fit(_ext(train, head), head)
    ref, r_ref = _np_vim(train.double().numpy(), test.double().numpy(), wf, bf, dim, lambda z: z @ wf.T + bf)
    np.testing.assert_allclose(det.residual_norm(test).numpy(), r_ref, rtol=1e-6)
    s = det.score(_ext(test, head), head).double().numpy()
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("mode,variant", [("ce", "trained"), ("l2", "raw"), ("l2", "trained"),
                                          ("logitnorm", "trained")])
def test_vim_blocked_and_fused_scoring_equal_the_definition(mode: str, variant: str) -> None:
    """Scores in row blocks (873 rows at D = 600) and, for heads with logits ``W·z + b`` (ce, every raw variant),
    from one product that yields residual and logits together: equal, to float32 rounding, to the energy of
    ``head.logits`` minus ``α·residual_norm`` (float64 reference)."""
    g = torch.Generator().manual_seed(9)
    d, n = 600, 2000  # blocks of 873 + 873 + 254 rows
    train = torch.relu(torch.randn(3000, d, generator=g) + 0.5)
    test = torch.relu(torch.randn(n, d, generator=g) * 1.3 + 0.5)
    head = Head(torch.randn(7, d, generator=g) / d**0.5, torch.randn(7, generator=g), mode=mode,
                variant=variant)  # type: ignore[arg-type]
    det = DETECTORS["vim"]().fit(_ext(train, head), head)
    s = det.score(_ext(test, head), head).double()
    ref = head.logits(test).double().logsumexp(dim=1) - det.alpha(variant) * det.residual_norm(test)
    assert s.shape == (n,)
    torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_vim_off_subspace_points_score_lower() -> None:
    rng = np.random.default_rng(3)
    a, c = _subspace_data(4, 300, 0.2)
    # a signed permutation as basis: W = A·Q1ᵀ stays exactly of rank DIM in float32 (pinv stays exact)
    q = np.eye(D)[rng.permutation(D)] * rng.choice([-1.0, 1.0], size=D)
    q1, q2 = q[:, :DIM], q[:, DIM:]
    w = rng.normal(size=(6, DIM)).astype(np.float32) @ q1.T  # rows in the principal subspace:
    # the logits ignore the residual component
    b = rng.normal(size=6)
    head = Head(torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32), mode="ce")
    u = -np.linalg.pinv(w) @ b
    train = torch.tensor(u + a @ q1.T + c @ q2.T, dtype=torch.float32)
    det = DETECTORS["vim"](dim=DIM).fit(_ext(train, head), head)
    assert det.alpha() > 0
    base = u + np.array([5.0, -3.0, 2.0]) @ q1.T
    direction = q2 @ rng.normal(size=D - DIM)
    direction /= np.linalg.norm(direction)
    mags = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
    z = torch.tensor(base + mags[:, None] * direction, dtype=torch.float32)
    np.testing.assert_allclose(det.residual_norm(z).numpy(), mags, atol=1e-5)
    s = det.score(_ext(z, head), head).double()
    assert (s.diff() < 0).all()
    # the logits do not change, so the score drops by exactly alpha · ‖off-subspace component‖
    np.testing.assert_allclose((s[0] - s).numpy(), det.alpha() * mags, rtol=1e-4, atol=1e-4)


def test_vim_errors_defaults_and_registration() -> None:
    head = Head(torch.randn(4, 6), torch.randn(4), mode="ce")
    z = torch.randn(30, 6)
    with pytest.raises(RuntimeError, match="not fitted"):
        make_detector("vim").score(_ext(z, head), head)
    with pytest.raises(ValueError, match="dim=6"):
        make_detector("vim", dim=6).fit(_ext(z, head), head)
    with pytest.raises(ValueError, match="non-negative"):
        make_detector("vim", dim=-1)
    assert (default_dim(512), default_dim(2048), default_dim(64), default_dim(7)) == (256, 256, 32, 3)
    det = make_detector("vim").fit(_ext(z, head), head)
    assert det.needs_fit and det.params()["dim"] == 3
    assert det.residual_basis.shape == (6, 3)
    other = Head(torch.randn(4, 6), torch.randn(4), mode="ce")
    with pytest.raises(ValueError, match="different head"):
        det.score(_ext(z, other), other)
    # features exactly inside the principal subspace (here: all at the origin u = 0) → clear error
    head0 = Head(torch.randn(4, 6), torch.zeros(4), mode="ce")
    with pytest.raises(ValueError, match="no component outside"):
        make_detector("vim", dim=2).fit(_ext(torch.zeros(10, 6), head0), head0)
    assert {"knn", "vim"} <= set(DETECTORS)
