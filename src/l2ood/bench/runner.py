"""``l2ood bench``: architecture × training variant × seed → every detector on every OoD set.

Each cell trains (or resumes) one model into ``OUT/<arch>/<variant>/seed<k>/``, evaluates all
requested detectors with one cached forward pass per data set, and writes
``OUT/cells/<arch>-<variant>-seed<k>.json`` (a results file, :mod:`l2ood.results`, whose ``bench`` entry keys
the cell by the hyper-parameters its numbers depend on). Finished cells are not recomputed (a cell is redone
only when detectors are missing from it); a cell, or a finished model, of other settings is refused. The
aggregate is ``OUT/results.csv`` (one row per cell × detector × OoD set) and ``OUT/results.md`` in OpenOOD's
layout (near/far AUROC and FPR@95, ID accuracy; mean ± std over seeds; group values are the means over the
group's data sets).

FPR@95 in both conventions (:mod:`l2ood.metrics.ood`): the markdown shows OpenOOD v1.5's first,
``FPR95 (OoD+, OpenOOD)`` (CSV column ``fpr95_ood_pos``: fraction of ID flagged when 95 % of OoD is flagged),
then l2ood's ``FPR95 (ID+)`` (CSV column ``fpr95``: fraction of OoD accepted when 95 % of ID is kept).
Cells written before ``fpr95_ood_pos`` existed have an empty ``fpr95_ood_pos`` and "-" in the table.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import jsonio
from ..data.source import ImageSource, open_images
from ..distributed import dist_from_env, ensure_group, on_main, rank_device
from ..errors import ConfigError
from ..evaluation import EvalResult, evaluate
from ..models import ARCHITECTURES, HEAD_MODES, ModelConfig, _known_arch
from ..pipeline import train_and_evaluate
from ..provenance import code_version, code_version_line
from ..record import read_record
from ..results import BenchCell, ResultsFile, read_results, write_results
from ..run import Run
from ..runfolder import META, atomic_write_bytes
from ..runtime import resolve_device
from ..train import TrainConfig
from .definitions import RECIPES, benchmark_specs, get_benchmark
from .openood import published_section


@dataclass
class BenchSpec:
    benchmark: str
    recipe: str
    archs: list[str]
    variants: list[str]
    seeds: list[int]
    detectors: list[str]
    out: Path
    data_root: str | None = None
    overrides: dict[str, Any] | None = None
    device: str = "auto"
    precision: str = "auto"
    n_ood: int | None = None
    n_id: int | None = None
    compile: bool = False
    progress: bool = True
    pretrained: str | None = None  # weights file: fine-tune from it, or (recipe "pretrained-*") evaluate it
    n_fit: int | None = None  # seeded subset of the training images for fitted detectors (post-hoc recipes)
    workers: int | None = None  # streamed benchmarks: DataLoader workers
    combined: list[str] = field(default_factory=list)  # combined columns "a,b": cross-fitted on the ID test halves

    def validate(self) -> None:
        """Check the matrix before anything is loaded or trained."""
        bad = []
        for a in self.archs:
            try:
                _known_arch(a)
            except ValueError:
                bad.append(a)
        if bad:
            raise ConfigError(f"unknown architecture(s) {', '.join(bad)}; known: {', '.join(ARCHITECTURES)}, "
                              "timm:NAME, torchvision:NAME")
        bad = [v for v in self.variants if v not in HEAD_MODES]
        if bad:
            raise ConfigError(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(HEAD_MODES)}")
        if not self.archs or not self.variants or not self.seeds:
            raise ConfigError("the matrix needs at least one architecture, variant and seed")


@dataclass
class _Plan:
    """Everything a bench run is made of, decided from its spec before any file is read or written: the merged
    recipe, the resolved data set specs (with their near/far group), and the cells with the key each is stored
    under."""

    bdef: dict[str, Any]
    recipe: dict[str, Any]
    wanted: list[str]
    size: tuple[int, int]
    train: str
    id_test: str
    ood: list[tuple[str, str]]  # (resolved spec, group)
    cells: list[tuple[str, int, str, BenchCell]]  # (arch, seed, variant, key); seed-major


def _plan(spec: BenchSpec) -> _Plan:
    bdef = get_benchmark(spec.benchmark)
    if spec.recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{spec.recipe}'; known: {', '.join(RECIPES)}")
    spec.validate()
    recipe = {**RECIPES[spec.recipe], **(spec.overrides or {})}
    if recipe.get("pretrained") and not spec.pretrained:
        raise ConfigError(f"recipe '{spec.recipe}' evaluates a pretrained classifier: pass --pretrained FILE")
    side = (spec.overrides or {}).get("size")
    size = (int(side), int(side)) if side else (int(bdef["size"][0]), int(bdef["size"][1]))
    wanted = [*spec.detectors, *(f"combine:{c}" for c in spec.combined)]
    hyper = {**recipe, "n_ood": spec.n_ood, "n_id": spec.n_id, "n_fit": spec.n_fit, "pretrained": spec.pretrained}
    if recipe.get("pretrained") and spec.pretrained and Path(spec.pretrained).is_dir():  # an imported run folder
        hyper["pretrained"] = f"{spec.pretrained}@{read_record(spec.pretrained).weights_sha256}"
    # seed-major: an interrupted matrix leaves every variant with the same finished seeds (paired comparisons)
    cells = [(a, seed, v, BenchCell(arch=a, variant=v, seed=seed, requested=wanted, groups={},
                                    benchmark=spec.benchmark, recipe=spec.recipe, hyper=hyper))
             for a in spec.archs for seed in spec.seeds for v in spec.variants]
    return _Plan(bdef, recipe, wanted, size, *benchmark_specs(bdef, spec.data_root), cells)


def run_bench(spec: BenchSpec, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Run (or resume) the whole matrix; returns the CSV and markdown paths."""
    plan = _plan(spec)
    main = _main_rank(spec)  # under torchrun every rank evaluates its shards; rank 0 alone writes and logs
    if not main:
        log = _quiet
    cells = spec.out / "cells"
    # each cell file read once: cells of other settings are refused before anything is loaded or written
    done = [_cell_done(cells / f"{a}-{v}-seed{seed}.json", key) for a, seed, v, key in plan.cells]
    if main:
        cells.mkdir(parents=True, exist_ok=True)
        jsonio.write(spec.out / "spec.json", {
            "benchmark": spec.benchmark, "definition": plan.bdef, "recipe": spec.recipe, "hyper": plan.recipe,
            "archs": spec.archs, "variants": spec.variants, "seeds": spec.seeds, "detectors": spec.detectors,
            "n_ood": spec.n_ood, "n_id": spec.n_id, "combined": spec.combined, "code_version": code_version()},
            indent=2)
    posthoc = bool(plan.recipe.get("pretrained"))
    path = "prefer-stream" if plan.bdef.get("stream") else "memory"  # streamed where the definition says so
    ch = int(plan.bdef["channels"])
    wanted = [(plan.train, "train", spec.n_fit if posthoc else None), (plan.id_test, "test", spec.n_id),
              *((nm, "test", spec.n_ood) for nm, _ in plan.ood)]
    train_set, id_test, *ood_sets = [
        open_images(name, split, root=spec.data_root, n=n, seed=0, channels=ch, size=plan.size, data_path=path)
        for name, split, n in wanted]
    groups = {ds.name: g for ds, (_, g) in zip(ood_sets, plan.ood, strict=True)}
    log(f"bench {spec.benchmark}: ID {train_set.name} ({len(train_set)} train / {len(id_test)} test), "
        f"OoD {', '.join(f'{d.name} ({groups[d.name]}, {len(d)})' for d in ood_sets)}")
    for (arch, seed, variant, key), finished in zip(plan.cells, done, strict=True):
        cell = cells / f"{arch}-{variant}-seed{seed}.json"
        key.groups = groups
        if finished:
            log(f"cell {arch}/{variant}/seed{seed}: done")
            continue
        run_dir = spec.out / arch / variant / f"seed{seed}"
        log(f"cell {arch}/{variant}/seed{seed}: " + ("evaluating" if (run_dir / META).is_file() else "training")
            + f", {len(spec.detectors)} detectors")
        if dist_from_env().active and not posthoc and not (run_dir / META).is_file():
            raise ConfigError(f"{run_dir}: under torchrun `l2ood bench` evaluates (post-hoc recipes, or cells already "
                              "trained); train this cell first, in one process or with `torchrun -m l2ood train`")
        if posthoc:
            r = _posthoc_cell(spec, arch, variant, int(plan.recipe["width"]), plan.size, train_set, id_test,
                              ood_sets, log)
        else:
            r = _train_cell(spec, plan, arch, variant, seed, run_dir, train_set, id_test, ood_sets, key, log)
        if main:
            write_results(cell, ResultsFile.new({cell.stem: r.results}, bench=key))
    return on_main(lambda: aggregate(spec.out)) or (spec.out / "results.csv", spec.out / "results.md")


