"""The l2ood classifier: backbone → pooled features z (fp32) → linear head.

Method (Haas, Yolland & Rabus, "Exploring Simple, High Quality Out-of-Distribution Detection with
L2 Normalization", TMLR 2024, arXiv:2306.04072):

* ``head="l2"``: ``logits = W · z/‖z‖₂ + b`` in training and for the class decision at test time;
  plain cross-entropy, no temperature, no extra loss.
* ``head="ce"`` (the baseline twin): the identical network with ``logits = W · z + b``.
* ``head="t2fnorm"`` / ``"logitnorm"``: the training-time peers (see :mod:`l2ood.models.heads`).
* OoD score (both heads): ``‖z‖₂`` of the *unnormalized* features; higher = more in-distribution.

One forward pass returns the logits, the features and the score (:class:`Output`).
Inputs are float images on the [0, 1] scale ``(N, C, H, W)``; the per-channel ID mean/std are
buffers of the model, so a saved model carries its own input normalization.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from .heads import DEFAULT_TAU, HEAD_MODES, HeadMode, head_logits


class Output(NamedTuple):
    """Everything one forward pass gives."""

    logits: Tensor  # (N, C), fp32, as used for training and for the class decision
    features: Tensor  # (N, D), fp32, unnormalized penultimate features z
    score: Tensor  # (N,), ‖z‖₂ — higher = more in-distribution


class Classifier(nn.Module):
    """Wrap any backbone that maps images to pooled features ``(N, D)``.

    Args:
        backbone: module returning ``(N, feature_dim)``.
        feature_dim: D.
        num_classes: C.
        head: ``"l2"`` (normalize z before the linear layer), ``"ce"`` (plain linear layer),
            ``"t2fnorm"`` or ``"logitnorm"`` (see :mod:`l2ood.models.heads`).
        tau: temperature of ``t2fnorm``/``logitnorm`` (default 0.1 / 0.04; unused otherwise).
        mean: per-channel input means on the [0, 1] scale.
        std: per-channel input standard deviations on the [0, 1] scale.
        eps: lower bound on ‖z‖ in the normalization, ``z / max(‖z‖, eps)``.
    """

    input_mean: Tensor
    input_std: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        head: HeadMode = "l2",
        mean: list[float] | None = None,
        std: list[float] | None = None,
        eps: float = 1e-12,
        tau: float | None = None,
    ) -> None:
        super().__init__()
        if head not in HEAD_MODES:
            raise ConfigError(f"head must be one of {HEAD_MODES}, got {head!r}")
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, num_classes)
        self.head = head
        self.tau = float(DEFAULT_TAU[head] if tau is None else tau)
        if not self.tau > 0:
            raise ConfigError(f"tau must be > 0, got {self.tau}")
        self.eps = eps
        c = len(mean) if mean is not None else 1
        self.register_buffer("input_mean", torch.tensor(mean or [0.0] * c).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(std or [1.0] * c).view(1, -1, 1, 1))

    def features(self, x: Tensor) -> Tensor:
        """Unnormalized pooled features ``z`` in fp32 (the backbone may run under autocast)."""
        x = (x - self.input_mean) / self.input_std
        return self.backbone(x).float()

    def head_input(self, z: Tensor) -> Tensor:
        """What the linear layer sees: ``z/‖z‖`` (l2), ``z/(τ‖z‖)`` (t2fnorm), else ``z``."""
        if self.head == "l2":
            return F.normalize(z, p=2.0, dim=1, eps=self.eps)
        if self.head == "t2fnorm":
            return F.normalize(z, p=2.0, dim=1, eps=self.eps) / self.tau
        return z

    def logits_from_features(self, z: Tensor, variant: str = "trained", norm: Tensor | None = None) -> Tensor:
        """Logits (``"trained"`` or ``"raw"`` variant) in fp32, outside any autocast region."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return head_logits(z.float(), self.fc.weight, self.fc.bias, self.head, self.tau,
                               variant, self.eps, norm)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Output:
        z = self.features(x)
        norm = z.norm(p=2, dim=1)
        return Output(self.logits_from_features(z, norm=norm), z, norm)
