"""Errors raised by the data layer; the CLI prints them as one clear message, never a traceback."""

from __future__ import annotations

from ..errors import L2oodError


class DataError(L2oodError):
    """Base class for data problems a user can fix (missing files, bad format, unknown name)."""


class DataNotFoundError(DataError):
    """Raised when a dataset cannot be found locally and cannot be downloaded."""


class DataFormatError(DataError):
    """Raised when a file exists but does not have the documented format."""
