"""Classifier heads: what the linear layer sees in training, and the logit variants at test time.

With features ``z`` (unnormalized, pooled penultimate), ``ẑ = z/‖z‖₂`` and the linear layer ``W, b``:

============  ==================================  =======================================================
head          logits as trained (``"trained"``)   reference
============  ==================================  =======================================================
``l2``        ``W·ẑ + b``                         Haas, Yolland & Rabus, TMLR 2024 (arXiv:2306.04072)
``ce``        ``W·z + b``                         the plain cross-entropy baseline
``t2fnorm``   ``W·ẑ/τ + b``, τ = 0.1              Regmi et al., "T2FNorm: Train-time Feature
                                                  Normalization for OOD Detection", 2023
``logitnorm`` ``f/(τ‖f‖₂)``, ``f = W·z + b``,     Wei et al., "Mitigating Neural Network Overconfidence
              τ = 0.04                            with Logit Normalization", ICML 2022
============  ==================================  =======================================================

The ``"raw"`` variant drops every normalization: ``W·z + b``. For the L2 head it equals
``‖z‖·W·ẑ + b``, which mixes the feature norm with class evidence. For normalized heads (all but
``ce``) l2ood reports logit-based detectors on both variants, named ``<detector>:trained`` and
``<detector>:raw``; for ``ce`` the two coincide and the plain name is used.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torch.nn import functional as F

from ..errors import ConfigError

HeadMode = Literal["l2", "ce", "t2fnorm", "logitnorm"]
HEAD_MODES: tuple[str, ...] = ("l2", "ce", "t2fnorm", "logitnorm")
DEFAULT_TAU = {"l2": 1.0, "ce": 1.0, "t2fnorm": 0.1, "logitnorm": 0.04}
LogitVariant = Literal["trained", "raw"]


def is_normalized(mode: str) -> bool:
    """True when the trained logits differ from the raw ``W·z + b``."""
    return mode != "ce"


def head_logits(z: Tensor, weight: Tensor, bias: Tensor | None, mode: str, tau: float = 1.0,
                variant: LogitVariant = "trained", eps: float = 1e-12, norm: Tensor | None = None) -> Tensor:
    """Logits of ``z`` under ``mode`` and ``variant`` (see the module table); fp32 in, fp32 out.

    ``norm``: ‖z‖₂ per row when already computed (saves a reduction in the scoring pass).
    """
    if mode not in HEAD_MODES:
        raise ConfigError(f"head must be one of {HEAD_MODES}, got {mode!r}")
    if variant == "raw" or mode == "ce":
        return F.linear(z, weight, bias)
    if variant != "trained":
        raise ConfigError(f"logit variant must be 'trained' or 'raw', got {variant!r}")
    if mode in ("l2", "t2fnorm"):
        n = (z.norm(p=2, dim=1) if norm is None else norm).clamp_min(eps)[:, None]  # = F.normalize
        return F.linear(z / (n if mode == "l2" else n * tau), weight, bias)
    f = F.linear(z, weight, bias)  # logitnorm
    return f / (tau * f.norm(dim=1, keepdim=True).clamp_min(eps))
