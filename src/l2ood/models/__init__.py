"""Models: the L2/CE classifier wrapper and the backbones, built from a JSON-able config."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .classifier import Classifier, Output
from .config import ARCHITECTURES, ModelConfig, _known_arch
from .densenet import densenet100
from .heads import DEFAULT_TAU, HEAD_MODES, HeadMode, head_logits, is_normalized
from .imported import FACTORY_PREFIX, HookedClassifier, call_factory
from .mobilenetv2 import mobilenetv2
from .resnet import ResNet, resnet18, resnet34, resnet50
from .vgg import vgg16_bn
from .wideresnet import wrn28_10

__all__ = ["ARCHITECTURES", "DEFAULT_TAU", "HEAD_MODES", "Classifier", "HeadMode", "HookedClassifier", "ModelConfig",
           "Output", "ResNet", "build_model", "densenet100", "head_logits", "is_normalized", "mobilenetv2", "resnet18",
           "resnet34", "resnet50", "vgg16_bn", "wrn28_10"]


def build_model(cfg: ModelConfig, *, trust_code: bool | None = None) -> Classifier:
    """Build the classifier described by ``cfg`` (random initialization).

    An imported network (``arch = "factory:package.module:function"``) is built by calling that function with
    ``cfg.factory_kwargs`` and wrapped in a :class:`~l2ood.models.imported.HookedClassifier` around
    ``cfg.head_layer``: this runs the user's code, so it is refused unless ``trust_code`` (``None``: the
    environment variable ``L2OOD_TRUST_CODE=1``) says that code is trusted."""
    if cfg.arch.startswith(FACTORY_PREFIX):
        if cfg.head_layer is None:
            raise ConfigError(f"{cfg.arch}: an imported network needs its head layer's name (head_layer)")
        net = call_factory(cfg.arch, cfg.factory_kwargs, trust_code=trust_code)
        return HookedClassifier(net, cfg.head_layer, mean=cfg.mean, std=cfg.std)  # type: ignore[return-value]
    try:
        _known_arch(cfg.arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.head not in HEAD_MODES:
        raise ConfigError(f"unknown head '{cfg.head}'; known: {', '.join(HEAD_MODES)}")
    backbone: nn.Module
    if cfg.arch.startswith("timm:"):
        from .adapters import from_timm

        backbone = from_timm(cfg.arch[len("timm:"):], pretrained=False, in_channels=cfg.in_channels)
    elif cfg.arch.startswith("torchvision:"):
        from .adapters import from_torchvision

        if cfg.in_channels != 3:
            raise ConfigError(f"{cfg.arch}: torchvision backbones take RGB input (in_channels 3)")
        backbone = from_torchvision(cfg.arch[len("torchvision:"):])
    else:
        backbone = ARCHITECTURES[cfg.arch](width=cfg.width, in_channels=cfg.in_channels)
    return Classifier(backbone, backbone.feature_dim, cfg.num_classes, head=cfg.head,  # type: ignore[arg-type]
                      mean=cfg.mean, std=cfg.std, tau=cfg.tau)
