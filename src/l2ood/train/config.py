"""Training hyper-parameters: :class:`TrainConfig` (saved in every run record).

The annotations are the schema a run record is validated against (:mod:`l2ood.record`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import ConfigError
from ..schema import one_of

SCHEDULES = ("cosine", "onecycle")
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")
_Finite = Annotated[float, Field(allow_inf_nan=False)]


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
    checkpoint_every_steps: Annotated[int, Field(ge=0)] = 0  # 0: checkpoint at the end of each epoch only
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
