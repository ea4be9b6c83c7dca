"""Models: the L2/CE classifier wrapper and the backbones, built from a JSON-able config."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from torch import nn

from ..errors import ConfigError
from ..schema import finite_list, one_of
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


ADAPTER_PREFIXES = ("timm:", "torchvision:")  # any backbone of those libraries: timm:NAME, torchvision:NAME
_ADAPTER_NAME = re.compile(r"^(timm|torchvision):[A-Za-z0-9_.\-]{1,128}$")


def _known_arch(v: str) -> str:
    if v not in ARCHITECTURES and not _ADAPTER_NAME.match(v):
        raise ValueError(f"unknown architecture '{v}'; known: {', '.join(ARCHITECTURES)}, or timm:NAME / "
                         "torchvision:NAME for any backbone of those libraries")
    return v


MAX_CLASSES = 1_000_000
MAX_WIDTH = 1024
MAX_IMAGE_SIDE = 4096


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (saved as JSON next to the safetensors weights).

    The annotations are the schema that a run record is validated against when it is loaded
    (:mod:`l2ood.record`): types and ranges are checked before any tensor is allocated."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    arch: Annotated[str, AfterValidator(_known_arch)] = "resnet18"
    width: Annotated[int, Field(ge=1, le=MAX_WIDTH)] = 64
    head: Annotated[str, one_of(*HEAD_MODES)] = "l2"
    num_classes: Annotated[int, Field(ge=1, le=MAX_CLASSES)] = 10
    in_channels: Annotated[int, one_of(1, 3)] = 3
    image_size: tuple[Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)],
                      Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]] = (32, 32)
    mean: Annotated[list[float], Field(min_length=1, max_length=3), AfterValidator(finite_list)] = field(
        default_factory=lambda: [0.0])
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=3),
                   AfterValidator(finite_list)] = field(default_factory=lambda: [1.0])
    class_names: Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=MAX_CLASSES)] | None = None
    tau: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None  # t2fnorm/logitnorm temperature

    def validate(self) -> None:
        """Check types and ranges (raises :class:`~l2ood.errors.ConfigError` naming each bad field)."""
        try:
            TypeAdapter(ModelConfig).validate_python(self.to_dict())
        except ValidationError as e:
            raise ConfigError("model configuration: " + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None

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
    try:
        _known_arch(cfg.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.head not in HEAD_MODES:
        raise ConfigError(f"unknown head '{cfg.head}'; known: {', '.join(HEAD_MODES)}")
    backbone: nn.Module
    if cfg.arch.startswith("timm:"):
        from .adapters import from_timm

        backbone = from_timm(cfg.arch[len("timm:"):], pretrained=False, in_channels=cfg.in_channels)
    elif cfg.arch.startswith("torchvision:"):
        from .adapters import from_torchvision

        if cfg.in_channels != 3:
            raise ConfigError(f"{cfg.arch}: torchvision backbones take RGB input (in_channels 3)")
        backbone = from_torchvision(cfg.arch[len("torchvision:"):])
    else:
        backbone = ARCHITECTURES[cfg.arch](width=cfg.width, in_channels=cfg.in_channels)
    return Classifier(backbone, backbone.feature_dim, cfg.num_classes, head=cfg.head,  # type: ignore[arg-type]
                      mean=cfg.mean, std=cfg.std, tau=cfg.tau)
