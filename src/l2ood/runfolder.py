"""The run folder: its layout, and the safety rules of every write into it.

Layout (the names below are the only spelling of them in l2ood)::

    RUN/
      model.json                     META: the run record (written by l2ood.record only)
      model.safetensors              WEIGHTS: the trained weights
      checkpoint.json                CHECKPOINT: the commit record of the resumable training state
      checkpoint-<step>.safetensors  checkpoint_tensors(step): its tensors
      train_log.jsonl                TRAIN_LOG: one line per epoch
      track.jsonl, track/            TRACK_LOG, TRACK_DIR: training dynamics (l2ood.analysis.track)
      cache/                         CACHE_DIR: cached features (l2ood.run)
      eval/                          EVAL_DIR: evaluation results
      detectors/                     DETECTOR_DIR: fitted detectors, fitted_file(key)
      .l2ood.lock                    LOCK: the writer lock

Safety rules:

* **Temporary files** are named ``.l2ood-tmp-<name>.<pid>.<ns>`` (:func:`temp_path`), so two processes
  never share one, and cleaning up touches only these names.
* **Atomic writes** (:func:`atomic_write_bytes` and the JSON/safetensors writers on top of it): a temporary
  name beside the target, fsync, then ``os.replace`` (atomic on POSIX); a failed write leaves the previous
  file intact and no temporary file.
* **One writer**: :func:`run_lock` takes an exclusive ``flock`` on ``RUN/.l2ood.lock`` for as long as a
  training or a record update runs, and writes the holder (pid, host, command, start time) into it.
  A second writer gets one message naming the holder. The kernel drops the lock when the holder dies
  (even by SIGKILL), so a crash never leaves a stale lock.
* **Ownership**: :func:`is_owned` tells the names l2ood writes into a run folder; :func:`foreign_files`
  lists everything else. Training refuses a folder holding foreign files or another run unless told to resume
  or overwrite, and overwriting deletes only owned files.

This module imports only the standard library and :mod:`l2ood.errors` (and, when it saves safetensors, torch
and safetensors), so every layer of l2ood can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import RunError

if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------------------------ layout

META = "model.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.json"
TRAIN_LOG = "train_log.jsonl"
TRACK_LOG = "track.jsonl"
LOCK = ".l2ood.lock"
CACHE_DIR = "cache"
EVAL_DIR = "eval"
DETECTOR_DIR = "detectors"
TRACK_DIR = "track"
TMP_PREFIX = ".l2ood-tmp-"
CHECKPOINT_TENSORS_PATTERN = r"^checkpoint-\d{9}\.safetensors$"
CHECKPOINT_TENSORS_GLOB = "checkpoint-*.safetensors"

OWNED_NAMES = frozenset({META, WEIGHTS, CHECKPOINT, TRAIN_LOG, TRACK_LOG, LOCK})
OWNED_DIRS = frozenset({TRACK_DIR, CACHE_DIR, EVAL_DIR, DETECTOR_DIR})
_CHECKPOINT_TENSORS_RE = re.compile(CHECKPOINT_TENSORS_PATTERN)
_OWNED_RE = re.compile(r"^(" + CHECKPOINT_TENSORS_PATTERN[1:-1] + "|" + re.escape(TMP_PREFIX) + r".+)$")


def checkpoint_tensors(step: int) -> str:
    """The name of the tensor file of the checkpoint at global ``step`` (``checkpoint-000000042.safetensors``)."""
    return f"checkpoint-{step:09d}.safetensors"


def is_checkpoint_tensors(name: str) -> bool:
    """Whether ``name`` is a checkpoint tensor file name (:func:`checkpoint_tensors`)."""
    return bool(_CHECKPOINT_TENSORS_RE.match(name))


def fitted_file(key: str) -> str:
    """The run-relative file of a fitted detector: ``detectors/<key>.safetensors`` with ``:`` → ``.``
    (``knn`` → ``detectors/knn.safetensors``, ``vim:raw`` → ``detectors/vim.raw.safetensors``).

    >>> fitted_file("vim:raw")
    'detectors/vim.raw.safetensors'
    """
    return f"{DETECTOR_DIR}/{key.replace(':', '.')}.safetensors"


def temp_path(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}")


# ------------------------------------------------------------------------------------------------ atomic writes

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` atomically: a unique temporary name beside ``path``, fsync, rename."""
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
    """Write JSON atomically (temp file + fsync + rename); a value JSON cannot hold leaves the file untouched."""
    atomic_write_bytes(Path(path), json.dumps(obj, indent=2, sort_keys=True, allow_nan=False).encode())


