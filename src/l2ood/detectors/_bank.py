"""A bank of ID training rows that can stay sharded over the ranks under ``torchrun`` (KNN, Relation).

A :class:`BankDetector` keeps one row per training sample in the attributes named by :attr:`BankDetector.bank_rows`.
Fitted from a sharded extraction (:attr:`Extraction.sharded`) each rank keeps its own rows and records the bank's
size over every rank (:attr:`sharded` is then true); scoring combines the ranks' partial answers (the subclass's
business: KNN merges local top-k lists, Relation sums edges). A bank loaded whole from a saved fit is split the
same way by :meth:`keep_shard`. A sharded bank is never saved piecewise: :meth:`gathered` brings its rows to rank 0
alone, which saves the same file one process would.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from torch import Tensor

from ..distributed import dist_from_env, gather_rows_to_main, is_active, shard, total
from .base import Detector
from .features import Extraction

B = TypeVar("B", bound="BankDetector")


class BankDetector(Detector):
    """A detector whose fitted state is a bank of training rows (see the module doc)."""

    #: under torchrun each rank fits from (and keeps) its own shard of the training rows
    shard_fit: ClassVar[bool] = True
    #: the attributes holding one row per training sample (the first one gives the bank's length)
    bank_rows: ClassVar[tuple[str, ...]] = ()
    #: rows of the bank over every rank when it is sharded, else None
    _n_total: int | None = None

    @staticmethod
    def _ranks_total(train: Extraction) -> int | None:
        """The rows of ``train`` over every rank when it is this rank's shard under ``torchrun`` (collective), else
        ``None``: what a fit records as :attr:`_n_total`."""
        return total(len(train)) if train.sharded and is_active() else None

    @property
    def sharded(self) -> bool:
        """Whether each rank holds only its shard of the bank (a fit from sharded rows under ``torchrun``, or a
        loaded bank split by :meth:`keep_shard`)."""
        return self._n_total is not None

    def state_dict(self) -> dict[str, Tensor]:
        if self.sharded:
            raise RuntimeError(f"{self.name}: this rank holds only its shard of the bank; save gathered() instead")
        return super().state_dict()

    def load_state_dict(self: B, state: dict[str, Tensor]) -> B:
        super().load_state_dict(state)
        self._n_total = None  # a saved bank is whole
        return self

    def keep_shard(self) -> None:
        """Under ``torchrun``: keep this rank's contiguous part (:func:`l2ood.distributed.shard`) of a whole bank —
        one loaded from a saved fit — so that scoring divides over the ranks as after a fit from shards."""
        if self.sharded or not is_active() or getattr(self, self.bank_rows[0]) is None:
            return
        n = len(getattr(self, self.bank_rows[0]))
        start, length = shard(n, dist_from_env())
        for a in self.bank_rows:
            setattr(self, a, getattr(self, a)[start : start + length].clone())
        self._n_total = n

    def gathered(self: B) -> B | None:
        """The detector to save (collective under ``torchrun``): ``self`` unless the bank is sharded; then a copy
        holding the whole bank on rank 0 and ``None`` on the other ranks (only rank 0 holds all rows, briefly)."""
        if not self.sharded:
            return self
        rows = {a: gather_rows_to_main(getattr(self, a)) for a in self.bank_rows}
        if any(v is None for v in rows.values()):
            return None
        out = type(self)(**self.hyper_parameters())
        for a in self.fitted_state:
            setattr(out, a, rows[a] if a in rows else getattr(self, a))
        return out
