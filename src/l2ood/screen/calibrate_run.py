"""Calibrating a run's screen on held-out ID images (:func:`calibrate_run`).

The maths (threshold at a target TPR, split-conformal p-values and their guarantee) is in
:mod:`l2ood.metrics.conformal`; this module picks the images, scores them with the run's forward
pass and stores the result in the run record (:func:`l2ood.record.add_calibration`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..errors import ConfigError
from ..metrics.conformal import Calibration, calibrate
from ..record import add_calibration
from ..run import Images, Run
from .screener import screenable_detectors


def calibrate_run(run: Run | str | Path, *, tpr: float = 0.95, alpha: float | None = None,
                  detector: str = "feature_norm", calibration_data: str | None = None, name: str = "default",
                  data_root: str | Path | None = None, batch_size: int = 512, progress: bool = False,
                  save: bool = True) -> Calibration:
    """Score held-out ID images and store the threshold (and conformal scores) in the run record.

    Images: the run's recorded holdout (never training or test images), or ``calibration_data`` (a
    data-set spec; a registered name gives its test split). With ``save`` the calibration is stored
    under ``name`` in ``RUN/model.json``; other calibrations are kept.
    """
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    if detector not in screenable_detectors():
        raise ConfigError(f"detector must be one of {', '.join(screenable_detectors())}, got {detector!r}")
    if not isinstance(run, Run):
        run = Run.load(run, data_root=data_root)
    elif data_root is not None:
        run.data_root = data_root
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
    scores = run.scores(cal_set, detector, batch_size=batch_size, progress=progress, desc="calibration scores")
    cal = calibrate(np.asarray(scores), detector, tpr, alpha, split)
    if save:
        if run.path is None:
            raise ConfigError("an in-memory run cannot store a calibration; use save=False")
        run.record = add_calibration(run.path, cal, name)
    return cal
