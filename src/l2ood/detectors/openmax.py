"""OpenMax — Weibull-recalibrated activations with an explicit "unknown" class.

Fit, per class ``c`` on the ID fit set (activation vectors ``v`` = the logits): the mean activation
vector ``μ_c`` of the samples of class ``c`` that are classified correctly, and a Weibull model of the
``tailsize`` largest distances ``‖v − μ_c‖₂`` of those samples (libMR's ``FitHigh``, see below).
Score, for ``v = f(x)`` with classes ranked by activation (``r = 1`` the largest)::

    w_c = WeibullCDF_c(‖v − μ_c‖)                        for the top-α classes, else 0
    ω_c = 1 − ((α + 1 − r_c)/α) · w_c                   (1 outside the top α)
    v̂_c = v_c · ω_c,    v̂_0 = Σ_c v_c (1 − ω_c)         (the unknown class)
    p_0 = exp(v̂_0) / (exp(v̂_0) + Σ_c exp(v̂_c))
    S(x) = log(1 − p_0)                                  (higher = ID)

Bendale & Boult, "Towards Open Set Deep Networks", CVPR 2016. Defaults (OpenOOD v1.5's
``OpenMax``): ``alpha = 3`` (capped at C), ``tailsize = 20``, Euclidean distance. The score is a
monotone function of OpenOOD's ``−p_0`` (the same ranking), computed stably with ``logsumexp``.

Weibull fit (libMR ``FitHigh``, as emulated by pytorch-ood's ``LibNotMR``): the tail ``d`` is shifted to
``x = d + 10000 − min(d)`` and a two-parameter Weibull (location 0) is fit by maximum likelihood; the
CDF is ``1 − exp(−(x/λ)^κ)`` at the shifted query distance. The shape ``κ`` solves the likelihood
equation ``Σ x^κ ln x / Σ x^κ − 1/κ − mean(ln x) = 0`` (monotone in ``κ``; solved in ``ln κ`` by
:func:`scipy.optimize.brentq` on ``ln(x/max x)``, which is exact, since the shift cancels) and
``λ = (mean x^κ)^{1/κ}``. ``scipy.stats.weibull_min.fit`` is not used: on such shifted tails (spread ≪
10000) its generic optimizer stops far from the maximum. A tail with fewer than two distinct values is
a step at its maximum (``κ = ∞``); a class with no correctly classified fit sample has ``w_c = 1``.

Reference disagreements: the paper writes the rank weight as ``(α − r)/α``; the authors' code (OSDN),
OpenOOD and pytorch-ood use ``(α + 1 − r)/α`` (as here). OSDN uses the ``eucos`` distance
(``‖·‖₂/200 + cosine``) and ``α = 10`` on ImageNet; pytorch-ood fits the means on all samples of a class,
not only correctly classified ones, with ``tailsize = 25``, ``α = 10``. Fit streams row chunks (memory
O(chunk·C + C² + C·tailsize)); one detector instance serves the logit variant it was fit on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Detector, register
from .features import Extraction, Head
from .knn import _check_positive_int

SHIFT = 10000.0  # libMR's translate_amount


def fit_weibull_high(tail: Tensor) -> tuple[float, float, float]:
    """``(κ, λ, d_min)`` of libMR's ``FitHigh`` on the distances ``tail`` (see the module doc)."""
    from scipy.optimize import brentq

    d = tail.double()
    d_min, d_max = float(d.min()), float(d.max())
    x_max = d_max - d_min + SHIFT
    log_r = torch.log1p((d - d_max) / x_max)  # ln(x / x_max) ≤ 0, exact (the shift cancels)
    if d.numel() < 2 or not float(log_r.min()) < 0.0:
        return math.inf, x_max, d_min

    def slope(log_kappa: float) -> float:
        k = math.exp(log_kappa)
        w = torch.exp(k * log_r)
        return float((w * log_r).sum() / w.sum()) - 1.0 / k - float(log_r.mean())

    lo, hi = -30.0, 60.0
    if slope(hi) <= 0:  # numerically a step
        return math.inf, x_max, d_min
    kappa = math.exp(brentq(slope, lo, hi, xtol=1e-12, rtol=1e-12))
    lam = x_max * float(torch.exp(kappa * log_r).mean()) ** (1.0 / kappa)
    return kappa, lam, d_min


def weibull_cdf(dist: Tensor, kappa: Tensor, lam: Tensor, d_min: Tensor) -> Tensor:
    """``1 − exp(−((d + 10000 − d_min)/λ)^κ)`` element-wise (float64; a step at ``λ`` where ``κ = ∞``)."""
    ratio = ((dist + SHIFT - d_min) / lam).clamp_min(0.0)
    finite = torch.isfinite(kappa)
    powered = torch.where(finite, ratio.pow(torch.where(finite, kappa, torch.ones_like(kappa))),
                          torch.where(ratio > 1, torch.full_like(ratio, math.inf), torch.zeros_like(ratio)))
    return -torch.expm1(-powered)


