"""The package's layers, measured from its imports (read with Python's ``ast``; nothing is imported or run).

A *unit* is a sub-package (``data/``, ``detectors/``, ...) or a top-level module (``run.py``); every import
between two units is an arrow, including the imports made inside functions. A unit's *floor* is one more than
the highest floor it imports (the ground floor, 1, imports no other unit). ``LAYERS`` declares the intended
layers from the ground up; the rules checked are:

- every unit of the package is placed in exactly one layer (a new module must be placed before it lands);
- no import runs back up: a unit imports only units of its own layer or a lower one;
- no import circles, neither between units nor between modules.

    python scripts/layers.py            # the floor map (docs/ARCHITECTURE.md) and the result of the checks
    python scripts/layers.py --check    # the same, exit status 1 when a rule is broken

``tests/test_layers.py`` runs the checks on every test run, and checks that the map in docs/ARCHITECTURE.md is
the one printed here.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "l2ood"

#: the intended layers, from the ground up: (name, units, what they hold)
LAYERS: list[tuple[str, tuple[str, ...], str]] = [
    ("foundation", ("__init__.py", "errors.py", "provenance.py", "schema.py", "progress.py"),
     "the package's version | error types | version stamps | schema ids | progress output"),
    ("plumbing", ("runfolder.py", "runtime.py", "distributed.py", "extras.py", "jsonio.py"),
     "run-folder layout, locks, atomic writes | device and precision | ranks under torchrun | optional extras | "
     "strict JSON"),
    ("building blocks", ("data/", "models/", "metrics/", "detectors/", "selection.py", "results.py", "record.py"),
     "image sources | networks and configs | OoD metrics | 29 detectors | grid search | results.json | model.json"),
    ("training and reports", ("train/", "analysis/", "report/"),
     "training loop | neural-collapse tracking | tables, plots, review page, leaderboard"),
    ("evaluation core", ("run.py", "columns.py", "evaluation.py", "screen/", "pipeline.py", "importing.py"),
     "a run folder as one object | detector columns | columns x data sets -> metrics | calibrate and screen | "
     "train-then-evaluate | import a classifier into a run folder"),
    ("faces", ("bench/", "deploy/", "posthoc.py", "cli/", "__main__.py"),
     "benchmark matrix and OpenOOD protocols | HTTP service, ONNX export | PostHoc, the Python face for any "
     "classifier | command line"),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``src/l2ood/data/stream.py`` -> ``l2ood.data.stream``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str, package: Path = PACKAGE) -> str:
    """``l2ood.data.stream`` -> ``data/``; ``l2ood.run`` -> ``run.py``; ``l2ood`` -> ``__init__.py``."""
    parts = module.split(".")[1:]
    if not parts:
        return "__init__.py"
    if (package / parts[0]).is_dir():
        return parts[0] + "/"
    return parts[0] + ".py"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package modules that the module ``name`` (file ``path``) imports, anywhere in its body. ``from . import
    x`` names the submodule ``x`` where one exists, else the package."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import l2ood.data.stream.x`: the longest known prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> imported modules, unit -> imported units); a unit's imports of itself are left out."""
    mods = modules(package)
    known = set(mods)
    mg = {m: imports(p, m, known) for m, p in mods.items()}
    ug: dict[str, set[str]] = defaultdict(set)
    for m, deps in mg.items():
        u = unit_of(m, package)
        ug[u]  # a unit that imports nothing still has a floor
        for d in deps:
            if unit_of(d, package) != u:
                ug[u].add(unit_of(d, package))
    return mg, dict(ug)


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted: the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def floors(ug: dict[str, set[str]]) -> dict[str, int]:
    """Each unit's floor: 1 + the highest floor it imports (requires no circles)."""
    memo: dict[str, int] = {}

    def floor(u: str) -> int:
        if u not in memo:
            memo[u] = 1 + max((floor(d) for d in ug.get(u, ())), default=0)
        return memo[u]

    return {u: floor(u) for u in ug}


def layer_of(layers: list[tuple[str, tuple[str, ...], str]]) -> dict[str, int]:
    """unit -> index of its declared layer (0 = the ground)."""
    return {u: i for i, (_, units, _) in enumerate(layers) for u in units}


def problems(mg: dict[str, set[str]], ug: dict[str, set[str]],
             layers: list[tuple[str, tuple[str, ...], str]] = LAYERS, package: Path = PACKAGE) -> list[str]:
    """Every broken rule, one line each (empty when the structure holds)."""
    out: list[str] = []
    where = layer_of(layers)
    for u in sorted(set(ug) - set(where)):
        out.append(f"{u}: in no layer (place it in LAYERS, scripts/layers.py)")
    for u in sorted(set(where) - set(ug)):
        out.append(f"{u}: placed in LAYERS but not in the package")
    for u, deps in sorted(ug.items()):
        for d in sorted(deps):
            if u in where and d in where and where[d] > where[u]:
                who = sorted(m for m, ds in mg.items()
                             if unit_of(m, package) == u and any(unit_of(x, package) == d for x in ds))
                out.append(f"{u} ({layers[where[u]][0]}) imports {d} ({layers[where[d]][0]}), a layer above: "
                           f"{', '.join(who)}")
    for c in circles(ug):
        out.append("units import each other in a circle: " + " -> ".join(c))
    for c in circles(mg):
        out.append("modules import each other in a circle: " + " -> ".join(c))
    return out


def floor_map(ug: dict[str, set[str]]) -> list[str]:
    """The floor map, top floor first: ``floor N  unit unit ...`` (units sorted by name)."""
    fl = floors(ug)
    by: dict[int, list[str]] = defaultdict(list)
    for u, f in fl.items():
        by[f].append(u)
    return [f"floor {f:2d}  " + "  ".join(sorted(by[f])) for f in sorted(by, reverse=True)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit with status 1 when a rule is broken")
    args = ap.parse_args(argv)
    mg, ug = graph()
    bad = problems(mg, ug)
    if not circles(ug):
        print("Floors (measured: 1 + the highest floor a unit imports):")
        print("\n".join(floor_map(ug)))
        print()
    print("Layers (declared, from the ground up; a unit imports only its own layer or lower ones):")
    for i, (name, units, _) in enumerate(LAYERS, 1):
        print(f"{i}. {name}: {' '.join(units)}")
    arrows = sum(len(d) for d in ug.values())
    print(f"\n{len(ug)} units, {len(mg)} modules, {arrows} arrows between units, "
          f"{sum(len(d) for d in mg.values())} between modules")
    print("\n".join(bad) if bad else "no import runs back up a layer; no import circles")
    return 1 if bad and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
