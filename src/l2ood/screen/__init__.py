"""Screening in deployment: calibrated thresholds, conformal p-values, robust file screening."""

from ..metrics.conformal import Calibration, calibrate, conformal_p_values, threshold_for_tpr
from .calibrate_run import calibrate_run
from .images import DEFAULT_MAX_PIXELS, ImageReadError, decode_image, discover
from .screener import RECORD_FIELDS, NotCalibratedError, Screener, ScreenOutput, screen_to_file, screenable_detectors

__all__ = ["DEFAULT_MAX_PIXELS", "RECORD_FIELDS", "Calibration", "ImageReadError", "NotCalibratedError",
           "ScreenOutput", "Screener", "calibrate", "calibrate_run", "conformal_p_values", "decode_image", "discover",
           "screen_to_file", "screenable_detectors", "threshold_for_tpr"]
