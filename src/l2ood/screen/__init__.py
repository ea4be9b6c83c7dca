"""Screening in deployment: calibrated thresholds, conformal p-values (one detector or several combined),
fitted detectors saved with the run, robust file screening."""

from ..columns import Column, parse_spec
from ..metrics.conformal import (
    Calibration,
    calibrate,
    calibrate_combined,
    combine_p_values,
    conformal_p_values,
    threshold_for_tpr,
)
from .calibrate_run import calibrate_run
from .images import DEFAULT_MAX_PIXELS, ImageReadError, decode_image, discover
from .screener import RECORD_FIELDS, NotCalibratedError, Screener, ScreenOutput, screen_to_file, screenable_detectors

__all__ = ["DEFAULT_MAX_PIXELS", "RECORD_FIELDS", "Calibration", "Column", "ImageReadError", "NotCalibratedError",
           "ScreenOutput", "Screener", "calibrate", "calibrate_combined", "calibrate_run", "combine_p_values",
           "conformal_p_values", "decode_image", "discover", "parse_spec",
           "screen_to_file", "screenable_detectors", "threshold_for_tpr"]
