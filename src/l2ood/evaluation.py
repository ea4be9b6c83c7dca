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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import jsonio
from .data import load_dataset
from .detectors import DETECTORS, Detector, Extraction, Head, all_detectors, make_detector
from .detectors.base import InputDetector
from .errors import ConfigError
from .metrics import ood_metrics
from .metrics.conformal import RULES, combined_scores
from .models import is_normalized
from .provenance import code_version
from .run import Images, Run
from .selection import Selection, check_apart, select, summary

DEFAULT_DETECTORS = ("feature_norm", "msp", "maxlogit", "energy")
CONVENTION = ("higher score = more in-distribution. auroc: ID positive (the same either way). fpr95: ID "
              "positive, the fraction of OoD accepted when the threshold keeps 95 % of ID (l2ood's FPR95 (ID+)). "
              "fpr95_ood_pos: OoD positive, the fraction of ID flagged when the threshold flags 95 % of OoD "
              "(OpenOOD v1.5 / pytorch-ood; FPR95 (OoD+)). aupr_in: ID positive, score; aupr_out: OoD positive, "
              "-score")


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
    """``(column name, detector name, logit variant)`` for each reported score.

    Logit-based detectors on normalized heads appear twice (``:trained`` and ``:raw``).
    """
    out = []
    for d in detectors:
        if DETECTORS[d].uses_logits and is_normalized(head_mode):
            out += [(f"{d}:trained", d, "trained"), (f"{d}:raw", d, "raw")]
        else:
            out.append((d, d, "trained"))
    return out


