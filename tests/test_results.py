"""The results record (l2ood.results): schema, one atomic writer, upgrades of the 0.2 shapes, clear refusals, and the
per-sample table."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from l2ood import runfolder
from l2ood.results import (
    SCHEMA,
    BenchCell,
    ResultsError,
    ResultsFile,
    read_results,
    record_of,
    write_results,
    write_samples,
    write_scores,
)


def _record(**over: Any) -> dict[str, Any]:
    m = {"auroc": 0.9, "fpr95": 0.3, "fpr95_ood_pos": 0.2, "aupr_in": 0.8, "aupr_out": 0.7}
    rec = {"model": {"arch": "resnet18", "width": 4}, "head": "l2", "id_dataset": "fashion-mnist", "n_id_test": 50,
           "id_accuracy": 0.81, "detectors": ["feature_norm", "knn"], "run": "/runs/fm-l2",
           "ood": {"mnist": {"n": 40, "detectors": {"feature_norm": m, "knn": {**m, "auroc": 0.95}}},
                   "noise": {"n": 20, "detectors": {"feature_norm": {**m, "auroc": 1.0}, "knn": m}}},
           "code_version": {"l2ood": "0.2.0"}}
    rec.update(over)
    return rec


def test_round_trip_is_exact_and_the_file_is_strict_json(tmp_path: Path) -> None:
    rec = record_of(_record())
    f = ResultsFile.new({"fm (L2)": rec}, command="l2ood evaluate runs/fm-l2")
    path = write_results(tmp_path / "r" / "results.json", f)
    raw = json.loads(path.read_text(), parse_constant=lambda t: pytest.fail(f"non-standard token {t}"))
    assert raw["schema"] == SCHEMA and set(raw["runs"]) == {"fm (L2)"} and raw["command"].startswith("l2ood")
    back = read_results(path)
    assert back == f and back.upgraded_from is None
    assert back.only.metric("mnist", "knn") == 0.95 and back.only.metric("noise", "knn", "fpr95_ood_pos") == 0.2
    assert back.only.metric("svhn", "knn") is None and back.only.metric("mnist", "vim") is None
    assert [(s, c) for s, c, _ in back.only.rows()] == [("mnist", "feature_norm"), ("mnist", "knn"),
                                                         ("noise", "feature_norm"), ("noise", "knn")]


def test_unlabelled_id_sets_record_no_accuracy() -> None:
    assert record_of(_record(id_accuracy=float("nan"))).id_accuracy is None  # NaN is written as null


@pytest.mark.parametrize(("bad", "message"), [
    ({"id_accuracy": 1.5}, "id_accuracy"),
    ({"ood": {"mnist": {"n": 4, "detectors": {"knn": {"auroc": 0.5}}}}}, "fpr95"),
    ({"n_id_test": -1}, "n_id_test"),
    ({"detectors": "feature_norm"}, "detectors"),
])
def test_invalid_records_are_refused_naming_the_key(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ResultsError, match=message):
        record_of(_record(**bad))


def test_the_three_shapes_of_l2ood_0_2_are_upgraded(tmp_path: Path) -> None:
    flat = _record()
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    f = read_results(tmp_path / "flat.json")
    assert f.upgraded_from == "0.2" and list(f.runs) == ["fm-l2"] and f.only.metric("mnist", "knn") == 0.95
    nested = {"A (L2)": {**flat, "command": "l2ood evaluate a b"}, "B (CE)": {**_record(head="ce"),
                                                                          "command": "l2ood evaluate a b"}}
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    f = read_results(tmp_path / "nested.json")
    assert list(f.runs) == ["A (L2)", "B (CE)"] and f.command == "l2ood evaluate a b" and f.runs["B (CE)"].head == "ce"
    cell = {"arch": "resnet18", "variant": "l2", "seed": 3, "requested": ["feature_norm"], "groups": {"mnist": "far"},
            "train_seconds": 12.5, "code_version": {"l2ood": "0.2.0"}, "results": {**flat, "code_version": None}}
    (tmp_path / "cell.json").write_text(json.dumps(cell))
    f = read_results(tmp_path / "cell.json")
    assert f.bench is not None and f.bench.seed == 3 and f.bench.hyper is None and f.bench.train_seconds == 12.5
    assert list(f.runs) == ["resnet18-l2-seed3"]


@pytest.mark.parametrize(("text", "message"), [
    ("{", "not valid JSON"),
    ('{"auroc": NaN}', "not valid JSON"),
    ("[1, 2]", "not an l2ood results file"),
    ('{"hello": 1}', "not an l2ood results file"),
    ('{"schema": "l2ood.results/9", "runs": {}}', "re-run the evaluation"),
    ('{"schema": "l2ood.results/1", "runs": {"a": {"head": "l2"}}}', "invalid results file"),
])
def test_anything_else_is_refused_with_one_clear_message(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "results.json"
    p.write_text(text)
    with pytest.raises(ResultsError, match=message) as e:
        read_results(p)
    assert str(p) in str(e.value)
    with pytest.raises(ResultsError, match="no such results file"):
        read_results(tmp_path / "missing.json")


def test_a_write_that_fails_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_results(tmp_path / "results.json", ResultsFile.new({"a": record_of(_record())}))
    before = path.read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runfolder.os, "replace", boom)
    with pytest.raises(OSError):
        write_results(path, ResultsFile.new({"b": record_of(_record(head="ce"))}))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_bench_cells_carry_their_key() -> None:
    key = BenchCell(arch="resnet18", variant="ce", seed=0, requested=["knn"], groups={"mnist": "far"},
                    hyper={"epochs": 8, "lr": 0.1})
    f = ResultsFile.new({"resnet18-ce-seed0": record_of(_record(head="ce"))}, bench=key)
    assert ResultsFile.model_validate(f.to_json()).bench == key
    with pytest.raises(ResultsError, match="expected one evaluated model"):
        _ = ResultsFile.new({"a": f.only, "b": f.only}).only


def test_sample_table_has_one_row_per_image(tmp_path: Path) -> None:
    scores = {"fm": {"feature_norm": np.array([3.0, 2.5], np.float32), "knn": np.array([-0.1, -0.2])},
              "noise": {"feature_norm": np.array([0.25]), "knn": np.array([-0.9])}}
    samples = {"fm": {"labels": np.array([1, 0]), "predictions": np.array([1, 1])},
               "noise": {"labels": None, "predictions": np.array([4]), "paths": ["noise/0.png"]}}
    rows = list(csv.reader(write_samples(tmp_path / "samples.csv", scores, samples).open()))
    assert rows[0] == ["dataset", "index", "path", "label", "prediction", "feature_norm", "knn"]
    assert rows[1:] == [["fm", "0", "", "1", "1", "3.0", "-0.1"], ["fm", "1", "", "0", "1", "2.5", "-0.2"],
                        ["noise", "0", "noise/0.png", "", "4", "0.25", "-0.9"]]
    # float32 scores are written exactly (repr of the float64 value), so the table reproduces scores.npz
    write_scores(tmp_path / "scores.npz", scores)
    npz = np.load(tmp_path / "scores.npz")
    assert float(npz["fm/feature_norm"][1]) == float(rows[2][5])


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_arrow(name: str, *a: Any, **k: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_arrow)
    with pytest.raises(ResultsError, match="pip install pyarrow"):
        write_samples(tmp_path / "s.parquet", {"a": {"x": np.zeros(1)}}, {})
    assert not os.listdir(tmp_path)