def atomic_save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor],
                            metadata: dict[str, str] | None = None) -> None:
    """Save tensors atomically as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save as st_save

    # serialized in memory, written with plain file I/O: a full or read-only disk is an OSError
    # (safetensors' own writer reports it as its own exception type)
    data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(Path(path), data)


# ------------------------------------------------------------------------------------------------ ownership

def is_owned(name: str) -> bool:
    """Whether ``name`` (a file or folder directly in a run folder) is one l2ood writes."""
    return name in OWNED_NAMES or name in OWNED_DIRS or bool(_OWNED_RE.match(name))


def foreign_files(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that l2ood does not write (sorted; empty for a missing folder)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if not is_owned(p.name))


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a trained model or an unfinished training."""
    return (run_dir / META).exists() or (run_dir / CHECKPOINT).exists()


def check_target(run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Raise :class:`RunError` unless training may write into ``run_dir`` (see the module doc)."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not resume and not overwrite:
        what = "a trained model" if (run_dir / META).exists() else "an unfinished training"
        raise RunError(f"{run_dir} already holds {what}; pass --resume to continue it, --overwrite to replace it "
                       "(deletes only the files l2ood wrote there), or choose another --out")
    foreign = foreign_files(run_dir)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunError(f"{run_dir} holds files l2ood did not write ({shown}); choose an empty or new folder "
                       "(with --overwrite l2ood writes beside them and never touches them)")


def _resolve(path: str | Path) -> Path | None:
    """``path`` made absolute with every symbolic link followed (a dangling link's target too); ``None`` when that
    fails (a link loop: writing there fails anyway)."""
    try:
        return Path(os.path.realpath(Path(path).expanduser()))
    except (OSError, RuntimeError, ValueError):
        return None


def _file_key(path: str | Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def run_file_owner(path: str | Path) -> Path | None:
    """The run folder of which ``path`` (resolved) is one of the files l2ood writes, else ``None``.

    That is an owned name directly in a folder holding a run (:func:`is_owned`: ``model.json``, ``model.safetensors``,
    ``checkpoint*.json``/``.safetensors``, logs, the lock, temporary files, and the names of its folders), or
    anything under its ``detectors/``, ``track/`` or ``cache/`` folders. ``eval/`` is where ``evaluate`` writes its
    report, so files there are not the run's own."""
    resolved = _resolve(path)
    if resolved is None:
        return None
    for folder in resolved.parents:
        try:
            if not holds_run(folder):
                continue
        except OSError:
            continue
        first, *rest = resolved.relative_to(folder).parts
        if (not rest and is_owned(first)) or (rest and first in OWNED_DIRS and first != EVAL_DIR):
            return folder
    return None


def _reads(name: str, folder_reads: frozenset[str] | None) -> bool:
    return folder_reads is None or os.path.splitext(name)[1].lower() in folder_reads


def _files_under(folder: Path, target: tuple[int, int], folder_reads: frozenset[str] | None) -> Path | None:
    """The first path below ``folder`` (symbolic links followed, each folder walked once) that is the file
    ``target`` ``(st_dev, st_ino)`` under a name the command reads (:func:`_reads`), or ``None``."""
    seen: set[tuple[int, int]] = set()
    stack = [folder]
    while stack:
        d = stack.pop()
        key = _file_key(d)
        if key is None or key in seen:
            continue
        seen.add(key)
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            full = Path(d) / e.name
            try:
                if e.is_dir(follow_symlinks=True):
                    stack.append(full)
                    continue
                # a plain entry's inode comes with the listing; only links (and inode matches) cost a stat
                if not _reads(e.name, folder_reads):
                    continue
                if (e.is_symlink() or e.inode() == target[1]) and _file_key(full) == target:
                    return full
            except OSError:
                continue
    return None


def refuse_run_file(path: str | Path, inputs: list[str] | None = None, *,
                    folder_reads: frozenset[str] | None = None) -> None:
    """Raise :class:`RunError` when writing the output file ``path`` would overwrite a run's own file or an input.

    ``path`` is resolved first (symbolic links followed), so a link, a ``..`` or a hard link changes nothing.
    Refused:

    * a file of a run folder (:func:`run_file_owner`), whatever the command;
    * one of ``inputs`` (files or folders the command reads): the same file (by ``(st_dev, st_ino)``), or a file
      the command reads in an input folder — one inside it, or one found below it through a symbolic or hard link
      — whose name's suffix (lower case) is in ``folder_reads`` (every file there when ``None``). Other files in
      an input folder (``photos/screen.csv`` when screening ``photos/``) may be written.
    """
    resolved = _resolve(path)
    if resolved is None:
        return
    owner = run_file_owner(path)
    if owner is not None:
        raise RunError(f"{path}: refusing to write output over a file of the run in {owner} "
                       f"({resolved.relative_to(owner)}); choose another output path")
    target = _file_key(resolved)
    for i in inputs or []:
        src = _resolve(i)
        if src is None:
            continue
        if src == resolved or (target is not None and _file_key(src) == target):
            raise RunError(f"{path}: refusing to write output over an input file ({i}); choose another output path")
        if not os.path.isdir(src):
            continue
        if src in resolved.parents:
            if _reads(resolved.name, folder_reads):
                raise RunError(f"{path}: refusing to write output into the input folder {i}: the command reads "
                               f"{'that file' if target is not None else 'such files'} there; choose another output "
                               "path")
            continue
        hit = _files_under(src, target, folder_reads) if target is not None else None
        if hit is not None:
            raise RunError(f"{path}: refusing to write output over an input file ({hit}, in the input folder {i}); "
                           "choose another output path")


def refuse_output_files(folder: str | Path, names: list[str], inputs: list[str] | None = None) -> None:
    """:func:`refuse_run_file` for each file ``folder/NAME`` a command writes into an output folder."""
    for name in names:
        refuse_run_file(Path(folder) / name, inputs)


def remove_owned(run_dir: Path) -> list[str]:
    """Delete the files l2ood wrote into ``run_dir`` (never anything else); returns what was removed."""
    removed = []
    for p in sorted(run_dir.iterdir()):
        if p.name == LOCK or not is_owned(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def clean_temp(run_dir: Path) -> None:
    """Remove temporary files left by an interrupted write (call while holding :func:`run_lock`)."""
    for p in run_dir.glob(f"{TMP_PREFIX}*"):
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ the lock

def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}, since "
                f"{info.get('since', '?')})")
    except (OSError, ValueError):
        return "another process"


_HELD: set[int] = set()  # descriptors of the run locks this process holds
_DEPTH: dict[tuple[int, str], int] = {}  # (thread, resolved run folder) → nested blocks under a shared holder


try:  # POSIX: an advisory lock that dies with its holder
    import fcntl as _fcntl
except ImportError:  # Windows: a byte-range lock on the lock file (not exercised by l2ood's tests, which run on POSIX)
    _fcntl = None  # type: ignore[assignment]


def _try_lock(fd: int) -> None:
    """Take the exclusive lock on ``fd`` without waiting; :class:`BlockingIOError` when another process holds it."""
    if _fcntl is not None:
        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
        return
    import msvcrt

    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        raise BlockingIOError(str(e)) from None


def _write_at_start(fd: int, data: bytes) -> None:
    if hasattr(os, "pwrite"):
        os.pwrite(fd, data, 0)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)


def _drop_inherited_locks() -> None:
    """In a forked child (e.g. a DataLoader worker): close the copies of the parent's lock descriptors, so
    the lock dies with its holder — a worker outliving a killed trainer must not keep the folder locked."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()
    _DEPTH.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str = "", wait: float = 0.0, shared: bool = False) -> Iterator[None]:
    """Hold the run folder's writer lock (creating the folder); :class:`RunError` when another process has it
    (after waiting up to ``wait`` seconds for it). A holder that passes ``shared=True`` lets blocks nested in it in
    the same thread (e.g. the record update that ends a fit) run under its lock; any other writer — another
    thread, process, or a nested block under a holder that did not share — is refused."""
    run_dir = Path(run_dir)
    key = (threading.get_ident(), str(run_dir.resolve()))
    if _DEPTH.get(key):
        _DEPTH[key] += 1
        try:
            yield
        finally:
            _DEPTH[key] -= 1
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunError(f"{run_dir}: cannot write to the run folder ({e.strerror or e}); nothing was changed") from None
    locked = False
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                _try_lock(fd)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunError(f"{run_dir} is in use by {_holder(fd)}: one writer at a time; wait for it to "
                                   "finish or stop it") from None
                time.sleep(0.05)
        locked = True
        _HELD.add(fd)
        if shared:
            _DEPTH[key] = 1
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": what or " ".join(sys.argv[:4]), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            _write_at_start(fd, json.dumps(info).encode())
        yield
    finally:
        if locked:
            _HELD.discard(fd)
            _DEPTH.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock
