"""Pickle-free, atomic checkpoints: tensors in safetensors, everything else in JSON.

A checkpoint is two files in the run folder:

* ``checkpoint-<step>.safetensors``: model state (``model.*``) and optimizer momentum buffers
  (``optim.<param index>.momentum_buffer``);
* ``checkpoint.json``: the commit record (config, epoch, step, optimizer hyper-parameters, history,
  and the name of the safetensors file).

Both are written to a temporary name, fsynced, then renamed (``os.replace`` is atomic on POSIX);
the JSON is written last, so a kill at any moment leaves the previous checkpoint intact and
readable. Random state needs no saving: every random draw of training is a pure function of
``(seed, epoch, step)`` (see :mod:`l2ood.train.trainer`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .runfolder import temp_path

RECORD = "checkpoint.json"


def _fsync_write(path: Path, data: bytes) -> None:
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write failed (e.g. a full disk)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file + fsync + rename)."""
    _fsync_write(Path(path), json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode())


def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> None:
    """Save tensors atomically as safetensors (contiguous CPU copies)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    name = f"checkpoint-{step:09d}.safetensors"
    atomic_save_safetensors(run_dir / name, tensors)
    groups = [{k: v for k, v in g.items()} for g in opt_state["param_groups"]]
    atomic_write_json(run_dir / RECORD, {**record, "tensors": name, "optimizer_param_groups": groups})
    for old in run_dir.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return run_dir / name


def load_checkpoint(run_dir: str | Path, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Restore model (and optimizer) from the committed checkpoint; returns the JSON record."""
    run_dir = Path(run_dir)
    rec_path = run_dir / RECORD
    if not rec_path.is_file():
        raise FileNotFoundError(f"no checkpoint in {run_dir} (missing {RECORD})")
    record = json.loads(rec_path.read_text())
    tensors = load_file(str(run_dir / record["tensors"]))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, key = k.split(".", 2)
                state.setdefault(int(idx), {})[key] = v
        optimizer.load_state_dict({"state": state, "param_groups": record["optimizer_param_groups"]})
    return record
