"""Energy score.

``S(x) = T · log Σ_c exp(f_c(x) / T)`` (the negative free energy), ``T = 1`` by default.
Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from .base import Detector, register
from .features import Extraction, Head


@register
class Energy(Detector):
    """``T·logsumexp(logits/T)`` (higher = ID)."""

    name = "energy"
    uses_logits = True

    def __init__(self, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def score(self, x: Extraction, head: Head) -> Tensor:
        t = self.temperature
        f = x.logits.float()
        return f.logsumexp(dim=1) if t == 1.0 else t * (f / t).logsumexp(dim=1)
