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
    for bad in ("every=0", "often=2", "every=x"):
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
    assert main(["analyze", str(tmp_path / "missing")]) == 2
