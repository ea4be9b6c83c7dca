"""OoD detectors: one file each, one registry (:data:`DETECTORS`). Higher score = more ID."""

from . import (  # noqa: F401  (registration side effects)
    ash,
    ash_b,
    ash_p,
    dice,
    energy,
    entropy,
    fdbd,
    feature_norm,
    gen,
    gradnorm,
    klm,
    knn,
    l1_norm,
    mahalanobis,
    mahalanobis_pp,
    maxlogit,
    msp,
    nnguide,
    odin,
    openmax,
    rankfeat,
    react,
    relation,
    residual,
    rmds,
    scale,
    she,
    temp_scale,
    vim,
)
from .base import DETECTORS, Detector, make_detector, register
from .features import Extraction, Head, extract, forward_batch, iter_batches

# Display order for tables ("all"): the method first, then logit-based, then feature-statistics
# detectors. Only an ordering: any registered detector missing here is appended.
_DISPLAY_ORDER = ("feature_norm", "l1_norm", "msp", "temp_scale", "maxlogit", "energy", "entropy", "gen", "klm",
                  "odin", "gradnorm", "openmax", "react", "ash_s", "ash_p", "ash_b", "scale", "dice", "rankfeat",
                  "fdbd", "she", "mahalanobis", "rmds", "mahalanobis++", "knn", "nnguide", "relation", "residual",
                  "vim")


def all_detectors() -> list[str]:
    """Every registered detector name, in display order."""
    return [n for n in _DISPLAY_ORDER if n in DETECTORS] + [n for n in DETECTORS if n not in _DISPLAY_ORDER]


__all__ = ["DETECTORS", "Detector", "Extraction", "Head", "all_detectors", "extract", "forward_batch", "iter_batches",
           "make_detector", "register"]
