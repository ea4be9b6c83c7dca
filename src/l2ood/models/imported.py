"""A classifier l2ood did not train, seen through l2ood's model interface.

:class:`HookedClassifier` wraps any ``nn.Module`` whose output is the logits of a linear head: the
penultimate features ``z`` are the head's input (read with a forward hook, flattened), so every detector,
calibration, screen, service and export works on the user's network unchanged. Its state dict is the user's
network's (under ``model.``) plus the input normalization (``input_mean``, ``input_std``), so it is saved as
``model.safetensors`` like every l2ood model; the head's tensors are stored once.

A run imported from code (``factory:package.module:function`` in its :class:`~l2ood.models.ModelConfig`) is
rebuilt by calling that function, i.e. by running the user's code: :func:`build_factory` does so only when the
caller says it trusts that code (``trust_code=True``, the command line's ``--trust-code``, or the environment
variable ``L2OOD_TRUST_CODE=1``), as ``trust_remote_code`` does in Hugging Face's libraries. No module is ever
unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .classifier import Output

FACTORY_PREFIX = "factory:"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"^(?P<module>{_IDENT}(?:\.{_IDENT})*):(?P<fn>{_IDENT})$")
TRUST_ENV = "L2OOD_TRUST_CODE"


class HookedClassifier(nn.Module):
    """A user's classifier through l2ood's interface: ``features(x)`` = the head's input ``z`` (fp32),
    ``logits_from_features(z)`` = the head applied to ``z``, ``fc`` = the head, ``head = "ce"`` (plain logits).

    Args:
        model: the network; its output (or the first element of a tuple output) must be the head's output.
        head: the name of its last linear layer (``model.get_submodule(head)``) or the layer itself.
        mean, std: per-channel input normalization on the [0, 1] scale applied before ``model`` (default: none,
            the images reach the network on [0, 1]).
    """

    head: str = "ce"
    tau: float = 1.0
    input_mean: Tensor
    input_std: Tensor

    def __init__(self, model: nn.Module, head: str | nn.Linear, mean: list[float] | None = None,
                 std: list[float] | None = None) -> None:
        super().__init__()
        self.model = model
        if isinstance(head, str):
            try:
                fc = model.get_submodule(head)
            except AttributeError:
                raise ConfigError(f"the model has no layer '{head}'; name its last linear layer, e.g. 'fc', 'head' "
                                  "or 'classifier.1' (or leave the head out to have it found)") from None
        else:
            fc = head
        if not isinstance(fc, nn.Linear):
            raise ConfigError(f"the head must be an nn.Linear (got {type(fc).__name__}); name the model's last "
                              "linear layer, e.g. 'fc', 'head' or 'classifier.1'")
        self.head_layer = head if isinstance(head, str) else next(
            (n for n, m in model.named_modules() if m is fc), "")
        object.__setattr__(self, "_fc", fc)  # not registered a second time: its tensors are saved once
        c = len(mean) if mean is not None else 1
        self.register_buffer("input_mean", torch.tensor(mean or [0.0] * c).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(std or [1.0] * c).view(1, -1, 1, 1))
        self._z: Tensor | None = None
        self._hook = fc.register_forward_hook(self._capture)

    def release(self) -> None:
        """Remove this wrapper's forward hook from the head (a wrapper around a module that lives on, e.g. the
        caller's own network after an import, lets go of it so that only the caller's own wrappers remain)."""
        self._hook.remove()

    @property
    def fc(self) -> nn.Linear:
        return self._fc  # type: ignore[return-value]

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:  # noqa: ARG002
        self._z = inputs[0]  # (the forward-hook signature; only the head's input is kept)

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._z = None
        out = self.model((x - self.input_mean) / self.input_std)
        z = self._z
        self._z = None
        if z is None:
            raise ConfigError("the named head was not called in the model's forward pass")
        logits = out if isinstance(out, Tensor) else out[0]
        return z.flatten(1), logits

    def features(self, x: Tensor) -> Tensor:
        """The head's input ``z`` (flattened, fp32)."""
        return self._run(x)[0].float()

    def logits_from_features(self, z: Tensor, variant: str = "trained",  # noqa: ARG002
                             norm: Tensor | None = None) -> Tensor:  # noqa: ARG002
        """The head on ``z``: plain logits ``W z + b`` (a "ce" head has no normalized variant)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.fc(z.to(self.fc.weight.dtype)).float()

    def forward(self, x: Tensor) -> Output:
        z, logits = self._run(x)
        z = z.float()
        if logits.ndim != 2 or logits.shape[-1] != self.fc.out_features:
            raise ConfigError(f"the model's output {tuple(logits.shape)} is not the named head's output (the "
                              f"logits, (N, {self.fc.out_features}))")
        return Output(logits.float(), z, z.norm(dim=1))


def find_head(model: nn.Module, example: Tensor) -> str:
    """The name of the linear layer whose output is the model's output on ``example``: the last ``nn.Linear``
    called in the forward pass with an output equal to the model's (the classifier head)."""
    calls: list[tuple[str, Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: calls.append((n, o)))
             for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    logits = out if isinstance(out, Tensor) else out[0] if isinstance(out, tuple | list) and out else None
    if not isinstance(logits, Tensor):
        raise ConfigError(f"the model's output is a {type(out).__name__}, not a tensor of logits")
    for name, o in reversed(calls):
        if o is logits or (isinstance(o, Tensor) and o.shape == logits.shape
                           and torch.equal(torch.nan_to_num(o), torch.nan_to_num(logits))):
            return name
    raise ConfigError("found no linear layer whose output is the model's output (the logits); name the head "
                      "layer (--head NAME), and make sure the model returns that layer's output unchanged")


def parse_factory(spec: str) -> tuple[str, str]:
    """``package.module:function`` (with or without the ``factory:`` prefix) → ``(module, function)``."""
    s = spec[len(FACTORY_PREFIX):] if spec.startswith(FACTORY_PREFIX) else spec
    m = _FACTORY.match(s)
    if m is None:
        raise ConfigError(f"factory {spec!r}: expected package.module:function (a Python import path, a colon, "
                          "then the name of a function that returns the nn.Module)")
    return m["module"], m["fn"]


def trusted(trust_code: bool | None) -> bool:
    """``trust_code``, or (when ``None``) the environment variable :data:`TRUST_ENV` set to ``1``."""
    return bool(trust_code) if trust_code is not None else os.environ.get(TRUST_ENV, "") == "1"


def factory_source(spec: str) -> Path | None:
    """The source file of the factory's module (``None`` when it has none), without importing the module."""
    import importlib.util

    module, _ = parse_factory(spec)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin and found.has_location else None


def factory_sha256(spec: str) -> str | None:
    """SHA-256 of the factory module's source file (recorded at import; ``None`` when it has none)."""
    path = factory_source(spec)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None


def call_factory(spec: str, kwargs: dict[str, Any] | None = None, *, trust_code: bool | None = None,
                 where: str = "the run") -> nn.Module:
    """Import ``package.module`` and call ``function(**kwargs)``: the user's code builds the network.

    Refused (:class:`ConfigError`) unless the code is trusted (:func:`trusted`)."""
    module, fn = parse_factory(spec)
    if not trusted(trust_code):
        raise ConfigError(f"{where} is built by code: {module}:{fn}. Loading it runs that code; do so only if you "
                          f"trust it: pass --trust-code (Python: trust_code=True), or set {TRUST_ENV}=1")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"factory {module}:{fn}: cannot import {module} ({e}); is its package installed, or its "
                          "folder on PYTHONPATH?") from None
    f = getattr(mod, fn, None)
    if not callable(f):
        raise ConfigError(f"factory {module}:{fn}: {module} has no function {fn!r}")
    net = f(**(kwargs or {}))
    if not isinstance(net, nn.Module):
        raise ConfigError(f"factory {module}:{fn} returned a {type(net).__name__}, not an nn.Module")
    return net


__all__ = ["FACTORY_PREFIX", "TRUST_ENV", "HookedClassifier", "call_factory", "factory_sha256", "factory_source",
           "find_head", "parse_factory", "trusted"]
