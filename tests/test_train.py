"""Training: schedule, checkpoint round trip, resume equals an uninterrupted run, artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from l2ood.data import load_dataset
from l2ood.models import ModelConfig, build_model
from l2ood.run import Run
from l2ood.train import (
    ArtifactError,
    TrainConfig,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    train,
)
from l2ood.train.trainer import epoch_permutation, make_optimizer


def _cfg(**kw: object) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 64, "lr": 0.05, "device": "cpu", "precision": "fp32", "seed": 3}
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_cosine_and_onecycle_schedules() -> None:
    c = _cfg(lr=1.0)
    assert lr_at(c, 0, 100, 10) == pytest.approx(1.0)
    assert lr_at(c, 50, 100, 10) == pytest.approx(0.5)
    assert lr_at(c, 100, 100, 10) == pytest.approx(0.0)
    w = _cfg(lr=1.0, warmup_epochs=1.0)
    assert lr_at(w, 0, 100, 10) == pytest.approx(0.1) and lr_at(w, 9, 100, 10) == pytest.approx(1.0)
    o = _cfg(lr=1.0, schedule="onecycle")
    assert lr_at(o, 0, 100, 10) == pytest.approx(0.1)
    assert lr_at(o, 25, 100, 10) == pytest.approx(1.0)
    assert lr_at(o, 100, 100, 10) == pytest.approx(0.0)


def test_epoch_permutation_is_a_pure_function() -> None:
    a, b = epoch_permutation(100, 1, 2), epoch_permutation(100, 1, 2)
    assert torch.equal(a, b) and not torch.equal(a, epoch_permutation(100, 1, 3))
    assert sorted(a.tolist()) == list(range(100))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=4, in_channels=1))
    opt = make_optimizer(model, _cfg())
    loss = model(torch.rand(4, 1, 28, 28)).logits.sum()
    loss.backward()
    opt.step()
    save_checkpoint(tmp_path, model, opt, {"global_step": 7, "epoch": 1, "step_in_epoch": 2,
                                              "model": {}, "train": {}})
    model2 = build_model(ModelConfig(width=4, in_channels=1))
    opt2 = make_optimizer(model2, _cfg())
    rec = load_checkpoint(tmp_path, model2, opt2)
    assert rec["epoch"] == 1 and rec["step_in_epoch"] == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        assert torch.equal(s1[i]["momentum_buffer"], s2[i]["momentum_buffer"])
    assert opt2.param_groups[0]["nesterov"] is True
    # no pickle anywhere: the record is JSON, tensors are safetensors
    assert json.loads((tmp_path / "checkpoint.json").read_text())["tensors"].endswith(".safetensors")
    assert not list(tmp_path.glob("*.pt"))


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop_after", [10, 13])  # an epoch boundary (10 steps/epoch) and mid-epoch
def test_resume_equals_uninterrupted_run(tmp_path: Path, data_root: Path, stop_after: int) -> None:
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    full = train(ds, ModelConfig(width=4), _cfg(), tmp_path / "full", progress=False, log=None)
    part = tmp_path / "part"
    train(ds, ModelConfig(width=4), _cfg(), part, progress=False, log=None, stop_after_steps=stop_after)
    assert not (part / "model.safetensors").exists()
    resumed = train(ds, ModelConfig(width=4), _cfg(), part, resume=True, progress=False, log=None)
    a, b = _weights(full.model), _weights(resumed.model)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_with_other_config_is_refused(tmp_path: Path, data_root: Path) -> None:
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    train(ds, ModelConfig(width=4), _cfg(), tmp_path, progress=False, log=None, stop_after_steps=3)
    with pytest.raises(ValueError, match="different configuration"):
        train(ds, ModelConfig(width=4), _cfg(seed=99), tmp_path, resume=True, progress=False, log=None)


@pytest.mark.parametrize("head", ["l2", "ce"])
def test_training_learns_and_artifact_round_trip(tmp_path: Path, data_root: Path, head: str) -> None:
    ds = load_dataset("fashion-mnist", "train", root=data_root)
    res = train(ds, ModelConfig(width=8, head=head), _cfg(epochs=3, lr=0.1, batch_size=32), tmp_path,
                progress=False, log=None)
    assert res.history[-1]["train_acc"] > 0.5  # chance is 0.1; the gratings are easy to learn
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    run = Run.load(tmp_path, device="cpu", precision="fp32")
    model = run.model
    assert run.config.head == head and run.config.in_channels == 1
    x = ds.images[:8].float() / 255
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, res.model.eval()(x).logits)
    log_lines = (tmp_path / "train_log.jsonl").read_text().strip().splitlines()
    assert len(log_lines) == 3


def test_pickle_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ArtifactError, match="pickle"):
        Run.load(tmp_path / "weights.pt")
    with pytest.raises(ArtifactError, match="not a trained"):
        Run.load(tmp_path)


def test_invalid_train_config() -> None:
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"schedule": "step"}):
        with pytest.raises(ValueError):
            _cfg(**bad).validate()


def test_bf16_training_runs_when_supported(tmp_path: Path, data_root: Path) -> None:
    from l2ood.runtime import cpu_supports_bf16

    if not cpu_supports_bf16():
        pytest.skip("CPU has no native bf16")
    ds = load_dataset("fashion-mnist", "train", root=data_root).subset(128)
    res = train(ds, ModelConfig(width=16), _cfg(epochs=1, precision="auto"), tmp_path / "w16",
                progress=False, log=None)
    assert json.loads((tmp_path / "w16" / "model.json").read_text())["provenance"]["runtime"] == \
        "cpu / bf16 / channels_last"
    assert all(torch.isfinite(p).all() for p in res.model.parameters())
    # width 4 holds strided 1x1 shortcuts with < 16 input channels: contiguous (the native-crash guard), recorded
    train(ds, ModelConfig(width=4), _cfg(epochs=1, precision="auto"), tmp_path / "w4", progress=False, log=None)
    assert json.loads((tmp_path / "w4" / "model.json").read_text())["provenance"]["runtime"] == \
        "cpu / bf16 / contiguous: 2 narrow strided 1x1 conv"


def test_class_count_comes_from_the_data(tmp_path: Path) -> None:
    from l2ood.data import ImageSet
    from l2ood.train import train

    imgs = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8)
    two = ImageSet(name="two", images=imgs, labels=torch.arange(24) % 2)
    model = train(two, ModelConfig(width=4), _cfg(epochs=1, batch_size=8), tmp_path / "two", progress=False).model
    assert model.fc.out_features == 2  # not the config's default of 10
    one = ImageSet(name="one", images=imgs, labels=torch.zeros(24, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 classes"):
        train(one, ModelConfig(width=4), _cfg(epochs=1, batch_size=8), tmp_path / "one", progress=False)


def test_init_from_fine_tunes_the_backbone_only(tmp_path: Path, data_root: Path) -> None:
    from l2ood.errors import ConfigError
    from l2ood.record import file_sha256
    from l2ood.train.trainer import init_backbone

    ds = load_dataset("fashion-mnist", "train", root=data_root)
    train(ds, ModelConfig(width=4), _cfg(epochs=3), tmp_path / "src", progress=False, log=None)
    source = Run.load(tmp_path / "src").model.state_dict()
    torch.manual_seed(1)
    fresh = build_model(ModelConfig(width=4, in_channels=1, num_classes=3))
    digest = init_backbone(fresh, tmp_path / "src")
    assert digest == file_sha256(tmp_path / "src" / "model.safetensors")
    for k, v in fresh.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, source[k]), k
    assert fresh.fc.weight.shape == (3, fresh.fc.in_features)  # a new head for the new classes
    with pytest.raises(ConfigError, match="does not fit"):
        init_backbone(build_model(ModelConfig(width=8, in_channels=1)), tmp_path / "src")
    (tmp_path / "w.pth").write_bytes(b"\x80\x04.")
    with pytest.raises(ArtifactError, match="pickle"):
        init_backbone(fresh, tmp_path / "w.pth")
    res = train(ds, ModelConfig(width=4), _cfg(epochs=1, init_from=str(tmp_path / "src")), tmp_path / "ft",
                progress=False, log=None)
    rec = Run.load(tmp_path / "ft").record
    assert rec.train.init_from == str(tmp_path / "src") and rec.train.extra["init_from_sha256"] == digest
    scratch = train(ds, ModelConfig(width=4), _cfg(epochs=1), tmp_path / "scratch", progress=False, log=None)
    assert res.history[0]["loss"] < scratch.history[0]["loss"]  # it starts from trained features


def test_training_never_changes_the_callers_configs(tmp_path: Path) -> None:
    from dataclasses import asdict

    from l2ood.data import ImageSet
    from l2ood.record import read_record

    imgs = torch.randint(0, 256, (24, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = ImageSet(name="three", images=imgs, labels=torch.arange(24) % 3, class_names=["a", "b", "c"])
    mcfg, tcfg = ModelConfig(width=4), _cfg(epochs=1, batch_size=8, extra={"note": "kept"})
    m_before, t_before = mcfg.to_dict(), asdict(tcfg)
    res = train(ds, mcfg, tcfg, tmp_path / "a", progress=False, log=None)
    assert mcfg.to_dict() == m_before and asdict(tcfg) == t_before  # the caller's objects are untouched
    assert mcfg.num_classes == 10 and mcfg.class_names is None and mcfg.mean == [0.0] and mcfg.image_size == (32, 32)
    rec = read_record(tmp_path / "a")  # the run records the configuration completed from the data
    assert rec.model.num_classes == 3 and rec.model.in_channels == 3 and tuple(rec.model.image_size) == (8, 8)
    assert rec.model.class_names == ["a", "b", "c"] and len(rec.model.mean) == 3 and rec.model.mean != [0.0] * 3
    assert res.model_cfg.to_dict() == rec.model.to_dict() and asdict(res.train_cfg) == asdict(rec.train)
    assert rec.train.extra == {"note": "kept"}
    # fine-tuning: the source's digest goes into the run's copy of the training config, not the caller's
    ft = _cfg(epochs=1, batch_size=8, init_from=str(tmp_path / "a"))
    ft_before = asdict(ft)
    res2 = train(ds, mcfg, ft, tmp_path / "b", progress=False, log=None)
    assert asdict(ft) == ft_before and ft.extra == {} and mcfg.to_dict() == m_before
    digest = read_record(tmp_path / "b").train.extra["init_from_sha256"]
    assert res2.train_cfg.extra["init_from_sha256"] == digest and len(digest) == 64
