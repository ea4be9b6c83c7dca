"""The error types of l2ood.

Everything a user can fix (bad arguments, missing or malformed data, a folder that is not a run, a
run record that fails validation) derives from :class:`L2oodError`. The command line prints these
as one message and exits with status 2. Any other exception is a bug in l2ood (or a fault of the
machine): the command line writes its traceback to a log file and exits with status 3
(see :mod:`l2ood.cli.main`).
"""

from __future__ import annotations


class L2oodError(Exception):
    """Base class of every problem a user can fix; its message says what to do."""


class ConfigError(L2oodError, ValueError):
    """A bad argument or configuration value (also a ``ValueError``)."""


class RunError(L2oodError):
    """A run folder that cannot be loaded safely: missing files, pickle files, a record that fails
    validation (the message names the file and the key)."""
