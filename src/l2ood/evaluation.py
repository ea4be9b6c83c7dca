"""Evaluation: ID accuracy and, per OoD set and detector, AUROC / FPR@95TPR / AUPR-In / AUPR-Out.

OoD sets are converted to the model's input format (channels, size) and normalized with the ID
statistics stored in the model. Every detector's score follows the convention higher = ID.

One forward pass per data set serves all detectors (:meth:`l2ood.run.Run.forward`); for run folders
the extractions are stored as safetensors keyed by the weights' digest, the images' SHA-1 and the
precision, so adding a detector later costs no forward pass. For models with a normalized head
(l2, t2fnorm, logitnorm) every logit-based detector is reported twice, as ``name:trained`` (the
logits the model was trained with) and ``name:raw`` (``W·z + b``, all normalization removed).

**Combined columns** (``combined``): several detectors' conformal p-values, taken against their scores on
an ID calibration split disjoint from the test images (the run's holdout), merged by a rule valid under
arbitrary dependence (:mod:`l2ood.metrics.conformal`: Bonferroni-min by default, or Cauchy). The column
``rule(a,b,...)`` is scored by ``ln`` of the unclipped combined p-value (higher = more ID) — the score a
screen with that combined calibration reports — and gets the same metrics as every other column.

**Hyper-parameter selection** (``val_id`` and ``val_ood``, :mod:`l2ood.selection`): detectors with a search
space are tuned on ID validation images vs a validation OoD set (highest validation AUROC, as OpenOOD v1.5),
kept apart from the test sets (refused when a validation set is a test set or shares an image with one); the
test sets are scored with the chosen values only, and ``results["selection"]`` records every point tried.
Hyper-parameters given in ``detector_kwargs`` are kept as given (not searched).

**Cross-fitted combinations** (``combine_crossfit=True``, for models trained without a holdout, e.g. the
benchmarks): the ID test images are split into two seeded halves A and B. Each ID test image is scored against
the member scores of the other half (out of fold), and the metrics of the column are the mean of the two folds'
metrics, fold f comparing the ID images of f with every OoD image calibrated on the other half. No image ever
enters its own calibration, every ID test image is used, and each fold's AUROC estimates the same quantity as
a separate calibration split would (with 2·n/2 instead of n calibration images). The stored OoD scores of the
column are those calibrated on half B (the ones fold A is compared with).

**Under torchrun** (``torchrun --nproc_per_node K -m l2ood evaluate ...``, :mod:`l2ood.distributed`) every rank
runs the same evaluation: each forward pass is split into contiguous, batch-aligned shards, one per rank, and
gathered in rank order (:meth:`l2ood.run.Run.forward`), so every rank holds exactly the single-process extraction
of each test set and fits and scores identically — the same metrics as one process. ODIN and RankFeat score their
shards and gather the scores. The fit set stays sharded for the Gaussian family (their fit all-reduces per-rank
sufficient statistics: no rank holds all training features), ViM (its sums are all-reduced likewise), KNN and
Relation (each rank keeps its shard of the bank; the ranks merge their top k or sum their edges) and NNGuide (each
rank builds its bank rows), and is gathered once for every other fitted detector (ReAct, DICE, ...).
Rank 0 alone writes caches and fitted statistics; the caller saves the results on rank 0
(:meth:`EvalResult.save` writes nothing on the other ranks).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .columns import Column, CombinedColumn, member_matrix, parse_spec, report_columns
from .data.source import open_images
from .detectors import DETECTORS, Extraction, all_detectors
from .distributed import dist_from_env
from .errors import ConfigError
from .metrics import ood_metrics
from .metrics.conformal import RULES
from .provenance import code_version
from .results import ResultsFile, ResultsRecord, record_of, write_results, write_samples, write_scores
from .run import Images, Run
from .selection import Selection, check_apart, select, summary

DEFAULT_DETECTORS = ("feature_norm", "msp", "maxlogit", "energy")
CONVENTION = ("higher score = more in-distribution. auroc: ID positive (the same either way). fpr95: ID "
              "positive, the fraction of OoD accepted when the threshold keeps 95 % of ID (l2ood's FPR95 (ID+)). "
              "fpr95_ood_pos: OoD positive, the fraction of ID flagged when the threshold flags 95 % of OoD "
              "(OpenOOD v1.5 / pytorch-ood; FPR95 (OoD+)). aupr_in: ID positive, score; aupr_out: OoD positive, "
              "-score")
Scores = dict[str, dict[str, np.ndarray]]  # data set -> column -> scores


def parse_detectors(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"all"`` or a comma-separated list of registered names → list (validated)."""
    names = all_detectors() if spec == "all" else (spec.split(",") if isinstance(spec, str) else list(spec))
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ConfigError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}, all")
    if not names:
        raise ConfigError("no detector given")
    return list(dict.fromkeys(names))


