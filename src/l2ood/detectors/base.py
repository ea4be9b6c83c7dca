"""The detector API.

Convention for every score in l2ood: **higher = more in-distribution**. A detector maps the
outputs of one forward pass (:class:`~l2ood.detectors.features.Extraction`: unnormalized features
``z``, logits, labels) and the linear head (:class:`~l2ood.detectors.features.Head`: ``W, b`` and how
logits are formed) to one score per image. Detectors never take a model by name.

* Post-hoc detectors implement :meth:`Detector.score` only.
* Detectors that need ID training statistics set ``needs_fit = True`` and implement
  :meth:`Detector.fit`, which consumes the training outputs in row chunks (:meth:`Extraction.chunks`)
  so extra memory stays O(chunk·D + D²) (KNN, NNGuide and Relation must keep a bank: O(N·D)).
* Detectors that read logits set ``uses_logits = True``: for models trained with a normalized head
  they are run on both logit variants (``name:trained`` and ``name:raw``).
* Detectors that need gradients w.r.t. the input (ODIN) or feature maps before pooling (RankFeat) subclass
  :class:`InputDetector` and score images with the model instead.

Registry: :data:`DETECTORS`, filled by the :func:`register` decorator — the single source of names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import Tensor

from ..errors import ConfigError
from .features import Extraction, Head

if TYPE_CHECKING:
    from ..models import Classifier
    from ..runtime import Runtime

DETECTORS: dict[str, type[Detector]] = {}
D = TypeVar("D", bound="type[Detector]")


def register(cls: D) -> D:
    """Class decorator adding a detector to :data:`DETECTORS` under ``cls.name``."""
    if cls.name in DETECTORS:
        raise ConfigError(f"detector name '{cls.name}' registered twice")
    DETECTORS[cls.name] = cls
    return cls


class Detector(ABC):
    """Base class: ``fit`` (when ``needs_fit``) on ID training outputs, then ``score`` (higher = ID)."""

    name: ClassVar[str]
    needs_fit: ClassVar[bool] = False
    uses_logits: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False

    def fit(self, train: Extraction, head: Head) -> Detector:
        """Collect ID statistics (no-op for post-hoc detectors that need none)."""
        return self

    @abstractmethod
    def score(self, x: Extraction, head: Head) -> Tensor:
        """Scores ``(N,)``, higher = more in-distribution."""

    def params(self) -> dict[str, Any]:
        """Hyper-parameters (for reports)."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and isinstance(v, (int, float, str))}


class InputDetector(Detector):
    """A detector that needs the model and the input images (e.g. gradients w.r.t. the input)."""

    needs_model = True

    def score(self, x: Extraction, head: Head) -> Tensor:
        raise TypeError(f"{self.name} scores images with the model: use score_images()")

    @abstractmethod
    def score_images(self, model: Classifier, images: Tensor, rt: Runtime,
                     variant: str = "trained") -> Tensor:
        """Scores ``(N,)`` for uint8 images ``(N, C, H, W)`` in the model's format (or float on the [0, 1] scale)."""


def make_detector(name: str, **kwargs: Any) -> Detector:
    """Instantiate a registered detector (default hyper-parameters unless given)."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector '{name}'; known: {', '.join(DETECTORS)}")
    return DETECTORS[name](**kwargs)
