"""Temperature scaling — the maximum softmax probability at a temperature fit by likelihood, as its logarithm.

``S(x) = log max_c softmax(f(x) / T)_c = −log(1 + Σ_{c≠ŷ} exp((f_c − f_ŷ)/T))`` (``ŷ = argmax_c f_c``) with ``T``
minimizing the negative log-likelihood of the fit set,
``T = argmin_T (1/N) Σ_i [log Σ_c exp(f_ic / T) − f_{i,y_i} / T]``.
Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017. Fit on the
labelled fit set given (in l2ood normally the training images; Guo et al. and OpenOOD v1.5 use a
held-out validation split, on which ``T`` comes out larger since training data are fit more confidently).

Score in the log domain (:func:`~l2ood.detectors._softmax.top_softmax`, float64), like :mod:`~l2ood.detectors.msp`:
the log of the temperature-scaled MSP, a monotone transform (same ranking), because the probability itself is
exactly 1.0 in float32 for every input whose scaled logit margin exceeds ~17, so confident inputs tied; the log
stays distinct up to scaled margins of ~700. Since l2ood 0.2 (score version 2; 0.1 returned the probability):
calibrations made before are refused. The fitted ``T`` is unchanged, so fitted files stay valid.

Fit. With ``β = 1/T`` the NLL is convex in ``β`` and its derivative
``(1/N) Σ_i (E_{softmax(βf_i)}[f_i] − f_{i,y_i})`` is non-decreasing, so ``T`` is found as the root of the
derivative by Brent's method (:func:`scipy.optimize.brentq`, in ``log β``), each evaluation one pass
over the logits in float64 row chunks (memory O(chunk·C)). ``T`` is confined to
``[t_min, t_max] = [1e-3, 1e3]`` (a bound is returned where the NLL keeps decreasing towards it, e.g.
a fit set classified without error); ``T = 1`` where the NLL does not depend on ``T`` (all logits
constant per row). OpenOOD fits ``T`` directly with L-BFGS from ``T = 1.5`` (50 iterations) — the same
minimizer. One detector instance serves the logit variant it was fit on (scoring another is an error).
"""

from __future__ import annotations

import math
from typing import ClassVar

from torch import Tensor

from ..errors import ConfigError
from ._softmax import by_blocks, softmax, top_softmax
from .base import Detector, register
from .features import Extraction, Head


@register
class TemperatureScaling(Detector):
    """``log max softmax(f/T)`` with the NLL-optimal ``T``, float64 (higher = ID)."""

    name = "temp_scale"
    needs_fit = True
    uses_logits = True
    fitted_state = ("temperature", "_normalize")
    score_version: ClassVar[int] = 2
    score_change: ClassVar[str] = "the temp_scale score changed to log-domain (log max softmax(f/T)) in 0.2"

    def __init__(self, t_min: float = 1e-3, t_max: float = 1e3, chunk_size: int = 8192) -> None:
        if not 0 < t_min <= 1.0 <= t_max < math.inf:
            raise ConfigError(f"need 0 < t_min <= 1 <= t_max < inf, got t_min={t_min}, t_max={t_max}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        self.t_min = float(t_min)
        self.t_max = float(t_max)
        self.chunk_size = chunk_size
        self.temperature: float | None = None
        self._normalize: bool | None = None

    def _nll_slope(self, train: Extraction, beta: float) -> float:
        """``dNLL/dβ`` at ``β = 1/T`` (mean over the fit set)."""
        total = 0.0
        for chunk in train.chunks(self.chunk_size):
            f = chunk.logits.double()
            assert chunk.labels is not None
            p = softmax(beta * f)  # for C < 16 on the faster (C, N) layout
            total += float(((p * f).sum(dim=1) - f.gather(1, chunk.labels.long()[:, None])[:, 0]).sum())
        return total / len(train)

    def nll(self, train: Extraction, temperature: float) -> float:
        """The mean negative log-likelihood of ``train`` at ``temperature`` (float64)."""
        if train.labels is None:
            raise ConfigError("temp_scale needs the labels of the fit set")
        total = 0.0
        for chunk in train.chunks(self.chunk_size):
            assert chunk.labels is not None
            logp = (chunk.logits.double() / temperature).log_softmax(dim=1)
            total -= float(logp.gather(1, chunk.labels.long()[:, None]).sum())
        return total / len(train)

    def fit(self, train: Extraction, head: Head) -> TemperatureScaling:
        from scipy.optimize import brentq

        if train.labels is None:
            raise ConfigError("temp_scale needs the labels of the fit set")
        if len(train) == 0:
            raise ConfigError("temp_scale: the fit set is empty")
        c = int(train.logits.shape[1])
        if int(train.labels.min()) < 0 or int(train.labels.max()) >= c:
            raise ConfigError(f"temp_scale: labels must lie in [0, {c})")
        lo, hi = math.log(1.0 / self.t_max), math.log(1.0 / self.t_min)  # log β
        g_lo, g_hi = self._nll_slope(train, math.exp(lo)), self._nll_slope(train, math.exp(hi))
        tol = 1e-12 * (1.0 + max(float(c.logits.abs().max()) for c in train.chunks(self.chunk_size)))
        if abs(g_lo) <= tol and abs(g_hi) <= tol:  # flat: the NLL does not depend on T
            log_beta = 0.0
        elif g_lo >= 0:
            log_beta = lo
        elif g_hi <= 0:
            log_beta = hi
        else:
            log_beta = brentq(lambda lb: self._nll_slope(train, math.exp(lb)), lo, hi, xtol=1e-10, rtol=1e-10)
        self.temperature = math.exp(-log_beta)
        self._normalize = head.normalize
        return self

    def score(self, x: Extraction, head: Head) -> Tensor:
        if self.temperature is None:
            raise RuntimeError("temp_scale is not fitted: call fit(train, head) before score()")
        if head.normalize != self._normalize:
            raise ConfigError("temp_scale: score() got another logit variant than fit()")
        t = self.temperature
        return by_blocks(lambda f: top_softmax(f, t).log_p_top, x.logits)
