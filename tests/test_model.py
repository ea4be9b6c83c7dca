"""Model semantics: the L2 head normalizes, the score is the norm of the unnormalized features,
the CE twin differs only in what the head sees."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from l2ood.models import ModelConfig, build_model, resnet18
from l2ood.runtime import resolve_runtime


def _twins(c: int = 3, size: int = 32) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    l2 = build_model(ModelConfig(width=4, head="l2", in_channels=c, mean=[0.5] * c, std=[0.25] * c))
    ce = build_model(ModelConfig(width=4, head="ce", in_channels=c, mean=[0.5] * c, std=[0.25] * c))
    ce.load_state_dict(l2.state_dict())
    l2.eval()
    ce.eval()
    x = torch.rand(6, c, size, size)
    return l2, ce, x


@pytest.mark.parametrize(("c", "size"), [(3, 32), (1, 28)])
def test_l2_head_normalizes_and_score_is_unnormalized_norm(c: int, size: int) -> None:
    l2, _, x = _twins(c, size)
    with torch.no_grad():
        out = l2(x)
        z = l2.backbone((x - l2.input_mean) / l2.input_std)
    assert out.features.shape == (6, 32) and out.logits.shape == (6, 10) and out.score.shape == (6,)
    assert out.features.dtype == torch.float32
    torch.testing.assert_close(out.features, z)
    expected_logits = z / z.norm(dim=1, keepdim=True) @ l2.fc.weight.T + l2.fc.bias
    torch.testing.assert_close(out.logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.score, torch.linalg.vector_norm(z, dim=1))
    # the score is not the norm of what the head sees (that is 1 for every input)
    assert not torch.allclose(out.score, torch.ones(6))


def test_ce_twin_differs_only_in_head_input() -> None:
    l2, ce, x = _twins()
    with torch.no_grad():
        a, b = l2(x), ce(x)
    torch.testing.assert_close(a.features, b.features)
    torch.testing.assert_close(a.score, b.score)
    torch.testing.assert_close(b.logits, F.linear(b.features, ce.fc.weight, ce.fc.bias))
    # L2 logits equal CE logits of the normalized features
    torch.testing.assert_close(a.logits, ce.fc(F.normalize(a.features, dim=1)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.logits, b.logits)


def test_l2_logits_invariant_to_feature_scale() -> None:
    l2, ce, _ = _twins()
    z = torch.randn(5, 32)
    torch.testing.assert_close(l2.logits_from_features(z), l2.logits_from_features(7.5 * z))
    assert not torch.allclose(ce.logits_from_features(z), ce.logits_from_features(7.5 * z))


def test_zero_features_give_finite_l2_logits() -> None:
    l2, _, _ = _twins()
    logits = l2.logits_from_features(torch.zeros(2, 32))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, l2.fc.bias.expand(2, -1))


def test_resnet18_standard_width_shapes_and_params() -> None:
    net = resnet18(width=64, in_channels=3)
    assert net.feature_dim == 512
    n_params = sum(p.numel() for p in net.parameters())
    assert 11_000_000 < n_params < 11_300_000  # the CIFAR ResNet18 has ~11.17 M parameters
    with torch.no_grad():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert resnet18(width=8, in_channels=1)(torch.rand(2, 1, 28, 28)).shape == (2, 64)


def test_features_fp32_under_bf16_autocast() -> None:
    l2, _, x = _twins()
    rt = resolve_runtime("cpu", "bf16")
    with torch.no_grad(), rt.autocast():
        out = l2(x)
    assert out.features.dtype == torch.float32 and out.logits.dtype == torch.float32


def test_bad_model_config_raises() -> None:
    with pytest.raises(ValueError, match="head"):
        build_model(ModelConfig(head="softmax"))
    with pytest.raises(ValueError, match="architecture"):
        build_model(ModelConfig(arch="resnet1000"))
    with pytest.raises(ValueError, match="width"):
        resnet18(width=0)
