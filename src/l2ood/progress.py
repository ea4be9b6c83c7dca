"""Progress reporting: a tqdm bar on a terminal, plain periodic log lines anywhere else.

Written to a file or a CI log, a tqdm bar prints every update as a carriage-return line (thousands of lines for one
training). :func:`progress` therefore returns a tqdm bar only when stderr is a terminal; otherwise a
:class:`LineProgress` that prints one line (``desc: n/total unit, rate, elapsed``) at most every
``L2OOD_PROGRESS_INTERVAL`` seconds (default 30; 0 = a line on every update) and one when it ends, if it ran for
at least one interval. Both have the same interface: iterate, ``update(n)``, ``set_postfix(**kw)``, ``close()``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

INTERVAL_ENV = "L2OOD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between two plain progress lines: ``$L2OOD_PROGRESS_INTERVAL`` (default 30)."""
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        v = float(raw) if raw.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        v = DEFAULT_INTERVAL_S
    return max(0.0, v)


class LineProgress:
    """A progress report for logs: one plain line every :func:`interval_s` seconds, no carriage returns."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", disable: bool = False, file: TextIO | None = None,
                 interval: float | None = None, clock: Any = time.monotonic) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.file = file
        self.interval = interval_s() if interval is None else interval
        self.clock = clock
        self.n = 0
        self.postfix = ""
        self.lines = 0
        self._t0 = clock()
        self._last = self._t0
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._emit(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        now = self.clock()
        if self.lines and self.n and now > self._last:  # a final line only when lines were printed before
            self._emit(now)

    def format(self, now: float) -> str:
        """``desc: n/total unit (pct %), rate unit/s, elapsed s[, postfix]``."""
        el = now - self._t0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        rate = f", {self.n / el:.1f} {self.unit}/s" if el > 0 else ""
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc or 'progress'}: {done} {self.unit}{pct}{rate}, {el:.0f} s{post}"

    def _emit(self, now: float) -> None:
        self._last = now
        if self.disable:
            return
        print(self.format(now), file=self.file or sys.stderr, flush=True)
        self.lines += 1


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr, where progress goes) is an interactive terminal."""
    s = stream or sys.stderr
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool | None = True, leave: bool = True) -> Any:
    """A progress report over ``iterable`` (or updated by hand): a tqdm bar when stderr is a terminal, else a
    :class:`LineProgress`. ``enabled=False`` shows nothing; ``None`` shows it only on a terminal."""
    if enabled is False:
        return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=True)
    if on_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
    if enabled is None:
        return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=True)
    return LineProgress(iterable, total=total, desc=desc, unit=unit)
