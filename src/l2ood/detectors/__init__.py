"""OoD detectors: one file each, one registry (:data:`DETECTORS`). Higher score = more ID."""

from . import (  # noqa: F401  (registration side effects)
    ash,
    energy,
    feature_norm,
    gen,
    knn,
    l1_norm,
    mahalanobis,
    mahalanobis_pp,
    maxlogit,
    msp,
    odin,
    react,
    rmds,
    vim,
)
from .base import DETECTORS, Detector, make_detector, register
from .features import Extraction, Head, extract

__all__ = ["DETECTORS", "Detector", "Extraction", "Head", "extract", "make_detector", "register"]
