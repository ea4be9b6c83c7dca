"""Small validators shared by the typed configs (pydantic ``Annotated`` metadata)."""

from __future__ import annotations

import math

from pydantic import AfterValidator


def one_of(*allowed: object) -> AfterValidator:
    """Accept only the listed values (for config strings that stay plain ``str`` in the dataclasses)."""
    def check(v: object) -> object:
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(map(repr, allowed))}")
        return v

    return AfterValidator(check)


def finite_list(v: list[float]) -> list[float]:
    """Reject NaN/inf entries."""
    if not all(math.isfinite(x) for x in v):
        raise ValueError("values must be finite")
    return v
