"""Optional adapters: use a timm or torchvision backbone with :class:`l2ood.models.classifier.Classifier`.

Both return a :class:`PooledBackbone`: a module mapping images to pooled penultimate features
``(N, feature_dim)`` and exposing ``.feature_dim``, i.e. the contract of the built-in backbones, so

    backbone = from_timm("resnet50", pretrained=True)
    model = Classifier(backbone, backbone.feature_dim, num_classes=10, head="l2")

The libraries are imported lazily, only when an adapter is called; they are optional extras
(``pip install 'l2ood[timm]'`` / ``pip install 'l2ood[torchvision]'``). These backbones are not in
:data:`l2ood.models.ARCHITECTURES`, so a :class:`l2ood.models.ModelConfig` cannot rebuild them.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..extras import require

# Attributes holding the classification head in torchvision models, tried in this order:
# ViT (heads), Swin (head), ResNet/RegNet/ShuffleNet/GoogLeNet/Inception (fc),
# VGG/AlexNet/DenseNet/MobileNet/EfficientNet/ConvNeXt/MaxViT (classifier).
_TORCHVISION_HEADS = ("heads", "head", "fc", "classifier")


def _optional_import(module: str, package: str, caller: str) -> ModuleType:
    return require(module, package, caller)


class PooledBackbone(nn.Module):
    """Wrap a headless network so that it returns ``(N, feature_dim)`` features.

    Tuple outputs (e.g. torchvision's Inception/GoogLeNet in training mode, which add auxiliary
    logits) are reduced to their first element; the result is flattened from dimension 1.
    """

    def __init__(self, body: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.body = body
        self.feature_dim = int(feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if isinstance(out, tuple):
            out = out[0]
        return torch.flatten(out, 1)


def from_timm(name: str, pretrained: bool = False, in_channels: int = 3) -> PooledBackbone:
    """A timm model without its classifier (``num_classes=0``: timm returns pooled pre-logits).

    ``feature_dim`` is timm's ``head_hidden_size`` where the model defines one (models with a
    pre-logits layer), else ``num_features``.
    """
    timm = _optional_import("timm", "timm", "from_timm")
    is_model = getattr(timm, "is_model", None)
    if is_model is not None and not is_model(name.split(".")[0]):  # "resnet50.a1_in1k": a name + pretrained tag
        raise ConfigError(f"timm has no model '{name}' (timm.list_models() lists the names)")
    body = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_channels)
    dim = getattr(body, "head_hidden_size", None) or body.num_features
    return PooledBackbone(body, int(dim))


def _strip_head(body: nn.Module, name: str) -> None:
    """Replace the classification head by Identity, in place.

    A head that is a ``Sequential`` ending in a ``Linear`` (VGG, MobileNet, EfficientNet, ConvNeXt,
    ViT's ``heads``) loses only that last ``Linear``, so the features are the true penultimate ones
    (e.g. after ConvNeXt's final LayerNorm); any other head is replaced as a whole.
    """
    for attr in _TORCHVISION_HEADS:
        head = getattr(body, attr, None)
        if not isinstance(head, nn.Module):
            continue
        if isinstance(head, nn.Sequential) and len(head) > 0 and isinstance(head[-1], nn.Linear):
            head[-1] = nn.Identity()
        else:
            setattr(body, attr, nn.Identity())
        return
    raise ConfigError(f"torchvision model '{name}' has none of the head attributes {_TORCHVISION_HEADS}")


def from_torchvision(name: str, weights: Any = None) -> PooledBackbone:
    """A torchvision model (``torchvision.models.get_model(name, weights=weights)``) without its head.

    ``weights`` is anything ``get_model`` accepts (``None``, ``"DEFAULT"``, a weights enum).
    ``feature_dim`` is inferred by one forward pass of a ``(1, 3, 224, 224)`` zero batch in eval mode.
    """
    tv_models = _optional_import("torchvision.models", "torchvision", "from_torchvision")
    if hasattr(tv_models, "list_models") and name not in tv_models.list_models():
        raise ConfigError(f"torchvision has no model '{name}' (torchvision.models.list_models() lists the names)")
    body = tv_models.get_model(name, weights=weights)
    _strip_head(body, name)
    wrapped = PooledBackbone(body, 0)
    was_training = body.training
    body.eval()
    try:
        param = next(body.parameters(), None)
        x = torch.zeros(1, 3, 224, 224, device=param.device if param is not None else None)
        with torch.no_grad():
            wrapped.feature_dim = int(wrapped(x).shape[1])
    finally:
        body.train(was_training)
    return wrapped


_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.body.", "backbone.", "body.")


def read_weights_file(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file: safetensors, or a torch checkpoint read with ``torch.load(weights_only=True)``
    (no code is unpickled; a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--pretrained {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # malformed header: safetensors raises several types
            raise ConfigError(f"--pretrained {path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise ConfigError(f"--pretrained {path}: not a torch weights file readable with weights_only=True "
                          f"({type(e).__name__}: {str(e)[:200]}); convert it to safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"--pretrained {path}: expected a state dict (names → tensors)")
    return {str(k): v for k, v in obj.items()}


def renamed_for(backbone: nn.Module, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with the usual wrapper prefixes (``module.``, ``model.``, ``backbone.``, …) stripped, up to three
    times, until some names are the backbone's own (a timm/torchvision backbone: its inner network's)."""
    target = backbone.body if isinstance(backbone, PooledBackbone) else backbone
    own = target.state_dict().keys()
    names = dict(tensors)
    for _ in range(3):
        if own & names.keys():
            break
        names = {next((k[len(p):] for p in _PREFIXES if k.startswith(p)), k): v for k, v in names.items()}
    return names


def load_backbone_weights(backbone: nn.Module, tensors: dict[str, Tensor], where: str = "weights") -> list[str]:
    """Copy ``tensors`` into ``backbone``: every backbone tensor must be found (after stripping the usual
    prefixes ``module.``, ``model.``, …; a timm/torchvision backbone is matched to its inner network) with
    the same shape. Tensors the backbone lacks (the pretrained classifier head) are left out and
    returned. Raises :class:`ConfigError` naming what is missing or of another shape."""
    target = backbone.body if isinstance(backbone, PooledBackbone) else backbone
    own = target.state_dict()
    names = renamed_for(backbone, tensors)
    missing = [k for k in own if k not in names]
    wrong = [f"{k} {tuple(names[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in names and tuple(names[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        raise ConfigError(f"{where}: does not fit this backbone: {len(missing)} tensor(s) missing "
                          f"(e.g. {missing[:3]}), {len(wrong)} of another shape (e.g. {wrong[:2]}); "
                          "is it a checkpoint of the same architecture?")
    target.load_state_dict({k: names[k] for k in own}, strict=True)
    return sorted(k for k in names if k not in own)
