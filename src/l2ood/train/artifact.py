"""The trained-model artifact: ``model.safetensors`` (weights) + ``model.json`` (config, metadata).

Loading accepts only this pair. Pickle-based files (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``, ``.bin``)
are refused: unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from ..models import Classifier, ModelConfig, build_model
from .checkpoint import atomic_save_safetensors, atomic_write_json

WEIGHTS = "model.safetensors"
META = "model.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


class ArtifactError(Exception):
    """A run folder or model file that cannot be loaded safely (message says why)."""


def save_artifact(run_dir: str | Path, model: Classifier, cfg: ModelConfig,
                  extra: dict[str, Any] | None = None) -> None:
    """Save weights (safetensors) and config/metadata (JSON) atomically into ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(run_dir / WEIGHTS, dict(model.state_dict()),
                            metadata={"format": "l2ood", "head": cfg.head})
    atomic_write_json(run_dir / META, {"model": cfg.to_dict(), **(extra or {})})


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """The JSON metadata of an artifact."""
    return json.loads((Path(run_dir) / META).read_text())


def update_meta(run_dir: str | Path, **fields: Any) -> None:
    """Merge ``fields`` into the artifact's JSON (atomically)."""
    meta = read_meta(run_dir)
    meta.update(fields)
    atomic_write_json(Path(run_dir) / META, meta)


def load_artifact(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Load a model from a run folder (or its ``model.safetensors``); returns (model, metadata)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ArtifactError(
            f"{path}: refusing to load a pickle-based file ({path.suffix}). Unpickling can execute "
            "arbitrary code. l2ood loads only model.safetensors + model.json; convert trusted "
            "weights with safetensors.torch.save_file."
        )
    run_dir = path.parent if path.is_file() else path
    if not run_dir.exists():
        raise ArtifactError(f"{run_dir}: no such run folder")
    if not (run_dir / WEIGHTS).is_file() or not (run_dir / META).is_file():
        raise ArtifactError(
            f"{run_dir}: not a trained l2ood model (need {WEIGHTS} and {META}; "
            "train one with `l2ood train`)"
        )
    meta = read_meta(run_dir)
    cfg = ModelConfig.from_dict(meta["model"])
    model = build_model(cfg)
    try:
        model.load_state_dict(load_file(str(run_dir / WEIGHTS)))
    except Exception as e:  # safetensors raises several types for bad files
        raise ArtifactError(f"{run_dir / WEIGHTS}: cannot load weights ({e})") from e
    model.eval()
    return model, meta
