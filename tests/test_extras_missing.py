"""Optional parts without their extra: one clear message naming `pip install 'l2ood[EXTRA]'`, never a traceback.

Each case runs in a fresh interpreter in which the optional packages are made unimportable
(``sys.modules[name] = None``), as on a machine where the extra was never installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _run_without(blocked: list[str], code: str, cwd: Path, argv0: str = "-c") -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked)
    prelude += f"sys.argv[0] = {argv0!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(("script", "blocked", "expect"), [
    ("serve_and_query.py", ["httpx"], "pip install 'l2ood[serve]' httpx"),
    ("serve_and_query.py", ["fastapi", "uvicorn"], "pip install 'l2ood[serve]' httpx"),
    ("posthoc_own_model.py", ["l2ood"], "pip install l2ood"),
    ("calibrate_and_screen.py", ["l2ood"], "pip install l2ood"),
    ("train_l2_on_folder.py", ["l2ood"], "pip install l2ood"),
    ("screen_own_classifier.py", ["l2ood"], "pip install l2ood"),
    ("onnx_screen_client.py", ["onnxruntime"], "pip install 'l2ood[export]'"),
])
def test_example_without_its_extra_says_what_to_install(script: str, blocked: list[str], expect: str) -> None:
    code = (f"sys.path.insert(0, {str(EXAMPLES)!r})\nimport runpy\n"
            f"runpy.run_path({str(EXAMPLES / script)!r}, run_name='__main__')\n")
    r = _run_without(blocked, code, EXAMPLES, argv0=script)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert expect in lines[0] and script.removesuffix(".py") in lines[0]
    assert all(m in lines[0] for m in blocked if m != "fastapi") or blocked == ["fastapi", "uvicorn"]


def test_every_example_states_its_extra() -> None:
    for f in sorted(EXAMPLES.glob("[!_]*.py")):
        doc = f.read_text().split('"""')[1]
        assert "Extra:" in doc, f"{f.name} does not say which extra it needs"
    table = (EXAMPLES / "README.md").read_text()
    for f in sorted(EXAMPLES.glob("[!_]*.py")):
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| `{f.name}`"))
        assert row.split(" | ")[1].strip(), f"examples/README.md: no extra for {f.name}"


def test_demo_without_scikit_image_names_the_demo_extra(tmp_path: Path) -> None:
    code = ("from l2ood.cli.main import main\n"
            "raise SystemExit(main(['demo', '--dataset', 'fashion-mnist', '--ood', 'textures', '--out', 'd']))\n")
    r = _run_without(["skimage"], code, tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    # the missing extra is found before any data is loaded or any model trained
    assert "pip install 'l2ood[demo]'" in r.stderr and "scikit-image" in r.stderr


def test_report_without_matplotlib_has_tables_and_says_why(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(90) % 3
    imgs = np.clip(rng.normal(60 + 70 * labels[:, None, None], 20, (90, 12, 12)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "pack.npz", images=imgs, labels=labels)
    code = ("from l2ood.cli.main import main\n"
            "raise SystemExit(main(['demo', '--dataset', 'npz:pack.npz', '--ood', 'noise', '--epochs', '1', "
            "'--width', '2', '--holdout', '20', '--out', 'd', '--no-progress', '--precision', 'fp32']))\n")
    r = _run_without(["matplotlib"], code, tmp_path)
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "d" / "report.md").read_text()
    assert "feature_norm" in report  # the results table is there
    assert "pip install 'l2ood[report]'" in report and not list((tmp_path / "d").glob("*.png"))
    r = _run_without(["matplotlib"], "from l2ood.cli.main import main\nraise SystemExit(main(['analyze', 'd']))\n",
                     tmp_path)
    assert r.returncode == 2 and "pip install 'l2ood[report]'" in r.stderr and "Traceback" not in r.stderr


def test_l2ood_imports_without_fcntl(tmp_path: Path) -> None:
    """Outside POSIX (no fcntl) the CLI imports, and the run-folder lock still excludes a second writer (here
    through a stand-in for Windows' msvcrt built on flock)."""
    code = ("import types, subprocess, fcntl as real\n"
            "sys.modules['fcntl'] = None\n"
            "import l2ood.cli.main, l2ood.runfolder as rf\n"
            "assert rf._fcntl is None\n"
            # only the lock imports msvcrt (lazily): a stand-in now would make the standard library think it is on
            # Windows
            "ms = types.ModuleType('msvcrt'); ms.LK_NBLCK = 2\n"
            "def locking(fd, mode, n):\n"
            "    try: real.flock(fd, real.LOCK_EX | real.LOCK_NB)\n"
            "    except BlockingIOError as e: raise OSError(36, 'locked') from e\n"
            "ms.locking = locking; sys.modules['msvcrt'] = ms\n"
            "with rf.run_lock('run', what='first'):\n"
            "    other = subprocess.run([sys.executable, '-c', "
            "'import l2ood.runfolder as rf\\ntry:\\n    rf.run_lock(\"run\").__enter__()\\nexcept rf.RunError as e:\\n"
            "    print(\"refused:\", e)'], capture_output=True, text=True)\n"
            "    print(other.stdout.strip())\n")
    r = _run_without([], code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "first" in r.stdout
