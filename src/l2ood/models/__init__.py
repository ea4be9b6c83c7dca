"""Models: the L2/CE classifier wrapper and the backbones, built from a JSON-able config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn

from .classifier import Classifier, Output
from .densenet import densenet100
from .heads import DEFAULT_TAU, HEAD_MODES, HeadMode, head_logits, is_normalized
from .mobilenetv2 import mobilenetv2
from .resnet import ResNet, resnet18, resnet34, resnet50
from .vgg import vgg16_bn
from .wideresnet import wrn28_10

__all__ = ["ARCHITECTURES", "DEFAULT_TAU", "HEAD_MODES", "Classifier", "HeadMode", "ModelConfig", "Output",
           "ResNet", "build_model", "densenet100", "head_logits", "is_normalized", "mobilenetv2", "resnet18",
           "resnet34", "resnet50", "vgg16_bn", "wrn28_10"]

# One source of truth for architecture names: name -> factory(width, in_channels) -> backbone.
# All are CIFAR-style (32×32 input) backbones returning pooled features (N, .feature_dim); width=64
# is the standard network of each family. Adapters for timm/torchvision backbones: models.adapters.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "wrn28_10": wrn28_10,
    "densenet100": densenet100,
    "vgg16_bn": vgg16_bn,
    "mobilenetv2": mobilenetv2,
}


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