def columns(detectors: list[str], head_mode: str) -> list[tuple[str, str, str]]:
    """``(label, detector name, logit variant)`` of each reported column (:func:`l2ood.columns.report_columns`)."""
    return [(c.label, c.name, c.variant) for c in report_columns(detectors, head_mode)]


@dataclass
class EvalResult:
    """One model's evaluation: the typed record, the raw scores (``{set: {column: scores}}``, for plots) and,
    per data set, the labels, predicted classes and paths of its images (the per-sample table)."""

    results: ResultsRecord
    scores: Scores = field(default_factory=dict)
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def file(self, label: str | None = None, command: str | None = None) -> ResultsFile:
        """This evaluation as a one-model results file."""
        label = label or (Path(self.results.run).name if self.results.run else self.results.id_dataset)
        return ResultsFile.new({label: self.results}, command=command)

    def save(self, out_dir: str | Path, *, samples: str | None = "csv") -> Path:
        """Write ``results.json`` (:mod:`l2ood.results`), ``scores.npz`` and the per-sample table
        (``samples.csv``, or ``samples.parquet`` with ``samples="parquet"``; ``None``: none) into ``out_dir``.
        Under torchrun rank 0 alone writes; on the other ranks this does nothing (not a collective call)."""
        out = Path(out_dir)
        if dist_from_env().is_main:
            write_results(out / "results.json", self.file())
            write_scores(out / "scores.npz", self.scores)
            if samples:
                write_samples(out / f"samples.{samples}", self.scores, self.samples)
        return out / "results.json"


class _Features:
    """One forward pass per data set (the run's cache on disk for run folders)."""

    def __init__(self, run: Run, batch_size: int, progress: bool, cache: bool) -> None:
        self.run, self.batch_size, self.progress, self.cache = run, batch_size, progress, cache

    def __call__(self, ds: Images, desc: str | None = None, gather: bool = True) -> Extraction:
        return self.run.forward(ds, batch_size=self.batch_size, progress=self.progress, desc=desc, cache=self.cache,
                                gather=gather)

    def scores(self, cols: Sequence[Column], ds: Images) -> tuple[dict[str, np.ndarray], Extraction]:
        """Every column's scores (float32, as reported) of ``ds`` and its forward pass."""
        ext = self(ds)
        return {c.label: c.score_set(self.run, ds, batch_size=self.batch_size, ext=ext).astype(np.float32)
                for c in cols}, ext


def _plan(run: Run, detectors: list[str], combined: Sequence[str | list[str]], rule: str,
          kw: dict[str, dict[str, Any]]) -> tuple[list[Column], list[Column], list[CombinedColumn]]:
    """(reported columns, every column to score, combinations): a combination's member is the reported column
    of the same label when there is one, else an extra column scored without being reported."""
    head = run.config.head
    reported = report_columns(detectors, head, hyper=kw)
    cols = list(reported)
    combos = []
    for spec in combined:
        members = []
        for m in parse_spec(spec, head, hyper=kw):
            same = next((c for c in cols if c.label == m.label), None)
            if same is None:
                cols.append(m)
            members.append(same or m)
        combos.append(CombinedColumn(members, rule))
    return reported, cols, combos


