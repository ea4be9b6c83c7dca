"""A pretrained classifier of a named architecture, head included, from a weights file's tensors."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..errors import ConfigError
from . import Classifier, ModelConfig, build_model
from .adapters import load_backbone_weights, renamed_for


def head_tensors(tensors: dict[str, Tensor], left: list[str], dim: int, where: str) -> tuple[str, Tensor, Tensor]:
    """``(name, W, b)`` of the one classifier head among the tensors the backbone left: a ``(C, dim)`` weight
    with its ``(C,)`` bias."""
    heads = [k for k in left if k.endswith("weight") and tensors[k].ndim == 2 and tensors[k].shape[1] == dim
             and k[: -len("weight")] + "bias" in tensors]
    if len(heads) != 1:
        raise ConfigError(f"{where}: expected one classifier head (a C×{dim} weight with its bias) besides the "
                          f"backbone, found {len(heads)}: {heads[:4]}")
    name = heads[0][: -len(".weight")]
    return name, tensors[heads[0]], tensors[heads[0][: -len("weight")] + "bias"]


def classifier_from_tensors(cfg: ModelConfig, tensors: dict[str, Tensor], where: str = "weights"
                            ) -> tuple[Classifier, ModelConfig, str]:
    """Build ``cfg``'s architecture with a plain ("ce") head and load ``tensors`` into it: the backbone's own
    tensors (prefixes such as ``module.`` stripped, shapes checked) plus the one head found among the rest.

    Returns the model (eval mode), the config with the head's class count, and the head's name in ``tensors``."""
    cfg = replace(cfg, head="ce", num_classes=2)
    probe = build_model(cfg)
    tensors = renamed_for(probe.backbone, tensors)
    left = load_backbone_weights(probe.backbone, tensors, where)
    name, w, b = head_tensors(tensors, left, probe.fc.in_features, where)
    cfg = replace(cfg, num_classes=int(w.shape[0]))
    model = build_model(cfg)
    load_backbone_weights(model.backbone, tensors, where)
    with torch.no_grad():
        model.fc.weight.copy_(w)
        model.fc.bias.copy_(b)
    return model.eval(), cfg, name


__all__ = ["classifier_from_tensors", "head_tensors"]
