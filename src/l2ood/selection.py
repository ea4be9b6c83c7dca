"""Hyper-parameter selection on a user-given validation OoD set, kept apart from the test sets.

OpenOOD v1.5 (Zhang et al., "OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution Detection", 2023) tunes a
post-hoc method's hyper-parameters on held-out validation data: ID validation images and a validation OoD
set, neither used for testing. l2ood does the same, on request: every detector with a declared search space
(:attr:`l2ood.detectors.Detector.search_space`, next to its defaults in the detector's file) is built for
each point of the grid (Cartesian product, in declared order), fitted where it needs ID training statistics,
and scored on

* the **ID validation** images — the run's holdout, never trained on and disjoint from the ID test images, and
* the **validation OoD** set — named by the user, refused when it is one of the test OoD sets or shares an
  image with one of them (exact pixel equality of in-memory sets),

and the point with the highest validation AUROC is kept (ties: the default hyper-parameters if they are among
the best, else the first in grid order). Grid points a detector refuses (e.g. ``top_m`` larger than it
allows) are recorded with their error and skipped. The test sets are scored only with the chosen values, and
everything tried is recorded (:class:`Selection`, in ``results["selection"]``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from .data.source import ImageSource
from .errors import ConfigError

CRITERION = "AUROC, ID validation images (positive) vs validation OoD images"


def grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of a search space, in declared order (the last name varies fastest)."""
    names = list(space)
    for n in names:
        if not len(space[n]):
            raise ConfigError(f"search space of '{n}' is empty")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]


@dataclass
class Selection:
    """What one column's selection tried and chose (JSON-able through :func:`dataclasses.asdict`)."""

    detector: str
    variant: str
    space: dict[str, list[Any]]
    default: dict[str, Any]
    chosen: dict[str, Any]
    chosen_auroc: float
    default_auroc: float | None
    tried: list[dict[str, Any]] = field(default_factory=list)  # {"params", "auroc"} or {"params", "error"}


def select(detector: str, variant: str, space: Mapping[str, Sequence[Any]], default: Mapping[str, Any],
           evaluate_point: Callable[[dict[str, Any]], tuple[np.ndarray, np.ndarray, Any]]) -> tuple[Selection, Any]:
    """Grid search: ``evaluate_point(params) -> (val_id_scores, val_ood_scores, fitted detector)``.

    Returns the record and the fitted detector of the chosen point. A point whose construction or fit raises
    :class:`~l2ood.errors.ConfigError` is recorded with its error; if every point fails, so does this."""
    tried: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any], Any] | None = None
    default_key = {k: default.get(k) for k in space}
    default_auroc = None
    for params in grid(space):
        try:
            s_id, s_ood, det = evaluate_point(params)
        except ConfigError as e:
            tried.append({"params": params, "error": str(e)})
            continue
        y = np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))]
        au = float(roc_auc_score(y, np.r_[s_id, s_ood]))
        tried.append({"params": params, "auroc": au})
        is_default = params == default_key
        if is_default:
            default_auroc = au
        if best is None or au > best[0] or (au == best[0] and is_default):
            best = (au, params, det)
    if best is None:
        raise ConfigError(f"{detector}: no point of its search space could be evaluated: "
                          + "; ".join(t["error"] for t in tried))
    sel = Selection(detector, variant, {k: list(v) for k, v in space.items()}, dict(default_key), best[1], best[0],
                    default_auroc, tried)
    return sel, best[2]


def check_apart(val_ood: ImageSource, test_sets: Iterable[ImageSource], val_id: ImageSource,
                id_test: ImageSource) -> None:
    """Refuse a validation OoD set that is a test OoD set, the ID test images or the ID validation images (same
    name) or shares an image with one of them, and ID validation images that are ID test images (same name, or a
    shared image). Sets in memory are compared pixel by
    pixel; streamed sets by name. ``test_sets`` is iterated once (a generator keeps one set in memory)."""
    if val_id.name == id_test.name:
        raise ConfigError(f"the ID validation images '{val_id.name}' are the ID test images")
    v = val_ood.item_digests()
    for ref, what in ((id_test, "ID test images"), (val_id, "ID validation images")):
        _refuse_overlap(val_ood, v, ref, f"the validation OoD set '{val_ood.name}' is the run's {what}: "
                        "in-distribution images cannot stand for OoD ones; pass another --val-ood",
                        f"with the {what}: in-distribution images cannot stand for OoD ones")
    for t in test_sets:
        _refuse_overlap(val_ood, v, t, f"the validation OoD set '{val_ood.name}' is also a test OoD set: "
                        "hyper-parameters chosen on a test set would inflate its results; pass another --val-ood",
                        f"with the test OoD set '{t.name}': keep validation and test images apart")
    if val_id.shape == id_test.shape:
        shared = len((val_id.item_digests() or set()) & (id_test.item_digests() or set()))
        if shared:
            raise ConfigError(f"the ID validation images share {shared} image(s) with the ID test images")


def _refuse_overlap(val_ood: ImageSource, digests: set[str] | None, ref: ImageSource, same_name: str,
                    shared_with: str) -> None:
    """Refuse ``val_ood`` when it has ``ref``'s name (``same_name``) or shares an image with it (pixel SHA-1 of sets
    in memory; ``digests`` are ``val_ood``'s)."""
    if ref.name == val_ood.name:
        raise ConfigError(same_name)
    if digests is not None and ref.shape == val_ood.shape:
        shared = len(digests & (ref.item_digests() or set()))
        if shared:
            raise ConfigError(f"the validation OoD set '{val_ood.name}' shares {shared} image(s) {shared_with}")


def summary(selections: Mapping[str, Selection], val_id: Any, val_ood: Any) -> dict[str, Any]:
    """The ``results["selection"]`` entry: the data used, the criterion and every column's record."""
    return {"criterion": CRITERION, "val_id": val_id.name, "n_val_id": len(val_id), "val_ood": val_ood.name,
            "n_val_ood": len(val_ood), "columns": {c: asdict(s) for c, s in selections.items()}}