class _FitFeatures:
    """The forward pass of the fit set (``fit_set``, else the run's training split), made once, when first needed.

    Under ``torchrun`` a column that fits from per-rank rows (:attr:`l2ood.columns.Column.shard_fit`:
    the Gaussian family and KNN) gets this rank's shard only, so no rank holds every training feature for it; any other
    column gets the rows of every rank, gathered from the shards already extracted (no second forward pass). In
    one process both are the same extraction."""

    def __init__(self, feats: _Features, fit_set: Images | None) -> None:
        self.feats, self.fit_set = feats, fit_set
        self._local: Extraction | None = None
        self._full: Extraction | None = None

    def _set(self) -> Images:
        return self.fit_set if self.fit_set is not None else self.feats.run.train_split()

    def local(self) -> Extraction:
        if self._full is not None:
            return self._full
        if self._local is None:
            self._local = self.feats(self._set(), desc="extract ID train", gather=False)
        return self._local

    def full(self) -> Extraction:
        if self._full is None:
            if self._local is not None:
                self._full = self.feats.run.gather(self._local, self._set(), cache=self.feats.cache)
                self._local = None  # the gathered rows serve the shard-fitted columns from now on
            else:
                self._full = self.feats(self._set(), desc="extract ID train")
        return self._full

    def __call__(self, col: Column) -> Extraction:
        return self.local() if col.shard_fit else self.full()


def _fit(run: Run, cols: list[Column], fit_set: Images | None, features: _FitFeatures) -> None:
    """Fit the columns that need ID statistics: on ``fit_set`` in memory, or, without one, on the run's training
    split, fitted once and kept with the run (:meth:`l2ood.columns.Column.fit_or_load`)."""
    need = [c for c in cols if c.needs_fit]
    if not need:
        return
    if fit_set is None and run.path is None:
        raise ConfigError("these detectors need ID training data: " + ", ".join(c.label for c in need))
    for c in need:
        if fit_set is None:
            c.fit_or_load(run, features=functools.partial(features, c), keep=False)
        else:
            c.fit(features(c), run.head)


def _select(run: Run, cols: list[Column], kw: dict[str, dict[str, Any]], feats: _Features, val_id: Images,
            val_ood: Images, fit_features: _FitFeatures) -> dict[str, Selection]:
    """Grid search of every column with a search space (and no hyper-parameters given); the chosen point's
    column replaces the default one in ``cols``."""
    tuned = [i for i, c in enumerate(cols) if c.search_space and not kw.get(c.name)]
    out: dict[str, Selection] = {}
    if not tuned:
        return out
    v_id, v_ood = feats(val_id, desc="extract ID validation"), feats(val_ood, desc="extract validation OoD")
    for i in tuned:
        col = cols[i]

        def point(params: dict[str, Any], col: Column = col) -> tuple[np.ndarray, np.ndarray, Column]:
            c = col.with_params(**params)
            if c.needs_fit:
                c.fit(fit_features(c), run.head)
            return (c.score_set(run, val_id, ext=v_id).astype(np.float32),
                    c.score_set(run, val_ood, ext=v_ood).astype(np.float32), c)

        out[col.label], cols[i] = select(col.name, col.variant, col.search_space, col.hyper_parameters(), point)
    return out


def _calibrate(combos: list[CombinedColumn], feats: _Features, cols: list[Column], id_test: Images,
               calibration_set: Images | None) -> None:
    """Calibrate each combination: on ``calibration_set``, or cross-fitted on the ID test halves."""
    if not combos:
        return
    if calibration_set is None:
        for combo in combos:
            combo.calibrate_crossfit(len(id_test), id_test.name)
        return
    members = [c for c in cols if any(c is m for combo in combos for m in combo.members)]
    cal, _ = feats.scores(members, calibration_set)
    for combo in combos:
        combo.calibrate_split(member_matrix(cal, combo), calibration_set.name)


def _samples(ds: Images, ext: Extraction) -> dict[str, Any]:
    info: dict[str, Any] = {"labels": None if ext.labels is None else ext.labels.numpy(),
                            "predictions": ext.logits.argmax(1).numpy() if len(ext) else np.empty(0, np.int64)}
    if ds.streamed and len(ds) == len(ext):  # files on disk have paths (the per-sample table's "path")
        info["paths"] = [ds.describe_item(i) for i in range(len(ds))]
    return info


