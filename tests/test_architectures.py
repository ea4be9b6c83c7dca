"""The CIFAR-style backbones of the ARCHITECTURES registry and the optional timm/torchvision adapters.

Shapes, Classifier integration and a training step run at small widths; parameter counts at the
standard width are computed on the meta device (no memory, no forward pass).
"""

from __future__ import annotations

import inspect
import re
import sys
import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from l2ood.models import ARCHITECTURES, HEAD_MODES, Classifier, ModelConfig, adapters, build_model

ARCHS = ("resnet18", "resnet34", "resnet50", "wrn28_10", "densenet100", "vgg16_bn", "mobilenetv2")
SMALL = 8  # width of the fast tests

# Feature dimension at the standard width (64).
STANDARD_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "wrn28_10": 640, "densenet100": 342,
                "vgg16_bn": 512, "mobilenetv2": 1280}

# Commonly cited parameter counts: (count, whether it includes a 10-class Linear head).
# Most published CIFAR counts are of the whole 10-class network, so the test adds the head
# (feature_dim·10 + 10) to the backbone count before comparing; the backbones themselves have no head.
REFERENCE_PARAMS = {
    # kuangliu/pytorch-cifar ResNet18 ("11.17M"), incl. fc 512→10 (5,130); backbone alone 11,168,832
    "resnet18": (11_173_962, True),
    # CIFAR ResNet34 ("21.28M"), incl. fc 512→10
    "resnet34": (21_282_122, True),
    # CIFAR ResNet50 ("23.52M"): this count *includes* fc 2048→10 (20,490); the backbone alone is
    # 23,500,352 (23.50M), so the "23.52M backbone" figure is really backbone + 10-class head
    "resnet50": (23_520_842, True),
    # WRN-28-10, Zagoruyko & Komodakis Table: "36.5M"; incl. fc 640→10
    "wrn28_10": (36_479_194, True),
    # DenseNet-BC (L=100, k=12), Huang et al.: "0.8M"; incl. fc 342→10 (3,430)
    "densenet100": (769_162, True),
    # kuangliu VGG16 (BN, conv biases kept, no FC layers but the classifier): "14.7M", incl. fc 512→10
    "vgg16_bn": (14_728_266, True),
    # MobileNetV2 backbone only: torchvision's mobilenet_v2 has 3,504,872 parameters of which the
    # 1280→1000 classifier is 1,281,000, leaving 2,223,872 ("2.2M"); the CIFAR strides change no
    # parameter. (kuangliu's CIFAR version has 2.30M incl. head: it adds 1×1 projection shortcuts and
    # an expansion conv in the t=1 block, which are not in the paper.)
    "mobilenetv2": (2_223_872, False),
}


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registry_names_and_factory_signatures() -> None:
    assert tuple(ARCHITECTURES) == ARCHS
    for name, factory in ARCHITECTURES.items():
        params = inspect.signature(factory).parameters
        assert list(params) == ["width", "in_channels"], name
        assert params["width"].default == 64 and params["in_channels"].default == 3, name


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_shapes_rgb32_and_gray28(arch: str) -> None:
    torch.manual_seed(0)
    for c, size in ((3, 32), (1, 28)):
        net = ARCHITECTURES[arch](width=SMALL, in_channels=c).eval()
        with torch.no_grad():
            z = net(torch.rand(2, c, size, size))
        assert z.shape == (2, net.feature_dim), (arch, c)
        assert torch.isfinite(z).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_standard_width_feature_dim_and_param_count(arch: str) -> None:
    with torch.device("meta"):
        net = ARCHITECTURES[arch](width=64, in_channels=3)
    assert net.feature_dim == STANDARD_DIM[arch]
    reference, includes_head = REFERENCE_PARAMS[arch]
    count = _n_params(net) + (net.feature_dim * 10 + 10 if includes_head else 0)
    assert abs(count - reference) <= 0.03 * reference, (arch, count, reference)


@pytest.mark.parametrize("arch", ["wrn28_10", "densenet100", "vgg16_bn", "mobilenetv2"])
def test_width_scales_channels(arch: str) -> None:
    with torch.device("meta"):
        half = ARCHITECTURES[arch](width=32)
        tiny = ARCHITECTURES[arch](width=1)
    if arch == "densenet100":  # growth 6: 12 + 16·6 = 108 → 54; 54 + 96 = 150 → 75; 75 + 96 = 171
        assert half.feature_dim == 171
    else:
        assert half.feature_dim == STANDARD_DIM[arch] // 2
    assert tiny.feature_dim >= 1
    with pytest.raises(ValueError, match="width"):
        ARCHITECTURES[arch](width=0)