def _quiet(_: str) -> None:
    """The log of the ranks other than 0 under torchrun."""


def _main_rank(spec: BenchSpec) -> bool:
    """Whether this process writes (rank 0, or the only process); under torchrun the process group is set up here
    (:mod:`l2ood.distributed`), on the device the cells compute on, so that every rank's writes wait for the same
    steps."""
    info = dist_from_env()
    if info.active:
        ensure_group(rank_device(resolve_device(spec.device)).type)
    return info.is_main


def _train_cell(spec: BenchSpec, plan: _Plan, arch: str, variant: str, seed: int, run_dir: Path,
                train_set: ImageSource, id_test: ImageSource, ood_sets: list[ImageSource], key: BenchCell,
                log: Callable[[str], None]) -> EvalResult:
    """Train (or resume, or keep) one cell's model, then evaluate it; its training time goes into ``key``."""
    recipe = plan.recipe
    mcfg = ModelConfig(arch=arch, width=int(recipe["width"]), head=variant)
    tcfg = TrainConfig(epochs=int(recipe["epochs"]), batch_size=int(recipe["batch_size"]),
                       lr=float(recipe["lr"]), weight_decay=float(recipe["weight_decay"]),
                       schedule=str(recipe["schedule"]), pad=int(recipe["pad"]), seed=seed,
                       device=spec.device, precision=spec.precision, compile=spec.compile,
                       pretrained=spec.pretrained, workers=spec.workers, extra={"recipe": spec.recipe})
    run, r = train_and_evaluate(train_set, mcfg, tcfg, run_dir, ood_sets=ood_sets, detectors=spec.detectors,
                                id_test=id_test, data_root=spec.data_root, test_data=plan.id_test,
                                progress=spec.progress, log=log, combined=spec.combined, samples=None)
    key.train_seconds = run.record.train_seconds or 0.0
    return r


