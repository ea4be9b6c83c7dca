"""Optional parts of l2ood and the extra that installs each (``pip install 'l2ood[EXTRA]'``).

- ``demo``: scikit-image, matplotlib — ``l2ood demo`` (its textures OoD set and report figures), synthetic photo
  folders;
- ``report``: matplotlib — figures in report.md, ``l2ood analyze``;
- ``serve``: fastapi, uvicorn, python-multipart — ``l2ood serve``;
- ``export``: onnx, onnxscript, onnxruntime — ``l2ood export``;
- ``timm``: timm — ``--arch timm:NAME``; ``torchvision``: torchvision — ``--arch torchvision:NAME``;
- ``all``: all of the above; ``test``, ``dev``, ``docs``: for working on l2ood.

:func:`require` imports an optional module or raises :class:`MissingExtra` (a :class:`~l2ood.errors.ConfigError`:
exit status 2, one message naming the extra), never a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError

#: the pip package behind each optional module l2ood imports
PACKAGES = {"skimage": "scikit-image", "matplotlib": "matplotlib", "fastapi": "fastapi", "uvicorn": "uvicorn",
            "multipart": "python-multipart", "onnx": "onnx", "onnxscript": "onnxscript",
            "onnxruntime": "onnxruntime", "timm": "timm", "torchvision": "torchvision"}


class MissingExtra(ConfigError, ImportError):
    """An optional dependency that the requested work needs is not installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` for ``what``; :class:`MissingExtra` naming ``pip install 'l2ood[extra]'`` if it is
    missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        raise MissingExtra(f"{what} needs the optional package '{PACKAGES.get(top, top)}', which is not installed: "
                           f"pip install 'l2ood[{extra}]'") from e


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it when it is already known missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
