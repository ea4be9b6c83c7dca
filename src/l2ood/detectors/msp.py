"""Maximum softmax probability (MSP), as its logarithm.

``S(x) = log max_c softmax(f(x))_c = −log(1 + Σ_{c≠ŷ} exp(f_c − f_ŷ))`` with ``ŷ = argmax_c f_c``: the log of the
MSP of Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in Neural
Networks", ICLR 2017 — a monotone transform, so the ranking (AUROC, FPR@95) is the paper's wherever the MSP itself
is not rounded. No hyper-parameters. Values lie in ``[−log C, 0]``.

Computed in the log domain (:func:`~l2ood.detectors._softmax.top_softmax`, float64, ``log1p`` of the sum of the
other classes' ``exp(f_c − f_ŷ)``) because the probability saturates: it is exactly 1.0 in float32 for logit margins
above ~17 (72 % of the ID test images of an L2-head model's raw logits), so confident inputs tied; the log stays
distinct and correctly ordered up to margins of ~700. Since l2ood 0.2 (score version 2; l2ood 0.1 returned the
probability): calibrations made before are refused (:attr:`~l2ood.detectors.base.Detector.score_version`).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ._softmax import by_blocks, top_softmax
from .base import Detector, register
from .features import Extraction, Head


@register
class MSP(Detector):
    """``log max softmax`` of the logits, float64 (higher = ID)."""

    name = "msp"
    uses_logits = True
    score_version: ClassVar[int] = 2
    score_change: ClassVar[str] = "the msp score changed to log-domain (log max softmax) in 0.2"

    def score(self, x: Extraction, head: Head) -> Tensor:
        return by_blocks(lambda f: top_softmax(f).log_p_top, x.logits)
