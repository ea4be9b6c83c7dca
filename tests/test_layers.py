"""The package's structure, checked on every test run (scripts/layers.py): every unit placed in a declared layer,
no import back up a layer, no import circles (imports inside functions included), and the floor map in
docs/ARCHITECTURE.md equal to the one measured from the code. The checker itself is tested on small packages
written to a temporary folder, so a check that could not fail would be caught."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("l2ood_layers", ROOT / "scripts" / "layers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["l2ood_layers"] = mod
    spec.loader.exec_module(mod)
    return mod


layers = _load()


def _package(tmp: Path, files: dict[str, str]) -> Path:
    pkg = tmp / "src" / "l2ood"
    for rel, text in files.items():
        f = pkg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return pkg


LOW_HIGH = [("low", ("errors.py", "data/"), ""), ("high", ("run.py", "__init__.py"), "")]


def test_the_package_keeps_its_layers() -> None:
    mg, ug = layers.graph()
    assert layers.problems(mg, ug) == []
    # every unit of the package is placed, and the measured floors respect the declared order
    where = layers.layer_of(layers.LAYERS)
    assert set(where) == set(ug)
    fl = layers.floors(ug)
    for u, deps in ug.items():
        for d in deps:
            assert fl[d] < fl[u] and where[d] <= where[u], (u, d)


def test_the_data_registry_source_and_stream_import_downward_only() -> None:
    """The circle data/__init__ -> source -> stream -> data/__init__ (made by imports inside functions) is gone:
    source imports the registry, the registry and the stream import the spec helpers, nobody imports the
    package's face from inside."""
    mg, _ = layers.graph()
    assert "l2ood.data" not in mg["l2ood.data.source"] | mg["l2ood.data.stream"] | mg["l2ood.data.registry"]
    assert "l2ood.data.registry" in mg["l2ood.data.source"]
    assert "l2ood.data.specs" in mg["l2ood.data.stream"]
    assert "l2ood.data.source" not in mg["l2ood.data.registry"]


def test_an_import_back_up_a_layer_is_found_even_inside_a_function(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "def f():\n    from .run import Run\n    return Run\n",
        "data/__init__.py": "from ..errors import f\n",
        "run.py": "from .data import f\nclass Run: ...\n",
    })
    mg, ug = layers.graph(pkg)
    assert mg["l2ood.errors"] == {"l2ood.run"} and ug["run.py"] == {"data/"}
    found = layers.problems(mg, ug, LOW_HIGH, pkg)
    assert "errors.py (low) imports run.py (high), a layer above: l2ood.errors" in found
    assert any(p.startswith("units import each other in a circle") for p in found)


def test_a_circle_inside_a_unit_and_an_unplaced_unit_are_found(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "from .a import x\n",
        "data/a.py": "x = 1\ndef g():\n    from . import x as y\n    return y\n",
        "run.py": "from . import data\n",
        "extra.py": "from .errors import *\n",
    })
    mg, ug = layers.graph(pkg)
    found = layers.problems(mg, ug, LOW_HIGH, pkg)
    assert "modules import each other in a circle: l2ood.data -> l2ood.data.a" in found
    assert "extra.py: in no layer (place it in LAYERS, scripts/layers.py)" in found
    assert not any("a layer above" in p for p in found)


def test_relative_and_absolute_imports_resolve_to_modules(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "data/__init__.py": "",
        "data/b.py": "import l2ood.errors\nfrom .. import errors\nfrom . import c\nimport os\n",
        "data/c.py": "from l2ood.data.b import nothing_here\n",
    })
    mg, _ = layers.graph(pkg)
    assert mg["l2ood.data.b"] == {"l2ood.errors", "l2ood.data.c"}
    assert mg["l2ood.data.c"] == {"l2ood.data.b"}
    assert layers.circles(mg) == [["l2ood.data.b", "l2ood.data.c"]]


def test_floors_are_one_above_the_highest_import() -> None:
    g = {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": {"a"}}
    assert layers.floors(g) == {"a": 1, "b": 2, "c": 3, "d": 2}


def test_the_map_in_the_architecture_page_is_the_measured_one() -> None:
    _, ug = layers.graph()
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = re.search(r"```text\n(floor .*?)\n```", page, re.S)
    assert block is not None, "docs/ARCHITECTURE.md: the ```text block with the floor map is missing"
    shown = [re.sub(r"\s+", " ", ln.split("#")[0]).strip() for ln in block.group(1).splitlines()]
    measured = [re.sub(r"\s+", " ", ln).strip() for ln in layers.floor_map(ug)]
    assert shown == measured, "regenerate the map: python scripts/layers.py"


@pytest.mark.parametrize("argv,rc", [([], 0), (["--check"], 0)])
def test_the_script_runs(argv: list[str], rc: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert layers.main(argv) == rc
    out = capsys.readouterr().out
    assert "no import runs back up a layer; no import circles" in out
    assert "floor  1" in out
