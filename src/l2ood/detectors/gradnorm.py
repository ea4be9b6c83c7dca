"""GradNorm — the L1 norm of the gradient of KL(uniform ‖ softmax) w.r.t. the last layer's weights.

With ``h`` the input of the linear layer (``h = z`` for the raw logits), ``g = W·h + b``, logits ``f``
(``f = g`` unless the head normalizes the logits), ``p = softmax(f)`` and ``u = (1/C)·1``:

    L = KL(u ‖ p) = −(1/C) Σ_c log p_c − log C
    ∂L/∂W = δ hᵀ,  δ = ∂L/∂g = Jᵀ(p − u),  J = ∂f/∂g
    S(x) = ‖∂L/∂W‖₁ = ‖δ‖₁ · ‖h‖₁                    (rank one: the L1 norm factorizes)

so no backward pass and no model are needed. For ``f = g`` (``ce``, ``l2``, ``t2fnorm`` and every
``raw`` variant) ``δ = p − u`` and ``S(x) = ‖p − u‖₁ · ‖h‖₁``. For the trained ``logitnorm`` head
``f = g/(τ‖g‖)``, ``J = (I − ĝĝᵀ)/(τ‖g‖)`` with ``ĝ = g/‖g‖`` (``J = I/(τ·ε)`` where ``‖g‖ < ε = 1e-12``, as
:func:`~l2ood.models.heads.head_logits`). ``h`` is :meth:`~l2ood.detectors.features.Head.inputs`: ``z``,
``z/‖z‖`` (``l2``) or ``z/(τ‖z‖)`` (``t2fnorm``). Higher = ID (ID inputs have larger gradients).
Huang, Geng & Li, "On the Importance of Gradients for Detecting Distributional Shifts in the Wild",
NeurIPS 2021. Defaults: temperature ``T = 1`` (the paper's setting; no other hyper-parameter).

Reference disagreement: the authors' code and OpenOOD v1.5 back-propagate
``Σ_c −log softmax(f)_c`` (targets all ones, not ``1/C``), which is ``C·L`` up to a constant, so their
score is ``C`` times this one — the same ranking. The bias gradient is not part of the score in either.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Detector, register
from .features import Extraction, Head

_EPS = 1e-12


def logit_gradient(head: Head, z: Tensor, temperature: float = 1.0) -> Tensor:
    """``δ = ∂KL(u ‖ softmax(f/T))/∂g`` ``(N, C)`` for the pre-activation ``g = W·h + b`` (fp32)."""
    h = head.inputs(z)
    g = torch.nn.functional.linear(h, head.weight.float(), head.bias.float())
    f = head.logits(z.float())
    c = f.shape[1]
    delta = ((f / temperature).softmax(dim=1) - 1.0 / c) / temperature  # ∂L/∂f
    if head.variant == "trained" and head.mode == "logitnorm":
        n = g.norm(dim=1, keepdim=True)
        big = n >= _EPS
        g_hat = g / n.clamp_min(_EPS)
        projected = delta - g_hat * (g_hat * delta).sum(dim=1, keepdim=True)
        delta = torch.where(big, projected / (head.tau * n.clamp_min(_EPS)), delta / (head.tau * _EPS))
    return delta


@register
class GradNorm(Detector):
    """``‖∂KL(u‖softmax)/∂W‖₁ = ‖δ‖₁·‖h‖₁`` (higher = ID)."""

    name = "gradnorm"
    uses_logits = True

    def __init__(self, temperature: float = 1.0) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def score(self, x: Extraction, head: Head) -> Tensor:
        delta = logit_gradient(head, x.features, self.temperature)
        return delta.abs().sum(dim=1) * head.inputs(x.features).abs().sum(dim=1)