def evaluate(
    run: Run,
    id_test: Images,
    ood_sets: Sequence[Images],
    detectors: list[str],
    *,
    fit_set: Images | None = None,
    batch_size: int = 512,
    progress: bool = False,
    cache: bool = True,
    detector_kwargs: dict[str, dict[str, Any]] | None = None,
    id_source: str | None = None,
    combined: Sequence[str | list[str]] = (),
    combine_rule: str = "bonferroni",
    calibration_set: Images | None = None,
    combine_crossfit: bool = False,
    val_id: Images | None = None,
    val_ood: Images | None = None,
) -> EvalResult:
    """Columns × data sets → metrics: evaluate a run on its ID test images and the OoD sets.

    Every set is brought to the model's input format and scored with one forward pass
    (:meth:`l2ood.run.Run.forward`, cached on disk for run folders). Detectors that need ID statistics are fitted
    on ``fit_set`` in memory or, without one, on the run's training split once and kept with the run
    (``RUN/detectors``). Each entry of ``combined`` (comma-separated detector keys, e.g. ``"feature_norm,knn"``)
    adds a combined column (see the module doc) whose conformal p-values are taken against ``calibration_set``
    (ID images disjoint from ``id_test`` and from training), or, with ``combine_crossfit=True`` and no
    ``calibration_set``, cross-fitted on two halves of ``id_test``."""
    if combine_rule not in RULES:
        raise ConfigError(f"combine rule must be one of {', '.join(RULES)}, got {combine_rule!r}")
    kw = detector_kwargs or {}
    reported, cols, combos = _plan(run, detectors, combined, combine_rule, kw)
    if combos and calibration_set is None and not combine_crossfit:
        raise ConfigError("combined columns need an ID calibration set (disjoint from the test images) or "
                          "combine_crossfit=True")
    if combos and calibration_set is not None and combine_crossfit:
        raise ConfigError("give either a calibration set or combine_crossfit=True, not both")
    if (val_id is None) != (val_ood is None):
        raise ConfigError("hyper-parameter selection needs both ID validation images and a validation OoD set")
    id_test = run.to_input_format(id_test)
    if val_id is not None and val_ood is not None:
        val_id, val_ood = run.to_input_format(val_id), run.to_input_format(val_ood)
        check_apart(val_ood, (run.to_input_format(ds) for ds in ood_sets), val_id, id_test)  # one set at a time
    feats = _Features(run, batch_size, progress, cache)
    fit_features = _FitFeatures(feats, fit_set)
    _fit(run, cols, fit_set, fit_features)
    selections = _select(run, cols, kw, feats, val_id, val_ood, fit_features) \
        if val_id is not None and val_ood is not None else {}
    reported = [next(c for c in cols if c.label == r.label) for r in reported]  # after selection
    for combo in combos:
        combo.members = [next(c for c in cols if c.label == m.label) for m in combo.members]
    _calibrate(combos, feats, cols, id_test, None if calibration_set is None else run.to_input_format(calibration_set))
    names = [*(c.label for c in reported), *(c.name for c in combos)]

    id_all, id_ext = feats.scores(cols, id_test)
    id_members = {combo.name: member_matrix(id_all, combo) for combo in combos}
    scores: Scores = {id_test.name: {**{c.label: id_all[c.label] for c in reported},
                                     **{combo.name: combo.score_id(id_members[combo.name]) for combo in combos}}}
    samples = {id_test.name: _samples(id_test, id_ext)}
    ood_res: dict[str, Any] = {}
    for ds in ood_sets:
        ds = run.to_input_format(ds)
        sc, ext = feats.scores(cols, ds)
        metrics = {c.label: dict(ood_metrics(id_all[c.label], sc[c.label])) for c in reported}
        out = {c.label: sc[c.label] for c in reported}
        for combo in combos:
            m = member_matrix(sc, combo)
            out[combo.name] = combo.score_ood(m, id_members[combo.name])
            metrics[combo.name] = combo.metrics(id_members[combo.name], m)
        scores[ds.name] = out
        samples[ds.name] = _samples(ds, ext)
        ood_res[ds.name] = {"n": len(ds), "detectors": {n: metrics[n] for n in names}}
    acc = float((id_ext.logits.argmax(1) == id_ext.labels).float().mean()) if id_ext.labels is not None else None
    combo_info = {combo.name: combo.describe() for combo in combos}
    results: dict[str, Any] = {
        "model": run.config.to_dict(),
        "head": run.config.head,
        "id_dataset": id_test.name,
        "id_source": id_source,
        "n_id_test": len(id_test),
        "id_accuracy": acc,
        "detectors": names,
        "detector_params": {**{c.label: c.params() for c in reported}, **combo_info},
        "ood": ood_res,
        "runtime": run.runtime.describe(),
        "train": asdict(run.record.train),
        "run": str(run.path) if run.path else None,
        "code_version": code_version(),
        "convention": CONVENTION,
        "combined": combo_info or None,
        "selection": summary(selections, val_id, val_ood) if val_id is not None and val_ood is not None else None,
    }
    return EvalResult(record_of(results), scores, samples)


