"""ODIN — temperature scaling plus input pre-processing.

``x̃ = x − ε · sign(−∇_x log S_ŷ(x; T))``, ``S(x) = log max_c softmax(f(x̃) / T)_c``, where
``S_ŷ(x; T) = softmax(f(x)/T)_ŷ`` and ``ŷ = argmax_c f_c(x)``: the input is moved by one signed-gradient
step that *increases* the temperature-scaled softmax score of the predicted class (equivalently,
decreases ``cross_entropy(f(x)/T, ŷ)``), then scored with the log of the temperature-scaled MSP.
Liang, Li & Srikant, "Enhancing The Reliability of Out-of-distribution Image Detection in Neural
Networks", ICLR 2018. Defaults (OpenOOD): ``T = 1000``, ``ε = 0.0014``.

The score is the paper's temperature-scaled MSP in the log domain (:func:`~l2ood.detectors._softmax.top_softmax`,
float64): a monotone transform (same ranking), computed as ``−log1p(Σ_{c≠ŷ} exp((f_c − f_ŷ)/T))`` because the
probability is exactly 1.0 in float32 once the scaled margin exceeds ~17 (small ``T``), tying confident inputs.
Since l2ood 0.2 (score version 2; 0.1 returned the probability): calibrations made before are refused.

Scale of ε: the images here are on the [0, 1] scale and the model normalizes them internally by
its per-channel ``input_std``. The reference code (facebookresearch/odin, and OpenOOD's
``ODINPostprocessor``) works on normalized inputs and steps by ``ε / std_c`` there, which is a step of
exactly ``ε`` per pixel on the [0, 1] scale. So ``x̃ = x − ε · sign(∇_x loss)`` on the [0, 1] images
is the same perturbation (the sign of the gradient is the same in both spaces since ``std_c > 0``);
no ``std`` factor appears. No clipping to [0, 1] (as in the reference code). ``sign(0) = 0``
(the reference maps zero gradients to +1; this only matters for exactly-zero gradients).

Logits are formed by ``model.logits_from_features(model.features(x), variant)`` in fp32 (no
autocast), with the model in eval mode (its previous mode is restored afterwards). The gradient
is taken with ``torch.autograd.grad`` w.r.t. the input only, so no parameter ``.grad`` is written.
The loss is summed over the batch: in eval mode the samples are independent, so each image gets
the gradient of its own loss, independent of the batch size.

Cost: per image one forward with autograd graph + one backward to the input + one forward without
graph ≈ 3× a plain forward pass, in fp32; peak memory is that of the activations kept for the
backward of a ``batch_size`` batch (like a training step without optimizer state). ``ε = 0``
skips the gradient (one forward, i.e. temperature-scaled MSP).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import ConfigError
from ..models import Classifier
from ..runtime import Runtime
from ._softmax import top_softmax
from .base import InputDetector, SearchSpace, register


def _logits_fp32(model: Classifier, x: Tensor, variant: str) -> Tensor:
    with torch.autocast(device_type=x.device.type, enabled=False):
        return model.logits_from_features(model.features(x.float()), variant)


@register
class ODIN(InputDetector):
    """Log temperature-scaled MSP of the gradient-perturbed input, float64 (higher = ID)."""

    name = "odin"
    #: the grid OpenOOD v1.5 sweeps
    search_space: ClassVar[SearchSpace] = {"temperature": (1.0, 10.0, 100.0, 1000.0), "epsilon": (0.0014, 0.0028)}
    uses_logits = True
    score_version: ClassVar[int] = 2
    score_change: ClassVar[str] = "the odin score changed to log-domain (log max softmax(f/T)) in 0.2"

    def __init__(self, temperature: float = 1000.0, epsilon: float = 0.0014, batch_size: int = 256) -> None:
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        if not epsilon >= 0:
            raise ConfigError(f"epsilon must be >= 0, got {epsilon}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.batch_size = int(batch_size)

    def perturb(self, model: Classifier, x: Tensor, variant: str = "trained") -> Tensor:
        """``x − ε·sign(∇_x CE(f(x)/T, argmax f(x)))`` for one batch ``x`` (on the model's device)."""
        x = x.detach().float()
        if self.epsilon == 0:
            return x
        with torch.enable_grad():
            x.requires_grad_(True)
            logits = _logits_fp32(model, x, variant)
            labels = logits.detach().argmax(dim=1)
            loss = F.cross_entropy(logits / self.temperature, labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        return x.detach() - self.epsilon * grad.sign()

    def score_images(self, model: Classifier, images: Tensor, rt: Runtime,
                     variant: str = "trained") -> Tensor:
        was_training = model.training
        model.eval()
        scores = []
        try:
            for s in range(0, images.shape[0], self.batch_size):
                x = rt.batch(images[s : s + self.batch_size])  # uint8 or float [0, 1]
                x_tilde = self.perturb(model, x, variant)
                with torch.no_grad():
                    logits = _logits_fp32(model, x_tilde, variant)
                    # float64, so on the CPU (MPS has none)
                    scores.append(top_softmax(logits.cpu(), self.temperature).log_p_top)
        finally:
            model.train(was_training)
        return torch.cat(scores) if scores else torch.empty(0, dtype=torch.float64)
