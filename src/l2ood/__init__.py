"""l2ood — out-of-distribution screening with L2-normalized features.

Haas, Yolland & Rabus, "Exploring Simple, High Quality Out-of-Distribution Detection with L2
Normalization", TMLR 2024 (arXiv:2306.04072): train with ``logits = fc(z/‖z‖)``, score with ``‖z‖``.

Convention for every score in l2ood: higher = more in-distribution.
"""

from importlib.metadata import PackageNotFoundError, version

try:  # single source: the version in pyproject.toml, as installed
    __version__ = version("l2ood")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
