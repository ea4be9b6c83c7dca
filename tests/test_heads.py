"""Training-time peers (T2FNorm, LogitNorm) and the trained/raw logit variants."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from l2ood.detectors import Head
from l2ood.evaluation import columns, evaluate
from l2ood.models import DEFAULT_TAU, ModelConfig, build_model, head_logits, is_normalized
from l2ood.run import Run


def _model(head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(width=4, head=head, in_channels=1)).eval()


def test_default_taus_are_the_papers() -> None:
    assert DEFAULT_TAU["t2fnorm"] == 0.1 and DEFAULT_TAU["logitnorm"] == 0.04
    assert _model("t2fnorm").tau == 0.1 and _model("logitnorm").tau == 0.04


def test_trained_logits_by_hand() -> None:
    torch.manual_seed(1)
    z, w, b = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    zh = z / z.norm(dim=1, keepdim=True)
    f = z @ w.T + b
    torch.testing.assert_close(head_logits(z, w, b, "ce"), f)
    torch.testing.assert_close(head_logits(z, w, b, "l2"), zh @ w.T + b)
    torch.testing.assert_close(head_logits(z, w, b, "t2fnorm", 0.1), (zh / 0.1) @ w.T + b)
    torch.testing.assert_close(head_logits(z, w, b, "logitnorm", 0.04),
                               f / (0.04 * f.norm(dim=1, keepdim=True)))
    for mode in ("l2", "t2fnorm", "logitnorm", "ce"):
        torch.testing.assert_close(head_logits(z, w, b, mode, 0.5, variant="raw"), f)
    # the raw logits of the L2 head mix the norm with class evidence: ‖z‖·Wẑ + b
    torch.testing.assert_close(head_logits(z, w, b, "l2", variant="raw"),
                               z.norm(dim=1, keepdim=True) * (zh @ w.T) + b)


def test_model_trains_on_its_trained_logits() -> None:
    """Cross-entropy of the model's logits is the LogitNorm / T2FNorm loss of the papers."""
    m = _model("logitnorm")
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    out = m(x)
    f = m.fc(out.features)
    expected = F.cross_entropy(f / (0.04 * f.norm(dim=1, keepdim=True)), y)
    torch.testing.assert_close(F.cross_entropy(out.logits, y), expected)
    t = _model("t2fnorm")
    o = t(x)
    torch.testing.assert_close(o.logits, t.fc(F.normalize(o.features, dim=1) / 0.1))


def test_columns_name_both_variants_for_normalized_heads() -> None:
    dets = ["feature_norm", "msp", "energy"]
    assert [c for c, _, _ in columns(dets, "ce")] == dets
    for mode in ("l2", "t2fnorm", "logitnorm"):
        assert is_normalized(mode)
        assert [c for c, _, _ in columns(dets, mode)] == [
            "feature_norm", "msp:trained", "msp:raw", "energy:trained", "energy:raw"]


def test_evaluate_reports_both_variants(data_root: Path) -> None:
    from l2ood.data import load_dataset

    m = _model("l2")
    cfg = ModelConfig(in_channels=1, image_size=(28, 28), head="l2", arch="resnet18", width=4)
    run = Run.from_model(m, cfg, device="cpu", precision="fp32")
    id_test = load_dataset("fashion-mnist", "test", root=data_root, n=40)
    ood = load_dataset("noise", n=20, size=(28, 28), channels=1)
    r = evaluate(run, id_test, [ood], ["maxlogit"])
    assert r.results.detectors == ["maxlogit:trained", "maxlogit:raw"]
    head = Head.of(m)
    with torch.no_grad():
        out = m(id_test.images.float() / 255)
    torch.testing.assert_close(torch.from_numpy(r.scores[id_test.name]["maxlogit:trained"]),
                               out.logits.max(1).values)
    raw = out.features @ head.weight.T + head.bias
    torch.testing.assert_close(torch.from_numpy(r.scores[id_test.name]["maxlogit:raw"]), raw.max(1).values)


def test_bad_tau_and_variant() -> None:
    with pytest.raises(ValueError, match="tau"):
        build_model(ModelConfig(head="t2fnorm", tau=0.0, width=4))
    with pytest.raises(ValueError, match="variant"):
        head_logits(torch.randn(2, 3), torch.randn(2, 3), None, "l2", variant="both")  # type: ignore[arg-type]
