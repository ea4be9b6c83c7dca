"""`l2ood leaderboard`: a method x benchmark table over seeds, read from typed results files only.

The results are written with the library's own writer (:func:`l2ood.results.write_results`) from known numbers:
two bench benchmarks (near/far groups), several seeds, a missing cell, a tie, a metric an older file lacks; every
mean and std is checked against :mod:`statistics`, ranks against a worked example."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from l2ood.cli import main
from l2ood.errors import ConfigError
from l2ood.report.leaderboard import Method, fractional_ranks, leaderboard, results_files, split_columns
from l2ood.results import BenchCell, ResultsError, ResultsFile, read_results, record_of, write_results

# benchmark -> group -> OoD sets (as bench cells record them)
GROUPS = {"b1": {"near": ["a1", "a2"], "far": ["f1"]}, "b2": {"near": ["c1"], "far": ["g1", "g2"]}}
SEEDS = {"b1": [0, 1, 2], "b2": [0, 1]}
# head -> columns of its cells; ce/msp is not reported on b2 (a missing cell)
COLUMNS = {"b1": {"l2": ["feature_norm", "knn"], "ce": ["msp", "knn"]},
           "b2": {"l2": ["feature_norm", "knn"], "ce": ["knn"]}}
M1, M2 = Method("resnet18", "l2", "feature_norm"), Method("resnet18", "l2", "knn")
M3, M4 = Method("resnet18", "ce", "msp"), Method("resnet18", "ce", "knn")
# group AUROC (before the seed offset) of each method; the sets of a group are base +- 0.02 (mean: base)
BASE = {("b1", "near"): {M1: 0.90, M2: 0.95, M3: 0.80, M4: 0.85},
        ("b1", "far"): {M1: 0.97, M2: 0.93, M3: 0.90, M4: 0.70},
        ("b2", "near"): {M1: 0.86, M2: 0.88, M4: 0.60},
        ("b2", "far"): {M1: 0.91, M2: 0.89, M4: 0.91}}  # M1 and M4 tie on b2 far (the same numbers)
SPREAD = {"a1": 0.02, "a2": -0.02, "f1": 0.0, "c1": 0.0, "g1": 0.01, "g2": -0.01}


def auroc(bench: str, method: Method, ds: str, seed: int) -> float:
    group = next(g for g, sets in GROUPS[bench].items() if ds in sets)
    return BASE[(bench, group)][method] + SPREAD[ds] + 0.01 * seed


def metrics(bench: str, method: Method, ds: str, seed: int) -> dict[str, Any]:
    a = auroc(bench, method, ds, seed)
    m: dict[str, Any] = {"auroc": a, "fpr95": 1 - a, "fpr95_ood_pos": (1 - a) / 2, "aupr_in": 0.5, "aupr_out": 0.5}
    if bench == "b1" and method == M1 and ds == "a1" and seed == 2:
        m["fpr95_ood_pos"] = None  # as in a file written before fpr95_ood_pos existed
    return m


def record(head: str, columns: list[str], ood: dict[str, dict[str, dict[str, Any]]], *, seed: int, epochs: int = 1,
           arch: str = "resnet18", id_dataset: str = "id", id_accuracy: float = 0.9, k: int = 50) -> dict[str, Any]:
    """A results record as :func:`l2ood.evaluation.evaluate` writes it (``ood``: set -> column -> metrics)."""
    return {"model": {"arch": arch, "width": 4, "head": head, "num_classes": 10, "mean": [0.1 * seed],
                      "class_names": None},
            "head": head, "id_dataset": id_dataset, "n_id_test": 200, "id_accuracy": id_accuracy,
            "detectors": columns,
            "detector_params": {c: ({"k": k, "query_chunk": 1024 * (seed + 1)} if c == "knn" else {})
                                for c in columns},
            "ood": {s: {"n": 100, "detectors": cols} for s, cols in ood.items()},
            "train": {"epochs": epochs, "lr": 0.1, "seed": seed, "device": "auto", "precision": "fp32"},
            "code_version": {"l2ood": "test"}}


def write_cell(out: Path, bench: str, head: str, seed: int, **over: Any) -> Path:
    """``out/cells/<arch>-<head>-seed<k>.json`` of benchmark ``bench``, written by the library's writer."""
    cols = COLUMNS[bench][head]
    methods = {c: Method("resnet18", head, c) for c in cols}
    ood = {ds: {c: metrics(bench, methods[c], ds, seed) for c in cols}
           for sets in GROUPS[bench].values() for ds in sets}
    rec = record(head, cols, ood, seed=seed, **over)
    groups = {ds: g for g, sets in GROUPS[bench].items() for ds in sets}
    cell = BenchCell(arch="resnet18", variant=head, seed=seed, requested=cols, groups=groups, benchmark=bench,
                     recipe="cpu-small", hyper={"epochs": over.get("epochs", 1), "n_ood": None, "n_fit": None,
                                                "pretrained": None})
    name = f"resnet18-{head}-seed{seed}"
    return write_results(out / "cells" / f"{name}.json", ResultsFile.new({name: record_of(rec)}, bench=cell))


@pytest.fixture
def benches(tmp_path: Path) -> list[Path]:
    """Two bench output folders: b1 (seeds 0-2) and b2 (seeds 0-1), heads l2 and ce."""
    outs = []
    for bench in ("b1", "b2"):
        out = tmp_path / f"bench-{bench}"
        for seed in SEEDS[bench]:
            for head in ("l2", "ce"):
                write_cell(out, bench, head, seed)
        (out / "spec.json").write_text("{}")  # the bench's spec is not a results file: never read
        outs.append(out)
    return outs


def reference(bench: str, method: Method, group: str, key: str = "auroc") -> list[float]:
    """Per-seed group values: the unweighted mean over the group's sets (None where a set lacks the metric)."""
    out = []
    for seed in SEEDS[bench]:
        per = [metrics(bench, method, ds, seed)[key] for ds in GROUPS[bench][group]]
        if all(v is not None for v in per):
            out.append(statistics.mean(per))
    return out


def test_means_and_sample_stds_match_statistics(benches: list[Path]) -> None:
    board = leaderboard(benches)
    assert [b.name for b in board.benchmarks] == ["b1", "b2"]
    assert board.benchmarks[0].groups == {"near": ("a1", "a2"), "far": ("f1",)} and board.benchmarks[0].grouped
    assert len(board.cells) == 7  # 4 methods on b1, 3 on b2 (ce/msp missing)
    assert board.cell(M3, "b2") is None
    for (method, bench), cell in board.cells.items():
        assert cell.seeds == tuple(SEEDS[bench])
        for group in GROUPS[bench]:
            for key in ("auroc", "fpr95", "fpr95_ood_pos"):
                ref = reference(bench, method, group, key)
                st = cell.stat(group, key)
                assert st is not None and st.values == tuple(ref)
                assert st.mean == statistics.mean(ref)
                assert st.std == (statistics.stdev(ref) if len(ref) > 1 else None)
    # worked example: l2 / feature_norm on b1 near = mean(0.92 + s/100, 0.88 + s/100) = 0.90, 0.91, 0.92
    st = board.cells[(M1, "b1")].stat("near")
    assert st is not None and st.n == 3
    assert st.mean == pytest.approx(0.91, abs=1e-12) and st.std == pytest.approx(0.01, abs=1e-12)
    # seed 2 lacks fpr95_ood_pos on a1: near has 2 values for OpenOOD's FPR, far all 3
    near_pos, far_pos = (board.cells[(M1, "b1")].stat(g, "fpr95_ood_pos") for g in ("near", "far"))
    assert near_pos is not None and far_pos is not None and (near_pos.n, far_pos.n) == (2, 3)
    acc = board.cells[(M1, "b1")].id_accuracy
    assert acc is not None and acc.values == (0.9, 0.9, 0.9) and acc.std == 0.0


def test_ranks_average_ties_and_skip_missing_cells(benches: list[Path]) -> None:
    board = leaderboard(benches)
    assert {m: board.ranks[m].per_group for m in (M1, M2, M3, M4)} == {
        M1: {("b1", "near"): 2.0, ("b1", "far"): 1.0, ("b2", "near"): 2.0, ("b2", "far"): 1.5},
        M2: {("b1", "near"): 1.0, ("b1", "far"): 2.0, ("b2", "near"): 1.0, ("b2", "far"): 3.0},
        M3: {("b1", "near"): 4.0, ("b1", "far"): 3.0},  # not ranked where it has no result
        M4: {("b1", "near"): 3.0, ("b1", "far"): 4.0, ("b2", "near"): 3.0, ("b2", "far"): 1.5}}
    assert {m: board.ranks[m].mean for m in (M1, M2, M3, M4)} == {M1: 1.625, M2: 1.75, M3: 3.5, M4: 2.875}
    assert (board.ranks[M3].ranked, board.ranks[M3].total, board.ranks[M3].complete) == (2, 4, False)
    # ranked everywhere first, then by mean rank: M3's 3.5 over 2 of 4 groups sorts last
    assert board.methods == [M1, M2, M4, M3]
    md = board.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| l2 ") or line.startswith("| ce ")]
    assert [r.split(" | ")[:3] for r in rows] == [["| l2", "feature_norm", "1.62"], ["| l2", "knn", "1.75"],
                                                  ["| ce", "knn", "2.88"], ["| ce", "msp", "3.50 (2/4)"]]
    assert rows[3].endswith(" | - | - | - | - | - |")  # b2: n and four numbers missing
    assert fractional_ranks({"a": 1.0, "b": 1.0, "c": 1.0}) == {"a": 2.0, "b": 2.0, "c": 2.0}


def test_markdown_labels_every_fpr_column_with_its_convention(benches: list[Path]) -> None:
    board = leaderboard(benches)

    def header(fpr: str) -> list[str]:
        text = board.to_markdown(fpr)
        return next(line for line in text.splitlines() if line.startswith("| head |")).strip("| ").split(" | ")

    auroc_cols = ["b1 near AUROC", "b1 far AUROC"]
    assert header("openood")[:9] == ["head", "detector", "mean rank", "b1 n", *auroc_cols,
                                     "b1 near FPR95 (OoD+, OpenOOD)", "b1 far FPR95 (OoD+, OpenOOD)", "b2 n"]
    assert header("l2ood")[6:8] == ["b1 near FPR95 (ID+, l2ood)", "b1 far FPR95 (ID+, l2ood)"]
    both = header("both")
    assert both[4:10] == [*auroc_cols, "b1 near FPR95 (OoD+, OpenOOD)", "b1 far FPR95 (OoD+, OpenOOD)",
                          "b1 near FPR95 (ID+, l2ood)", "b1 far FPR95 (ID+, l2ood)"]
    assert all("AUROC" in h or "OoD+, OpenOOD" in h or "ID+, l2ood" in h for h in both if "FPR" in h or "AUROC" in h)
    md = board.to_markdown("both")
    assert "OpenOOD v1.5's FPR@95 (OoD positive)" in md and "l2ood's FPR@95 (ID positive)" in md
    row = next(line for line in md.splitlines() if line.startswith("| l2 | feature_norm |")).split(" | ")
    # b1: n = 3; near AUROC 91.00 ± 1.00; OpenOOD FPR near from 2 seeds only
    assert row[3:5] == ["3", "91.00 ± 1.00"]
    pos = reference("b1", M1, "near", "fpr95_ood_pos")
    assert row[6] == f"{100 * statistics.mean(pos):.2f} ± {100 * statistics.stdev(pos):.2f} (n=2)"
    with pytest.raises(ConfigError, match="unknown FPR convention"):
        board.to_markdown("roc")


def test_csv_round_trip_is_exact(benches: list[Path]) -> None:
    board = leaderboard(benches)
    reader = csv.DictReader(io.StringIO(board.to_csv()))
    rows = list(reader)
    assert reader.fieldnames == board.csv_header() and len(rows) == 7
    for parsed, row in zip(rows, board.rows(), strict=True):  # every value comes back exactly
        for k in board.csv_header():
            v = row.get(k)
            if v is None:
                assert parsed[k] == "", k
            elif isinstance(v, float):
                assert float(parsed[k]) == v, k
            else:
                assert parsed[k] == str(v), k
    first = rows[0]
    assert (first["method"], first["benchmark"], first["n_seeds"], first["seeds"]) == ("l2 / feature_norm", "b1",
                                                                                        "3", "0;1;2")
    assert float(first["mean_rank"]) == 1.625 and (first["groups_ranked"], first["groups_total"]) == ("4", "4")
    for r in rows:
        method = next(m for m in (M1, M2, M3, M4) if (m.head, m.detector) == (r["head"], r["detector"]))
        for group in GROUPS[r["benchmark"]]:
            ref = reference(r["benchmark"], method, group)
            assert float(r[f"{group}_auroc_mean"]) == statistics.mean(ref)  # exact: repr round-trips
            assert float(r[f"{group}_auroc_std"]) == statistics.stdev(ref)
            assert int(r[f"{group}_auroc_n"]) == len(ref)
    assert {r["near_fpr95_ood_pos_n"] for r in rows if r["method"] == "l2 / feature_norm"} == {"2"}


def test_one_cell_never_mixes_settings_unless_asked(benches: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "bench-b1-e2"
    write_cell(other, "b1", "l2", 3, epochs=2)
    with pytest.raises(ConfigError) as e:
        leaderboard([*benches, other])
    msg = str(e.value)
    assert msg.startswith("l2 / feature_norm on b1 pools results of different settings: train.epochs: 1 (")
    assert "vs 2 (" in msg and "resnet18-l2-seed3.json" in msg and "--allow-mixed" in msg
    assert "(1 more cells mix settings)" in msg  # l2 / knn too
    board = leaderboard([*benches, other], allow_mixed=True)
    cell = board.cells[(M1, "b1")]
    assert cell.seeds == (0, 1, 2, 3) and "train.epochs" in cell.mixed and "bench.hyper" not in " ".join(cell.mixed)
    md = board.to_markdown()
    assert "‡ pooled with --allow-mixed:" in md and "- l2 / knn on b1 pools results of different settings" in md
    row = next(line for line in md.splitlines() if line.startswith("| l2 | feature_norm |"))
    assert row.split(" | ")[3] == "4" and " ‡" in row
    assert next(r for r in board.rows() if r["method"] == "l2 / feature_norm")["mixed"] == "train.epochs"
    # knn hyper-parameters are settings too (chunk sizes are not: they differ by seed here)
    khyper = tmp_path / "bench-b1-k10"
    write_cell(khyper, "b1", "ce", 5, k=10)
    with pytest.raises(ConfigError, match=r"ce / knn on b1 pools .*column\.k: 50 \(.*\) vs 10 \("):
        leaderboard([*benches, khyper])


def test_methods_of_one_group_must_share_the_data(benches: list[Path], tmp_path: Path) -> None:
    odd = tmp_path / "odd" / "cells"
    odd.mkdir(parents=True)
    for p in (benches[0] / "cells").glob("resnet18-ce-*.json"):
        d = read_results(p).to_json()
        for run in d["runs"].values():
            run["ood"]["f1"]["n"] = 50
        write_results(odd / p.name, ResultsFile.model_validate(d))
    l2_only = tmp_path / "l2" / "cells"
    l2_only.mkdir(parents=True)
    for p in (benches[0] / "cells").glob("resnet18-l2-*.json"):
        write_results(l2_only / p.name, read_results(p))
    with pytest.raises(ConfigError, match=r"^b1 far: the methods were evaluated on different data: sets: f1 "
                                          r"\(n=100\) \(.*\) vs f1 \(n=50\) \(.*\)\. Methods are ranked on the same"):
        leaderboard([l2_only.parent, odd.parent])
    board = leaderboard([l2_only.parent, odd.parent], allow_mixed=True)
    assert board.mixed_groups == {("b1", "far")}
    assert "| b1 far AUROC ‡ |" in board.to_markdown()


def test_duplicates_count_once_and_conflicting_ones_are_refused(benches: list[Path], tmp_path: Path) -> None:
    cell = benches[0] / "cells" / "resnet18-l2-seed0.json"
    copy = tmp_path / "copy" / "results.json"
    copy.parent.mkdir()
    copy.write_bytes(cell.read_bytes())
    board = leaderboard([benches[0], cell, copy])  # the same file twice, and the same evaluation elsewhere
    assert board.cells[(M1, "b1")].seeds == (0, 1, 2) and len(board.files) == 7
    f = read_results(copy).to_json()
    next(iter(f["runs"].values()))["ood"]["a1"]["detectors"]["knn"]["auroc"] = 0.5
    write_results(copy, ResultsFile.model_validate(f))
    with pytest.raises(ConfigError, match=r"l2 / knn on b1: two different results of seed 0 with the same settings"):
        leaderboard([benches[0], copy])


@pytest.mark.parametrize(("text", "message"), [
    ('{"schema": "l2ood.results/0", "runs": {}}', "results schema 'l2ood.results/0' is not 'l2ood.results/1'"),
    ('{"hello": 1}', "not an l2ood results file"),
    ('{"auroc": NaN}', "NaN"),
])
def test_old_or_invalid_results_are_refused_with_the_readers_message(tmp_path: Path, text: str, message: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(text)
    with pytest.raises(ResultsError) as e:
        read_results(bad)
    with pytest.raises(ResultsError) as e2:
        leaderboard([tmp_path])
    assert str(e2.value) == str(e.value) and message in str(e.value)
    assert main(["leaderboard", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("l2ood leaderboard: error: ") and message in err and "Traceback" not in err


def test_invalid_metric_value_is_refused(benches: list[Path]) -> None:
    path = benches[0] / "cells" / "resnet18-l2-seed0.json"
    d = json.loads(path.read_text())
    next(iter(d["runs"].values()))["ood"]["a1"]["detectors"]["knn"]["auroc"] = 1.5
    path.write_text(json.dumps(d))
    with pytest.raises(ResultsError, match=r"invalid results file: runs\..*auroc"):
        leaderboard(benches)


def test_results_without_groups_get_one_column_per_set(tmp_path: Path) -> None:
    """`l2ood evaluate` / demo results: the benchmark is the ID set, each OoD set its own group; the seed is the
    training seed (the run labels say otherwise on purpose)."""
    runs = {}
    for seed in (0, 1):
        for head, cols in (("l2", ["feature_norm", "energy:trained", "energy:raw"]),
                           ("ce", ["feature_norm", "energy"])):
            ood = {s: {c: {"auroc": 0.7 + 0.1 * i + 0.01 * seed, "fpr95": 0.5, "fpr95_ood_pos": 0.4,
                           "aupr_in": 0.5, "aupr_out": 0.5} for i, c in enumerate(cols)} for s in ("mnist", "noise")}
            runs[f"seed9-{head}-{seed}"] = record_of(record(head, cols, ood, seed=seed, id_dataset="fashion-mnist"))
    path = write_results(tmp_path / "eval" / "results.json", ResultsFile.new(runs, command="l2ood evaluate ..."))
    assert results_files(tmp_path) == [path]
    board = leaderboard([tmp_path], detectors=["energy"])  # energy keeps energy:trained and energy:raw
    assert [b.name for b in board.benchmarks] == ["fashion-mnist"]
    assert board.benchmarks[0].groups == {"mnist": ("mnist",), "noise": ("noise",)} and not board.benchmarks[0].grouped
    raw, trained, ce = (Method("resnet18", h, c) for h, c in (("l2", "energy:raw"), ("l2", "energy:trained"),
                                                               ("ce", "energy")))
    # on each set: energy:raw 0.905 first; energy:trained and ce's energy tie at 0.805 (rank 2.5, then by name)
    assert board.methods == [raw, ce, trained]
    assert {m: board.ranks[m].per_group for m in board.methods} == {
        raw: {("fashion-mnist", "mnist"): 1.0, ("fashion-mnist", "noise"): 1.0},
        ce: {("fashion-mnist", "mnist"): 2.5, ("fashion-mnist", "noise"): 2.5},
        trained: {("fashion-mnist", "mnist"): 2.5, ("fashion-mnist", "noise"): 2.5}}
    assert board.cells[(raw, "fashion-mnist")].seeds == (0, 1)
    st = board.cells[(ce, "fashion-mnist")].stat("mnist")
    assert st is not None and st.values == pytest.approx((0.8, 0.81), abs=1e-12)
    md = board.to_markdown()
    assert "fashion-mnist (each OoD set its own group: mnist, noise)" in md
    assert "| fashion-mnist mnist AUROC | fashion-mnist noise AUROC | fashion-mnist mnist FPR95 (OoD+, OpenOOD) |" in md
    # a bench benchmark of the same name stays apart: the per-set results become "<ID> (per set)"
    write_cell(tmp_path / "bench", "b1", "l2", 0)
    cell = tmp_path / "bench" / "cells" / "resnet18-l2-seed0.json"
    d = read_results(cell).to_json()
    d["bench"]["benchmark"] = "fashion-mnist"
    write_results(cell, ResultsFile.model_validate(d))
    both = leaderboard([tmp_path, tmp_path / "bench"], detectors=["feature_norm"])
    assert [b.name for b in both.benchmarks] == ["fashion-mnist (per set)", "fashion-mnist"]


def test_detector_filter_sort_and_arch(benches: list[Path], tmp_path: Path) -> None:
    assert split_columns("knn,bonferroni(feature_norm,knn), energy:raw") == ["knn", "bonferroni(feature_norm,knn)",
                                                                             "energy:raw"]
    assert leaderboard(benches, detectors=["knn"]).methods == [M2, M4]
    with pytest.raises(ConfigError, match=r"no column 'vim' in these results; they hold: feature_norm, knn, msp"):
        leaderboard(benches, detectors=["knn", "vim"])
    assert leaderboard(benches, sort="method").methods == [M4, M3, M1, M2]
    assert leaderboard(benches, sort="b1/far").methods == [M1, M2, M3, M4]
    assert leaderboard(benches, sort="b2/near").methods == [M2, M1, M4, M3]  # no b2 result: last
    with pytest.raises(ConfigError, match="'near' is a group of 2 benchmarks: name one as BENCHMARK/near"):
        leaderboard(benches, sort="near")
    with pytest.raises(ConfigError, match="unknown sort key 'auroc'; choose one of: rank, method, b1/near"):
        leaderboard(benches, sort="auroc")
    # a second architecture: rows name theirs
    rn34 = tmp_path / "rn34"
    write_cell(rn34, "b2", "ce", 0, arch="resnet34")
    board = leaderboard([*benches, rn34])
    assert board.with_arch and Method("resnet34", "ce", "knn") in board.methods
    assert "| arch | head | detector | mean rank |" in board.to_markdown()
    assert {r["method"] for r in board.rows()} >= {"resnet34 / ce / knn", "resnet18 / ce / knn"}


def test_paths_that_hold_no_results(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or folder"):
        leaderboard([tmp_path / "nothing"])
    with pytest.raises(ConfigError, match="no results here"):
        leaderboard([tmp_path])
    (tmp_path / "b" / "cells").mkdir(parents=True)
    with pytest.raises(ConfigError, match="a bench output folder without finished cells"):
        leaderboard([tmp_path / "b"])
    with pytest.raises(ConfigError, match="no results given"):
        leaderboard([])


def test_cli_prints_writes_and_exits_2_on_user_errors(benches: list[Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    md, table = tmp_path / "out" / "board.md", tmp_path / "out" / "board.csv"
    paths = [str(b) for b in benches]
    assert main(["leaderboard", *paths, "--fpr", "both", "--md", str(md), "--csv", str(table)]) == 0
    out = capsys.readouterr()
    board = leaderboard(benches)
    assert out.out == board.to_markdown("both") == md.read_text()
    assert table.read_text() == board.to_csv() and "wrote" in out.err
    assert main(["leaderboard", *paths, "--detectors", "knn", "--sort", "b1/far"]) == 0
    assert capsys.readouterr().out == leaderboard(benches, detectors=["knn"], sort="b1/far").to_markdown()
    other = tmp_path / "e2"
    write_cell(other, "b1", "l2", 3, epochs=2)
    cases = [([*paths, str(other)], "pools results of different settings"),
             ([*paths, str(other), "--allow-mixed", "--md", str(md), "--csv", str(md)], "name the same file"),
             ([*paths, "--csv", str(benches[0] / "cells" / "resnet18-l2-seed0.json")], "refusing to write"),
             ([*paths, "--sort", "nope"], "unknown sort key"),
             ([*paths, "--detectors", ""], "no column given"),
             ([str(tmp_path / "missing")], "no such file or folder")]
    for argv, message in cases:
        assert main(["leaderboard", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("l2ood leaderboard: error: ") and message in err and "Traceback" not in err
    assert main(["leaderboard", *paths, str(other), "--allow-mixed"]) == 0
    assert "‡" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["leaderboard", *paths, "--fpr", "roc"])
    assert e.value.code == 2


def test_end_to_end_from_a_tiny_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import tiny_run

    run = tiny_run(tmp_path, n_train=200, n_test=60, holdout=0)
    assert main(["evaluate", str(run), "--data-root", str(tmp_path / "data"), "--ood", "noise", "--n-ood", "40",
                 "--detectors", "feature_norm,msp", "--no-progress", "--precision", "fp32",
                 "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    rec = read_results(run / "eval" / "results.json").only
    board = leaderboard([run])  # the run folder: its eval/results.json
    assert {m.label() for m in board.methods} == {f"l2 / {c}" for c in rec.detectors}
    assert [board.ranks[m].mean for m in board.methods] == sorted(board.ranks[m].mean or 0 for m in board.methods)
    for m in board.methods:
        cell = board.cells[(m, rec.id_dataset)]
        st = cell.stat("noise")
        assert cell.seeds == (0,) and st is not None and st.values == (rec.metric("noise", m.detector),)
        assert st.std is None
    assert main(["leaderboard", str(tmp_path / "cmp"), str(run)]) == 0  # the same evaluation twice: counted once
    text = capsys.readouterr().out
    assert "| l2 | feature_norm |" in text and " ± " not in text.split("Cells:")[0]
