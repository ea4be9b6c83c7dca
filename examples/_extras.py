"""Stop an example with one clear message when a package it needs is missing (standard library only)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def need(extra: str | None, *modules: str, pip: str | None = None) -> None:
    """Exit with status 2 and one line naming the install command if ``l2ood`` or one of ``modules`` is missing.

    ``extra``: the l2ood extra that provides ``modules`` (None: l2ood alone); ``pip``: the command to suggest
    when it is not ``pip install 'l2ood[EXTRA]'``."""
    missing = []
    for m in ("l2ood", *modules):
        try:
            found = importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(m)
    if missing:
        cmd = pip or (f"pip install 'l2ood[{extra}]'" if extra else "pip install l2ood")
        what = f"the '{extra}' extra" if extra else "l2ood"
        print(f"{Path(sys.argv[0]).name} needs {what} ({', '.join(missing)} not installed): {cmd}", file=sys.stderr)
        raise SystemExit(2)
