"""Progress: a bar only on a terminal, plain periodic lines (no carriage returns) in logs."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from l2ood.progress import LineProgress, interval_s, progress


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_prints_one_line_per_interval() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(range(100), desc="epoch 1/2", unit="step", file=out, interval=30.0, clock=clock)
    for i, _ in enumerate(bar):
        clock.t = i * 1.0  # one step per second: 100 s in all
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # lines at t = 30, 60, 90 s plus a closing line (the loop ended after the last one)
    assert len(lines) == 4, lines
    assert lines[0].startswith("epoch 1/2: 31/100 step (31 %)")
    assert lines[-1].startswith("epoch 1/2: 100/100 step (100 %)")


def test_line_progress_is_silent_for_short_work() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(total=10, desc="screen", unit="img", file=out, interval=30.0, clock=clock)
    for _ in range(10):
        clock.t += 0.5
        bar.update(1)
    bar.set_postfix(loss="0.1")
    bar.close()
    assert out.getvalue() == ""
    assert bar.n == 10


def test_line_progress_rate_and_postfix() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = LineProgress(total=None, desc="screen", unit="img", file=out, interval=10.0, clock=clock)
    bar.set_postfix(acc="0.900")
    clock.t = 20.0
    bar.update(400)
    assert out.getvalue().strip() == "screen: 400 img, 20.0 img/s, 20 s, acc=0.900"


def test_disabled_progress_prints_nothing_and_still_iterates(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(progress(range(5), desc="x", enabled=False)) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""


def test_interval_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L2OOD_PROGRESS_INTERVAL", "5")
    assert interval_s() == 5.0
    monkeypatch.setenv("L2OOD_PROGRESS_INTERVAL", "soon")
    assert interval_s() == 30.0
    monkeypatch.delenv("L2OOD_PROGRESS_INTERVAL")
    assert interval_s() == 30.0


def test_not_a_terminal_gives_plain_lines_not_tqdm() -> None:
    """In a subprocess whose stderr is a pipe (a log), progress() is a LineProgress; with interval 0 every update
    is one line and none holds a carriage return."""
    code = ("from l2ood.progress import progress, LineProgress\n"
            "b = progress(range(3), desc='work', unit='it')\n"
            "assert isinstance(b, LineProgress), type(b)\n"
            "list(b)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"L2OOD_PROGRESS_INTERVAL": "0", "PATH": "", **_pyenv()}, check=True)
    lines = r.stderr.splitlines()
    assert [ln.split(" it")[0] for ln in lines[:3]] == ["work: 1/3", "work: 2/3", "work: 3/3"]
    assert "\r" not in r.stderr


def _pyenv() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "VIRTUAL_ENV", "SYSTEMROOT")}
