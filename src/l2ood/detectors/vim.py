"""Virtual-logit Matching (ViM).

With the head ``W (C×D), b (C,)`` the origin is ``u = −pinv(W)·b`` (the point whose raw logits are
zero in the least-squares sense). From the ID training features, centered as ``z − u``::

    Σ = Σ_i (z_i − u)(z_i − u)ᵀ / N                 (uncentered second moment, as in the paper)
    P⊥ = eigenvectors of Σ beyond the top ``dim``   (D × (D − dim), the residual space)
    r(z) = ‖(z − u)ᵀ P⊥‖₂                            (residual norm)
    α = mean_train max_c f_c(z) / mean_train r(z)
    S(x) = logsumexp_c f_c(x) − α·r(x)              (energy minus the virtual logit; higher = ID)

with ``f = head.logits(z)`` (so the logits follow the head's mode and variant).
Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022.

Default hyper-parameters: ``dim = 256`` if ``D ≥ 512`` (OpenOOD v1.5's setting for ResNet18), else
``D // 2``; ``chunk_size = 8192``: the most rows processed at once in fit and score (fewer where a float64
block would exceed 4 MiB: 1024 rows at D = 512).

Implementation. ``Σ`` is accumulated over row blocks (extra memory O(block·D + D²)) with float32 products
of one triangle (:class:`~l2ood.detectors._blocks.SymmetricGram`: BLAS ``ssyrk`` with one torch thread)
summed in float64, and decomposed in float64 with :func:`torch.linalg.eigh` — only the split into the
top-``dim`` and the residual eigenvectors is used, which float32 products determine to ~1e-7
(pytorch-ood's ViM does all of it in float32, eigendecomposition included). Fitting reads the training
outputs twice (``Σ`` and the max-logit mean, then the residual mean, which needs ``P⊥``). The residual
norms of :meth:`ViM.fit` and :meth:`ViM.score` are float32 products ``z·P⊥ − u·P⊥`` (``u·P⊥`` in float64,
rounded once; in :meth:`ViM.score`, for heads whose logits are ``W·z + b``, one product with
``[P⊥ | Wᵀ]`` gives residual and logits together), in row blocks of ≤ 4 MiB; :meth:`ViM.residual_norm` is
the float64 reference (agreement ~1e-6 relative). ``α`` is fitted for both logit variants of the head
(``"trained"`` and ``"raw"``, :meth:`Head.raw`; computed once where they coincide, e.g. the ``ce`` head)
and the one matching the head given to :meth:`ViM.score` is used, so one fit serves both variants.
``dim ≥ D`` is a ``ValueError``. Note that ``α`` is negative when the mean ID max logit is — the paper
assumes it is positive.

Distributed (a training extraction that is this rank's shard under ``torchrun``, :attr:`Extraction.sharded`; a
collective call): every quantity of the fit is a sum over rows — ``N``, ``Σ_i (z_i − u)(z_i − u)ᵀ``, the max-logit
sums and the residual-norm sum — so each rank sums its own rows and the ranks all-reduce the sums in float64. Every
rank then decomposes the same ``Σ`` and holds the same fit; no rank holds more than its shard. The fit equals the
single-process one up to the grouping of the float32 block products of ``Σ`` (as another ``chunk_size`` would
change it: measured 1e-7 in the residual projector and 1e-9 relative in ``α`` with a clear eigenvalue gap at
``dim``; on a small trained run's 16-dim features, whose mean is large next to their spread, 1.5e-5 in the projector
and up to 7e-5 in scores of about 1-2).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..distributed import all_reduce_sum, is_active, total
from ..errors import ConfigError
from ..models.heads import LogitVariant
from ._blocks import SymmetricGram, blas_threads, block_rows
from .base import Detector, _check_keys, register
from .features import Extraction, Head

_VARIANTS: tuple[LogitVariant, ...] = ("trained", "raw")


def default_dim(d: int) -> int:
    """The default principal-subspace dimension for feature dimension ``d``."""
    return 256 if d >= 512 else d // 2


@register
class ViM(Detector):
    """``logsumexp(logits) − α·‖(z − u)ᵀP⊥‖`` (higher = ID)."""

    name = "vim"
    needs_fit = True
    uses_logits = True
    fitted_state = ("_u", "_residual", "_dim", "_head")  # + α per logit variant (see state_dict)
    #: under torchrun each rank sums its own shard of the training rows; the ranks all-reduce the sums
    shard_fit: ClassVar[bool] = True

    def __init__(self, dim: int | None = None, chunk_size: int = 8192) -> None:
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 0):
            raise ConfigError(f"dim must be a non-negative integer or None, got {dim!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.dim = dim
        self.chunk_size = chunk_size
        self._u: Tensor | None = None  # (D,) float64
        self._residual: Tensor | None = None  # P⊥ (D, D − dim) float64
        self._alpha: dict[str, float] = {}
        self._head: tuple[Tensor, Tensor] | None = None
        self._dim: int | None = None

    # -- fitted state -------------------------------------------------------------------------
    def _fitted(self) -> tuple[Tensor, Tensor]:
        if self._u is None or self._residual is None:
            raise RuntimeError(f"{self.name} is not fitted: call fit(train, head) before score()")
        return self._u, self._residual

    @property
    def origin(self) -> Tensor:
        """``u = −pinv(W)·b`` ``(D,)``, float64."""
        return self._fitted()[0]

    @property
    def residual_basis(self) -> Tensor:
        """``P⊥`` ``(D, D − dim)``, float64: orthonormal basis of the residual space."""
        return self._fitted()[1]

    def alpha(self, variant: str = "trained") -> float:
        """The fitted scale ``α`` for the given logit variant."""
        self._fitted()
        return self._alpha[variant]

    def params(self) -> dict[str, Any]:
        p = super().params()
        if self._dim is not None:
            p["dim"] = self._dim
        return p

    def state_dict(self) -> dict[str, Tensor]:
        """``u``, ``residual`` (P⊥), ``dim``, ``head.weight``/``head.bias`` (the head it was fit with) and
        ``alpha.trained``/``alpha.raw``."""
        u, p = self._fitted()
        assert self._head is not None and self._dim is not None
        return {"u": u.contiguous(), "residual": p.contiguous(), "dim": torch.tensor(self._dim, dtype=torch.int64),
                "head.weight": self._head[0].contiguous(), "head.bias": self._head[1].contiguous(),
                **{f"alpha.{v}": torch.tensor(self._alpha[v], dtype=torch.float64) for v in _VARIANTS}}

    def load_state_dict(self, state: dict[str, Tensor]) -> ViM:
        _check_keys(self.name, state, ["u", "residual", "dim", "head.weight", "head.bias",
                                       *(f"alpha.{v}" for v in _VARIANTS)])
        u, p = state["u"].to(torch.float64), state["residual"].to(torch.float64)
        if u.ndim != 1 or p.ndim != 2 or p.shape[0] != u.shape[0]:
            raise ConfigError(f"{self.name}: inconsistent fitted state (u {tuple(u.shape)}, P⊥ {tuple(p.shape)})")
        self._u, self._residual, self._dim = u, p, int(state["dim"])
        self._head = (state["head.weight"], state["head.bias"])
        self._alpha = {v: float(state[f"alpha.{v}"]) for v in _VARIANTS}
        return self

    # -- fit / score --------------------------------------------------------------------------
    @staticmethod
    def origin_of(head: Head) -> Tensor:
        """``u = −pinv(W)·b`` in float64."""
        return -(torch.linalg.pinv(head.weight.double()) @ head.bias.double())

    def residual_norm(self, z: Tensor) -> Tensor:
        """``r(z) = ‖(z − u)ᵀP⊥‖₂`` ``(N,)``, float64, computed in row chunks."""
        u, p = self._fitted()
        if z.ndim != 2 or z.shape[1] != u.shape[0]:
            raise ConfigError(f"{self.name}: features of shape {tuple(z.shape)} do not match the fitted "
                             f"dimension {u.shape[0]}")
        out = torch.empty(z.shape[0], dtype=torch.float64)
        for s in range(0, z.shape[0], self.chunk_size):
            y = z[s : s + self.chunk_size].double() - u
            out[s : s + y.shape[0]] = (y @ p).norm(dim=1)
        return out

    def _residual_norm32(self, z: Tensor, p32: Tensor, up32: Tensor) -> Tensor:
        """``‖z·P⊥ − u·P⊥‖₂`` ``(B,)`` float32 for one block of rows (``p32 = P⊥``, ``up32 = u·P⊥`` in float32)."""
        return torch.addmm(up32, z.to(torch.float32), p32, alpha=1.0, beta=-1.0).norm(dim=1)

    def _fast_basis(self) -> tuple[Tensor, Tensor]:
        """``(P⊥, u·P⊥)`` in float32 (derived from the float64 fitted state on each call: cheap, D×(D−dim))."""
        u, p = self._fitted()
        return p.to(torch.float32), (u @ p).to(torch.float32)

    def fit(self, train: Extraction, head: Head) -> ViM:
        """Fit ``u``, ``P⊥`` and ``α`` (collective under ``torchrun`` with a sharded extraction: the ranks'
        sums are all-reduced, see the module doc)."""
        sharded = train.sharded and is_active()
        n_local, d = train.features.shape
        n = total(n_local) if sharded else n_local
        if n == 0:
            raise ConfigError(f"{self.name}: the ID training set is empty")
        dim = default_dim(d) if self.dim is None else self.dim
        if dim >= d:
            raise ConfigError(f"{self.name}: dim={dim} must be smaller than the feature dimension D={d}")
        u = self.origin_of(head)
        heads = {v: replace(head, variant=v) for v in _VARIANTS}
        # the trained logits are the raw ones unless the head normalizes (then both are computed)
        variants = _VARIANTS if heads["trained"].normalize else ("raw",)
        block = block_rows(d, self.chunk_size)
        # pass 1: second moment of z − u (float32 products summed in float64) and the max-logit sums
        gram = SymmetricGram(d, torch.float32)
        u32 = u.to(torch.float32)
        buf = torch.empty(block, d, dtype=torch.float32)
        max_logit = dict.fromkeys(variants, 0.0)
        with blas_threads():
            for chunk in train.chunks(block):
                z = chunk.features
                gram.add(torch.sub(z.to(torch.float32), u32, out=buf[: z.shape[0]]))
                for v in variants:
                    max_logit[v] += float(heads[v].logits(z).amax(dim=1).double().sum())
        second = gram.result()
        if sharded:  # Σ and the max-logit sums over every rank's rows
            second = all_reduce_sum(second)
            sums = all_reduce_sum(torch.tensor([max_logit[v] for v in variants], dtype=torch.float64))
            max_logit = {v: float(x) for v, x in zip(variants, sums, strict=True)}
        if "trained" not in max_logit:
            max_logit["trained"] = max_logit["raw"]
        second = second / n
        _, vecs = torch.linalg.eigh(second)  # ascending eigenvalues
        self._u, self._residual = u, vecs[:, : d - dim].contiguous()
        self._dim = dim
        # pass 2: mean residual norm (float32 products, float64 sum)
        p32, up32 = self._fast_basis()
        r_sum = sum(float(self._residual_norm32(c.features, p32, up32).double().sum())
                    for c in train.chunks(block))
        if sharded:
            r_sum = float(all_reduce_sum(torch.tensor([r_sum], dtype=torch.float64)))
        r_mean = r_sum / n
        if not r_mean > 1e-12 * float(second.trace().sqrt()):  # degenerate: exactly in the subspace
            self._u = self._residual = None
            raise ConfigError(f"{self.name}: the ID training features have no component outside the top-{dim} "
                             f"principal subspace (mean residual {r_mean:.3g}); use a smaller dim")
        self._alpha = {v: max_logit[v] / n / r_mean for v in _VARIANTS}
        self._head = (head.weight, head.bias)
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        self._fitted()
        assert self._head is not None
        w, b = self._head
        if not (head.weight.shape == w.shape and torch.equal(head.weight, w)
                and torch.equal(head.bias, b)):
            raise ConfigError("vim: score() got a different head (W, b) than fit()")
        alpha = self._alpha[head.variant]
        d = self._fitted()[0].shape[0]
        if x.features.ndim != 2 or x.features.shape[1] != d:
            raise ConfigError(f"{self.name}: features of shape {tuple(x.features.shape)} do not match the fitted "
                             f"dimension {d}")
        p32, up32 = self._fast_basis()
        k = p32.shape[1]
        fused = None
        if not head.normalize:  # logits W·z + b: one product gives both (see _fused_basis)
            fused = self._fused_basis(p32, up32, head)
        out = torch.empty(len(x), dtype=torch.float32)
        step = block_rows(d, self.chunk_size)  # ≤ 4 MiB: the block is read from cache by the second product
        for s in range(0, len(x), step):
            z = x.features[s : s + step]
            if fused is None:
                energy = head.logits(z).double().logsumexp(dim=1)
                r = self._residual_norm32(z, p32, up32)
            else:
                y = torch.addmm(fused[1], z.to(torch.float32), fused[0])  # [z·P⊥ − u·P⊥ | W·z + b | 0]
                energy = y[:, k : k + head.weight.shape[0]].double().logsumexp(dim=1)
                r = y[:, :k].norm(dim=1)
            out[s : s + z.shape[0]] = energy - alpha * r.double()
        return out

    @staticmethod
    def _fused_basis(p32: Tensor, up32: Tensor, head: Head) -> tuple[Tensor, Tensor]:
        """``(M, c)`` with ``z·M + c = [z·P⊥ − u·P⊥ | W·z + b | 0]`` (float32) for heads whose logits are
        ``W·z + b``: one matrix product per block instead of two (the logits' product, C columns wide, runs far
        below the GEMM's full rate). Zero columns pad the width to a multiple of 16, which keeps the product at
        full rate (measured at D = 512: 266 columns 1.15× slower than 272)."""
        d, k = p32.shape
        c = head.weight.shape[0]
        pad = -(k + c) % 16
        mat = torch.cat([p32, head.weight.to(torch.float32).T, p32.new_zeros(d, pad)], dim=1)
        bias = torch.cat([-up32, head.bias.to(torch.float32), up32.new_zeros(pad)])
        return mat, bias
