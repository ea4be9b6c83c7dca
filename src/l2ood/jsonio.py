"""Standard JSON out: every results file l2ood writes is strict JSON (RFC 8259).

Python's ``json`` writes ``NaN``/``Infinity`` tokens that other parsers reject. :func:`clean` maps every
non-finite float to ``null`` (and NumPy scalars/arrays to plain values); :func:`dumps` then refuses
anything that would still not be standard JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .runfolder import atomic_write_bytes


def clean(obj: Any) -> Any:
    """A copy of ``obj`` with non-finite floats as ``None`` and NumPy values as Python values.

    >>> clean({"auroc": float("nan"), "scores": [1.5, float("inf")], "n": np.int64(3)})
    {'auroc': None, 'scores': [1.5, None], 'n': 3}
    """
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def _refuse_constant(token: str) -> float:
    raise ValueError(f"non-standard JSON token {token}")


def read_strict(path: Path, max_bytes: int, what: str, hint: str = "") -> Any:
    """Parse a JSON file strictly: the size is checked before reading, only regular files are read, the text
    must be UTF-8 and may not hold ``NaN``/``Infinity`` tokens. Every problem is a :class:`~l2ood.errors.RunError`
    naming the file (``hint`` is appended to the invalid-JSON message); a missing file raises
    ``FileNotFoundError`` so the caller can word it."""
    from .errors import RunError

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    except OSError as e:
        raise RunError(f"{path}: cannot read: {e.strerror or e}") from None
    if not path.is_file():
        raise RunError(f"{path}: not a regular file")
    if size > max_bytes:
        raise RunError(f"{path}: {size} bytes is larger than any {what} (limit {max_bytes})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise RunError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise RunError(f"{path}: not valid JSON ({e}){hint}") from None


def dumps(obj: Any, **kw: Any) -> str:
    """``json.dumps`` of :func:`clean` (``obj``) with ``allow_nan=False``."""
    return json.dumps(clean(obj), allow_nan=False, **kw)


def write(path: str | Path, obj: Any, **kw: Any) -> Path:
    """Write :func:`dumps` (``obj``) to ``path`` (indent 1 unless given), atomically
    (:func:`l2ood.runfolder.atomic_write_bytes`: a failed write leaves the previous file intact)."""
    kw.setdefault("indent", 1)
    text = dumps(obj, **kw) + "\n"
    atomic_write_bytes(Path(path), text.encode("utf-8"))
    return Path(path)
