"""Detector columns (l2ood.columns): keys and labels, fit-or-load with the run, scoring from extractions or images,
and combined columns with their two calibration schemes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from l2ood.columns import Column, CombinedColumn, parse_spec, report_columns
from l2ood.detectors import Extraction, Head
from l2ood.errors import ConfigError
from l2ood.metrics import ood_metrics
from l2ood.metrics.conformal import combined_scores
from l2ood.record import read_record
from l2ood.run import Run

FP32 = ["--precision", "fp32", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize(("key", "head", "want"), [
    ("energy", "l2", ("energy", "trained", "energy:trained")),
    ("energy:trained", "l2", ("energy", "trained", "energy:trained")),
    ("energy:raw", "l2", ("energy:raw", "raw", "energy:raw")),
    ("energy:raw", "ce", ("energy", "trained", "energy")),  # the same logits on a plain head: one key
    ("knn:raw", "l2", ("knn", "trained", "knn")),  # features only: the variant changes nothing
    ("feature_norm", "t2fnorm", ("feature_norm", "trained", "feature_norm")),
])
def test_keys_and_labels(key: str, head: str, want: tuple[str, str, str]) -> None:
    c = Column.of(key, head)
    assert (c.key, c.variant, c.label) == want


def test_report_columns_and_specs() -> None:
    assert [c.label for c in report_columns(["feature_norm", "msp", "knn"], "l2")] == [
        "feature_norm", "msp:trained", "msp:raw", "knn"]
    assert [c.label for c in report_columns(["feature_norm", "msp", "knn"], "ce")] == ["feature_norm", "msp", "knn"]
    assert report_columns(["knn"], "ce", hyper={"knn": {"k": 3}})[0].hyper_parameters()["k"] == 3
    assert [c.key for c in parse_spec("feature_norm, energy:raw", "l2")] == ["feature_norm", "energy:raw"]
    with pytest.raises(ConfigError, match="listed twice"):
        parse_spec("energy,energy:trained", "l2")
    with pytest.raises(ConfigError, match="unknown detector 'nope'"):
        parse_spec("nope", "l2")
    with pytest.raises(ConfigError, match="'trained' or 'raw'"):
        Column.of("energy:cooked", "l2")


def _ext(n: int, seed: int, head: Head) -> Extraction:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g).abs() * (2 if seed == 0 else 1)
    return Extraction(z, head.logits(z), torch.randint(0, 3, (n,), generator=g))


def test_raw_columns_fit_and_score_on_the_raw_logits() -> None:
    g = torch.Generator().manual_seed(1)
    head = Head(torch.randn(3, 8, generator=g), torch.randn(3, generator=g), mode="l2")
    train, test = _ext(200, 0, head), _ext(30, 1, head)
    col = Column.of("vim:raw", "l2").fit(train, head)
    from l2ood.detectors import make_detector

    ref = make_detector("vim").fit(train.with_head(head.raw()), head.raw())
    assert np.array_equal(col.score(test, head), ref.score(test.with_head(head.raw()), head.raw()).double().numpy())
    assert not np.array_equal(col.score(test, head), Column.of("vim", "l2").fit(train, head).score(test, head))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from conftest import tiny_run

    root = tmp_path_factory.mktemp("columns")
    return tiny_run(root, n_train=400, n_test=100, width=4, holdout=100), root / "data"


def test_fit_or_load_fits_once_then_loads_the_same_statistics(run_dir: tuple[Path, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, root = run_dir
    run = Run.load(path, device="cpu", precision="fp32", data_root=root)
    hold = run.holdout()
    assert hold is not None
    first = Column.of("mahalanobis", "l2").fit_or_load(run)
    entry = read_record(path).detectors["mahalanobis"]
    assert first.sha256 == entry.sha256 and (path / entry.file).is_file() and entry.n_fit == run.data.n_train
    s1 = first.score_set(run, hold)

    def no_fit(*a: object, **k: object) -> None:
        raise AssertionError("fitted again")

    monkeypatch.setattr(Column, "fit", no_fit)
    again = Column.of("mahalanobis", "l2").fit_or_load(Run.load(path, device="cpu", precision="fp32",
                                                                 data_root=root))
    assert again.sha256 == first.sha256 and np.array_equal(again.score_set(run, hold), s1)
    loaded = Column.of("mahalanobis", "l2").load(run, first.sha256)  # the deployment path: never fits
    assert np.array_equal(loaded.score_set(run, hold), s1)
    monkeypatch.undo()
    # other hyper-parameters are another fit, recorded in place of the first
    k3 = Column.of("knn", "l2", k=3).fit_or_load(run)
    assert read_record(path).detectors["knn"].hyper_parameters["k"] == 3 and k3.sha256 is not None
    k5 = Column.of("knn", "l2", k=5).fit_or_load(run)
    assert read_record(path).detectors["knn"].hyper_parameters["k"] == 5 and k5.sha256 != k3.sha256


def test_model_in_the_loop_columns_score_batches_of_images(run_dir: tuple[Path, Path]) -> None:
    path, root = run_dir
    run = Run.load(path, device="cpu", precision="fp32", data_root=root)
    test, _ = run.id_test()
    col = Column.of("odin", "l2")
    whole = col.score_set(run, test, batch_size=64)
    parts = np.concatenate([col.score_images(run.model, run.runtime, x) for x in run.image_batches(test, 32)])
    assert whole.shape == (len(test),) and np.allclose(whole, parts, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="scores images with the model"):
        col.score(run.forward(test), run.head)


def test_combined_column_split_and_cross_fitted() -> None:
    rng = np.random.default_rng(0)
    members = parse_spec("feature_norm,knn", "l2")
    with pytest.raises(ConfigError, match="at least two"):
        CombinedColumn(members[:1])
    with pytest.raises(ConfigError, match="combine rule"):
        CombinedColumn(members, "fisher")
    cal, ids, ood = rng.normal(1, 1, (50, 2)), rng.normal(1, 1, (40, 2)), rng.normal(-1, 1, (30, 2))
    split = CombinedColumn(members).calibrate_split(cal, "holdout")
    assert split.name == "bonferroni(feature_norm,knn)" and split.describe()["n_calibration"] == 50
    assert np.array_equal(split.score_ood(ood, ids), combined_scores([cal[:, 0], cal[:, 1]], ood, "bonferroni"))
    assert split.metrics(ids, ood) == dict(ood_metrics(split.score_id(ids), split.score_ood(ood, ids)))
    cross = CombinedColumn(members, "cauchy").calibrate_crossfit(len(ids), "fm-test")
    assert cross.folds is not None
    a, b = cross.folds
    assert len(a) == len(b) == 20 and not set(a) & set(b)
    sid = cross.score_id(ids)  # each half against the other half
    assert np.array_equal(sid[a], combined_scores(list(ids[b].T), ids[a], "cauchy"))
    assert np.array_equal(sid[b], combined_scores(list(ids[a].T), ids[b], "cauchy"))
    fold = [ood_metrics(combined_scores(list(ids[g].T), ids[f], "cauchy"), combined_scores(list(ids[g].T), ood,
                                                                                           "cauchy"))
            for f, g in ((a, b), (b, a))]
    assert cross.metrics(ids, ood)["auroc"] == pytest.approx((fold[0]["auroc"] + fold[1]["auroc"]) / 2, abs=0)
    assert "cross-fitted halves (20 / 20 images, seed 0)" in cross.describe()["calibration"]
    with pytest.raises(ConfigError, match="at least 4"):
        CombinedColumn(members).calibrate_crossfit(3, "x")


def test_evaluate_needs_training_data_for_fitted_columns_of_an_in_memory_run() -> None:
    from l2ood.data import load_dataset
    from l2ood.evaluation import evaluate
    from l2ood.models import ModelConfig, build_model

    cfg = ModelConfig(width=2, in_channels=1, image_size=(28, 28), num_classes=3)
    run = Run.from_model(build_model(cfg), cfg, device="cpu", precision="fp32")
    ds = load_dataset("noise", n=8, size=(28, 28), channels=1)
    with pytest.raises(ConfigError, match="need ID training data: knn, vim:trained, vim:raw"):
        evaluate(run, ds, [ds], ["feature_norm", "knn", "vim"])
