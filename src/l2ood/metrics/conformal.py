"""Calibration of a screening threshold on held-out ID data, and split-conformal p-values.

Scores follow the l2ood convention (higher = more in-distribution).

**Threshold at a target TPR.** ``t`` = the ⌈tpr·n⌉-th largest of the n calibration scores; an input
is accepted as ID when ``score ≥ t``. On the calibration set exactly ⌈tpr·n⌉ of n are accepted.

**Conformal p-values** (split conformal; Vovk, Gammerman & Shafer, *Algorithmic Learning in a
Random World*, 2005; Bates et al., "Testing for Outliers with Conformal p-values", Ann. Stat. 2023).
For a new input with score s and calibration scores s_1..s_n,

    p(s) = (1 + #{i : s_i ≤ s}) / (n + 1).

If the new input and the calibration inputs are *exchangeable* (e.g. i.i.d. draws from the same ID
distribution, the calibration split never used for training or threshold tuning), then for every
α ∈ (0, 1): P(p ≤ α) ≤ α. Rejecting when ``p ≤ α`` therefore rejects ID inputs at a rate of at most
α in expectation over the calibration draw (finite-sample, no distributional assumption on the
scores). The guarantee says nothing about the OoD acceptance rate, and it breaks when the ID data
at deployment drift away from the calibration data (exchangeability fails).

**Combining K detectors.** Each detector k gets its own conformal p-value ``p_k`` from its scores on
the same calibration images. The K p-values of one input are dependent — they come from one image,
one network and one calibration set, and detectors built on the same features are often strongly
correlated — so the combination rule must keep its false-rejection guarantee under *arbitrary*
dependence:

* **Bonferroni-min** (the default): ``p = min(1, K · min_k p_k)``. By the union bound,
  ``P(p ≤ α) ≤ Σ_k P(p_k ≤ α/K) ≤ K · α/K = α`` whatever the dependence between the ``p_k`` (each
  ``p_k`` is a valid conformal p-value, ``P(p_k ≤ t) ≤ t``). So the finite-sample guarantee above
  carries over exactly: ID inputs are rejected at a rate ≤ α. The price is power: with K detectors
  each must reach ``α/K`` alone (and with n calibration images ``α/K ≥ 1/(n+1)`` is needed for any
  rejection at all).
* **Cauchy combination** (``rule="cauchy"``; Liu & Xie, "Cauchy Combination Test: A Powerful Test With
  Analytic p-Value Calculation Under Arbitrary Dependency Structures", JASA 115(529), 2020):
  ``T = (1/K) Σ_k tan((1/2 − p_k)·π)``, ``p = P(C > T) = 1/2 − arctan(T)/π`` with C standard Cauchy
  (computed as ``atan2(1, T)/π``, without cancellation). Conditions: it is **exact under
  independence** (a weighted mean of independent standard Cauchy variables is standard Cauchy; with
  conformal p-values, which are super-uniform, it is then conservative), exact when all ``p_k`` are
  equal (perfect dependence), and otherwise only **asymptotically valid for small α** —
  ``P(p ≤ α)/α → 1`` as ``α → 0`` for p-values from (pairwise bivariate) normal test statistics with
  any correlation (Liu & Xie, Theorem 1). At a fixed α such as 0.05 it can exceed α slightly, and
  conformal p-values (discrete, from one shared calibration set) are not covered by the theorem.
  Measured with this module (3 detectors, Gaussian scores correlated 0.5 with the first one's, n = 199,
  40 000 fresh ID inputs, two seeds): ID rejection 0.049 at α = 0.05 but 0.105–0.109 at α = 0.1. It is more powerful
  than Bonferroni when several detectors agree moderately, but a single ``p_k`` near 1 pulls T
  towards −∞ and can outvote the others. Use it when power matters more than an exact bound.

Bonferroni-min is the default because only its guarantee holds exactly at every α, for every
dependence between detectors and for finite calibration sets; the guarantee of the combined p-value
still needs exchangeable ID data, like every conformal p-value.

The *score* of a combined calibration (what a screen reports and evaluation ranks by; higher = more
ID) is ``ln`` of the combined p-value before clipping at 1 — ``ln(K · min_k p_k)`` for Bonferroni,
``ln p`` for Cauchy — and its threshold is ``ln α``: the verdict is ``p ≤ α``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import AfterValidator, ConfigDict, Field, model_validator

from ..errors import ConfigError


def _ascending(v: list[float]) -> list[float]:
    if any(b < a for a, b in itertools.pairwise(v)):
        raise ValueError("calibration scores must be sorted ascending")
    return v


MAX_CALIBRATION_SCORES = 10_000_000
MAX_MEMBERS = 16
_Finite = Annotated[float, Field(allow_inf_nan=False)]
_Scores = Annotated[list[_Finite], Field(min_length=1, max_length=MAX_CALIBRATION_SCORES), AfterValidator(_ascending)]
_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
_DetectorKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_+.-]{1,64}(:raw)?$")]
Rule = Literal["bonferroni", "cauchy"]
RULES: tuple[Rule, ...] = ("bonferroni", "cauchy")


def combine_p_values(p: ArrayLike, rule: str = "bonferroni") -> np.ndarray:
    """Combine the p-values ``p`` of shape ``(N, K)`` (one row per input, one column per detector) into one
    p-value per input, valid under arbitrary dependence between the columns (see the module doc).

    ``"bonferroni"``: ``min(1, K · min_k p_k)``; ``"cauchy"``: ``atan2(1, T)/π`` with
    ``T = (1/K) Σ_k tan((1/2 − p_k)π)`` (Liu & Xie 2020).

    >>> combine_p_values([[0.01, 0.5], [0.4, 0.9]]).tolist()
    [0.02, 0.8]
    >>> round(float(combine_p_values([[0.3, 0.3]], "cauchy")[0]), 12)  # equal p-values combine to themselves
    0.3
    """
    return np.minimum(1.0, _combined(p, rule))


def combined_log_p(p: ArrayLike, rule: str = "bonferroni") -> np.ndarray:
    """``ln`` of the combined p-value *before* clipping at 1 (the score of a combined calibration):
    ``ln(K · min_k p_k)`` (Bonferroni) or ``ln p_cauchy``; ``(N, K)`` → ``(N,)``."""
    return np.log(_combined(p, rule))


def combined_scores(cal_scores: Sequence[ArrayLike], member_scores: ArrayLike, rule: str = "bonferroni") -> np.ndarray:
    """Combined scores ``ln`` of the unclipped combined p-value (higher = more ID) of inputs with member scores
    ``(N, K)``, each member's conformal p-value taken against its calibration scores ``cal_scores[k]``.
    Rows with a non-finite member score get NaN.

    >>> combined_scores([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], [[2.5, 35.0]]).round(6).tolist()  # 2·min(3/4, 1)
    [0.405465]
    """
    m = np.asarray(member_scores, dtype=np.float64)
    if m.ndim != 2 or m.shape[1] != len(cal_scores):
        raise ConfigError(f"need member scores of shape (N, {len(cal_scores)}), got {m.shape}")
    finite = np.isfinite(m).all(axis=1)
    out = np.full(m.shape[0], np.nan)
    if finite.any():
        p = np.stack([conformal_p_values(c, m[finite, k]) for k, c in enumerate(cal_scores)], axis=1)
        out[finite] = combined_log_p(p, rule)
    return out


def _combined(p: ArrayLike, rule: str) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ConfigError(f"p-values to combine must be an (N, K) array, got shape {a.shape}")
    if a.size and not ((a > 0) & (a <= 1)).all():
        raise ConfigError("p-values to combine must lie in (0, 1]")
    if rule == "bonferroni":
        return a.shape[1] * a.min(axis=1)
    if rule == "cauchy":
        t = (1.0 / np.tan(np.pi * a)).mean(axis=1)  # tan((1/2 − p)π) = cot(pπ); equal weights 1/K
        return np.arctan2(1.0, t) / np.pi  # P(C > t) = 1/2 − arctan(t)/π, without cancellation for large t
    raise ConfigError(f"unknown combination rule {rule!r}; known: {', '.join(RULES)}")


@dataclass
class Calibration:
    """A calibrated screen: detector, threshold and the sorted calibration scores.

    The annotations are the schema a run record validates when it is loaded (all values finite,
    ``tpr`` in (0, 1], ``alpha`` in (0, 1), scores ascending).

    A **combined** calibration (``members`` set) holds the sorted calibration scores of each member
    detector (``member_scores``, same n images) and the rule (``combine``); it is always conformal
    (``alpha`` set). Its :attr:`scores` are the in-sample combined scores of the calibration images (for
    display), its :attr:`threshold` is ``ln α``, and a screen computes an input's score with
    :meth:`combined_score` (see the module doc). ``fitted`` maps each detector that needs fitted statistics
    to the SHA-256 of the file (``RUN/detectors/…``) its calibration scores were computed with; a screen
    refuses any other file."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)

    detector: Annotated[str, Field(min_length=1, max_length=1100)]  # a detector key, or the members joined by ","
    tpr: Annotated[float, Field(gt=0, le=1)]
    threshold: _Finite
    alpha: Annotated[float, Field(gt=0, lt=1)] | None  # when set: p ≤ alpha → OoD; else score < threshold → OoD
    scores: _Scores  # calibration scores, ascending
    split: dict[str, Any] = field(default_factory=dict)
    members: Annotated[list[_DetectorKey], Field(min_length=2, max_length=MAX_MEMBERS)] | None = None
    member_scores: Annotated[list[_Scores], Field(min_length=2, max_length=MAX_MEMBERS)] | None = None
    combine: Rule | None = None
    fitted: Annotated[dict[_DetectorKey, _Sha256], Field(max_length=MAX_MEMBERS)] = field(default_factory=dict)
    weights_sha256: _Sha256 | None = None  # the weights the scores were computed with (None: made before recorded)
    #: detector key → its score version where above 1 (:attr:`l2ood.detectors.Detector.score_version`; a key left out
    #: is version 1), set by :func:`calibrate` / :func:`calibrate_combined`: a screen refuses a calibration whose
    #: versions are not the detectors' (scores on another scale: msp before l2ood 0.2 was a probability)
    score_versions: Annotated[dict[_DetectorKey, Annotated[int, Field(ge=2, le=1_000_000)]],
                              Field(max_length=MAX_MEMBERS)] = field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Calibration:
        parts = (self.members is None, self.member_scores is None, self.combine is None)
        if len(set(parts)) != 1:
            raise ValueError("members, member_scores and combine are set together (a combined calibration) or "
                             "not at all")
        if self.members is not None:
            assert self.member_scores is not None
            if len(set(self.members)) != len(self.members):
                raise ValueError("a combined calibration lists each member once")
            if self.detector != ",".join(self.members):
                raise ValueError("detector of a combined calibration must be its members joined by ','")
            if len(self.member_scores) != len(self.members):
                raise ValueError(f"{len(self.member_scores)} score lists for {len(self.members)} members")
            if len({len(m) for m in self.member_scores}) != 1:
                raise ValueError("every member needs scores of the same calibration images (same count)")
            if self.alpha is None:
                raise ValueError("a combined calibration is conformal: alpha is required")
        keys = set(self.members or [self.detector])
        if not set(self.fitted) <= keys:
            raise ValueError(f"fitted names detectors the calibration does not use: {sorted(set(self.fitted) - keys)}")
        if not set(self.score_versions) <= keys:
            raise ValueError("score_versions names detectors the calibration does not use: "
                             f"{sorted(set(self.score_versions) - keys)}")
        return self

    @property
    def n(self) -> int:
        return len(self.member_scores[0]) if self.member_scores else len(self.scores)

    @property
    def is_combined(self) -> bool:
        return self.members is not None

    @property
    def detectors(self) -> list[str]:
        """The detector keys this calibration scores with (one, or the members)."""
        return list(self.members) if self.members is not None else [self.detector]

    def member_p_values(self, member_scores: ArrayLike) -> np.ndarray:
        """Conformal p-values ``(N, K)`` of the member scores ``(N, K)`` (combined calibrations)."""
        if self.member_scores is None:
            raise ConfigError("not a combined calibration")
        m = np.asarray(member_scores, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != len(self.member_scores):
            raise ConfigError(f"need scores of shape (N, {len(self.member_scores)}), got {m.shape}")
        return np.stack([conformal_p_values(np.asarray(c), m[:, k]) for k, c in enumerate(self.member_scores)],
                        axis=1) if m.shape[0] else np.empty((0, m.shape[1]))

    def combined_score(self, member_scores: ArrayLike) -> np.ndarray:
        """The score of each input (``ln`` of the unclipped combined p-value; higher = more ID) from its member
        scores ``(N, K)``. Rows with a non-finite member score get NaN (no verdict: fail closed)."""
        if self.member_scores is None or self.combine is None:
            raise ConfigError("not a combined calibration")
        return combined_scores(self.member_scores, member_scores, self.combine)

    def p_values(self, s: ArrayLike) -> np.ndarray:
        """Conformal p-values ``(1 + #{s_i ≤ s}) / (n + 1)``; for a combined calibration ``s`` is the combined
        score (:meth:`combined_score`) and the p-value ``min(1, exp(s))``."""
        if self.is_combined:
            return np.minimum(1.0, np.exp(np.asarray(s, dtype=np.float64)))
        return conformal_p_values(np.asarray(self.scores), s)

    def is_ood(self, s: ArrayLike) -> np.ndarray:
        """Verdict per score: True = out of distribution. A combined p-value is compared with ``alpha`` up to a
        relative 1e-12, so that a p-value equal to ``alpha`` in exact arithmetic (e.g. the Cauchy combination of
        equal p-values, which is that p-value) still counts as ``p ≤ alpha`` after rounding."""
        s = np.asarray(s, dtype=np.float64)
        if self.alpha is not None:
            return self.p_values(s) <= self.alpha * (1 + 1e-12 if self.is_combined else 1.0)
        return s < self.threshold

    def rule(self) -> str:
        if self.is_combined:
            assert self.members is not None
            how = (f"min(1, {len(self.members)}·min_k p_k)" if self.combine == "bonferroni"
                   else "Cauchy combination of the p_k")
            return (f"OoD when the combined conformal p-value {how} ≤ {self.alpha} over {', '.join(self.members)} "
                    f"({self.combine}; n_cal = {self.n})")
        if self.alpha is not None:
            return f"OoD when conformal p-value ≤ {self.alpha} (n_cal = {self.n})"
        return f"OoD when {self.detector} < {self.threshold:.6g} (keeps {100 * self.tpr:.1f} % of ID)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Validated construction (raises :class:`l2ood.errors.ConfigError` naming the bad key)."""
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(cls).validate_python(d)
        except ValidationError as e:
            raise ConfigError("calibration: " + "; ".join(
                f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None


def threshold_for_tpr(cal_scores: ArrayLike, tpr: float) -> float:
    """The ⌈tpr·n⌉-th largest calibration score (accept when ``score ≥ threshold``).

    >>> threshold_for_tpr([1.0, 2.0, 3.0, 4.0], 0.75)  # keeps 3 of the 4 calibration scores
    2.0
    """
    a = np.sort(np.asarray(cal_scores, dtype=np.float64).ravel())[::-1]
    if a.size == 0:
        raise ConfigError("no calibration scores")
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    k = math.ceil(tpr * a.size - 1e-9)
    if tpr * a.size < 1 - 1e-9:  # k = 0 would index the smallest score: the loosest threshold, not the strictest
        raise ConfigError(f"tpr = {tpr} keeps none of the {a.size} calibration images (tpr·n < 1); the smallest "
                          f"usable tpr with them is 1/n = {1 / a.size:.3g}")
    return float(a[k - 1])


def conformal_p_values(cal_scores: ArrayLike, s: ArrayLike) -> np.ndarray:
    """``p(s) = (1 + #{i: cal_i ≤ s}) / (n + 1)`` for each s (vectorized with a sorted search).

    >>> conformal_p_values([1.0, 2.0, 3.0], [0.5, 2.0, 9.0]).tolist()
    [0.25, 0.75, 1.0]
    """
    cal = np.sort(np.asarray(cal_scores, dtype=np.float64).ravel())
    s = np.asarray(s, dtype=np.float64)
    counts = np.searchsorted(cal, s, side="right")
    return (1.0 + counts) / (cal.size + 1.0)


def _finite_scores(cal_scores: ArrayLike, what: str = "calibration scores") -> np.ndarray:
    a = np.asarray(cal_scores, dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError("no calibration scores")
    if not np.isfinite(a).all():
        raise ConfigError(f"{what} must be finite ({int((~np.isfinite(a)).sum())} of {a.size} are "
                          "NaN or infinite: the model produces non-finite features on ID data)")
    if a.size > 1 and a.min() == a.max():  # a threshold at that value would accept every input scoring it
        raise ConfigError(f"{what}: all {a.size} calibration images score {a[0]:.6g}: the detector cannot tell "
                          "inputs apart (a broken model or broken statistics); it cannot drive a screen")
    return a


def calibrate(cal_scores: ArrayLike, detector: str = "feature_norm", tpr: float = 0.95,
              alpha: float | None = None, split: dict[str, Any] | None = None,
              fitted: dict[str, str] | None = None) -> Calibration:
    """Build a :class:`Calibration` from held-out ID scores (``fitted``: see :class:`Calibration`)."""
    a = _finite_scores(cal_scores)
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}")
    if alpha is not None and not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if alpha is not None and alpha < 1 / (a.size + 1):
        raise ConfigError(f"alpha = {alpha} is below 1/(n+1) = {1 / (a.size + 1):.2g}: with {a.size} "
                         "calibration images no input could ever be rejected; use more calibration data")
    return Calibration(detector, tpr, threshold_for_tpr(a, tpr), alpha, sorted(a.tolist()), split or {},
                       fitted=dict(fitted or {}), score_versions=_score_versions([detector]))


def _score_versions(keys: list[str]) -> dict[str, int]:
    """The score versions a calibration of detector keys ``keys`` records (:class:`Calibration`)."""
    from ..detectors.base import score_versions  # here: the metrics depend on the detectors for this alone

    return score_versions(keys)


def calibrate_combined(member_scores: Mapping[str, ArrayLike], alpha: float, rule: str = "bonferroni",
                       split: dict[str, Any] | None = None, fitted: dict[str, str] | None = None) -> Calibration:
    """A combined conformal :class:`Calibration` from the held-out ID scores of each member detector (one array
    per detector, the same images in the same order). Rejects when the combined p-value is ``≤ alpha``.

    With n calibration images each conformal p-value is at least ``1/(n+1)``, so Bonferroni can reject only
    when ``alpha ≥ K/(n+1)``; a smaller ``alpha`` is refused (no input could ever be rejected)."""
    if rule not in RULES:
        raise ConfigError(f"unknown combination rule {rule!r}; known: {', '.join(RULES)}")
    if len(member_scores) < 2:
        raise ConfigError("a combination needs at least two detectors")
    if len(member_scores) > MAX_MEMBERS:
        raise ConfigError(f"at most {MAX_MEMBERS} detectors can be combined, got {len(member_scores)}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    cols = {k: _finite_scores(v, f"calibration scores of {k}") for k, v in member_scores.items()}
    n = {v.size for v in cols.values()}
    if len(n) != 1:
        raise ConfigError(f"member detectors scored different numbers of calibration images: {sorted(n)}")
    size, k = n.pop(), len(cols)
    floor = (k if rule == "bonferroni" else 1) / (size + 1)
    if alpha < floor:
        raise ConfigError(f"alpha = {alpha} is below {'K/(n+1)' if rule == 'bonferroni' else '1/(n+1)'} = "
                          f"{floor:.2g}: with {size} calibration images and {k} detectors no input could ever be "
                          "rejected; use more calibration data or a larger alpha")
    members = list(cols)
    mat = np.stack([cols[m] for m in members], axis=1)
    sorted_cols = [sorted(cols[m].tolist()) for m in members]
    draft = Calibration(",".join(members), 1.0 - alpha, math.log(alpha), alpha, [0.0], split or {}, members,
                        sorted_cols, rule, dict(fitted or {}), score_versions=_score_versions(members))
    draft.scores = sorted(draft.combined_score(mat).tolist())  # in-sample, for display only
    return draft
