"""OoD detectors: one file each, one registry (:data:`DETECTORS`). Higher score = more ID."""

from . import energy, feature_norm, maxlogit, msp  # noqa: F401  (registration side effects)
from .base import DETECTORS, Detector, make_detector, register
from .features import Extraction, Head, extract

__all__ = ["DETECTORS", "Detector", "Extraction", "Head", "extract", "make_detector", "register"]
