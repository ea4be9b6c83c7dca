"""The weights of a run: ``model.safetensors`` (tensors only, never pickle).

The record beside them (``model.json``) is read and written by :mod:`l2ood.record` only. Loading
accepts only this pair. Pickle-based files (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``, ``.bin``) are
refused: unpickling an untrusted file can run arbitrary code.

Before a model is allocated, the parameter count that its configuration implies (built on PyTorch's
``meta`` device, no memory) is checked against the tensor shapes in the safetensors header, so a
record that describes a huge model cannot make l2ood allocate it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import ConfigError, RunError
from ..models import Classifier, ModelConfig, build_model
from ..runfolder import META, WEIGHTS, atomic_save_safetensors

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")

ArtifactError = RunError  # the 0.1.0 name


def refuse_pickle(path: str | Path) -> None:
    """Raise :class:`RunError` for pickle-based weight files (they can execute code when loaded)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise RunError(
            f"{path}: refusing to load a pickle-based file ({path.suffix}). Unpickling can execute "
            "arbitrary code. l2ood loads only model.safetensors + model.json; convert trusted "
            "weights with safetensors.torch.save_file.")


def save_weights(run_dir: str | Path, model: Classifier) -> Path:
    """Save the weights atomically as ``RUN/model.safetensors``.

    The header holds one metadata key: safetensors does not keep the order of several, and equal
    weights must give equal files (the run record stores their SHA-256)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(run_dir / WEIGHTS, dict(model.state_dict()), metadata={"format": "l2ood"})
    return run_dir / WEIGHTS


def load_weights(run_dir: str | Path, cfg: ModelConfig, *, trust_code: bool | None = None) -> Classifier:
    """Build the model of ``cfg`` and load ``RUN/model.safetensors`` into it (checked shapes first).

    A run imported from code is rebuilt only when that code is trusted (see :func:`l2ood.models.build_model`)."""
    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        raise RunError(f"{path}: missing (a run folder holds {WEIGHTS} and {META})")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for malformed headers
        raise RunError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        with torch.device("meta"):
            skeleton = build_model(cfg, trust_code=trust_code)
    except ConfigError as e:
        raise RunError(f"{path.parent / META}: {e}") from None
    except Exception as e:
        raise RunError(f"{path.parent / META}: cannot build the model it describes ({e})") from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if expected != shapes:
        missing = sorted(set(expected) - set(shapes))[:3]
        extra = sorted(set(shapes) - set(expected))[:3]
        wrong = [k for k in expected if k in shapes and expected[k] != shapes[k]][:3]
        raise RunError(f"{path}: the weights do not fit the model in {META} ("
                       + "; ".join(x for x in (f"missing {missing}" if missing else "",
                                               f"unexpected {extra}" if extra else "",
                                               f"other shapes for {wrong}" if wrong else "") if x) + ")")
    model = build_model(cfg, trust_code=trust_code)
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise RunError(f"{path}: cannot load weights ({e})") from None
    return model.eval()