@register
class OpenMax(Detector):
    """``log(1 − p_unknown)`` of the OpenMax-recalibrated activations (higher = ID)."""

    name = "openmax"
    needs_fit = True
    uses_logits = True
    fitted_state = ("_means", "_weibull", "_normalize")

    def __init__(self, alpha: int = 3, tailsize: int = 20, chunk_size: int = 8192) -> None:
        for n, v in (("alpha", alpha), ("tailsize", tailsize), ("chunk_size", chunk_size)):
            _check_positive_int(n, v)
        self.alpha = alpha
        self.tailsize = tailsize
        self.chunk_size = chunk_size
        self._means: Tensor | None = None  # (C, C) float64 mean activation vectors
        self._weibull: Tensor | None = None  # (C, 3) float64: κ, λ, d_min; NaN rows for classes without a fit
        self._normalize: bool | None = None

    def check_state(self, state: dict[str, Tensor]) -> None:
        """As :meth:`Detector.check_state`, except that ``means`` and ``weibull`` may hold whole NaN rows (classes
        without a correctly classified training image) and a Weibull shape κ may be +inf (a tail of equal distances:
        a step CDF); any other NaN or infinite value is refused."""
        rows = {k: state[k] for k in ("means", "weibull") if k in state and state[k].is_floating_point()}
        for k, t in rows.items():
            nan_rows = torch.isnan(t).all(dim=1) if t.ndim == 2 else torch.zeros(0, dtype=torch.bool)
            rest = t[~nan_rows].clone() if t.ndim == 2 else t.clone()
            if k == "weibull" and rest.ndim == 2 and rest.shape[1] == 3:
                rest[:, 0] = torch.where(rest[:, 0] == math.inf, 1.0, rest[:, 0])
            if not bool(torch.isfinite(rest).all()):
                raise ConfigError(f"detector 'openmax': fitted statistic '{k}' holds NaN or infinite values outside "
                                  "whole rows of classes without a fit")
        super().check_state({k: v for k, v in state.items() if k not in rows})
        for k, t in rows.items():
            super().check_state({k: torch.nan_to_num(t, nan=0.0)})  # dtype check

    def _fitted(self) -> tuple[Tensor, Tensor]:
        if self._means is None or self._weibull is None:
            raise RuntimeError("openmax is not fitted: call fit(train, head) before score()")
        return self._means, self._weibull

    @property
    def means(self) -> Tensor:
        """Mean activation vectors ``μ_c`` ``(C, C)``, float64 (NaN rows: no correct fit sample)."""
        return self._fitted()[0]

    @property
    def weibull(self) -> Tensor:
        """Per class ``(κ, λ, d_min)`` ``(C, 3)``, float64 (NaN rows: no correct fit sample)."""
        return self._fitted()[1]

    def fit(self, train: Extraction, head: Head) -> OpenMax:
        if train.labels is None:
            raise ConfigError("openmax needs the labels of the ID training data")
        c = int(train.logits.shape[1])
        if len(train) and (int(train.labels.min()) < 0 or int(train.labels.max()) >= c):
            raise ConfigError(f"openmax: training labels must lie in [0, {c})")
        sums = torch.zeros(c, c, dtype=torch.float64)
        counts = torch.zeros(c, dtype=torch.float64)
        for chunk in train.chunks(self.chunk_size):  # pass 1: means of correctly classified samples
            assert chunk.labels is not None
            v, y = chunk.logits.double(), chunk.labels.long()
            ok = v.argmax(dim=1) == y
            sums.index_add_(0, y[ok], v[ok])
            counts.index_add_(0, y[ok], torch.ones(int(ok.sum()), dtype=torch.float64))
        means = sums / counts[:, None]  # NaN rows where no sample is correct
        tails: list[Tensor] = [torch.empty(0, dtype=torch.float64) for _ in range(c)]
        for chunk in train.chunks(self.chunk_size):  # pass 2: the largest distances per class
            assert chunk.labels is not None
            v, y = chunk.logits.double(), chunk.labels.long()
            ok = v.argmax(dim=1) == y
            v, y = v[ok], y[ok]
            dist = (v - means[y]).norm(dim=1)
            for k in y.unique().tolist():
                both = torch.cat([tails[k], dist[y == k]])
                tails[k] = both.topk(min(self.tailsize, both.numel())).values
        weibull = torch.full((c, 3), math.nan, dtype=torch.float64)
        for k in range(c):
            if tails[k].numel():
                weibull[k] = torch.tensor(fit_weibull_high(tails[k]), dtype=torch.float64)
        self._means, self._weibull = means, weibull
        self._normalize = head.normalize
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        means, weibull = self._fitted()
        c = means.shape[0]
        if x.logits.shape[1] != c or head.normalize != self._normalize:
            raise ConfigError("openmax: score() got logits of another number of classes or logit variant than fit()")
        a = min(self.alpha, c)
        rank_weight = torch.tensor([(a + 1 - r) / a for r in range(1, a + 1)], dtype=torch.float64)
        fitted = ~torch.isnan(weibull[:, 0])
        out = torch.empty(len(x), dtype=torch.float32)
        for s in range(0, len(x), self.chunk_size):
            v = x.logits[s : s + self.chunk_size].double()
            top = v.topk(a, dim=1).indices  # (B, a), largest first
            dist = (v[:, None, :] - means[top]).norm(dim=2)  # (B, a); NaN for classes without a mean
            wb = weibull[top]  # (B, a, 3)
            cdf = weibull_cdf(torch.nan_to_num(dist), wb[..., 0], wb[..., 1], wb[..., 2])
            w = torch.where(fitted[top], cdf, torch.ones_like(cdf))
            omega = torch.ones_like(v).scatter_(1, top, 1.0 - rank_weight * w)
            revised = v * omega
            unknown = (v * (1.0 - omega)).sum(dim=1, keepdim=True)
            known = revised.logsumexp(dim=1)
            out[s : s + v.shape[0]] = (known - torch.cat([unknown, revised], dim=1).logsumexp(dim=1)).float()
        return out
