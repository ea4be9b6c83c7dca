"""Pickle-free, atomic checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is two files in the run folder:

* ``checkpoint-<step>.safetensors``: model state (``model.*``) and optimizer momentum buffers
  (``optim.<param index>.momentum_buffer``);
* ``checkpoint.json``: the commit record (config, epoch, step, optimizer hyper-parameters, history,
  and the name of the safetensors file).

Both are written atomically (:func:`l2ood.runfolder.atomic_write_bytes`: a temporary name, fsync, then
``os.replace``, atomic on POSIX);
the JSON is written last, so a kill at any moment leaves the previous checkpoint intact and
readable. Random state needs no saving: every random draw of training is a pure function of
``(seed, epoch, step)`` (see :mod:`l2ood.train.trainer`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_file
from torch import nn

from .. import jsonio
from ..errors import RunError
from ..runfolder import (
    CHECKPOINT,
    CHECKPOINT_TENSORS_GLOB,
    CHECKPOINT_TENSORS_PATTERN,
    atomic_save_safetensors,
    atomic_write_json,
    checkpoint_tensors,
    is_checkpoint_tensors,
)


def save_checkpoint(run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    record: dict[str, Any]) -> Path:
    """Write a checkpoint atomically and delete older checkpoint tensor files."""
    run_dir = Path(run_dir)
    step = int(record["global_step"])
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for idx, st in opt_state["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = val
    name = checkpoint_tensors(step)
    atomic_save_safetensors(run_dir / name, tensors)
    groups = [{k: v for k, v in g.items()} for g in opt_state["param_groups"]]
    atomic_write_json(run_dir / CHECKPOINT, {**record, "tensors": name, "optimizer_param_groups": groups})
    for old in run_dir.glob(CHECKPOINT_TENSORS_GLOB):
        if old.name != name and is_checkpoint_tensors(old.name):  # ours only
            old.unlink(missing_ok=True)
    return run_dir / name


MAX_RECORD_BYTES = 256 * 1024 * 1024
_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _ParamGroup(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    params: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1_000_000)]
    lr: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    momentum: _Finite = 0.0
    weight_decay: _Finite = 0.0


class CheckpointRecord(BaseModel):
    """The schema of ``checkpoint.json`` (validated before any tensor is read)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: dict[str, Any]
    train: dict[str, Any]
    epoch: Annotated[int, Field(ge=0, le=10_000_000)]
    step_in_epoch: Annotated[int, Field(ge=0, le=10**12)]
    global_step: Annotated[int, Field(ge=0, le=10**15)]
    history: Annotated[list[dict[str, Any]], Field(max_length=10_000_000)] = []
    tensors: Annotated[str, Field(pattern=CHECKPOINT_TENSORS_PATTERN)]
    optimizer_param_groups: Annotated[list[_ParamGroup], Field(min_length=1, max_length=10_000)]


def read_checkpoint_record(run_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``checkpoint.json`` (size-checked, strict JSON); raises :class:`RunError`."""
    path = Path(run_dir) / CHECKPOINT
    try:
        obj = jsonio.read_strict(path, MAX_RECORD_BYTES, "checkpoint record",
                                 hint="; delete the checkpoint files to start over")
    except FileNotFoundError:
        raise RunError(f"no checkpoint in {run_dir} (missing {CHECKPOINT})") from None
    try:
        CheckpointRecord.model_validate(obj, strict=False)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(map(str, er['loc'])) or '(top level)'}: {er['msg']}" for er in e.errors()[:10])
        raise RunError(f"{path}: invalid checkpoint record: {errs}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: a checkpoint record is a JSON object")
    return obj


def load_checkpoint(run_dir: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore model (and optimizer) from the committed checkpoint; returns the JSON record."""
    run_dir = Path(run_dir)
    record = read_checkpoint_record(run_dir)
    where = run_dir / record["tensors"]
    try:
        tensors = load_file(str(where))
    except Exception as e:  # missing file, malformed header: safetensors raises several types
        raise RunError(f"{where}: cannot read the checkpoint tensors ({e})") from None
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        if optimizer is not None:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, idx, key = k.split(".", 2)
                    state.setdefault(int(idx), {})[key] = v
            optimizer.load_state_dict({"state": state, "param_groups": record["optimizer_param_groups"]})
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise RunError(f"{where}: the checkpoint does not fit this model/optimizer ({str(e)[:300]})") from None
    return record
