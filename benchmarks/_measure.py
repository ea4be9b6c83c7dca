"""Shared by the detector benchmarks: the synthetic feature-shape arguments and a peak-RSS meter (Linux)."""

from __future__ import annotations

import argparse
import ctypes
import resource
from pathlib import Path


def add_shape_args(ap: argparse.ArgumentParser) -> None:
    """``--n-train/--n-test/--dim/--classes``: the shape of the synthetic features (defaults: CIFAR-10, ResNet18)."""
    ap.add_argument("--n-train", type=int, default=50_000)
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=10)


def status_kib(field: str) -> int:
    """One ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> int | None:
    """Hand freed heap back to the OS (glibc ``malloc_trim``, so reuse does not hide allocations), reset the
    peak-RSS counter (``5`` → /proc/self/clear_refs) and return the current RSS in KiB; None where unsupported."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return status_kib("VmRSS")
    except (OSError, KeyError):
        return None


def peak_extra_mib(base: int | None) -> float | None:
    """Peak RSS since :func:`reset_peak` returned ``base``, above ``base``, in MiB (None where unsupported)."""
    if base is None:
        return None
    try:
        return (status_kib("VmHWM") - base) / 1024
    except (OSError, KeyError):
        return None


def lifetime_peak_mib() -> float:
    """The process's lifetime peak RSS in MiB (the fallback where the counter cannot be reset)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
