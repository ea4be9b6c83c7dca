"""A run folder's safety rules: unique temporary names, one writer at a time, no foreign file touched.

* **Temporary files** are named ``.l2ood-tmp-<name>.<pid>.<ns>`` (:func:`temp_path`), so two processes
  never share one, and cleaning up touches only these names.
* **One writer**: :func:`run_lock` takes an exclusive ``flock`` on ``RUN/.l2ood.lock`` for as long as a
  training or a record update runs, and writes the holder (pid, host, command, start time) into it.
  A second writer gets one message naming the holder. The kernel drops the lock when the holder dies
  (even by SIGKILL), so a crash never leaves a stale lock.
* **Ownership**: :func:`owned_files` lists the files l2ood writes into a run folder; :func:`foreign_files`
  everything else. Training refuses a folder holding foreign files or another run unless told to resume
  or overwrite, and overwriting deletes only owned files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import RunError

LOCK = ".l2ood.lock"
TMP_PREFIX = ".l2ood-tmp-"
OWNED_NAMES = frozenset({"model.json", "model.safetensors", "checkpoint.json", "train_log.jsonl", "track.jsonl",
                         LOCK})
OWNED_DIRS = frozenset({"track", "cache", "eval", "detectors"})
_OWNED_RE = re.compile(r"^(checkpoint-\d{9}\.safetensors|" + re.escape(TMP_PREFIX) + r".+)$")


def temp_path(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}")


def is_owned(name: str) -> bool:
    return name in OWNED_NAMES or name in OWNED_DIRS or bool(_OWNED_RE.match(name))


def foreign_files(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that l2ood does not write (sorted; empty for a missing folder)."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if not is_owned(p.name))


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "model.json").exists() or (run_dir / "checkpoint.json").exists()


def check_target(run_dir: Path, resume: bool = False, overwrite: bool = False) -> None:
    """Raise :class:`RunError` unless training may write into ``run_dir`` (see the module doc)."""
    run_dir = Path(run_dir)
    if holds_run(run_dir) and not resume and not overwrite:
        what = "a trained model" if (run_dir / "model.json").exists() else "an unfinished training"
        raise RunError(f"{run_dir} already holds {what}; pass --resume to continue it, --overwrite to replace it "
                       "(deletes only the files l2ood wrote there), or choose another --out")
    foreign = foreign_files(run_dir)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunError(f"{run_dir} holds files l2ood did not write ({shown}); choose an empty or new folder "
                       "(with --overwrite l2ood writes beside them and never touches them)")


def refuse_run_file(path: str | Path, inputs: list[str] | None = None) -> None:
    """Raise :class:`RunError` when an output file would overwrite a run's own file or an input."""
    p = Path(path)
    try:
        resolved = p.resolve()
    except OSError:
        return
    if is_owned(p.name) and p.name not in OWNED_DIRS and holds_run(resolved.parent):
        raise RunError(f"{path}: refusing to write output over a file of the run in {resolved.parent}")
    for i in inputs or []:
        try:
            if Path(i).resolve() == resolved:
                raise RunError(f"{path}: refusing to write output over an input file")
        except OSError:
            continue


def remove_owned(run_dir: Path) -> list[str]:
    """Delete the files l2ood wrote into ``run_dir`` (never anything else); returns what was removed."""
    import shutil

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


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}, since "
                f"{info.get('since', '?')})")
    except (OSError, ValueError):
        return "another process"


_HELD: set[int] = set()  # descriptors of the run locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (e.g. a DataLoader worker): close the copies of the parent's lock descriptors, so
    the lock dies with its holder — a worker outliving a killed trainer must not keep the folder locked."""
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str = "") -> Iterator[None]:
    """Hold the run folder's writer lock (creating the folder); :class:`RunError` when another process has it."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunError(f"{run_dir}: cannot write to the run folder ({e.strerror or e}); nothing was changed") from None
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir} is in use by {_holder(fd)}: one writer at a time; wait for it to finish "
                           "or stop it") from None
        locked = True
        _HELD.add(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "command": what or " ".join(sys.argv[:4]), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        if locked:
            _HELD.discard(fd)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock
