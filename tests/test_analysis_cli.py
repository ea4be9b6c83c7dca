"""Tracking during training and `l2ood analyze` end to end on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2ood.analysis.track import TrackConfig
from l2ood.cli import main


def test_track_spec_parsing() -> None:
    c = TrackConfig.parse("every=3,n_train=100", "mnist,noise")
    assert (c.every, c.n_train, c.ood) == (3, 100, ["mnist", "noise"])
    assert TrackConfig.parse("2").every == 2
    assert TrackConfig.parse("every=1,n_train=all").n_train is None and TrackConfig.parse("1").n_train == 5000
    for bad in ("every=0", "often=2", "every=x", "n_test=all"):
        with pytest.raises(ValueError):
            TrackConfig.parse(bad)


def test_track_and_analyze(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for head in ("l2", "ce"):
        run = tmp_path / head
        assert main(["train", "--data-root", str(data_root), "--head", head, "--epochs", "3", "--width", "4",
                     "--batch-size", "64", "--holdout", "0", "--out", str(run), "--no-progress", "--precision",
                     "fp32", "--track", "every=2,n_train=200,n_test=100,n_ood=50", "--track-ood", "mnist,noise"]) == 0
        recs = [json.loads(x) for x in (run / "track.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in recs] == [2, 3]  # every 2 epochs + the last one
        for r in recs:
            assert set(r["ood"]) == {"mnist", "noise"}
            assert 0 <= r["ood"]["mnist"]["auroc"] <= 1 and r["nc"]["nc1"] >= 0 and 0 <= r["nc"]["nc4"] <= 1
            assert len(r["nc"]["norm_mean_per_class"]) == 10
        assert (run / "track" / "epoch-0003.npz").is_file()
        runs.append(str(run))
    out = tmp_path / "analysis"
    capsys.readouterr()
    assert main(["analyze", *runs, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for claim in ("(a)", "(b)", "(c)"):
        assert claim in printed
    text = (out / "analysis.md").read_text()
    assert "HOLD" in text
    for f in ("nc.png", "auroc.png", "norm_hist.png"):
        assert (out / f).stat().st_size > 1000
    summary = json.loads((out / "analysis.json").read_text())
    assert [r["head"] for r in summary["runs"]] == ["l2", "ce"] and summary["verdicts"]["a"]["verdict"] in text
    assert main(["analyze", str(tmp_path / "missing")]) == 2


def _recs(aurocs: dict[str, list[float]], nc1: float) -> list[dict]:
    eps = len(next(iter(aurocs.values())))
    nc = {"nc1": nc1, "nc2_equinorm": 0.2, "nc2_equiangularity": 0.1, "nc3": 0.3, "nc4": 0.05,
          "norm_mean_per_class": [4.0, 6.0]}
    return [{"epoch": e + 1, "test_acc": 0.9, "nc": nc, "id_norm_mean": 5.0, "id_norm_std": 1.0,
             "ood": {s: {"auroc": v[e], "norm_mean": 2.0} for s, v in aurocs.items()}} for e in range(eps)]


def test_verdicts_with_seeds_count_only_differences_beyond_the_spread() -> None:
    from l2ood.analysis.report import verdict_data, verdicts

    # "far": L2 0.90/0.92 vs CE 0.80/0.82 (gap 0.10 >> sd); "near": L2 0.70/0.74 vs CE 0.71/0.73 (gap 0)
    loaded = [("s0/l2", "l2", _recs({"far": [0.85, 0.90], "near": [0.6, 0.70]}, nc1=1.0)),
              ("s1/l2", "l2", _recs({"far": [0.86, 0.92], "near": [0.6, 0.74]}, nc1=1.2)),
              ("s0/ce", "ce", _recs({"far": [0.70, 0.80], "near": [0.6, 0.71]}, nc1=0.5)),
              ("s1/ce", "ce", _recs({"far": [0.72, 0.82], "near": [0.6, 0.73]}, nc1=0.52))]
    text = "\n".join(verdicts(loaded, ["far", "near"]))
    assert "PARTLY HOLDS** (L2 better on 1/2 OoD sets, CE better on 0)" in text
    assert "| far | 91.00 ± 1.41 | 81.00 ± 1.41 | +10.00 |" in text
    assert "| near | 72.00 ± 2.83 | 72.00 ± 1.41 | +0.00 (within seed spread) |" in text
    # (b): CE's final mean AUROC is (81 + 72) / 2 = 76.5; L2's mean curve is 72.75 then 81.5 -> epoch 2 both
    assert "DOES NOT HOLD: L2 reaches the CE final mean AUROC (76.50 %) at epoch 2; CE itself first" in text
    # per run: L2 means (0.725, 0.80), (0.73, 0.83); CE (0.65, 0.755) never reaches 0.765, (0.66, 0.775) at 2
    assert "L2 runs: 2, 2; CE runs: never, 2. Paired" in text and "L2 earlier in 1, CE earlier in 0, ties 1" in text
    # (c): nc1 1.1 ± 0.14 vs 0.51 ± 0.014 differs (54 %, beyond spread); the other metrics are equal
    assert "1/5 metrics differ by more than 25 % and beyond the seed spread" in text
    data = json.loads(json.dumps(verdict_data(loaded, ["far", "near"])))  # JSON-ready
    assert data["a"]["l2_better"] == 1 and data["b"]["per_run"] == {"l2": [2, 2], "ce": [None, 2]}
    assert [r["differs"] for r in data["c"]["metrics"]] == [True, False, False, False, False]
    single = "\n".join(verdicts([loaded[0], loaded[2]], ["far", "near"]))
    assert "one run each" in single and "PARTLY HOLDS** (L2 better on 1/2 OoD sets, CE better on 1)" in single


def test_norm_table_ratios() -> None:
    from l2ood.analysis.report import norm_table

    loaded = [("s0/l2", "l2", _recs({"far": [0.9]}, nc1=1.0)), ("s1/l2", "l2", _recs({"far": [0.9]}, nc1=1.0))]
    text = "\n".join(norm_table(loaded, ["far"]))
    assert "| L2 | 2 | 5 (1) | 0.40 | 0.200 |" in text  # OoD 2 / ID 5; per-class means 4, 6: sd 1 / mean 5
