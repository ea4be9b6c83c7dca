"""The configurations saved in every run record: :class:`ModelConfig` (what to build) and :class:`TrainConfig`
(how it was trained), with the names they accept (architectures, heads, schedules, precisions).

The annotations are the schema a run record is validated against (:mod:`l2ood.record`): types and ranges are
checked before any tensor is allocated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from torch import nn

from ..errors import ConfigError
from ..schema import finite_list, one_of
from .densenet import densenet100
from .heads import HEAD_MODES
from .mobilenetv2 import mobilenetv2
from .resnet import resnet18, resnet34, resnet50
from .vgg import vgg16_bn
from .wideresnet import wrn28_10

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
# an imported network built by the user's code (l2ood.models.imported): factory:package.module:function
_FACTORY_NAME = re.compile(r"^factory:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def _known_arch(v: str) -> str:
    if v not in ARCHITECTURES and not _ADAPTER_NAME.match(v) and not (len(v) <= 512 and _FACTORY_NAME.match(v)):
        raise ValueError(f"unknown architecture '{v}'; known: {', '.join(ARCHITECTURES)}, timm:NAME / "
                         "torchvision:NAME for any backbone of those libraries, or factory:package.module:function "
                         "for an imported network")
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
    # imported networks (arch factory:...): the head layer's name in the user's module and the factory's JSON
    # keyword arguments (l2ood.models.imported)
    head_layer: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    factory_kwargs: Annotated[dict[Annotated[str, Field(max_length=128)], Any], Field(max_length=256)] | None = None

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
        for k in ("head_layer", "factory_kwargs"):  # imported networks only: other configs read as before
            if d[k] is None:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "image_size" in known:
            known["image_size"] = tuple(known["image_size"])  # type: ignore[arg-type]
        return cls(**known)  # type: ignore[arg-type]


SCHEDULES = ("cosine", "onecycle")
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")
DEFAULT_CHECKPOINT_STEPS = 500  # a crash loses at most this many training steps


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (saved in the run's JSON)."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: Annotated[int, Field(ge=1, le=100_000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 128
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.1
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 5e-4
    schedule: Annotated[str, one_of(*SCHEDULES)] = "cosine"
    warmup_epochs: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    pad: Annotated[int, Field(ge=0, le=1024)] = 2  # random-crop padding in pixels (4: the CIFAR standard for 32×32)
    hflip: bool | None = None  # None: use the data set's default
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    device: Annotated[str, Field(min_length=1, max_length=64)] = "auto"
    precision: Annotated[str, one_of(*PRECISION_NAMES)] = "auto"
    # also checkpoint every N steps inside an epoch, so that a crash (even a native one: SIGSEGV/SIGABRT, which no
    # handler survives) loses at most N steps; 0: at the end of each epoch only
    checkpoint_every_steps: Annotated[int, Field(ge=0)] = DEFAULT_CHECKPOINT_STEPS
    sync_bn: bool = False  # data-parallel only: BatchNorm statistics over the global batch
    compile: bool = False  # torch.compile the training forward/backward
    init_from: Annotated[str, Field(min_length=1, max_length=8192)] | None = None  # fine-tune: backbone weights
    pretrained: Annotated[str, Field(min_length=1, max_length=8192)] | None = None  # timm/torchvision weights file
    workers: Annotated[int, Field(ge=0, le=256)] | None = None  # streaming: DataLoader workers (None: CPUs, ≤ 8)
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. the bench recipe)

    def validate(self) -> None:
        """Check types and ranges (raises :class:`~l2ood.errors.ConfigError` naming each bad field)."""
        try:
            TypeAdapter(TrainConfig).validate_python(asdict(self))
        except ValidationError as e:
            raise ConfigError("training configuration: " + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                for err in e.errors())) from None
