"""Models: the L2/CE classifier wrapper and the backbones, built from a JSON-able config."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

from .classifier import Classifier, Output
from .heads import DEFAULT_TAU, HEAD_MODES, HeadMode, head_logits, is_normalized
from .resnet import ResNet, resnet18

__all__ = ["ARCHITECTURES", "DEFAULT_TAU", "HEAD_MODES", "Classifier", "HeadMode", "ModelConfig", "Output",
           "ResNet", "build_model", "head_logits", "is_normalized", "resnet18"]

# One source of truth for architecture names: name -> factory(width, in_channels) -> backbone.
ARCHITECTURES = {"resnet18": resnet18}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (saved as JSON next to the safetensors weights)."""

    arch: str = "resnet18"
    width: int = 64
    head: str = "l2"
    num_classes: int = 10
    in_channels: int = 3
    image_size: tuple[int, int] = (32, 32)
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    class_names: list[str] | None = None
    tau: float | None = None  # temperature of t2fnorm / logitnorm heads (None: the paper default)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "image_size" in known:
            known["image_size"] = tuple(known["image_size"])  # type: ignore[arg-type]
        return cls(**known)  # type: ignore[arg-type]


def build_model(cfg: ModelConfig) -> Classifier:
    """Build the classifier described by ``cfg`` (random initialization)."""
    if cfg.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{cfg.arch}'; known: {', '.join(ARCHITECTURES)}")
    if cfg.head not in HEAD_MODES:
        raise ValueError(f"unknown head '{cfg.head}'; known: {', '.join(HEAD_MODES)}")
    backbone: nn.Module = ARCHITECTURES[cfg.arch](width=cfg.width, in_channels=cfg.in_channels)
    return Classifier(backbone, backbone.feature_dim, cfg.num_classes, head=cfg.head,  # type: ignore[arg-type]
                      mean=cfg.mean, std=cfg.std, tau=cfg.tau)
