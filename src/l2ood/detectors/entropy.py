"""Negative predictive entropy.

``S(x) = −H(p) = Σ_c p_c log p_c`` with ``p = softmax(f(x))``: the negative Shannon entropy of the
softmax distribution (0 for a one-hot prediction, ``−log C`` for the uniform one).
Shannon, "A Mathematical Theory of Communication", Bell System Technical Journal, 1948; a standard
softmax baseline for OoD detection (e.g. pytorch-ood's ``Entropy``, which returns ``H`` as an outlier
score; here the sign is flipped so that higher = ID). No hyper-parameters.

Computed from ``log_softmax`` (``p_c log p_c`` is 0 where ``p_c`` underflows), so it is finite for any
finite logits; for fewer than 16 classes on the transposed layout (:mod:`~l2ood.detectors._softmax`).
"""

from __future__ import annotations

from torch import Tensor

from ._softmax import softmax
from .base import Detector, register
from .features import Extraction, Head


@register
class Entropy(Detector):
    """``Σ p log p`` of the softmax (higher = ID)."""

    name = "entropy"
    uses_logits = True

    def score(self, x: Extraction, head: Head) -> Tensor:
        logp = softmax(x.logits.float(), log=True)
        return (logp.exp() * logp).sum(dim=1)
