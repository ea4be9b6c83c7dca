"""Detector columns: the one unit every command scores with.

A **column** (:class:`Column`) is a registered detector, the logit variant it reads and its fitted state.
``evaluate``, ``calibrate``, ``screen``, ``serve``, hyper-parameter selection and :class:`l2ood.posthoc.PostHoc`
all build, fit (or load) and score detectors through it, so a score means the same thing everywhere.

**Keys.** A column is named by its key: a registered detector name, optionally with the logit variant,
``energy`` (the logits the model was trained with) or ``energy:raw`` (``W·z + b``, normalization removed).
``:raw`` is kept only where it changes the logits (a logit-based detector on a model trained with a
normalized head); elsewhere the two variants are the same logits and the key is just ``energy``
(:meth:`Column.of`). In evaluation tables a logit-based column of a normalized head is labelled with its
variant either way (``energy:trained`` / ``energy:raw``, :attr:`Column.label`).

**Fitted state.** Detectors that need ID training statistics (``knn``, ``mahalanobis``, ``vim``, ...) are
fitted on ID training features. :meth:`Column.fit` fits in memory; :meth:`Column.fit_or_load` fits on a run's
exact training split (:meth:`l2ood.run.Run.train_split`) and, when the run has a folder, saves the statistics
as ``RUN/detectors/<key>.safetensors`` (:mod:`l2ood.detectors.store`, byte-deterministic) recorded in the run
record (:class:`l2ood.record.FittedDetectorRecord`: file, SHA-256, hyper-parameters, the weights digest); a
later call with the same hyper-parameters loads the file instead of fitting again. :meth:`Column.load` is the
deployment path: it loads exactly the file a calibration names (digest and weights checked) and never fits,
since a serving machine need not hold the training data.

**Model in the loop.** ODIN (input gradients) and RankFeat (feature maps before pooling) score images with
the model (:class:`l2ood.detectors.base.InputDetector`); every other detector scores a forward pass
(:class:`l2ood.detectors.Extraction`). :meth:`Column.score_set` hides the difference.

**Combined columns** (:class:`CombinedColumn`): several columns' conformal p-values merged by a rule valid
under arbitrary dependence (:mod:`l2ood.metrics.conformal`, Bonferroni-min by default, or Cauchy), scored by
``ln`` of the unclipped combined p-value (higher = more ID). The column owns its calibration scheme: a
calibration split of ID images disjoint from the test images (``"split"``), or, for models trained without a
holdout, cross-fitting on two seeded halves of the ID test images (``"crossfit"``: each half is calibrated on
the other, the metrics are the mean of the two folds, no image is in its own calibration).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from .detectors import DETECTORS, Detector, Extraction, Head, make_detector
from .detectors.base import InputDetector
from .detectors.store import load_fitted, save_fitted
from .distributed import agree, gather_rows, on_main
from .errors import ConfigError, RunError
from .metrics import ood_metrics
from .metrics.conformal import RULES, combined_scores
from .models import is_normalized
from .record import FittedDetectorRecord, add_fitted_detector, fitted_file, read_record
from .runfolder import run_lock

if TYPE_CHECKING:
    from .metrics.conformal import Calibration
    from .models import Classifier
    from .run import Images, Run
    from .runtime import Runtime

Variant = Literal["trained", "raw"]
COMBINED_SCORE = "ln of the unclipped combined conformal p-value (higher = more ID)"
LOCK_WAIT_S = 30.0  # how long a fit waits for another writer of the run folder (a fit is saved in seconds)


def parse_key(key: str) -> tuple[str, str]:
    """``"name[:variant]"`` → ``(name, variant)``, both checked."""
    name, _, variant = key.strip().partition(":")
    variant = variant or "trained"
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector '{name}'; known: {', '.join(DETECTORS)}")
    if variant not in ("trained", "raw"):
        raise ConfigError(f"'{key}': the logit variant must be 'trained' or 'raw', got {variant!r}")
    return name, variant


@dataclass(eq=False)
class Column:
    """One detector, the logit variant it reads and its fitted state (see the module doc).

    Attributes:
        key: canonical key (``knn``, ``energy``, ``energy:raw``); fitted files are named after it.
        name: the registered detector name.
        variant: ``"trained"`` or ``"raw"`` logits.
        label: the column's name in evaluation results (``energy:trained`` / ``energy:raw`` for logit-based
            detectors of normalized heads, else the detector name).
        detector: the detector object (fitted in place).
        sha256: SHA-256 of the fitted-statistics file this column was saved to or loaded from (else ``None``).
    """

    key: str
    name: str
    variant: str
    label: str
    detector: Detector
    sha256: str | None = None

    @classmethod
    def of(cls, key: str, head_mode: str, **hyper: Any) -> Column:
        """The column of detector key ``key`` for a model whose head is ``head_mode`` (hyper-parameters:
        the detector's defaults unless given)."""
        name, variant = parse_key(key)
        logits_differ = DETECTORS[name].uses_logits and is_normalized(head_mode)
        if variant == "raw" and logits_differ:
            return cls(f"{name}:raw", name, "raw", f"{name}:raw", make_detector(name, **hyper))
        return cls(name, name, "trained", f"{name}:trained" if logits_differ else name, make_detector(name, **hyper))

    # ---------------------------------------------------------------------------------------- description
    @property
    def needs_fit(self) -> bool:
        return self.detector.needs_fit

    @property
    def needs_model(self) -> bool:
        return self.detector.needs_model

    @property
    def shard_fit(self) -> bool:
        """Whether the detector fits from per-rank rows, so that under ``torchrun`` each rank fits from its own
        shard of the training rows (the Gaussian family and ViM reduce sums, KNN and Relation keep a sharded bank,
        NNGuide gathers only its bank rows); every other fit needs all of them."""
        return self.detector.shard_fit

    @property
    def search_space(self) -> dict[str, list[Any]]:
        return {k: list(v) for k, v in DETECTORS[self.name].search_space.items()}

    def hyper_parameters(self) -> dict[str, Any]:
        return self.detector.hyper_parameters()

    def params(self) -> dict[str, Any]:
        """The detector's description for results (name, hyper-parameters, fitted sizes)."""
        return self.detector.params()

    def with_params(self, **hyper: Any) -> Column:
        """An unfitted column of the same key and variant with other hyper-parameters."""
        return Column(self.key, self.name, self.variant, self.label, make_detector(self.name, **hyper))

    def head(self, head: Head) -> Head:
        """The run's head in this column's logit variant."""
        return head.raw() if self.variant == "raw" else head

    def __repr__(self) -> str:
        return f"Column({self.key!r}, label={self.label!r}, {self.hyper_parameters()})"

    # ---------------------------------------------------------------------------------------- fitting
    def fit(self, ext: Extraction, head: Head) -> Column:
        """Fit on ID training features ``ext`` (the model's trained logits) in memory; returns ``self``.

        ``ext`` may be this rank's shard under ``torchrun`` (``ext.sharded``; a collective call then): a detector
        that cannot fit from shards (:attr:`shard_fit`) gets the gathered rows."""
        if self.needs_fit:
            if ext.sharded and not self.shard_fit:
                ext = ext.gather()
            h = self.head(head)
            self.detector.fit(ext.with_head(h) if self.variant == "raw" else ext, h)
        return self

    def fit_or_load(self, run: Run, *, features: Callable[[], Extraction] | None = None, refit: bool = False,
                    batch_size: int = 512, progress: bool = False, keep: bool = True) -> Column:
        """Fit on the run's exact training split, saved with the run when it has a folder (see the module doc).

        A recorded fit of this key with the same hyper-parameters and a file of the recorded digest is loaded
        instead (unless ``refit``). ``features`` gives the features of :meth:`l2ood.run.Run.train_split` when the
        caller has them (so several columns share one extraction); by default they are computed here. The fit is
        saved and recorded under the run folder's writer lock, after reading the record again: of two processes
        fitting the same detector at once, the second loads what the first saved. ``keep=False`` (evaluation): when
        the fit cannot be saved (a read-only folder, another writer holding it), it is used in memory with a
        warning instead of an error."""
        if not self.needs_fit:
            return self
        hp = _json_hp(self.detector)
        if run.dist.active:  # under torchrun (this also sets the process group up)
            return self._fit_or_load_ranks(run, hp, features, refit, batch_size, progress, keep)
        if run.path is not None and not refit and self._load_recorded(run, hp):
            return self
        ext = features() if features is not None else run.forward(run.train_split(), batch_size=batch_size,
                                                                    progress=progress, desc="extract ID train")
        if run.path is None:
            return self.fit(ext, run.head)
        try:
            return self._fit_and_save(run, ext, hp, refit)
        except (RunError, OSError) as e:
            if keep:
                raise
            warnings.warn(f"{self.key}: fitted in memory, not saved with the run ({e})", stacklevel=2)
            return self.fit(ext, run.head)

    def _fit_and_save(self, run: Run, ext: Extraction, hp: dict[str, Any], refit: bool) -> Column:
        assert run.path is not None
        with run_lock(run.path, f"fit of {self.key}", wait=LOCK_WAIT_S, shared=True):
            run.record = read_record(run.path)
            if not refit and self._load_recorded(run, hp):
                return self
            self.fit(ext, run.head)
            self._save(run, hp, len(ext))
        return self

    def _save(self, run: Run, hp: dict[str, Any], n_fit: int, detector: Detector | None = None) -> None:
        """Save the fitted statistics (of ``detector``: by default the column's) and record them (the caller holds
        the run folder's writer lock)."""
        assert run.path is not None
        train = run.train_split()
        src = run.data.train
        desc = f"{src.describe() if src else train.name} ({len(train)} images)"
        file = fitted_file(self.key)
        self.sha256 = save_fitted(detector or self.detector, run.path / file, variant=self.variant,
                                  weights_sha256=run.record.weights_sha256, n_fit=n_fit, fit_data=desc)
        rec = FittedDetectorRecord(file=file, sha256=self.sha256, detector=self.name,
                                   variant=self.variant,  # type: ignore[arg-type]
                                   hyper_parameters=hp, weights_sha256=run.record.weights_sha256,
                                   n_fit=n_fit, fit_data=desc[:8192])
        run.record = add_fitted_detector(run.path, self.key, rec)

    def _fit_or_load_ranks(self, run: Run, hp: dict[str, Any], features: Callable[[], Extraction] | None,
                           refit: bool, batch_size: int, progress: bool, keep: bool) -> Column:
        """:meth:`fit_or_load` under ``torchrun`` (collective): the ranks load the recorded fit when every one of
        them can, else every rank fits (from its shard where :attr:`shard_fit`, so that the reductions line up) and
        rank 0 alone saves and records the statistics while the others wait."""
        recorded = run.path is not None and not refit and self._load_recorded(run, hp)
        if agree(recorded):
            self.detector.keep_shard()  # a bank loaded whole: each rank keeps its rows, as a fit from shards would
            return self
        ext = features() if features is not None else run.forward(
            run.train_split(), batch_size=batch_size, progress=progress, desc="extract ID train",
            gather=not self.shard_fit)
        self.fit(ext, run.head)
        n_fit = ext.total()
        del ext
        if run.path is None:
            return self
        whole = self.detector.gathered()  # collective: a sharded fit (knn's bank) comes to rank 0 to be saved

        def save() -> None:
            assert run.path is not None and whole is not None
            try:
                with run_lock(run.path, f"fit of {self.key}", wait=LOCK_WAIT_S, shared=True):
                    run.record = read_record(run.path)
                    self._save(run, hp, n_fit, whole)
            except (RunError, OSError) as e:
                if keep:
                    raise
                warnings.warn(f"{self.key}: fitted in memory, not saved with the run ({e})", stacklevel=3)

        on_main(save)
        return self

    def _load_recorded(self, run: Run, hp: dict[str, Any]) -> bool:
        """Load the recorded fit of this key when its hyper-parameters are ``hp``; ``False`` when there is none."""
        entry = run.record.detectors.get(self.key)
        if entry is None or entry.hyper_parameters != hp:
            return False
        assert run.path is not None
        self.detector, info = load_fitted(run.path / entry.file, sha256=entry.sha256,
                                          weights_sha256=run.record.weights_sha256)
        self.sha256 = info.sha256
        self.check(run.head, str(run.path / entry.file))
        return True

    def load(self, run: Run, sha256: str | None) -> Column:
        """Ready to score in a screen: unchanged when the detector needs no fit, else its statistics loaded from
        ``RUN/detectors/…`` — the file whose SHA-256 is ``sha256`` (the one a calibration used), fitted with the
        run's weights, checked (:meth:`check`). Never fits."""
        if not self.needs_fit:
            return self
        if run.path is None:
            raise ConfigError("an in-memory run has no folder for fitted detectors: fit the column in memory")
        if sha256 is None:
            raise RunError(f"detector '{self.key}' needs fitted statistics but the calibration names no fitted "
                           f"file; run `l2ood calibrate {run.path} --detectors {self.key}` again")
        path = run.path / fitted_file(self.key)
        det, info = load_fitted(path, sha256=sha256, weights_sha256=run.record.weights_sha256)
        if info.detector != self.name or info.variant != self.variant:
            raise RunError(f"{path}: holds {info.detector} ({info.variant}), not {self.key}")
        self.detector, self.sha256 = det, info.sha256
        return self.check(run.head, str(path))

    def check(self, head: Head, where: str = "") -> Column:
        """Score a fixed probe batch with loaded statistics and refuse them (:class:`~l2ood.errors.RunError`) when
        they cannot score this model's features or give a non-finite score: statistics of another model, or
        edited ones, never reach a verdict."""
        if not self.needs_fit or self.needs_model:
            return self
        d = int(head.weight.shape[1])
        z = torch.linspace(0.1, 2.0, 4 * d).reshape(4, d)
        try:
            s = self.score(Extraction(z, head.logits(z)), head)
        except (ConfigError, RuntimeError, ValueError, TypeError, IndexError) as e:
            raise RunError(f"{where or self.key}: these fitted statistics cannot score this model's features ({e}); "
                           "fit them again (`l2ood calibrate --refit`)") from None
        if s.shape != (4,) or not bool(np.isfinite(s).all()):
            raise RunError(f"{where or self.key}: these fitted statistics give non-finite scores; fit them again "
                           "(`l2ood calibrate --refit`)")
        return self

    # ---------------------------------------------------------------------------------------- scoring
    def score(self, ext: Extraction, head: Head) -> np.ndarray:
        """Scores (float64, higher = ID) of a forward pass ``ext`` made with the run's trained head ``head``."""
        return self.score_tensor(ext, head).numpy()

    def score_tensor(self, ext: Extraction, head: Head) -> Tensor:
        """:meth:`score` as a float64 tensor, in torch only (the detector's own ``score`` in the column's logit
        variant), so that it can be traced (the ONNX export of a screen, :mod:`l2ood.deploy.onnx_screen`)."""
        if isinstance(self.detector, InputDetector):
            raise ConfigError(f"detector '{self.key}' scores images with the model: use score_images")
        h = self.head(head)
        return self.detector.score(ext.with_head(h) if self.variant == "raw" else ext, h).double()

    def score_images(self, model: Classifier, runtime: Runtime, images: Tensor) -> np.ndarray:
        """Scores (float64) of a batch of images in the model's format, running the model (ODIN, RankFeat)."""
        if not isinstance(self.detector, InputDetector):
            raise ConfigError(f"detector '{self.key}' scores features: use score")
        return self.detector.score_images(model, images, runtime, variant=self.variant).double().numpy()

    def score_batch(self, run: Run, ext: Extraction, images: Tensor | None, head: Head) -> np.ndarray:
        """Scores of one batch: ``ext`` is its forward pass; ``images`` (uint8 in the model's format, or float
        on the [0, 1] scale) are needed by detectors that run the model themselves."""
        if self.needs_model:
            if images is None:
                raise ConfigError(f"detector '{self.key}' scores images with the model: pass the images")
            return self.score_images(run.model, run.runtime, images)
        return self.score(ext, head)

    def score_set(self, run: Run, ds: Images, *, batch_size: int = 512, progress: bool = False,
                  desc: str | None = None, cache: bool = True, ext: Extraction | None = None) -> np.ndarray:
        """Scores of every image of ``ds``: from its forward pass (``ext`` when the caller has it, else the
        run's cached :meth:`~l2ood.run.Run.forward`), or batch by batch for detectors needing the model.

        Under ``torchrun`` (a collective call) each rank scores the images of its own whole batches
        (:meth:`~l2ood.run.Run.local_rows`) and the scores are gathered in rank order."""
        if self.needs_model:
            bs = min(batch_size, 256)
            mine = run.local_rows(ds, bs)  # all of ds in one process
            parts = [self.score_images(run.model, run.runtime, x) for x in run.image_batches(mine, batch_size=bs)]
            local = np.concatenate(parts) if parts else np.empty(0)
            return gather_rows(torch.from_numpy(local)).numpy() if run.dist.active else local
        if ext is None:
            ext = run.forward(ds, batch_size=batch_size, progress=progress, desc=desc, cache=cache)
        return self.score(ext, run.head)


def check_score_versions(cal: Calibration, name: str | None = None) -> None:
    """Refuse (:class:`~l2ood.errors.RunError`, fail closed) calibration ``cal`` (named ``name``) when a detector it
    uses now computes another score than when it was made (:attr:`Detector.score_version` against the versions
    the calibration recorded; none recorded means version 1): its thresholds and scores are on the old scale."""
    what = f"calibration '{name}'" if name else "the calibration"
    for key in cal.detectors:
        cls = DETECTORS.get(key.partition(":")[0])
        if cls is None:
            continue  # parse_spec names unknown detectors
        made, now = cal.score_versions.get(key, 1), cls.score_version
        if made < now:
            again = f"l2ood calibrate RUN --detectors {cal.detector}" + (f" --name {name}" if name else "")
            raise RunError(f"recalibrate: {cls.score_change or f'the {cls.name} score changed'}; {what} was made "
                           f"with score version {made} of '{key}' (this l2ood computes version {now}), so its "
                           f"thresholds are on the old scale (`{again}`)")
        if made > now:
            raise RunError(f"{what} was made by a newer l2ood ('{key}' score version {made}; this l2ood computes "
                           f"version {now}): upgrade l2ood or recalibrate")


def _json_hp(det: Detector) -> dict[str, int | float | str | bool | None]:
    hp = det.hyper_parameters()
    bad = {k: type(v).__name__ for k, v in hp.items() if not isinstance(v, int | float | str | bool | type(None))}
    if bad:
        raise ConfigError(f"detector '{det.name}': hyper-parameters {bad} cannot be recorded")
    return hp


def parse_spec(spec: str | list[str], head_mode: str, *, hyper: dict[str, dict[str, Any]] | None = None
               ) -> list[Column]:
    """Comma-separated detector keys (or a list) → columns, each key once, in the order given; ``hyper``:
    hyper-parameters by detector name."""
    keys = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Column] = []
    for k in keys:
        if not k.strip():
            continue
        name, _ = parse_key(k)
        c = Column.of(k, head_mode, **(hyper or {}).get(name, {}))
        if any(o.key == c.key for o in out):
            raise ConfigError(f"detector '{c.key}' is listed twice")
        out.append(c)
    if not out:
        raise ConfigError("no detector given")
    return out