@pytest.mark.parametrize(("arch", "head"), [(a, h) for a in ARCHS for h in ("l2", "ce")]
                         + [("vgg16_bn", h) for h in HEAD_MODES if h not in ("l2", "ce")])
def test_build_model_output(arch: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=SMALL, head=head, num_classes=7,
                                    mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])).eval()
    assert isinstance(model, Classifier)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    d = model.backbone.feature_dim
    assert out.logits.shape == (3, 7) and out.features.shape == (3, d) and out.score.shape == (3,)
    torch.testing.assert_close(out.score, out.features.norm(dim=1))
    if head == "l2":
        expected = F.linear(F.normalize(out.features, dim=1), model.fc.weight, model.fc.bias)
        torch.testing.assert_close(out.logits, expected, rtol=1e-5, atol=1e-5)
    elif head == "ce":
        torch.testing.assert_close(out.logits, model.fc(out.features))


@pytest.mark.parametrize("arch", ARCHS)
def test_one_training_step_gives_finite_gradients(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=SMALL, head="l2", in_channels=1, image_size=(28, 28)))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x).logits, y)
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---- adapters -------------------------------------------------------------------------------------------


def test_timm_adapter_real() -> None:
    pytest.importorskip("timm")
    backbone = adapters.from_timm("resnet18", pretrained=False, in_channels=1)
    assert backbone.feature_dim == 512
    with torch.no_grad():
        assert backbone.eval()(torch.rand(2, 1, 64, 64)).shape == (2, 512)


def test_torchvision_adapter_real() -> None:
    pytest.importorskip("torchvision")
    for name, dim in (("resnet18", 512), ("mobilenet_v2", 1280)):
        backbone = adapters.from_torchvision(name)
        assert backbone.feature_dim == dim and backbone.training
        with torch.no_grad():
            assert backbone.eval()(torch.rand(2, 3, 64, 64)).shape == (2, dim)


@pytest.mark.parametrize(("module", "call"), [("timm", lambda: adapters.from_timm("resnet18")),
                                               ("torchvision", lambda: adapters.from_torchvision("resnet18"))])
def test_adapter_import_error_is_clear(monkeypatch: pytest.MonkeyPatch, module: str, call: object) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail, installed or not
    monkeypatch.delitem(sys.modules, f"{module}.models", raising=False)
    with pytest.raises(ImportError, match=re.escape(f"pip install 'l2ood[{module}]'")):
        call()  # type: ignore[operator]


class _TinyNet(nn.Module):
    """Stands in for a library model: conv → pool → flatten → head."""

    def __init__(self, head: nn.Module | None, head_attr: str = "fc", channels: int = 3, dim: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, dim, 3)
        self.num_features = dim
        if head is not None:
            setattr(self, head_attr, head)
        self.head_attr = head_attr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)
        head = getattr(self, self.head_attr, None)
        return z if head is None else head(z)


def test_timm_adapter_with_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, object] = {}

    def create_model(name: str, pretrained: bool, num_classes: int, in_chans: int) -> nn.Module:
        calls.update(name=name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
        return _TinyNet(None, channels=in_chans)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    backbone = adapters.from_timm("tiny", in_channels=1)
    assert calls == {"name": "tiny", "pretrained": False, "num_classes": 0, "in_chans": 1}
    model = Classifier(backbone, backbone.feature_dim, 4, head="l2")
    assert model(torch.rand(2, 1, 16, 16)).features.shape == (2, 6)


@pytest.mark.parametrize(("attr", "head"), [
    ("fc", nn.Linear(6, 10)),                                                    # ResNet
    ("classifier", nn.Sequential(nn.Dropout(0.2), nn.Linear(6, 10))),            # MobileNet / EfficientNet
    ("heads", nn.Sequential()),                                                  # empty: replaced whole
    ("head", nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 10))),       # penultimate: 5
])
def test_torchvision_adapter_with_stub(monkeypatch: pytest.MonkeyPatch, attr: str, head: nn.Module) -> None:
    net = _TinyNet(head, head_attr=attr)
    models = types.SimpleNamespace(get_model=lambda name, weights=None: net)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    backbone = adapters.from_torchvision("tiny")
    expected = 5 if attr == "head" else 6
    assert backbone.feature_dim == expected and backbone.training  # training mode restored
    out = Classifier(backbone, backbone.feature_dim, 3, head="ce")(torch.rand(2, 3, 16, 16))
    assert out.features.shape == (2, expected) and out.logits.shape == (2, 3)


def test_torchvision_adapter_without_known_head(monkeypatch: pytest.MonkeyPatch) -> None:
    models = types.SimpleNamespace(get_model=lambda name, weights=None: nn.Conv2d(3, 2, 1))
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    with pytest.raises(ValueError, match="head"):
        adapters.from_torchvision("odd")