def load_ood_sets(names: list[str], *, root: str | Path | None, n: int | None, seed: int,
                  channels: int, size: tuple[int, int], stream: bool = False) -> list[Images]:
    """Load OoD sets by name, converted to the ID format. ``stream=True`` (models that read files through a
    centre crop, e.g. runs trained on streamed data) streams every set that can be streamed
    (:func:`l2ood.data.source.open_images`), read through the run's preprocessing."""
    return [open_images(nm, "test", root=root, n=n, seed=seed, channels=channels, size=size,
                        data_path="prefer-stream" if stream else "memory") for nm in names]


def evaluate_run(
    run: Run | str | Path,
    ood: list[str],
    detectors: list[str],
    *,
    data_root: str | Path | None = None,
    n_ood: int | None = None,
    n_id: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    cache: bool = True,
    batch_size: int = 512,
    combined: Sequence[str | list[str]] = (),
    combine_rule: str = "bonferroni",
    val_ood: str | None = None,
    n_val_ood: int | None = None,
) -> EvalResult:
    """Evaluate a trained run on its recorded ID test images and the named OoD sets.

    Detectors that need ID statistics are fitted on the run's exact training images
    (:meth:`l2ood.run.Run.train_split`: holdout and unused subset excluded, pixel fingerprint checked).
    Combined columns (``combined``, see :func:`evaluate`) are calibrated on the run's holdout, which must not be
    its ID test set. ``val_ood`` (a data set spec, ``n_val_ood`` seeded images of it) turns on hyper-parameter
    selection (see :func:`evaluate`) against the run's holdout as ID validation images; with combined columns too,
    the holdout is split in two seeded halves, one for the selection and one for the calibration, so that the
    calibration scores stay exchangeable with unseen ID images. Extractions are cached in ``RUN/cache`` unless
    ``cache=False``.
    """
    if not isinstance(run, Run):
        run = Run.load(run, device=device, precision=precision, data_root=data_root)
    elif data_root is not None:
        run.data_root = data_root
    cal_set: Images | None = None
    val_id: Images | None = None
    if combined or val_ood:
        what = "a combined column's calibration" if combined else "hyper-parameter selection (ID validation)"
        if run.data.test_origin == "holdout":
            raise ConfigError(f"{run.path}: the run's ID test images are its holdout, so no ID split disjoint from "
                              f"them is left for {what}; retrain with --test-data SPEC or call "
                              "l2ood.evaluation.evaluate(calibration_set=..., val_id=...) with your own splits")
        hold = run.holdout()
        if hold is None:
            raise ConfigError(f"{run.path}: {what} uses the run's holdout, and it has none (trained with --holdout 0)")
        if combined and val_ood:
            if len(hold) < 4:
                raise ConfigError(f"{run.path}: a holdout of {len(hold)} images cannot be split for both selection "
                                  "and calibration")
            cal_set, val_id = hold.split(len(hold) // 2, seed=1)
        elif combined:
            cal_set = hold
        else:
            val_id = hold
    id_test, where = run.id_test()
    if n_id is not None:
        id_test = id_test.subset(n_id, seed=seed)
    c, (h, w) = run.config.in_channels, run.config.image_size
    ood_sets = load_ood_sets(ood, root=data_root, n=n_ood, seed=seed, channels=c, size=(h, w),
                             stream=run.preprocessing.fit == "imagenet")
    val_sets: list[Images | None] = [None]
    if val_ood:
        val_sets = [*load_ood_sets([val_ood], root=data_root, n=n_val_ood, seed=seed, channels=c, size=(h, w),
                                   stream=run.preprocessing.fit == "imagenet")]
    return evaluate(run, id_test, ood_sets, detectors, batch_size=batch_size, progress=progress,
                    cache=cache, id_source=where, combined=combined, combine_rule=combine_rule,
                    calibration_set=cal_set, val_id=val_id, val_ood=val_sets[0])
