"""Device and precision resolution — the only place that decides where and how tensors compute.

* ``device="auto"``: CUDA if available, else MPS, else CPU. Nothing in l2ood calls ``.cuda()``.
* ``precision="auto"``: bf16 autocast + channels_last where the hardware supports bf16
  (CPU: oneDNN's bf16 check, i.e. AVX-512-BF16/AMX; CUDA: ``torch.cuda.is_bf16_supported()``),
  else fp16 autocast with a gradient scaler on CUDA, else fp32. ``"fp32"`` forces full precision.
* The native-crash guard (:meth:`Runtime.for_model`): on CPU, the backward pass of a 1×1 convolution with stride
  > 1 and fewer than 16 input channels in channels_last format corrupts the heap in oneDNN on AVX-512 CPUs
  ("double free or corruption", SIGABRT, or SIGSEGV; fp32 and bf16 alike; torch 2.13.0, reproduced by
  ``benchmarks/native_crash.py``). A model holding such a layer (the shortcut of a CIFAR ResNet narrower than
  width 16) runs in the contiguous format on CPU; the run record's runtime says so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings."""

    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    channels_last: bool
    guard: str = ""  # why channels_last was turned off for this model (:meth:`for_model`), else ""

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """Autocast context for the backbone (a no-op in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def for_model(self, model: nn.Module) -> Runtime:
        """This runtime for ``model``: channels_last off on CPU when the model holds a layer whose channels_last
        backward crashes oneDNN (:func:`crash_prone_layers`)."""
        if not self.channels_last or self.device.type != "cpu":
            return self
        bad = crash_prone_layers(model)
        if not bad:
            return self
        return Runtime(self.device, self.amp_dtype, False, guard=f"contiguous: {len(bad)} narrow strided 1x1 conv")

    def prepare(self, model: M) -> M:
        """Move a model to the device (and channels_last memory format where used)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def layout(self, x: Tensor) -> Tensor:
        """A float batch already on the device, in the memory format the model expects."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch(self, images: Tensor) -> Tensor:
        """uint8 ``(N, C, H, W)`` in the model's format → float [0, 1] on the device, laid out for the model.

        The only place model inputs are made (training adds its augmentation between the two steps)."""
        x = images.to(self.device, non_blocking=True)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        return self.layout(x)

    def describe(self) -> str:
        layout = " / channels_last" if self.channels_last else (f" / {self.guard}" if self.guard else "")
        return f"{self.device.type} / {self.precision}{layout}"


#: below this many input channels a strided 1×1 convolution's channels_last backward crashes oneDNN on CPU
MIN_SAFE_CHANNELS = 16


def crash_prone_layers(model: nn.Module) -> list[str]:
    """Names of ``model``'s 2-d convolutions with a 1×1 kernel, a stride > 1 and fewer than
    :data:`MIN_SAFE_CHANNELS` input channels: their backward pass in channels_last format corrupts the heap on
    AVX-512 CPUs (module doc)."""
    out = []
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and max(m.stride) > 1
                and m.in_channels < MIN_SAFE_CHANNELS):
            out.append(name)
    return out


def cpu_supports_bf16() -> bool:
    """True when oneDNN reports native bf16 kernels on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda / mps / cpu; any other string is passed to :class:`torch.device`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"invalid device '{name}': {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def resolve_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Resolve device and precision strings into a :class:`Runtime`."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = resolve_device(device)
    amp: torch.dtype | None
    if precision == "fp32":
        amp = None
    elif precision == "bf16":
        amp = torch.bfloat16
    elif precision == "fp16":
        amp = torch.float16
    elif dev.type == "cpu":
        amp = torch.bfloat16 if cpu_supports_bf16() else None
    elif dev.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        amp = None
    return Runtime(dev, amp, channels_last=amp is not None and dev.type in ("cpu", "cuda"))
