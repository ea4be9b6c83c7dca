"""``l2ood leaderboard``: one method × benchmark table from many results files, over seeds.

**Inputs** are typed results only (:func:`l2ood.results.read_results`, schema ``l2ood.results/1``; files of
l2ood 0.2 are upgraded by the reader, anything else is refused with its message). Each path is

* a ``results.json`` (or any results file: a bench cell ``OUT/cells/*.json``, ``l2ood evaluate --out``'s), or
* a ``l2ood bench --out`` folder: its finished cells ``OUT/cells/*.json`` (never the copies in the cells' run
  folders), or
* a folder holding ``results.json`` (``l2ood evaluate --out``, ``l2ood demo --out``), else ``eval/results.json``
  (a run folder evaluated by ``l2ood evaluate``, ``demo`` or ``bench``).

Folders are not searched further. Every evaluated model of every file is one **result**; a file named twice, or
the same evaluation reached twice (a demo folder and its run folders), counts once.

**Rows** (methods): the model variant (``head``: ``ce``, ``l2``, ``logitnorm``, ``t2fnorm``) × the reported
column (a detector with its logit variant, ``energy:raw``, or a combination, ``bonferroni(feature_norm,knn)``),
plus the architecture (``model.arch``) when the table holds more than one.

**Benchmarks and groups.** A bench cell belongs to its benchmark (``bench.benchmark``; the ID data set for cells
written before it was recorded) and groups its OoD sets as the cell records (``bench.groups``: ``near`` / ``far``).
A result without groups (``l2ood evaluate``, ``demo``, a run's ``eval/``) belongs to the benchmark named by its
ID data set (``"<ID> (per set)"`` should a bench benchmark of the same name be in the table) and each of its
OoD sets is a group of its own (its own columns). Near/far are never invented for them.

**Statistics.** For each result, a group value is the unweighted mean (:func:`statistics.mean`) of the metric over
the group's data sets, as OpenOOD v1.5 reports near/far (Zhang et al., "OpenOOD v1.5: Enhanced Benchmark for
Out-of-Distribution Detection", 2023); a result lacking the metric on one of the group's sets gives no value for
that group (files written before ``fpr95_ood_pos`` existed give no OpenOOD FPR). A cell shows
``mean ± s`` over its results with the sample standard deviation
``s = sqrt(Σ (x_i - x̄)² / (n - 1))`` (:func:`statistics.stdev`; none for n = 1) and n. Seeds come from the
records: ``bench.seed`` for bench cells, else the training seed (``train.seed``; a model l2ood did not train
records 0); ``?`` where a record holds none.

**FPR@95** in both conventions (:mod:`l2ood.metrics.ood`), always labelled: ``FPR95 (OoD+, OpenOOD)`` is
``fpr95_ood_pos`` (OoD positive, OpenOOD v1.5: the fraction of ID flagged when 95 % of OoD is flagged);
``FPR95 (ID+, l2ood)`` is ``fpr95`` (ID positive: the fraction of OoD accepted when 95 % of ID is kept).

**Mean rank** (Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 2006): in every
benchmark group (benchmark × near/far, or × data set for results without groups) the methods with a mean AUROC
there are ranked by it, 1 = highest. Ties: methods whose means are exactly equal share the average of the
positions they span (fractional ranking: 1, 2.5, 2.5, 4). Missing cells: a method without an AUROC in a group is
not ranked there; its mean rank is the mean over the groups where it is ranked and shows ``(k/K)`` when that is
fewer than the table's K groups; ``--sort rank`` puts methods ranked in every group first.

**Settings.** The results pooled in one cell (one method on one benchmark) must share their settings: the model
configuration (without class names and the input mean/std, which are measured on each model's training images),
the training configuration (without seed, device, precision, checkpoint cadence, compile, sync-BN, workers; weight
paths by file name), the bench recipe, ``n_fit`` and pretrained weights, the column's hyper-parameters (without
chunk and batch sizes; selected ones by their search space and validation data instead) and the data (ID set and
size, each group's OoD sets and sizes). Within a benchmark group every method must have been evaluated on the same
data. A setting an older file does not record is not compared. Two different results of one seed with the same
settings are always refused (pass one). Anything else that differs is refused with one message naming the cell,
the setting, its values and their files, unless ``allow_mixed``: then the results are pooled and the cells (and
group columns) are marked ``‡`` with a note.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..results import BenchCell, ResultsRecord, read_results
from ..runfolder import EVAL_DIR

RESULTS = "results.json"
METRICS = ("auroc", "fpr95_ood_pos", "fpr95")
LABELS = {"auroc": "AUROC", "fpr95_ood_pos": "FPR95 (OoD+, OpenOOD)", "fpr95": "FPR95 (ID+, l2ood)"}
#: ``--fpr`` choice → the FPR@95 metrics the markdown shows
FPR_CHOICES: dict[str, tuple[str, ...]] = {"openood": ("fpr95_ood_pos",), "l2ood": ("fpr95",),
                                            "both": ("fpr95_ood_pos", "fpr95")}
GROUP_ORDER = ("near", "far")
MIXED = "‡"
_MODEL_IGNORED = frozenset({"class_names", "mean", "std"})  # names; input statistics measured on the training images
_TRAIN_IGNORED = frozenset({"seed", "device", "precision", "checkpoint_every_steps", "sync_bn", "compile", "workers"})
_PATH_KEYS = frozenset({"init_from", "pretrained"})
_PERF_KEYS = frozenset({"chunk_size", "query_chunk", "bank_chunk", "fit_chunk", "batch_size"})


@dataclass(frozen=True, order=True)
class Method:
    """A row: architecture, model variant (head) and reported column."""

    arch: str
    head: str
    detector: str

    def label(self, with_arch: bool = False) -> str:
        """``head / detector`` (``arch / head / detector`` with ``with_arch``)."""
        return " / ".join((self.arch, self.head, self.detector) if with_arch else (self.head, self.detector))


@dataclass(frozen=True)
class Stat:
    """One number over the results of a cell: its per-result values, their mean and sample std."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        """:func:`statistics.mean` (exact: the same values give the same mean whatever their order)."""
        return float(statistics.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (:func:`statistics.stdev`, n - 1); ``None`` for a single value."""
        return float(statistics.stdev(self.values)) if len(self.values) > 1 else None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the table and its groups (group → data sets, in column order)."""

    name: str
    groups: dict[str, tuple[str, ...]]
    grouped: bool  # True: the groups the bench cells record; False: one group per OoD set


@dataclass(frozen=True)
class Cell:
    """One method on one benchmark: its results' seeds, ``(group, metric)`` → :class:`Stat`, ID accuracy, the
    settings that differ among its results (only with ``allow_mixed``) and the files they came from."""

    method: Method
    benchmark: str
    seeds: tuple[int | None, ...]
    stats: dict[tuple[str, str], Stat]
    id_accuracy: Stat | None
    mixed: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def stat(self, group: str, metric: str = "auroc") -> Stat | None:
        return self.stats.get((group, metric))


@dataclass(frozen=True)
class Rank:
    """A method's mean rank over the benchmark groups where it has an AUROC (``ranked`` of ``total``)."""

    mean: float | None
    ranked: int
    total: int
    per_group: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.ranked == self.total