def _cell_done(path: Path, key: BenchCell) -> bool:
    """Whether the cell file ``path`` holds every requested column, computed with ``key``'s hyper-parameters.
    A cell of other hyper-parameters is refused (never mixed into one table); a cell written before cells were
    keyed is trusted as before."""
    if not path.is_file():
        return False
    done = read_results(path)
    cell = done.bench
    if cell is None:
        raise ConfigError(f"{path}: not a bench cell")
    old, new = jsonio.clean(cell.hyper), jsonio.clean(key.hyper or {})
    if cell.hyper is not None and old != new:
        diff = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in sorted({*old, *new})
                         if old.get(k) != new.get(k))
        raise ConfigError(f"{path}: this cell was computed with other settings ({diff}); use another --out, or "
                          "the same recipe and overrides to resume")
    return set(key.requested) <= set(cell.requested)


def _posthoc_cell(spec: BenchSpec, arch: str, variant: str, width: int, size: tuple[int, int], fit_set: ImageSource,
                  id_test: ImageSource, ood_sets: list[ImageSource], log: Callable[[str], None]) -> EvalResult:
    """Evaluate a pretrained classifier (no training): detectors that need statistics are fitted on
    ``fit_set`` (the benchmark's training images, a seeded subset of ``--n-fit``)."""
    if variant != "ce":
        raise ConfigError(f"a pretrained classifier is evaluated as it was trained: use --variants ce (got {variant})")
    assert spec.pretrained is not None
    if Path(spec.pretrained).is_dir():  # a run folder written by `l2ood import` (or `l2ood train`)
        run = Run.load(spec.pretrained, device=spec.device, precision=spec.precision)
        what = f"{run.config.arch} imported in {spec.pretrained}"
    else:
        run = Run.from_pretrained(arch, spec.pretrained, width=width, image_size=size, device=spec.device,
                                  precision=spec.precision, fit=fit_set.view)
        what = f"{arch} from {spec.pretrained}"
    log(f"post-hoc: {what} ({run.config.num_classes} classes), detectors fitted on {len(fit_set)} training images")
    return evaluate(run, id_test, ood_sets, spec.detectors, fit_set=fit_set, progress=spec.progress,
                    batch_size=256, combined=spec.combined, combine_crossfit=bool(spec.combined))


