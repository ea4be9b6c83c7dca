"""Which code produced a result: package version, git commit, torch and Python versions.

Every run record and every results file (``results.json``, bench ``results.csv``/``results.md``,
``analysis.json``) carries :func:`code_version`, so a number can always be traced to the code that
made it. The git commit is read only when the package is imported from a git work tree (a checkout
installed with ``pip install -e``); ``dirty`` says whether tracked files differed from that commit.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from . import __version__


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout the package was imported from, or ``(None, None)``."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=5, check=False)
        if top.returncode != 0 or not (here.is_relative_to(Path(top.stdout.strip()).resolve())):
            return None, None
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
        if head.returncode != 0:
            return None, None
        st = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10, check=False)
        return head.stdout.strip(), (bool(st.stdout.strip()) if st.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return None, None


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where present), with the core generation of AMD CPUs whose model name
    does not give it (e.g. ``AMD EPYC (Zen 4)`` in a VM), the core count and whether it has AVX-512-BF16 (bf16
    speeds l2ood up)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown CPU"
    fields: dict[str, str] = {}
    for ln in info.splitlines():  # the first processor's fields
        key, sep, value = ln.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    name = fields.get("model name", platform.machine())
    try:
        core = amd_core(int(fields["cpu family"]), int(fields["model"])) if "AMD" in name else None
    except (KeyError, ValueError):
        core = None
    if core and "Zen" not in name:
        name = f"{name} ({core})"
    return f"{name}, {os.cpu_count()} cores{', AVX-512-BF16' if 'avx512_bf16' in info else ''}"


def amd_core(family: int, model: int) -> str | None:
    """The Zen generation of an AMD CPU from its ``cpu family`` and ``model`` numbers (/proc/cpuinfo), or None."""
    if family == 0x17:
        return "Zen 2" if model >= 0x30 else "Zen"
    if family == 0x19:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "Zen 3"
    if family == 0x1A:
        return "Zen 5"
    return None


def code_version() -> dict[str, Any]:
    """``{"l2ood", "git_commit", "git_dirty", "torch", "python"}`` of the running code."""
    commit, dirty = git_commit()
    return {"l2ood": __version__, "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
            "python": platform.python_version()}


def code_version_line() -> str:
    """One line for markdown reports, e.g. ``l2ood 0.2.0 (git 1a2b3c4d), torch 2.13.0, Python 3.11.7``."""
    v = code_version()
    git = f" (git {v['git_commit'][:10]}{', modified' if v['git_dirty'] else ''})" if v["git_commit"] else ""
    return f"l2ood {v['l2ood']}{git}, torch {v['torch']}, Python {v['python']}"