@dataclass
class EvalResult:
    """Metrics (JSON-able) and raw scores (for plots) of one model."""

    results: dict[str, Any]
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # set -> column -> scores

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(jsonio.dumps(self.results, indent=2))
        arrays = {f"{s}/{d}": v for s, dd in self.scores.items() for d, v in dd.items()}
        np.savez_compressed(out / "scores.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub: **kwds as bool


def combined_column(members: list[str], rule: str) -> str:
    """The column name of a combination: ``rule(member,member,...)``."""
    return f"{rule}({','.join(members)})"


def _member_columns(spec: str | list[str], head_mode: str) -> list[tuple[str, str, str, str]]:
    """``(canonical key, column name, detector name, variant)`` of each member of a combination spec."""
    from .screen.fitted import parse_spec

    out = []
    for m in parse_spec(spec, head_mode):
        col = f"{m.name}:{m.variant}" if DETECTORS[m.name].uses_logits and is_normalized(head_mode) else m.name
        out.append((m.key, col, m.name, m.variant))
    if len(out) < 2:
        raise ConfigError(f"a combination needs at least two detectors, got {spec!r}")
    return out


def _score(det: Detector, ext: Extraction, head: Head, ds: Images, run: Run, variant: str) -> np.ndarray:
    if isinstance(det, InputDetector):
        parts = [det.score_images(run.model, x, run.runtime, variant=variant) for x in run.image_batches(ds)]
        return torch.cat(parts).numpy() if parts else np.empty(0, np.float32)
    if variant == "raw":
        head = head.raw()
        ext = ext.with_head(head)
    return det.score(ext, head).float().numpy()


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
    """Evaluate a run on given ID test and OoD sets; ``fit_set`` feeds detectors that need ID statistics.

    Every set is brought to the model's input format and scored with one forward pass
    (:meth:`l2ood.run.Run.forward`, cached on disk for run folders). Each entry of ``combined`` (comma-separated
    detector keys, e.g. ``"feature_norm,knn"``) adds a combined column (see the module doc) whose conformal
    p-values are taken against ``calibration_set`` (ID images disjoint from ``id_test`` and from training), or,
    with ``combine_crossfit=True`` and no ``calibration_set``, cross-fitted on two halves of ``id_test``."""
    if combine_rule not in RULES:
        raise ConfigError(f"combine rule must be one of {', '.join(RULES)}, got {combine_rule!r}")
    combos = [_member_columns(c, run.config.head) for c in combined]
    if combos and calibration_set is None and not combine_crossfit:
        raise ConfigError("combined columns need an ID calibration set (disjoint from the test images) or "
                          "combine_crossfit=True")
    if combos and calibration_set is not None and combine_crossfit:
        raise ConfigError("give either a calibration set or combine_crossfit=True, not both")
    if (val_id is None) != (val_ood is None):
        raise ConfigError("hyper-parameter selection needs both ID validation images and a validation OoD set")
    head = run.head
    id_test = run.to_input_format(id_test)
    if val_id is not None and val_ood is not None:
        val_id, val_ood = run.to_input_format(val_id), run.to_input_format(val_ood)
        check_apart(val_ood, (run.to_input_format(ds) for ds in ood_sets), val_id, id_test)  # one set at a time

    def fwd(ds: Images, desc: str | None = None) -> Extraction:
        return run.forward(ds, batch_size=batch_size, progress=progress, desc=desc, cache=cache)

    id_ext = fwd(id_test)
    acc = float((id_ext.logits.argmax(1) == id_ext.labels).float().mean()) if id_ext.labels is not None \
        else float("nan")
    cols = columns(detectors, head.mode)
    known = {c for c, _, _ in cols}
    for combo in combos:  # members not reported on their own are scored without a column of their own
        for _, col, name, variant in combo:
            if col not in known:
                cols.append((col, name, variant))
                known.add(col)
    reported = [c for c, _, _ in columns(detectors, head.mode)]
    kw = detector_kwargs or {}
    dets = {col: make_detector(d, **kw.get(d, {})) for col, d, _ in cols}
    variants = {col: v for col, _, v in cols}
    need_fit = [col for col, d in dets.items() if d.needs_fit]
    fit_ext: Extraction | None = None
    fit_raw: Extraction | None = None
    if need_fit:
        if fit_set is None:
            raise ConfigError("these detectors need ID training data: " + ", ".join(need_fit))
        fit_ext = fwd(fit_set, desc="extract ID train")  # forward() brings it to the model's format
        fit_raw = fit_ext.with_head(head.raw()) if any(variants[col] == "raw" for col in need_fit) else None
        for col in need_fit:
            if variants[col] == "raw":
                dets[col].fit(fit_raw, head.raw())  # type: ignore[arg-type]
            else:
                dets[col].fit(fit_ext, head)
    selections: dict[str, Selection] = {}
    if val_id is not None and val_ood is not None:
        tuned = [col for col, d, _ in cols if DETECTORS[d].search_space and not kw.get(d)]
        if tuned:
            v_id, v_ood = fwd(val_id, desc="extract ID validation"), fwd(val_ood, desc="extract validation OoD")
            for col in tuned:
                d, variant = dets[col].name, variants[col]

                def point(params: dict[str, Any], d: str = d, variant: str = variant) -> tuple[
                        np.ndarray, np.ndarray, Detector]:
                    det = make_detector(d, **params)
                    if det.needs_fit and variant == "raw":
                        assert fit_raw is not None
                        det.fit(fit_raw, head.raw())
                    elif det.needs_fit:
                        assert fit_ext is not None
                        det.fit(fit_ext, head)
                    assert val_id is not None and val_ood is not None
                    return (_score(det, v_id, head, val_id, run, variant),
                            _score(det, v_ood, head, val_ood, run, variant), det)

                selections[col], dets[col] = select(d, variant, DETECTORS[d].search_space,
                                                    dets[col].hyper_parameters(), point)
    combo_info: dict[str, dict[str, Any]] = {}
    cal_scores: dict[str, np.ndarray] = {}
    folds: tuple[np.ndarray, np.ndarray] | None = None
    if combos and combine_crossfit:
        if len(id_test) < 4:
            raise ConfigError(f"cross-fitted combinations need at least 4 ID test images, got {len(id_test)}")
        perm = np.random.default_rng(0).permutation(len(id_test))
        folds = (np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:]))
        for combo in combos:
            name = combined_column([k for k, _, _, _ in combo], combine_rule)
            combo_info[name] = {"rule": combine_rule, "members": [k for k, _, _, _ in combo],
                                "columns": [c for _, c, _, _ in combo], "n_calibration": len(folds[1]),
                                "calibration": f"{id_test.name}: cross-fitted halves ({len(folds[0])} / "
                                               f"{len(folds[1])} images, seed 0); metrics: mean of the two folds",
                                "score": "ln of the unclipped combined conformal p-value (higher = more ID)"}
    elif combos:
        assert calibration_set is not None
        cal_set = run.to_input_format(calibration_set)
        cal_ext = fwd(cal_set, desc="extract calibration")
        member_cols = list(dict.fromkeys(col for combo in combos for _, col, _, _ in combo))
        cal_scores = {col: _score(dets[col], cal_ext, head, cal_set, run, variants[col]) for col in member_cols}
        for combo in combos:
            name = combined_column([k for k, _, _, _ in combo], combine_rule)
            combo_info[name] = {"rule": combine_rule, "members": [k for k, _, _, _ in combo],
                                "columns": [c for _, c, _, _ in combo], "n_calibration": len(cal_set),
                                "calibration": cal_set.name,
                                "score": "ln of the unclipped combined conformal p-value (higher = more ID)"}

    def members(sc: dict[str, np.ndarray], name: str) -> np.ndarray:
        return np.stack([sc[c] for c in combo_info[name]["columns"]], axis=1)

    def score_all(ext: Extraction, ds: Images, id_ref: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        sc = {col: _score(d, ext, head, ds, run, variants[col]) for col, d in dets.items()}
        for name, info in combo_info.items():
            if folds is None:
                sc[name] = combined_scores([cal_scores[c] for c in info["columns"]], members(sc, name), combine_rule)
            elif id_ref is None:  # the ID test set itself: each half scored against the other
                m, out = members(sc, name), np.empty(len(ext), dtype=np.float64)
                for f, g in (folds, folds[::-1]):
                    out[f] = combined_scores(list(m[g].T), m[f], combine_rule)
                sc[name] = out
            else:  # an OoD set: calibrated on half B (fold A's comparison); fold B's metrics in fold_metrics
                sc[name] = combined_scores(list(members(id_ref, name)[folds[1]].T), members(sc, name), combine_rule)
        return {c: sc[c] for c in [*reported, *combo_info, *((c for c in sc if c not in combo_info) if folds else ())]}

    def fold_metrics(name: str, id_sc: dict[str, np.ndarray], ood_sc: dict[str, np.ndarray]) -> dict[str, Any]:
        """Cross-fitted metrics of a combined column: the mean over the two folds."""
        assert folds is not None
        m_id, m_ood, per = members(id_sc, name), members(ood_sc, name), []
        for f, g in (folds, folds[::-1]):
            cal = list(m_id[g].T)
            per.append(dict(ood_metrics(combined_scores(cal, m_id[f], combine_rule),
                                        combined_scores(cal, m_ood, combine_rule))))
        return {k: float(np.mean([p[k] for p in per])) if isinstance(per[0][k], float) else per[0][k]
                for k in per[0]}

    id_all = score_all(id_ext, id_test)
    id_scores = {c: id_all[c] for c in [*reported, *combo_info]}
    scores: dict[str, dict[str, np.ndarray]] = {id_test.name: id_scores}
    ood_res: dict[str, Any] = {}
    for ds in ood_sets:
        ds = run.to_input_format(ds)
        ext = fwd(ds)
        sc_all = score_all(ext, ds, id_all)
        sc = {c: sc_all[c] for c in [*reported, *combo_info]}
        scores[ds.name] = sc
        ood_res[ds.name] = {"n": len(ds), "detectors": {
            col: fold_metrics(col, id_all, sc_all) if folds is not None and col in combo_info
            else dict(ood_metrics(id_scores[col], sc[col])) for col in sc}}
    results = {
        "model": run.config.to_dict(),
        "head": run.config.head,
        "id_dataset": id_test.name,
        "id_source": id_source,
        "n_id_test": len(id_test),
        "id_accuracy": acc,
        "detectors": [*reported, *combo_info],
        "detector_params": {**{col: dets[col].params() for col in reported}, **combo_info},
        "ood": ood_res,
        "runtime": run.runtime.describe(),
        "train": asdict(run.record.train),
        "run": str(run.path) if run.path else None,
        "code_version": code_version(),
        "convention": CONVENTION,
    }
    if combo_info:
        results["combined"] = combo_info
    if val_id is not None and val_ood is not None:
        results["selection"] = summary(selections, val_id, val_ood)
    return EvalResult(results, scores)


STREAMABLE = ("imagefolder:", "imglist:", "wds:")


def load_ood_sets(names: list[str], *, root: str | Path | None, n: int | None, seed: int,
                  channels: int, size: tuple[int, int], stream: bool = False) -> list[Images]:
    """Load OoD sets by name, converted to the ID format. ``stream=True`` (runs trained on streamed data)
    indexes image folders, lists and shards for streaming, read through the run's preprocessing."""
    out: list[Images] = []
    for nm in names:
        if stream and nm.startswith(STREAMABLE):
            from .data.stream import open_stream

            out.append(open_stream(nm, "test", root=root, size=size).subset(n, seed=seed))
        else:
            out.append(load_dataset(nm, "test", root=root, n=n, seed=seed, channels=channels, size=size))
    return out


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
    members = [name for c in combined for _, _, name, _ in _member_columns(c, run.config.head)]
    fit_set = run.train_split() if any(DETECTORS[d].needs_fit for d in [*detectors, *members]) else None
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
    return evaluate(run, id_test, ood_sets, detectors, fit_set=fit_set, batch_size=batch_size, progress=progress,
                    cache=cache, id_source=where, combined=combined, combine_rule=combine_rule,
                    calibration_set=cal_set, val_id=val_id, val_ood=val_sets[0])
