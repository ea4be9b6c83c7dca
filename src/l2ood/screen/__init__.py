"""Screening in deployment: calibrated thresholds, conformal p-values, robust file screening."""

from .calibrate import Calibration, calibrate, conformal_p_values, threshold_for_tpr
from .images import DEFAULT_MAX_PIXELS, ImageReadError, decode_image, discover
from .screener import RECORD_FIELDS, NotCalibratedError, Screener, ScreenOutput, screenable_detectors

__all__ = ["DEFAULT_MAX_PIXELS", "RECORD_FIELDS", "Calibration", "ImageReadError", "NotCalibratedError",
           "ScreenOutput", "Screener", "calibrate", "conformal_p_values", "decode_image", "discover",
           "screenable_detectors", "threshold_for_tpr"]