@dataclass(frozen=True)
class _Obs:
    """One result (one evaluated model) seen through one column."""

    source: str
    seed: int | None
    method: Method
    benchmark: str
    grouped: bool
    sets: dict[str, tuple[str, ...]]  # group -> OoD sets
    values: dict[tuple[str, str], float]
    settings: dict[str, str]
    data: dict[str, dict[str, str]]  # group -> data identity
    id_accuracy: float | None


@dataclass(frozen=True)
class _Result:
    """One evaluated model of one results file."""

    source: str
    record: ResultsRecord
    bench: BenchCell | None
    seed: int | None
    bench_name: str
    grouped: bool
    groups: dict[str, list[str]]  # group -> OoD sets of this record


def fractional_ranks(values: Mapping[Any, float]) -> dict[Any, float]:
    """Rank ``values`` from the highest (1) down; exactly equal values share the average of their positions.

    >>> fractional_ranks({"a": 0.9, "b": 0.8, "c": 0.8, "d": 0.7})
    {'a': 1.0, 'b': 2.5, 'c': 2.5, 'd': 4.0}
    """
    order = sorted(values.items(), key=lambda kv: -kv[1])
    ranks: dict[Any, float] = {}
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and order[j + 1][1] == order[i][1]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k][0]] = (i + 1 + j + 1) / 2
        i = j + 1
    return ranks