def _nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else float(v)


#: AUROC points between the best and the worst seed beyond which a per-data-set result is flagged unstable
UNSTABLE = 10.0


def _fmt(v: list[float]) -> str:
    """``mean ± sample std [min–max]`` in %, or the single value."""
    a = 100 * np.asarray(v, dtype=float)
    if len(a) < 2:
        return f"{a.mean():.2f}"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f} [{a.min():.1f}–{a.max():.1f}]"


CSV_METRICS = ("auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out")


def aggregate(out: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` from the finished cells in ``out/cells``.

    CSV columns: arch, variant, seed, detector, ood, group, id_acc, then :data:`CSV_METRICS` (``fpr95``: ID
    positive; ``fpr95_ood_pos``: OoD positive, OpenOOD v1.5; empty where a cell predates it), any further
    metric a cell carries, l2ood, git_commit."""
    cells = [read_results(p) for p in sorted((out / "cells").glob("*.json"))]
    if not cells:
        raise ConfigError(f"{out}: no finished cells")
    spec = json.loads((out / "spec.json").read_text()) if (out / "spec.json").is_file() else {}
    rows = []
    for f in cells:
        c, res = f.bench, f.only
        if c is None:
            raise ConfigError(f"{out / 'cells'}: a file that is not a bench cell")
        cv = res.code_version
        for s, det, m in res.rows():
            rows.append({"arch": c.arch, "variant": c.variant, "seed": c.seed, "detector": det,
                         "ood": s, "group": c.groups.get(s, "?"), "id_acc": _nan_if_none(res.id_accuracy),
                         **m.model_dump(), "l2ood": cv.get("l2ood", "0.1.0"), "git_commit": cv.get("git_commit") or ""})
    csv_path = out / "results.csv"
    head = ["arch", "variant", "seed", "detector", "ood", "group", "id_acc", *CSV_METRICS]
    extra = sorted({k for r in rows for k in r} - {*head, "l2ood", "git_commit"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*head, *extra, "l2ood", "git_commit"], restval="", lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    # group means per (arch, variant, detector, seed), then mean ± std over seeds
    per: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seeds_by: dict[tuple[str, str, str], dict[int, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in rows:
        k = (r["arch"], r["variant"], r["detector"])
        seeds_by[k][r["seed"]][f"{r['group']}_auroc"].append(r["auroc"])
        seeds_by[k][r["seed"]][f"{r['group']}_fpr95"].append(r["fpr95"])
        if r.get("fpr95_ood_pos") is not None:  # cells written before it existed lack it
            seeds_by[k][r["seed"]][f"{r['group']}_fpr95_ood_pos"].append(r["fpr95_ood_pos"])
        seeds_by[k][r["seed"]]["id_acc"] = [r["id_acc"]]
    for k, by_seed in seeds_by.items():
        for _seed, vals in by_seed.items():
            for name, v in vals.items():
                per[k][name].append(float(np.mean(v)))
    versions = {f"l2ood {r['l2ood']}" + (f" (git {r['git_commit'][:10]})" if r["git_commit"] else "") for r in rows}
    groups = sorted({r["group"] for r in rows}, key=lambda g: {"near": 0, "far": 1}.get(g, 2))
    header = ["arch", "variant", "detector", *[f"{g} AUROC" for g in groups],
              *[f"{g} FPR95 (OoD+, OpenOOD)" for g in groups], *[f"{g} FPR95 (ID+)" for g in groups], "ID acc", "seeds"]
    note = (spec.get("definition") or {}).get("note")
    lines = [f"# l2ood bench: {spec.get('benchmark', '?')} ({spec.get('recipe', '?')})", "",
             *([f"Benchmark: {note}", ""] if note else []),
             f"Hyper-parameters: `{json.dumps(spec.get('hyper', {}))}`", "",
             f"Code: cells by {', '.join(sorted(versions))}; aggregated by {code_version_line()}.", "",
             "Mean ± std [min–max] over seeds (sample std; min and max of the per-seed values); group columns "
             "average the per-data-set metrics of the "
             "group (OpenOOD v1.5 convention). AUROC / FPR@95TPR / accuracy in %. "
             "**FPR95 (OoD+, OpenOOD)**: OpenOOD v1.5's FPR@95 (OoD positive) — the fraction of ID test images "
             "flagged when the threshold flags 95 % of the OoD images; compare these with OpenOOD's tables "
             "(CSV column `fpr95_ood_pos`). **FPR95 (ID+)**: l2ood's FPR@95 (ID positive) — the fraction of OoD "
             "images accepted when the threshold keeps 95 % of the ID test images (CSV column `fpr95`).", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (arch, variant, det), vals in sorted(per.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        cellv = [_fmt(vals.get(f"{g}_auroc", [])) if vals.get(f"{g}_auroc") else "-" for g in groups]
        cellv += [_fmt(vals[f"{g}_fpr95_ood_pos"]) if vals.get(f"{g}_fpr95_ood_pos") else "-" for g in groups]
        cellv += [_fmt(vals.get(f"{g}_fpr95", [])) if vals.get(f"{g}_fpr95") else "-" for g in groups]
        lines.append(f"| {arch} | {variant} | {det} | " + " | ".join(cellv)
                     + f" | {_fmt(vals['id_acc'])} | {len(vals['id_acc'])} |")
    # OpenOOD v1.5's published numbers beside ours, for the openood-* benchmarks only (l2ood.bench.openood)
    lines += published_section(str(spec.get("benchmark", "")), per)
    sets = sorted({(r["group"], r["ood"]) for r in rows}, key=lambda t: ({"near": 0, "far": 1}.get(t[0], 2), t[1]))
    lines += ["", f"Per data set (AUROC %, mean over seeds [min–max]; ⚠ marks a range over {UNSTABLE:.0f} points):",
              "", "| arch | variant | detector | " + " | ".join(f"{s} ({g})" for g, s in sets) + " |",
              "|" + "---|" * (3 + len(sets))]
    by_ds: dict[tuple[str, str, str], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by_ds[(r["arch"], r["variant"], r["detector"])][r["ood"]][int(r["seed"])] = r["auroc"]
    unstable: list[str] = []
    by_set: dict[str, int] = defaultdict(int)

    def cell(key: tuple[str, str, str], s: str) -> str:
        v = by_ds[key].get(s)
        if not v:
            return "-"
        a = 100 * np.asarray(list(v.values()))
        if len(a) < 2:
            return f"{a.mean():.2f}"
        flag = a.max() - a.min() > UNSTABLE
        if flag:
            by_set[s] += 1
            unstable.append(f"- {' / '.join(key)} on {s}: " + ", ".join(f"seed {k}: {100 * x:.1f}"
                                                                      for k, x in sorted(v.items())))
        return f"{a.mean():.2f} [{a.min():.1f}–{a.max():.1f}]" + (" ⚠" if flag else "")

    for key in sorted(by_ds, key=lambda k: (k[0], k[1])):
        lines.append(f"| {' | '.join(key)} | " + " | ".join(cell(key, s) for _, s in sets) + " |")
    n_seeds = len({r["seed"] for r in rows})
    if n_seeds > 1:
        lines += ["", f"Unstable results (AUROC range over {UNSTABLE:.0f} points between seeds), every seed's value:",
                  "", *(unstable or ["- none"])]
        if by_set:
            lines += ["", "Flagged cells per OoD set: " + ", ".join(f"{k} {v}" for k, v in
                                                                    sorted(by_set.items(), key=lambda kv: -kv[1]))
                      + ". A group mean containing such a set moves with it: check the per-seed values before "
                        "drawing a conclusion from it."]
    md_path = out / "results.md"
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return csv_path, md_path
