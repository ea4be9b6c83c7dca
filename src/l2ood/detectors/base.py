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
* **Hyper-parameter selection.** :attr:`Detector.search_space` declares the grid that
  :mod:`l2ood.selection` searches on a validation OoD set when one is given (values from OpenOOD v1.5's sweeps).
* **Fitted state.** :meth:`Detector.state_dict` returns what :meth:`Detector.fit` learnt as named CPU tensors
  (numbers as 0-d tensors) and :meth:`Detector.load_state_dict` restores it into a detector built with the
  same hyper-parameters (:meth:`Detector.hyper_parameters`), so that ``load_state_dict(state_dict())`` scores
  exactly as the fitted detector. By default the state is the attributes named in
  :attr:`Detector.fitted_state`; detectors holding composite state (Mahalanobis, RMDS, ViM) override both.
  :mod:`l2ood.detectors.store` writes it as safetensors (no pickle).

Registry: :data:`DETECTORS`, filled by the :func:`register` decorator — the single source of names.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .features import Extraction, Head

if TYPE_CHECKING:
    from ..models import Classifier
    from ..runtime import Runtime

DETECTORS: dict[str, type[Detector]] = {}
SearchSpace = dict[str, tuple[Any, ...]]  # constructor argument -> values tried
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
    #: under ``torchrun``, :meth:`fit` takes this rank's shard of the training rows (a collective call: the
    #: detector reduces sums or keeps a sharded bank, :mod:`l2ood.distributed`); else it gets every row
    shard_fit: ClassVar[bool] = False
    #: attributes set by :meth:`fit` (tensors, floats, ints or bools; ``None`` before fitting), saved by
    #: :meth:`state_dict` under their names without the leading underscore
    fitted_state: ClassVar[tuple[str, ...]] = ()
    #: hyper-parameter grid for selection on validation data (:mod:`l2ood.selection`; OpenOOD v1.5's sweeps
    #: where it has one): constructor argument → values tried. Empty: nothing to select.
    search_space: ClassVar[SearchSpace] = {}
    #: version of what :meth:`score` computes, raised when its values change by more than float rounding (a new
    #: scale, a saturation fixed): calibrations record it (:func:`score_versions`) and a screen refuses one made
    #: with another version (:func:`l2ood.columns.check_score_versions`); :attr:`score_change` says what changed.
    score_version: ClassVar[int] = 1
    score_change: ClassVar[str] = ""

    def hyper_parameters(self) -> dict[str, Any]:
        """The constructor arguments of this instance (``type(self)(**hyper_parameters())`` rebuilds it unfitted)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in list(sig.parameters)[1:]
                if sig.parameters[k].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}

    @property
    def is_fitted(self) -> bool:
        """True for detectors that need no fit, and for fitted ones after :meth:`fit` or :meth:`load_state_dict`."""
        return not self.needs_fit or all(getattr(self, a, None) is not None for a in self.fitted_state)

    def state_dict(self) -> dict[str, Tensor]:
        """The fitted statistics as named CPU tensors (empty for detectors that need no fit).

        Numbers become 0-d tensors (float64, int64 or bool) so that one safetensors file holds everything.
        Raises ``RuntimeError`` when the detector needs a fit and has none."""
        if not self.is_fitted:
            raise RuntimeError(f"detector '{self.name}' is not fitted: nothing to save")
        return {a.lstrip("_"): _to_tensor(getattr(self, a)) for a in self.fitted_state}

    def check_state(self, state: dict[str, Tensor]) -> None:
        """Refuse fitted statistics that no fit of this detector writes (a file edited by hand, or damaged and its
        digest recorded again): every tensor float32, float64, int64 or bool, and every float finite. Detectors
        whose fits legitimately hold non-finite values override this (OpenMax: NaN rows for classes without a
        correctly classified training image). Raises :class:`~l2ood.errors.ConfigError` naming the statistic."""
        for k, t in state.items():
            if t.dtype not in STATE_DTYPES:
                raise ConfigError(f"detector '{self.name}': fitted statistic '{k}' has dtype {t.dtype}; fits write "
                                  "float32, float64, int64 or bool")
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ConfigError(f"detector '{self.name}': fitted statistic '{k}' holds NaN or infinite values")

    def load_state_dict(self, state: dict[str, Tensor]) -> Detector:
        """Restore fitted statistics saved by :meth:`state_dict` (same detector, same hyper-parameters).

        The names must match exactly (a missing or unexpected tensor is a ``ConfigError``)."""
        _check_keys(self.name, state, [a.lstrip("_") for a in self.fitted_state])
        for a in self.fitted_state:
            setattr(self, a, _from_tensor(state[a.lstrip("_")]))
        return self

    def gathered(self) -> Detector | None:
        """The detector whose fitted state is saved under ``torchrun`` (collective; rank 0 saves it): ``self``,
        unless the fit keeps per-rank state (KNN's sharded bank), which is then brought to rank 0 (``None`` on the
        other ranks)."""
        return self

    def keep_shard(self) -> None:
        """Under ``torchrun``, after every rank loaded the same whole fit: keep only this rank's part of per-row
        state, as a fit from shards would hold it (KNN's and Relation's banks); a no-op for every other detector
        and in one process."""
        return None

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


STATE_DTYPES = (torch.float32, torch.float64, torch.int64, torch.bool)  # what fitted statistics are saved as


def _to_tensor(v: Any) -> Tensor:
    """A fitted value as a CPU tensor: tensors as they are (contiguous), numbers as 0-d tensors."""
    if isinstance(v, Tensor):
        return v.detach().cpu().contiguous()
    if isinstance(v, bool):
        return torch.tensor(v, dtype=torch.bool)
    if isinstance(v, int):
        return torch.tensor(v, dtype=torch.int64)
    if isinstance(v, float):
        return torch.tensor(v, dtype=torch.float64)
    raise TypeError(f"cannot save a fitted value of type {type(v).__name__}")


def _from_tensor(t: Tensor) -> Any:
    """Inverse of :func:`_to_tensor`: 0-d tensors become Python numbers, others stay tensors."""
    if t.ndim:
        return t
    if t.dtype == torch.bool:
        return bool(t)
    return int(t) if not t.dtype.is_floating_point else float(t)


def _check_keys(name: str, state: dict[str, Tensor], expected: list[str]) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ConfigError(f"detector '{name}': fitted state does not match (missing {missing or 'none'}, "
                          f"unexpected {extra or 'none'})")


class InputDetector(Detector):
    """A detector that needs the model and the input images (e.g. gradients w.r.t. the input)."""

    needs_model = True

    def score(self, x: Extraction, head: Head) -> Tensor:
        raise TypeError(f"{self.name} scores images with the model: use score_images()")

    @abstractmethod
    def score_images(self, model: Classifier, images: Tensor, rt: Runtime,
                     variant: str = "trained") -> Tensor:
        """Scores ``(N,)`` for uint8 images ``(N, C, H, W)`` in the model's format (or float on the [0, 1] scale)."""


def score_versions(keys: Iterable[str]) -> dict[str, int]:
    """``{key: score_version}`` of the detector keys (``name[:variant]``) whose :attr:`Detector.score_version` is
    above 1, the versions a calibration records (a key left out means version 1; unknown names are left out)."""
    out = {}
    for key in keys:
        cls = DETECTORS.get(key.partition(":")[0])
        if cls is not None and cls.score_version != 1:
            out[key] = cls.score_version
    return out


def make_detector(name: str, **kwargs: Any) -> Detector:
    """Instantiate a registered detector (default hyper-parameters unless given)."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector '{name}'; known: {', '.join(DETECTORS)}")
    return DETECTORS[name](**kwargs)