def split_columns(spec: str) -> list[str]:
    """A comma list of column names, commas inside parentheses kept (``bonferroni(feature_norm,knn)``).

    >>> split_columns("knn, energy:raw,bonferroni(feature_norm,knn)")
    ['knn', 'energy:raw', 'bonferroni(feature_norm,knn)']
    """
    out, depth, cur = [], 0, ""
    for ch in spec:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [c for c in out if c]


def results_files(path: str | Path) -> list[Path]:
    """The results files a path names (see the module doc); :class:`ConfigError` when it names none."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ConfigError(f"{p}: no such file or folder")
    cells = p / "cells"
    if cells.is_dir():
        found = sorted(cells.glob("*.json"))
        if not found:
            raise ConfigError(f"{p}: a bench output folder without finished cells ({cells} holds no .json file)")
        return found
    for cand in (p / RESULTS, p / EVAL_DIR / RESULTS):
        if cand.is_file():
            return [cand]
    raise ConfigError(f"{p}: no results here (expected a `l2ood bench --out` folder with cells/*.json, a folder "
                      f"with {RESULTS} or {EVAL_DIR}/{RESULTS}, or a results file; folders are not searched "
                      "further: name each one, e.g. runs/*)")


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _portable(v: Any) -> Any:
    """A weights path by its file name (``dir/w.safetensors@sha`` → ``w.safetensors@sha``): results computed on
    two machines from the same file agree."""
    return v.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(v, str) else v


def _flat(prefix: str, obj: Any, out: dict[str, str]) -> None:
    if isinstance(obj, Mapping) and obj:
        for k, v in obj.items():
            _flat(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = _text(obj)


def _read(paths: Sequence[str | Path]) -> tuple[list[_Result], list[Path]]:
    files: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        for f in results_files(p):
            r = f.resolve()
            if r not in seen:
                seen.add(r)
                files.append(f)
    out: list[_Result] = []
    for f in files:
        rf = read_results(f)
        for label, rec in rf.runs.items():
            src = str(f) if len(rf.runs) == 1 else f"{f} [{label}]"
            bench = rf.bench
            if bench is not None:
                seed: int | None = bench.seed
                name, grouped = bench.benchmark or rec.id_dataset, True
            else:
                s = rec.train.get("seed")
                seed = s if isinstance(s, int) and not isinstance(s, bool) else None
                name, grouped = rec.id_dataset, False
            groups: dict[str, list[str]] = {}
            for ds in rec.ood:
                g = bench.groups.get(ds, ds) if bench is not None else ds
                groups.setdefault(g, []).append(ds)
            out.append(_Result(src, rec, bench, seed, name, grouped, groups))
    # a benchmark name used both by bench cells and by results without groups: the latter are "<ID> (per set)"
    both = {r.bench_name for r in out if r.grouped} & {r.bench_name for r in out if not r.grouped}
    out = [replace(r, bench_name=f"{r.bench_name} (per set)") if r.bench_name in both and not r.grouped else r
           for r in out]
    return out, files


def _data_identity(r: _Result, group: str) -> dict[str, str]:
    rec = r.record
    return {"id_dataset": rec.id_dataset, "n_id_test": str(rec.n_id_test),
            "sets": ", ".join(f"{s} (n={rec.ood[s].n})" for s in sorted(r.groups[group]))}


def _settings(r: _Result, column: str) -> dict[str, str]:
    """What the numbers of ``column`` in result ``r`` depend on besides the seed (see the module doc)."""
    rec = r.record
    out: dict[str, str] = {}
    _flat("model", {k: v for k, v in rec.model.items() if k not in _MODEL_IGNORED}, out)
    _flat("train", {k: _portable(v) if k in _PATH_KEYS else v for k, v in rec.train.items()
                    if k not in _TRAIN_IGNORED}, out)
    if r.bench is not None:
        if r.bench.recipe is not None:
            out["bench.recipe"] = r.bench.recipe
        hyper = r.bench.hyper or {}
        for k in ("n_fit", "pretrained"):
            if k in hyper:
                out[f"bench.{k}"] = _text(_portable(hyper[k]))
    params = dict(rec.detector_params.get(column, {}))
    sel = (rec.selection or {}).get("columns", {}).get(column)
    if isinstance(sel, Mapping):  # selected per model: compare how, not what was chosen
        for k in ("criterion", "val_ood", "n_val_ood", "n_val_id"):
            if k in (rec.selection or {}):
                out[f"selection.{k}"] = _text((rec.selection or {})[k])
        out["selection.space"] = _text(sel.get("space"))
        params = {k: v for k, v in params.items() if k not in (sel.get("space") or {})}
    _flat("column", {k: v for k, v in params.items() if k not in _PERF_KEYS}, out)
    for g in r.groups:
        for k, v in _data_identity(r, g).items():
            out[f"data.{g}.{k}"] = v
    return out


def _observations(results: list[_Result], wanted: Sequence[str] | None) -> list[_Obs]:
    columns = list(dict.fromkeys(c for r in results for c in r.record.detectors))
    if wanted is not None:
        unknown = [w for w in wanted if not any(c == w or c.split(":")[0] == w for c in columns)]
        if unknown:
            raise ConfigError(f"no column {', '.join(repr(u) for u in unknown)} in these results; they hold: "
                              f"{', '.join(sorted(columns))}")
    obs = []
    for r in results:
        rec = r.record
        arch = str(rec.model.get("arch") or (r.bench.arch if r.bench else "?"))
        for col in rec.detectors:
            if wanted is not None and not any(col == w or col.split(":")[0] == w for w in wanted):
                continue
            values: dict[tuple[str, str], float] = {}
            for g, sets in r.groups.items():
                for m in METRICS:
                    per = [rec.metric(s, col, m) for s in sets]
                    if per and all(v is not None for v in per):
                        values[(g, m)] = float(statistics.mean(v for v in per if v is not None))
            if not values:
                continue  # a column of this record reported on no OoD set
            obs.append(_Obs(r.source, r.seed, Method(arch, rec.head, col), r.bench_name, r.grouped,
                            {g: tuple(s) for g, s in r.groups.items()}, values, _settings(r, col),
                            {g: _data_identity(r, g) for g in r.groups}, rec.id_accuracy))
    if not obs:
        raise ConfigError("these results hold no OoD metrics" + (" for the columns asked for" if wanted else ""))
    return obs


def _sources(s: list[str]) -> str:
    return s[0] + (f" +{len(s) - 1} more" if len(s) > 1 else "")


def _conflicts(items: Iterable[tuple[str, Mapping[str, str]]]) -> list[tuple[str, str]]:
    """``(setting, its values and files)`` for each setting whose recorded values differ among the
    ``(source, settings)`` items (a key an item does not record is not compared)."""
    items = list(items)
    out = []
    for k in sorted({k for _, s in items for k in s}):
        vals: dict[str, list[str]] = {}
        for src, s in items:
            if k in s:
                vals.setdefault(s[k], []).append(src)
        if len(vals) > 1:
            out.append((k, f"{k}: " + " vs ".join(f"{v} ({_sources(ss)})" for v, ss in vals.items())))
    return out


def _short(conflicts: list[tuple[str, str]], n: int = 3) -> str:
    return "; ".join(t for _, t in conflicts[:n]) + (f"; and {len(conflicts) - n} more" if len(conflicts) > n else "")


def _same(a: _Obs, b: _Obs) -> bool:
    return not _conflicts([(a.source, a.settings), (b.source, b.settings)])


def _cells(obs: list[_Obs], allow_mixed: bool, with_arch: bool) -> tuple[dict[tuple[Method, str], Cell], list[str]]:
    by: dict[tuple[Method, str], list[_Obs]] = {}
    for o in obs:
        by.setdefault((o.method, o.benchmark), []).append(o)
    cells: dict[tuple[Method, str], Cell] = {}
    mixed: list[str] = []
    for (method, bname), group in by.items():
        kept: list[_Obs] = []
        for o in group:
            dup = next((k for k in kept if k.seed == o.seed and _same(k, o)), None)
            if dup is None:
                kept.append(o)
            elif dup.values != o.values:
                seed = "unknown" if o.seed is None else o.seed
                raise ConfigError(f"{method.label(with_arch)} on {bname}: two different results of seed {seed} with "
                                  f"the same settings ({dup.source} and {o.source}); pass only one of them")
        diff = _conflicts((o.source, o.settings) for o in kept)
        if diff:
            mixed.append(f"{method.label(with_arch)} on {bname} pools results of different settings: {_short(diff)}")
        kept.sort(key=lambda o: (o.seed is None, o.seed or 0, o.source))
        stats = {key: Stat(tuple(o.values[key] for o in kept if key in o.values))
                 for key in dict.fromkeys(k for o in kept for k in o.values)}
        accs = tuple(o.id_accuracy for o in kept if o.id_accuracy is not None)
        cells[(method, bname)] = Cell(method, bname, tuple(o.seed for o in kept), stats, Stat(accs) if accs else None,
                                      tuple(k for k, _ in diff), tuple(dict.fromkeys(o.source for o in kept)))
    if mixed and not allow_mixed:
        more = f" ({len(mixed) - 1} more cells mix settings)" if len(mixed) > 1 else ""
        raise ConfigError(f"{mixed[0]}{more}. A cell of the table pools the seeds of one setting: pass the results "
                          f"of one setting per method and benchmark, or --allow-mixed to pool them anyway (marked "
                          f"{MIXED})")
    return cells, mixed


def _benchmarks(obs: list[_Obs], allow_mixed: bool) -> tuple[list[Benchmark], set[tuple[str, str]], list[str]]:
    """The benchmarks in order of appearance, their groups (near, far, then others in order of appearance) with
    their OoD sets, and the groups whose methods were evaluated on different data (refused unless
    ``allow_mixed``)."""
    sets: dict[str, dict[str, dict[str, None]]] = {}
    grouped: dict[str, bool] = {}
    ident: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    for o in obs:
        b = sets.setdefault(o.benchmark, {})
        grouped[o.benchmark] = o.grouped
        for g, names in o.sets.items():
            b.setdefault(g, {}).update(dict.fromkeys(names))
            ident.setdefault((o.benchmark, g), {})[o.source] = o.data[g]  # a file counts once per group
    out = []
    for name, groups in sets.items():
        seen = list(groups)
        order = sorted(seen, key=lambda g: (GROUP_ORDER.index(g) if g in GROUP_ORDER else len(GROUP_ORDER),
                                            seen.index(g)))
        out.append(Benchmark(name, {g: tuple(groups[g]) for g in order}, grouped[name]))
    bad: set[tuple[str, str]] = set()
    notes = []
    for (bname, g), items in ident.items():
        diff = _conflicts(items.items())
        if diff:
            bad.add((bname, g))
            notes.append(f"{bname} {g}: the methods were evaluated on different data: {_short(diff)}")
    if notes and not allow_mixed:
        more = f" ({len(notes) - 1} more groups differ)" if len(notes) > 1 else ""
        raise ConfigError(f"{notes[0]}{more}. Methods are ranked on the same data only: pass results of one "
                          f"evaluation setting per benchmark, or --allow-mixed to pool them anyway (marked {MIXED})")
    return out, bad, notes


def _ranks(methods: list[Method], benchmarks: list[Benchmark], cells: Mapping[tuple[Method, str], Cell]
           ) -> dict[Method, Rank]:
    groups = [(b.name, g) for b in benchmarks for g in b.groups]
    per: dict[Method, dict[tuple[str, str], float]] = {m: {} for m in methods}
    for bname, g in groups:
        means = {}
        for m in methods:
            c = cells.get((m, bname))
            st = c.stat(g) if c is not None else None
            if st is not None:
                means[m] = st.mean
        for m, r in fractional_ranks(means).items():
            per[m][(bname, g)] = r
    return {m: Rank(float(statistics.mean(per[m].values())) if per[m] else None, len(per[m]), len(groups), per[m])
            for m in methods}


def _pct(st: Stat | None, n_row: int, mark: str) -> str:
    if st is None:
        return "-"
    s = f"{100 * st.mean:.2f}" + ("" if st.std is None else f" ± {100 * st.std:.2f}")
    return s + (f" (n={st.n})" if st.n != n_row else "") + mark


@dataclass(frozen=True)
class Leaderboard:
    """The method × benchmark table (see the module doc): ``methods`` in display order, ``cells`` by
    ``(method, benchmark name)``, mean ranks, and the notes on what ``allow_mixed`` pooled."""

    methods: list[Method]
    benchmarks: list[Benchmark]
    cells: dict[tuple[Method, str], Cell]
    ranks: dict[Method, Rank]
    files: list[Path]
    mixed_groups: frozenset[tuple[str, str]] = frozenset()
    notes: tuple[str, ...] = ()
    sort: str = "rank"

    @property
    def with_arch(self) -> bool:
        """Whether rows name their architecture (more than one in the table)."""
        return len({m.arch for m in self.methods}) > 1

    def cell(self, method: Method, benchmark: str) -> Cell | None:
        return self.cells.get((method, benchmark))

    def sort_keys(self) -> list[str]:
        """What :meth:`sorted_by` accepts: ``rank``, ``method``, ``BENCHMARK/GROUP`` and unambiguous ``GROUP``."""
        groups = [g for b in self.benchmarks for g in b.groups]
        return ["rank", "method", *(f"{b.name}/{g}" for b in self.benchmarks for g in b.groups),
                *(g for g in dict.fromkeys(groups) if groups.count(g) == 1)]

    def sorted_by(self, key: str) -> Leaderboard:
        """Rows ordered by ``rank`` (ranked in every group first, then mean rank, then name), ``method`` (name), or
        a group's mean AUROC (``BENCHMARK/GROUP``, or ``GROUP`` when one benchmark has it; highest first, missing
        last)."""
        def name(m: Method) -> str:
            return m.label(self.with_arch)

        if key == "rank":
            def by_rank(m: Method) -> tuple[bool, float, str]:
                r = self.ranks[m]
                return (not r.complete, float("inf") if r.mean is None else r.mean, name(m))

            methods = sorted(self.methods, key=by_rank)
        elif key == "method":
            methods = sorted(self.methods, key=name)
        else:
            target = self._group(key)

            def by_group(m: Method) -> tuple[bool, float, str]:
                c = self.cells.get((m, target[0]))
                st = c.stat(target[1]) if c is not None else None
                return (st is None, 0.0 if st is None else -st.mean, name(m))

            methods = sorted(self.methods, key=by_group)
        return replace(self, methods=methods, sort=key)

    def _group(self, key: str) -> tuple[str, str]:
        for b in self.benchmarks:
            if key.startswith(f"{b.name}/") and key[len(b.name) + 1:] in b.groups:
                return b.name, key[len(b.name) + 1:]
        hits = [(b.name, key) for b in self.benchmarks if key in b.groups]
        if len(hits) == 1:
            return hits[0]
        what = f"'{key}' is a group of {len(hits)} benchmarks: name one as BENCHMARK/{key}" if hits else \
            f"unknown sort key '{key}'"
        raise ConfigError(f"{what}; choose one of: {', '.join(self.sort_keys())}")

    def _n(self, c: Cell | None) -> int:
        return 0 if c is None else len(c.seeds)

    def to_markdown(self, fpr: str = "openood") -> str:
        """The table as markdown, with its legend: per benchmark n, each group's AUROC, then each group's FPR@95
        in the conventions ``fpr`` names (:data:`FPR_CHOICES`), every column labelled with its convention."""
        if fpr not in FPR_CHOICES:
            raise ConfigError(f"unknown FPR convention '{fpr}'; choose one of: {', '.join(FPR_CHOICES)}")
        metrics = ("auroc", *FPR_CHOICES[fpr])
        head = ["arch"] if self.with_arch else []
        head += ["head", "detector", "mean rank"]
        for b in self.benchmarks:
            head.append(f"{b.name} n")
            for met in metrics:
                for g in b.groups:
                    mark = f" {MIXED}" if (b.name, g) in self.mixed_groups else ""
                    head.append(f"{b.name} {g} {LABELS[met]}{mark}")
        lines = ["# l2ood leaderboard", "",
                 f"{len(self.files)} results file(s); {len(self.methods)} methods; sorted by {self.sort}. "
                 "Benchmarks: " + "; ".join(
                     f"{b.name} (" + ("; ".join(f"{g}: {', '.join(s)}" for g, s in b.groups.items()) if b.grouped
                                      else "each OoD set its own group: " + ", ".join(b.groups)) + ")"
                     for b in self.benchmarks) + ".", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in self.methods:
            r = self.ranks[m]
            rank = "-" if r.mean is None else f"{r.mean:.2f}" + ("" if r.complete else f" ({r.ranked}/{r.total})")
            row = [m.arch] if self.with_arch else []
            row += [m.head, m.detector, rank]
            for b in self.benchmarks:
                c = self.cells.get((m, b.name))
                n = self._n(c)
                row.append(str(n) if n else "-")
                mark = f" {MIXED}" if c is not None and c.mixed else ""
                for met in metrics:
                    for g in b.groups:
                        row.append("-" if c is None else _pct(c.stat(g, met), n, mark))
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Cells: mean ± sample standard deviation (n - 1) over the results pooled (one per seed), in %; "
                  "n per benchmark (a cell with fewer values says n=k; a single value has no ±). A result's group "
                  "value is the unweighted mean of the metric over the group's OoD sets (OpenOOD v1.5); a result "
                  "lacking the metric on one of them gives no value for that group.",
                  "", "**FPR95 (OoD+, OpenOOD)**: OpenOOD v1.5's FPR@95 (OoD positive), the fraction of ID test "
                  "images flagged when the threshold flags 95 % of the OoD images (results key `fpr95_ood_pos`). "
                  "**FPR95 (ID+, l2ood)**: l2ood's FPR@95 (ID positive), the fraction of OoD images accepted when "
                  "the threshold keeps 95 % of the ID test images (results key `fpr95`). Lower is better for both.",
                  "", "**Mean rank**: in each benchmark group the methods are ranked by mean AUROC (1 = highest); "
                  "exactly equal means share the average of the positions they span; a method is ranked only "
                  "where it has an AUROC, and its mean rank averages those groups ((k/K): ranked in k of the "
                  "table's K groups; such methods sort after the ones ranked everywhere)."]
        if self.notes:
            lines += ["", f"{MIXED} pooled with --allow-mixed:", "", *(f"- {n}" for n in self.notes)]
        return "\n".join(lines) + "\n"

    def csv_header(self) -> list[str]:
        groups = list(dict.fromkeys(g for b in self.benchmarks for g in b.groups))
        return ["method", "arch", "head", "detector", "benchmark", "n_seeds", "seeds", "mean_rank", "groups_ranked",
                "groups_total", "mixed", "id_acc_mean", "id_acc_std", "id_acc_n",
                *(f"{g}_{m}_{s}" for g in groups for m in METRICS for s in ("mean", "std", "n"))]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per method × benchmark cell (in row order), the CSV's rows: fractions, not %; ``None`` where a
        value does not exist (a std of one value, a missing group)."""
        out = []
        for m in self.methods:
            r = self.ranks[m]
            for b in self.benchmarks:
                c = self.cells.get((m, b.name))
                if c is None:
                    continue
                row: dict[str, Any] = {
                    "method": m.label(self.with_arch), "arch": m.arch, "head": m.head, "detector": m.detector,
                    "benchmark": b.name, "n_seeds": len(c.seeds),
                    "seeds": ";".join("?" if s is None else str(s) for s in c.seeds),
                    "mean_rank": r.mean, "groups_ranked": r.ranked, "groups_total": r.total,
                    "mixed": ";".join(c.mixed),
                    "id_acc_mean": None if c.id_accuracy is None else c.id_accuracy.mean,
                    "id_acc_std": None if c.id_accuracy is None else c.id_accuracy.std,
                    "id_acc_n": 0 if c.id_accuracy is None else c.id_accuracy.n}
                for (g, met), st in c.stats.items():
                    row.update({f"{g}_{met}_mean": st.mean, f"{g}_{met}_std": st.std, f"{g}_{met}_n": st.n})
                out.append(row)
        return out

    def to_csv(self) -> str:
        """:meth:`rows` as CSV (floats written exactly: ``float(text)`` gives the value back; empty = none)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.csv_header(), restval="", lineterminator="\n")
        w.writeheader()
        for row in self.rows():
            w.writerow({k: "" if v is None else repr(v) if isinstance(v, float) else v for k, v in row.items()})
        return buf.getvalue()


def leaderboard(paths: Sequence[str | Path], *, detectors: Sequence[str] | None = None, allow_mixed: bool = False,
                sort: str = "rank") -> Leaderboard:
    """Read the results files ``paths`` name and build the method × benchmark table (see the module doc).

    ``detectors``: keep these columns only (a name keeps every logit variant of it: ``energy`` keeps ``energy``,
    ``energy:trained`` and ``energy:raw``). Raises :class:`~l2ood.results.ResultsError` for a file that is not a
    valid results file and :class:`ConfigError` for a path with no results, an unknown column or sort key, or
    results of different settings in one cell (unless ``allow_mixed``)."""
    if not paths:
        raise ConfigError("no results given")
    if detectors is not None and not list(detectors):
        raise ConfigError("no column given to keep (detectors is empty)")
    results, files = _read(paths)
    obs = _observations(results, list(detectors) if detectors is not None else None)
    with_arch = len({o.method.arch for o in obs}) > 1
    cells, cell_notes = _cells(obs, allow_mixed, with_arch)
    benchmarks, bad, group_notes = _benchmarks(obs, allow_mixed)
    methods = list(dict.fromkeys(o.method for o in obs))
    board = Leaderboard(methods, benchmarks, cells, _ranks(methods, benchmarks, cells), files, frozenset(bad),
                        (*group_notes, *cell_notes))
    return board.sorted_by(sort)


__all__ = ["FPR_CHOICES", "LABELS", "METRICS", "Benchmark", "Cell", "Leaderboard", "Method", "Rank", "Stat",
           "fractional_ranks", "leaderboard", "results_files", "split_columns"]
