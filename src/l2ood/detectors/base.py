"""The detector API.

Convention for every score in l2ood: **higher = more in-distribution**. A detector maps the
outputs of one forward pass (:class:`~l2ood.detectors.features.Extraction`) to one score per image.
Detectors that need ID training statistics implement :meth:`Detector.fit`; the others ignore it.
Detectors take tensors (features, logits, the head's ``W, b``), never a model by name.

Registry: :data:`DETECTORS`, filled by the :func:`register` decorator — the single source of names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, TypeVar

from torch import Tensor

from .features import Extraction, Head

DETECTORS: dict[str, type[Detector]] = {}
D = TypeVar("D", bound="type[Detector]")


def register(cls: D) -> D:
    """Class decorator adding a detector to :data:`DETECTORS` under ``cls.name``."""
    if cls.name in DETECTORS:
        raise ValueError(f"detector name '{cls.name}' registered twice")
    DETECTORS[cls.name] = cls
    return cls


class Detector(ABC):
    """Base class: ``fit`` (optional) on ID training outputs, then ``score`` (higher = ID)."""

    name: ClassVar[str]
    needs_fit: ClassVar[bool] = False

    def fit(self, train: Extraction, head: Head) -> Detector:
        """Collect ID statistics (no-op for post-hoc detectors that need none)."""
        return self

    @abstractmethod
    def score(self, x: Extraction, head: Head) -> Tensor:
        """Scores ``(N,)``, higher = more in-distribution."""


def make_detector(name: str) -> Detector:
    """Instantiate a registered detector with its default hyper-parameters."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector '{name}'; known: {', '.join(DETECTORS)}")
    return DETECTORS[name]()