def report_columns(detectors: list[str], head_mode: str, *, hyper: dict[str, dict[str, Any]] | None = None
                   ) -> list[Column]:
    """The evaluation columns of registered detector names: logit-based detectors of normalized heads appear
    twice (``name:trained`` and ``name:raw``), every other detector once."""
    out: list[Column] = []
    for d in detectors:
        hp = (hyper or {}).get(d, {})
        out.append(Column.of(d, head_mode, **hp))
        if DETECTORS[d].uses_logits and is_normalized(head_mode):
            out.append(Column.of(f"{d}:raw", head_mode, **hp))
    return out


def combined_name(keys: list[str], rule: str) -> str:
    """The name of a combination: ``rule(key,key,...)``."""
    return f"{rule}({','.join(keys)})"


@dataclass(eq=False)
class CombinedColumn:
    """Several columns merged by a p-value combination rule, with its own calibration scheme (module doc).

    Scores take the member scores as an ``(n, m)`` array (one column per member, in member order).
    """

    members: list[Column]
    rule: str = "bonferroni"
    scheme: Literal["split", "crossfit"] = "split"
    calibration: list[np.ndarray] = field(default_factory=list)  # "split": each member's calibration scores
    folds: tuple[np.ndarray, np.ndarray] | None = None  # "crossfit": the two halves of the ID test images
    source: str = ""

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"combine rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if len(self.members) < 2:
            raise ConfigError(f"a combination needs at least two detectors, got {[m.key for m in self.members]}")

    @classmethod
    def of(cls, spec: str | list[str], head_mode: str, rule: str = "bonferroni") -> CombinedColumn:
        """The (uncalibrated) combination of the detector keys in ``spec`` (``"feature_norm,knn"``)."""
        return cls(parse_spec(spec, head_mode), rule)

    @property
    def name(self) -> str:
        return combined_name([m.key for m in self.members], self.rule)

    def calibrate_split(self, member_scores: np.ndarray, source: str) -> CombinedColumn:
        """Calibrate on the member scores of an ID split disjoint from the test images."""
        self.scheme, self.source = "split", source
        self.calibration = [np.asarray(member_scores[:, j]) for j in range(member_scores.shape[1])]
        return self

    def calibrate_crossfit(self, n_id: int, source: str, seed: int = 0) -> CombinedColumn:
        """Cross-fit on two seeded halves of the ``n_id`` ID test images."""
        if n_id < 4:
            raise ConfigError(f"cross-fitted combinations need at least 4 ID test images, got {n_id}")
        perm = np.random.default_rng(seed).permutation(n_id)
        self.scheme, self.source = "crossfit", source
        self.folds = (np.sort(perm[: n_id // 2]), np.sort(perm[n_id // 2:]))
        return self

    def score_id(self, member_scores: np.ndarray) -> np.ndarray:
        """Scores of the ID test images (cross-fitted: each half against the other half's calibration)."""
        if self.folds is None:
            return combined_scores(self.calibration, member_scores, self.rule)
        out = np.empty(len(member_scores), dtype=np.float64)
        for f, g in (self.folds, self.folds[::-1]):
            out[f] = combined_scores(list(member_scores[g].T), member_scores[f], self.rule)
        return out

    def score_ood(self, member_scores: np.ndarray, id_member_scores: np.ndarray) -> np.ndarray:
        """Scores of other images (cross-fitted: calibrated on the ID test half B, fold A's comparison)."""
        if self.folds is None:
            return combined_scores(self.calibration, member_scores, self.rule)
        return combined_scores(list(id_member_scores[self.folds[1]].T), member_scores, self.rule)

    def metrics(self, id_member_scores: np.ndarray, ood_member_scores: np.ndarray) -> dict[str, Any]:
        """OoD metrics of the column (cross-fitted: the mean of the two folds' metrics)."""
        if self.folds is None:
            return dict(ood_metrics(self.score_id(id_member_scores),
                                    self.score_ood(ood_member_scores, id_member_scores)))
        per = []
        for f, g in (self.folds, self.folds[::-1]):
            cal = list(id_member_scores[g].T)
            per.append(dict(ood_metrics(combined_scores(cal, id_member_scores[f], self.rule),
                                        combined_scores(cal, ood_member_scores, self.rule))))
        return {k: float(np.mean([p[k] for p in per])) if isinstance(per[0][k], float) else per[0][k]
                for k in per[0]}

    def describe(self) -> dict[str, Any]:
        """The column's entry in results (``detector_params`` and ``combined``)."""
        if self.folds is not None:
            a, b = self.folds
            n_cal, cal = len(b), (f"{self.source}: cross-fitted halves ({len(a)} / {len(b)} images, seed 0); "
                                  "metrics: mean of the two folds")
        else:
            n_cal, cal = (len(self.calibration[0]) if self.calibration else 0), self.source
        return {"rule": self.rule, "members": [m.key for m in self.members], "columns": [m.label for m in self.members],
                "n_calibration": n_cal, "calibration": cal, "score": COMBINED_SCORE}


def member_matrix(scores: dict[str, np.ndarray], combo: CombinedColumn) -> np.ndarray:
    """The ``(n, m)`` member scores of ``combo`` from per-label scores."""
    return np.stack([scores[m.label] for m in combo.members], axis=1)


__all__ = ["COMBINED_SCORE", "Column", "CombinedColumn", "check_score_versions", "combined_name", "member_matrix",
           "parse_key", "parse_spec", "report_columns"]
