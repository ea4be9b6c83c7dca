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
from .features import Extraction, Head, extract, forward_batch, iter_batches

# Display order for tables ("all"): the method first, then logit-based, then feature-statistics
# detectors. Only an ordering: any registered detector missing here is appended.
_DISPLAY_ORDER = ("feature_norm", "l1_norm", "msp", "maxlogit", "energy", "gen", "odin", "react", "ash_s",
                  "mahalanobis", "rmds", "mahalanobis++", "knn", "vim")


def all_detectors() -> list[str]:
    """Every registered detector name, in display order."""
    return [n for n in _DISPLAY_ORDER if n in DETECTORS] + [n for n in DETECTORS if n not in _DISPLAY_ORDER]


__all__ = ["DETECTORS", "Detector", "Extraction", "Head", "all_detectors", "extract", "forward_batch", "iter_batches",
           "make_detector", "register"]
