"""Maximum softmax probability (MSP).

``S(x) = max_c softmax(f(x))_c``. Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017. No hyper-parameters.
"""

from __future__ import annotations

from torch import Tensor

from .base import Detector, register
from .features import Extraction, Head


@register
class MSP(Detector):
    """``max softmax`` of the logits (higher = ID)."""

    name = "msp"
    uses_logits = True

    def score(self, x: Extraction, head: Head) -> Tensor:
        # max_c softmax_c = exp(0) / Σ_c exp(f_c − max f): the softmax at its argmax, without the other entries
        f = x.logits.float()
        return (f - f.amax(dim=1, keepdim=True)).exp_().sum(dim=1).reciprocal_()
