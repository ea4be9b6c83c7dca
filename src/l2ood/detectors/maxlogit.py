"""Maximum logit (MaxLogit).

``S(x) = max_c f_c(x)``. Hendrycks et al., "Scaling Out-of-Distribution Detection for Real-World
Settings", ICML 2022. No hyper-parameters.
"""

from __future__ import annotations

from torch import Tensor

from .base import Detector, register
from .features import Extraction, Head


@register
class MaxLogit(Detector):
    """``max logit`` (higher = ID)."""

    name = "maxlogit"
    uses_logits = True

    def score(self, x: Extraction, head: Head) -> Tensor:
        return x.logits.float().amax(dim=1)
