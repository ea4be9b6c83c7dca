"""Calibrating a run's screen on held-out ID images (:func:`calibrate_run`).

The maths (threshold at a target TPR, split-conformal p-values and their guarantee, the combination of
several detectors' p-values) is in :mod:`l2ood.metrics.conformal`; this module picks the images, fits
detectors that need training statistics (once, saved with the run: :mod:`l2ood.columns`), scores the
images with the run's forward pass and stores the result in the run record
(:func:`l2ood.record.add_calibration`).
"""

from __future__ import annotations

from pathlib import Path

from ..columns import parse_spec
from ..data import load_dataset
from ..errors import ConfigError
from ..metrics.conformal import RULES, Calibration, calibrate, calibrate_combined
from ..record import add_calibration
from ..run import Images, Run


def calibrate_run(run: Run | str | Path, *, tpr: float = 0.95, alpha: float | None = None,
                  detector: str = "feature_norm", calibration_data: str | None = None, name: str = "default",
                  data_root: str | Path | None = None, batch_size: int = 512, progress: bool = False,
                  save: bool = True, combine: str = "bonferroni", refit: bool = False) -> Calibration:
    """Score held-out ID images and store the threshold (and conformal scores) in the run record.

    ``detector``: any registered detector key (``knn``, ``energy:raw``, ``odin``, ...; see
    :mod:`l2ood.columns`) or several joined by commas — a combined conformal calibration whose p-values
    are merged by ``combine`` (``"bonferroni"``, the default, or ``"cauchy"``; :mod:`l2ood.metrics.conformal`).
    A combination is always conformal: without ``alpha`` it uses ``alpha = 1 − tpr``. Detectors that need
    ID training statistics are fit on the run's training split once and saved as ``RUN/detectors/<key>.safetensors``
    (``refit`` fits again). Images: the run's recorded holdout (never training or test images), or
    ``calibration_data`` (a data-set spec; a registered name gives its test split). With ``save`` the
    calibration is stored under ``name`` in ``RUN/model.json``; other calibrations are kept.
    """
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    if combine not in RULES:
        raise ConfigError(f"combine must be one of {', '.join(RULES)}, got {combine!r}")
    if not isinstance(run, Run):
        run = Run.load(run, data_root=data_root)
    elif data_root is not None:
        run.data_root = data_root
    members = parse_spec(detector, run.config.head)
    if len(members) > 1 and alpha is None and tpr >= 1:
        raise ConfigError("a combined calibration is conformal: pass --alpha (or a --tpr below 1)")
    if save and run.path is None:
        raise ConfigError("an in-memory run cannot store a calibration; use save=False")
    cal_set: Images
    if calibration_data:
        cal_set = load_dataset(calibration_data, "test", root=data_root)
        split = {"source": calibration_data, "n": len(cal_set)}
    else:
        held = run.holdout()
        if held is None:
            raise ConfigError(f"{run.path} was trained without a held-out ID split (--holdout 0); pass "
                              "--calibration-data with ID images not used in training")
        cal_set = held
        src = run.data.holdout
        split = {"source": src.describe() if src else "holdout", "n": len(held)}
    scores, fitted = {}, {}
    for m in members:
        if m.needs_fit:
            m.fit_or_load(run, refit=refit, batch_size=batch_size, progress=progress)
            assert m.sha256 is not None
            fitted[m.key] = m.sha256
        scores[m.key] = m.score_set(run, cal_set, batch_size=batch_size, progress=progress, desc="calibration scores")
    if len(members) == 1:
        cal = calibrate(scores[members[0].key], members[0].key, tpr, alpha, split, fitted)
    else:
        cal = calibrate_combined(scores, alpha if alpha is not None else round(1.0 - tpr, 12), combine, split,
                                 fitted)
    cal.weights_sha256 = run.record.weights_sha256  # a calibration belongs to the weights it was made with
    if save:
        assert run.path is not None
        run.record = add_calibration(run.path, cal, name)
    return cal
