"""Neural-collapse (NC) metrics of penultimate features, streamed over a data set.

Papyan, Han & Donoho, "Prevalence of neural collapse during the terminal phase of deep learning
training", PNAS 2020. With N features z_i of C classes, class means μ_c, global mean μ_G
(the average of the class means, as in Papyan et al.), centred class means M_c = μ_c − μ_G:

* within-class covariance  Σ_W = (1/N) Σ_c Σ_{i∈c} (z_i − μ_c)(z_i − μ_c)ᵀ
* between-class covariance Σ_B = (1/C) Σ_c M_c M_cᵀ
* **NC1** = Tr(Σ_W Σ_B⁺) / C — within-class variability relative to between-class spread (→ 0).
* **NC2** equinorm = std_c ‖M_c‖ / mean_c ‖M_c‖ (→ 0); equiangularity = std_{c≠c'} cos(M_c, M_c')
  (→ 0) and max-angle = mean_{c≠c'} |cos(M_c, M_c') + 1/(C−1)| (→ 0): the class means approach a
  simplex equiangular tight frame whose pairwise cosines are −1/(C−1).
* **NC3** = ‖ W/‖W‖_F − M/‖M‖_F ‖_F with W the classifier weights (C×D) and M the matrix of
  centred class means (self-duality, → 0).
* **NC4** = fraction of inputs where the network's decision (argmax of the trained logits) differs
  from the nearest-class-centre decision argmin_c ‖z − μ_c‖ (→ 0).

Feature-norm statistics (overall and per class) are reported alongside, since the L2 method's
explanation (Haas et al., TMLR 2024) is that L2 normalization decouples ‖z‖ from the collapse.

Memory: one pass accumulates per-class counts/sums and a D×D second moment in float64 (shifted
for stability); NC4 needs a second pass over the same chunks. Extra memory O(chunk·D + C·D + D²).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError

ChunkSource = Callable[[], Iterable[tuple[Tensor, Tensor, Tensor | None]]]  # yields (features, logits, labels)


@dataclass
class ClassMoments:
    """Streaming first/second moments of features per class."""

    counts: Tensor  # (C,) float64
    sums: Tensor  # (C, D) float64, of z − shift
    second: Tensor  # (D, D) float64, Σ (z − shift)(z − shift)ᵀ
    shift: Tensor  # (D,) float64
    norm_sum: Tensor  # (C,) Σ ‖z‖
    norm_sq: Tensor  # (C,) Σ ‖z‖²

    @classmethod
    def accumulate(cls, chunks: Iterable[tuple[Tensor, Tensor]], num_classes: int) -> ClassMoments:
        """One pass over ``(features, labels)`` chunks."""
        st: ClassMoments | None = None
        for z, y in chunks:
            z = z.double()
            y = y.long()
            if st is None:
                d = z.shape[1]
                f64 = torch.float64
                st = cls(torch.zeros(num_classes, dtype=f64), torch.zeros(num_classes, d, dtype=f64),
                         torch.zeros(d, d, dtype=f64), z.mean(0), torch.zeros(num_classes, dtype=f64),
                         torch.zeros(num_classes, dtype=f64))
            zc = z - st.shift
            st.counts += torch.bincount(y, minlength=num_classes).double()
            st.sums.index_add_(0, y, zc)
            st.second += zc.T @ zc
            nrm = z.norm(dim=1)
            st.norm_sum.index_add_(0, y, nrm)
            st.norm_sq.index_add_(0, y, nrm * nrm)
        if st is None:
            raise ConfigError("no features given")
        return st

    @property
    def present(self) -> Tensor:
        return self.counts > 0

    def means(self) -> Tensor:
        """Class means μ_c (rows of absent classes are NaN)."""
        return self.sums / self.counts[:, None] + self.shift

    def within_cov(self) -> Tensor:
        n = self.counts.sum()
        p = self.present
        centred = self.sums[p] / self.counts[p, None]
        return (self.second - (self.counts[p, None] * centred).T @ centred) / n


def _labelled(y: Tensor | None) -> Tensor:
    if y is None:
        raise ConfigError("neural-collapse metrics need labelled images")
    return y


def nc_metrics(source: ChunkSource, weight: Tensor, num_classes: int) -> dict[str, Any]:
    """NC1–NC4 and ‖z‖ statistics; ``source()`` must yield the same chunks on each call."""
    st = ClassMoments.accumulate(((z, _labelled(y)) for z, _, y in source()), num_classes)
    p = st.present
    c = int(p.sum())
    if c < 2:
        raise ConfigError("NC metrics need at least two classes present")
    mu = st.means()[p]  # (C, D)
    mu_g = mu.mean(0)
    m = mu - mu_g  # centred class means
    sigma_w = st.within_cov()
    sigma_b = m.T @ m / c
    nc1 = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True)) / c)
    norms = m.norm(dim=1)
    equinorm = float(norms.std(unbiased=False) / norms.mean())
    mn = m / norms[:, None].clamp_min(1e-30)
    cos = mn @ mn.T
    off = ~torch.eye(c, dtype=torch.bool)
    equiangular = float(cos[off].std(unbiased=False))
    max_angle = float((cos[off] + 1.0 / (c - 1)).abs().mean())
    w = weight.double()[p]
    nc3 = float((w / w.norm() - m / m.norm()).norm())
    disagree, total = 0, 0
    for z, logits, _ in source():
        ncc = torch.cdist(z.double(), mu).argmin(1)
        present_idx = torch.nonzero(p).flatten()
        disagree += int((present_idx[ncc] != logits.argmax(1)).sum())
        total += len(z)
    n = st.counts.sum()
    norm_mean_c = st.norm_sum[p] / st.counts[p]
    norm_std_c = (st.norm_sq[p] / st.counts[p] - norm_mean_c**2).clamp_min(0).sqrt()
    overall_mean = st.norm_sum.sum() / n
    overall_std = (st.norm_sq.sum() / n - overall_mean**2).clamp_min(0).sqrt()
    return {
        "nc1": nc1, "nc2_equinorm": equinorm, "nc2_equiangularity": equiangular, "nc2_max_angle": max_angle,
        "nc3": nc3, "nc4": disagree / max(1, total),
        "norm_mean": float(overall_mean), "norm_std": float(overall_std),
        "norm_mean_per_class": norm_mean_c.tolist(), "norm_std_per_class": norm_std_c.tolist(),
        "n": int(n), "classes": c,
    }


def nc_from_tensors(features: Tensor, logits: Tensor, labels: Tensor, weight: Tensor,
                    num_classes: int | None = None, chunk: int = 8192) -> dict[str, Any]:
    """:func:`nc_metrics` on in-memory tensors, streamed in row chunks of ``chunk``."""
    k = num_classes if num_classes is not None else int(labels.max()) + 1

    def source() -> Iterable[tuple[Tensor, Tensor, Tensor]]:
        for s in range(0, len(features), chunk):
            yield features[s : s + chunk], logits[s : s + chunk], labels[s : s + chunk]

    return nc_metrics(source, weight, k)
