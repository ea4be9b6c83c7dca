"""Distributed evaluation (issue 26): under torchrun every rank extracts a contiguous, batch-aligned shard of each
data set, the shards are gathered in rank order, and the evaluation equals the single-process one.

The multi-rank tests start 2 gloo processes themselves (``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``, what torchrun sets), each running this file as a script (``__main__`` below), with one thread each
like the single-process reference, so that both run the same kernels; the CLI test goes through torchrun itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from l2ood.distributed import DistInfo, agree, batch_shard, gather_rows, gather_rows_to_main, is_active, on_main, total

HERE = Path(__file__).resolve()
GAUSSIAN = ("mahalanobis", "rmds", "mahalanobis++")
#: fits from per-rank sums (another order of float64 sums, or another grouping of ViM's float32 products)
SUMS = (*GAUSSIAN, "vim", "relation")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "L2OOD_CACHE": str(tmp / "cache"), "PYTHONWARNINGS": "ignore"}


def _spawn(world: int, tmp: Path, *args: str, timeout: float = 120) -> list[subprocess.CompletedProcess[str]]:
    """Run this file as a script in ``world`` processes of one gloo group (one process: no group at all)."""
    port, procs = _free_port(), []
    for rank in range(world):
        env = _env(tmp)
        if world > 1:
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                       LOCAL_RANK=str(rank))
        procs.append(subprocess.Popen([sys.executable, str(HERE), *args], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        so, se = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    for r, done in enumerate(out):
        assert done.returncode == 0, f"rank {r}: {done.stderr[-3000:]}"
    return out


# ------------------------------------------------------------------------------------------------ one process

def test_batch_shards_are_whole_batches_covering_every_row() -> None:
    for n in (0, 1, 15, 16, 17, 77, 241):
        for bs in (1, 16, 256):
            for world in (1, 2, 3, 5):
                parts = [batch_shard(n, bs, DistInfo(r, world, r)) for r in range(world)]
                assert parts[0][0] == 0 and parts[-1][1] == n  # rows 0 … n−1, in rank order, no gap, no overlap
                assert all(parts[i][1] == parts[i + 1][0] for i in range(world - 1))
                for start, stop in parts:
                    assert start % bs == 0 or start == n  # on a batch boundary of the one-process batching
                    assert stop == n or stop % bs == 0
                sizes = [(stop - start + bs - 1) // bs for start, stop in parts]
                assert max(sizes) - min(sizes) <= 1  # batches split as evenly as possible
    assert batch_shard(77, 16, DistInfo(0, 2, 0)) == (0, 48)  # 5 batches: 3 + 2, the second ending short
    assert batch_shard(77, 16, DistInfo(1, 2, 1)) == (48, 77)
    assert batch_shard(15, 256, DistInfo(1, 2, 1)) == (15, 15)  # fewer batches than ranks: an empty shard


def test_one_process_primitives_are_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.arange(6.0).reshape(3, 2)
    assert gather_rows(t) is t and gather_rows_to_main(t) is t and agree(True) and not agree(False) and total(7) == 7
    assert on_main(lambda: 5) == 5 and not is_active()
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by torchrun but no group: a collective must not run alone
    with pytest.raises(RuntimeError, match="process group is not set up"):
        agree(True)


def test_knn_local_topk_pads_a_small_shard_and_one_process_keeps_the_whole_bank() -> None:
    from l2ood.detectors import Extraction, Head
    from l2ood.detectors.knn import KNN, local_topk

    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    got = local_topk(q, bank, 3, bank_chunk=1)
    assert got.shape == (2, 3) and torch.isinf(got[:, 2]).all() and bool((got[:, 2] < 0).all())
    assert sorted(got[0, :2].tolist()) == pytest.approx([0.6, 1.0]) and sorted(got[1, :2].tolist()) == pytest.approx(
        [0.0, 0.8])
    assert torch.isneginf(local_topk(q, bank[:0], 2, bank_chunk=4)).all()  # an empty shard: nothing to offer
    head = Head(torch.eye(2), torch.zeros(2))
    # a "sharded" extraction in one process is the whole set: the bank is whole and can be saved
    det = KNN(k=2).fit(Extraction(bank * 3, head.logits(bank * 3), sharded=True), head)
    assert not det.sharded and det.gathered() is det and torch.allclose(det.state_dict()["bank"], bank)
    det._n_total = 4  # as a sharded fit leaves it; loading a saved (whole) bank makes it whole again
    assert det.load_state_dict({"bank": bank}).sharded is False
    det.keep_shard()  # one process: the whole bank stays (under torchrun each rank would keep its part)
    assert not det.sharded and torch.equal(det.bank, bank)
    from l2ood.detectors.relation import Relation

    rel = Relation().fit(Extraction(bank * 3, head.logits(bank * 3), sharded=True), head)
    rel.keep_shard()
    assert not rel.sharded and rel.gathered() is rel and rel.state_dict()["feats"].shape == (2, 2)


def test_a_shard_reads_the_same_images_as_the_whole_set(tmp_path: Path) -> None:
    """A rank's rows of a streamed set (files decoded in the same view) and of a set in memory are exactly the
    images the whole set yields at those positions, labels included."""
    from l2ood.data import ImageSet
    from l2ood.data.source import open_images
    from l2ood.data.synthetic import write_photo_folder
    from l2ood.run import Run

    write_photo_folder(tmp_path / "photos", 4, 2, photo_size=(40, 50), seed=0)
    streamed = open_images(f"imagefolder:{tmp_path / 'photos'}", size=(24, 24), data_path="stream")
    g = torch.Generator().manual_seed(0)
    memory = ImageSet("m", torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8, generator=g), torch.arange(8))
    for ds in (streamed, memory):
        assert len(ds) == 8
        (x, y, _), = ds.batches(8, fit=ds.view)
        for start, stop in ((0, 3), (3, 8), (5, 5)):
            part = Run._rows(ds, start, stop)
            assert len(part) == stop - start and part.streamed == ds.streamed and part.view == ds.view
            if stop > start:
                (px, py, _), = part.batches(8, fit=ds.view)
                assert y is not None and py is not None
                assert torch.equal(px, x[start:stop]) and torch.equal(py, y[start:stop])


def _gaussian_data(n: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g) * 3
    y = torch.randint(0, k, (n,), generator=g)
    z = means[y] + torch.randn(n, d, generator=g) @ (torch.eye(d) + 0.3 * torch.randn(d, d, generator=g)) + 50
    test = means[torch.randint(0, k, (97,), generator=g)] + torch.randn(97, d, generator=g) + 50
    return z, y, test


def test_vim_fit_is_a_sum_over_row_blocks() -> None:
    """ViM's fit depends on how the rows are grouped only through the float32 block products of Σ: other chunk sizes
    in one process move the residual space and α as little as a split over ranks does (compared in
    test_gather_and_sharded_gaussian_fit_on_two_ranks)."""
    from l2ood.detectors import Extraction, Head
    from l2ood.detectors.vim import ViM

    g = torch.Generator().manual_seed(7)
    z = torch.randn(1155, 6, generator=g) @ (5 * torch.randn(6, 24, generator=g)) + torch.randn(1155, 24, generator=g)
    head = Head(torch.randn(5, 24, generator=g), torch.randn(5, generator=g))
    ext = Extraction(z, head.logits(z))
    fits = [ViM(dim=6, chunk_size=c).fit(ext, head) for c in (8192, 677, 100, 1)]
    ref = fits[0].residual_basis @ fits[0].residual_basis.T
    for v in fits[1:]:
        assert torch.equal(v.origin, fits[0].origin)
        assert float((v.residual_basis @ v.residual_basis.T - ref).abs().max()) < 1e-5
        assert abs(v.alpha("raw") / fits[0].alpha("raw") - 1) < 1e-7
    # the residual space is the complement of the 6 strong directions: their projection is (nearly) 0
    strong = torch.linalg.svd(z.double() - z.double().mean(0), full_matrices=False).Vh[:6].T
    assert float((fits[0].residual_basis.T @ strong).abs().max()) < 0.05


# ------------------------------------------------------------------------------------------------ two ranks

@pytest.mark.slow
def test_gather_and_sharded_gaussian_fit_on_two_ranks(tmp_path: Path) -> None:
    """gather_rows (to every rank and to rank 0 alone) with uneven and empty shards in several rounds; the Gaussian
    fit from per-rank sufficient statistics equals the single-process fit; KNN with a bank sharded over the ranks
    scores like the whole bank and saves it whole from rank 0; a failure on one rank stops every rank."""
    _spawn(2, tmp_path, "primitives", str(tmp_path))
    got = [json.loads((tmp_path / f"prim{r}.json").read_text()) for r in range(2)]
    assert got[0] == got[1]
    # the sharded KNN bank: the k largest similarities over the shards are those over the whole bank
    # The same products, so the same scores, up to the matrix kernel the shape picks: measured identical for shards
    # of 40-677 rows; a 1-row shard makes q·bᵀ a matrix-vector product, another kernel, and the distance near 0
    # (sqrt(2 − 2·sim) at sim ≈ 1) magnifies that float32 rounding: 3.4e-6.
    knn = got[0]["knn"]
    assert knn["5"] == knn["50"] == knn["60"] == 0.0 and knn["1"] < 1e-5, knn
    for name in GAUSSIAN:
        err = got[0][name]
        # Stated tolerance: float64 sums of the same terms in another order (per rank, then across ranks; another
        # shift) differ by ~1e-16 relative; the covariance's condition number (~5e4 here) amplifies that in the
        # precision: measured 3.4e-12 (mahalanobis, rmds) and 4.5e-12 (mahalanobis++) relative in the fitted state,
        # and identical float32 scores (the detectors' output type); a score may in general move by a float32 ulp.
        assert err["state"] < 1e-10, (name, err)
        assert err["scores"] < 1e-6, (name, err)
    # ViM: Σ is a float64 sum of float32 block products, so ranks group the products otherwise, as another
    # chunk_size would in one process (test_vim_fit_is_a_sum_over_row_blocks). Measured with a 677 + 478 split:
    # origin 0 (from the head alone), projector 9.8e-8, α 9.4e-10 relative, scores 2.5e-7 relative.
    for tag, err in got[0]["vim"].items():
        assert err["origin"] == 0.0 and err["projector"] < 1e-5 and err["alpha"] < 1e-7, (tag, err)
        assert err["scores"] < 1e-5, (tag, err)
    # Relation: the same float32 edges, their float64 sums grouped per rank then across ranks, rounded to float32:
    # measured identical (97 of 97 scores above 0) for both splits; a float32 ulp is the stated bound
    for tag, err in got[0]["relation"].items():
        assert err["nonzero"] > 50 and err["scores"] < 1e-6, (tag, err)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained L2 run with odd sizes (241 training images, 81 ID test, 53 OoD images)."""
    from conftest import tiny_run, write_idx_dataset

    root = tmp_path_factory.mktemp("dist-eval")
    tiny_run(root, n_train=301, n_test=81, holdout=60)
    write_idx_dataset(root / "data" / "mnist", 50, 53, "blobs", seed=20, gz=False)
    return root


def _evaluate(world: int, tiny: Path, tmp: Path, detectors: str, tag: str, run: Path) -> list[dict[str, Any]]:
    """The evaluation of ``run`` on ``world`` ranks (what each rank got), or in this process (``world == 1``, one
    thread, like each rank)."""
    if world == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return [json.loads(json.dumps(_evaluation(run, str(tiny / "data"), detectors)))]
        finally:
            torch.set_num_threads(threads)
    _spawn(world, tmp, "evaluate", str(run), str(tiny / "data"), str(tmp / tag), detectors)
    return [json.loads((tmp / tag / f"rank{r}.json").read_text()) for r in range(world)]


def _compare(one: dict[str, Any], two: dict[str, Any]) -> None:
    """Scores and metrics of a 2-rank evaluation vs one process: identical, except the fits from per-rank sums
    (:data:`SUMS`: float64 sums in another order, ViM's float32 products grouped otherwise; see
    test_gather_and_sharded_gaussian_fit_on_two_ranks) within float32 rounding."""
    assert one["scores"].keys() == two["scores"].keys() and one["acc"] == two["acc"]
    for key, a in one["scores"].items():
        b = two["scores"][key]
        base = key.split("|")[1].split(":")[0]
        if base in SUMS:
            # ViM's Σ is a float64 sum of float32 block products: 2 ranks make 2 blocks (128 + 113 rows) where one
            # process makes 1. On this run's 16-dim features (a large mean next to a small spread, where float32
            # products lose the most) that moved the residual projector by 1.5e-5 and α by 3e-7 relative, and the
            # scores (about 0.8-2.1) by up to 7.3e-5 (measured): the bound is 1e-4 of the largest score.
            if base == "vim":
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()), err_msg=key)
            else:
                np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=key)
        else:
            assert a == b, key  # bit for bit
    for ds, entry in one["ood"].items():
        for det, m in entry["detectors"].items():
            if det.split(":")[0] in SUMS:  # a float32 tie could reorder one pair: 1 / (77 · 53) of AUROC
                assert m["auroc"] == pytest.approx(two["ood"][ds]["detectors"][det]["auroc"], abs=2.5e-4)
            else:
                assert m == two["ood"][ds]["detectors"][det], (ds, det)


@pytest.mark.slow
def test_two_ranks_evaluate_like_one_process_and_only_rank_0_writes(tiny: Path, tmp_path: Path) -> None:
    runs = {w: tmp_path / f"run{w}" for w in (1, 2)}
    for r in runs.values():
        shutil.copytree(tiny / "run", r)
    # every fit is made from the ranks' shards: the Gaussian ones all-reduce statistics, knn keeps its bank sharded
    dets = "mahalanobis,rmds,knn,feature_norm,energy,odin"
    one = _evaluate(1, tiny, tmp_path, dets, "one", runs[1])[0]
    two = _evaluate(2, tiny, tmp_path, dets, "two", runs[2])
    assert two[0]["scores"] == two[1]["scores"] and two[0]["ood"] == two[1]["ood"]  # every rank holds the same
    _compare(one, two[0])
    assert one["n"] == two[0]["n"] == {"fashion-mnist": 77, "mnist": 53}  # odd: shards of 48 + 29 and 32 + 21 rows
    # rank 0 wrote the caches, the fitted statistics, the record and the results; rank 1 wrote nothing
    assert two[1]["writes"] == []
    written = {Path(w).parent.name for w in two[0]["writes"]}
    assert {"cache", "detectors", "eval"} <= written
    rec = json.loads((runs[2] / "model.json").read_text())
    assert {k: v["n_fit"] for k, v in rec["detectors"].items()} == {"mahalanobis": 241, "rmds": 241, "knn": 241}
    # the training pass was never gathered, so never cached: the ID test and OoD passes only
    assert len(list((runs[2] / "cache").glob("*.safetensors"))) == 2
    # rank 0 saved knn's bank whole (gathered to it alone): the one-process bank, row for row
    from safetensors.torch import load_file

    banks = [load_file(str(r / json.loads((r / "model.json").read_text())["detectors"]["knn"]["file"]))["bank"]
             for r in runs.values()]
    assert banks[0].shape == (241, banks[0].shape[1]) and torch.equal(banks[0], banks[1])


@pytest.mark.slow
def test_two_ranks_reuse_the_cache_and_the_fitted_statistics(tiny: Path, tmp_path: Path) -> None:
    """knn, relation and rmds load their recorded fits (each rank then keeps its part of the knn and relation banks,
    as a fit from shards would); mahalanobis++ fits from each rank's rows of the cached training pass (read from the
    cache file row by row); every forward pass comes from the cache."""
    first = tmp_path / "first"
    shutil.copytree(tiny / "run", first)
    _evaluate(1, tiny, tmp_path, "rmds,knn,relation", "first", first)  # caches and fits, in this process
    runs = {w: tmp_path / f"run{w}" for w in (1, 2)}
    for r in runs.values():
        shutil.copytree(first, r)
    dets = "mahalanobis++,knn,rmds,relation"
    one = _evaluate(1, tiny, tmp_path, dets, "one-again", runs[1])[0]
    two = _evaluate(2, tiny, tmp_path, dets, "two-again", runs[2])
    _compare(one, two[0])
    # the loaded bank of 241 rows is split 121 + 120 over the ranks: each scores against its rows only
    assert [t["knn_bank_rows"] for t in two] == [121, 120]
    assert two[1]["writes"] == []
    assert all(Path(w).parent.name != "cache" for w in two[0]["writes"])  # every pass came from the cache
    assert [t["peak_fit_rows"] for t in two] == [128, 113]  # each rank fitted its rows of the cached 241


@pytest.mark.slow
def test_sharded_fits_never_gather_the_training_features(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny / "run", run)
    dets = "mahalanobis++,knn,nnguide,vim,relation,feature_norm"
    one_run = tmp_path / "one-run"
    shutil.copytree(tiny / "run", one_run)
    one = _evaluate(1, tiny, tmp_path, dets, "one", one_run)
    two = _evaluate(2, tiny, tmp_path, dets, "two", run)
    _compare(one[0], two[0])  # the scores of one process: vim and relation within float32 rounding (SUMS)
    # no training-set extraction exists in full anywhere: it was never gathered, so never cached
    sizes = sorted(int(re.findall(r"mnist-(\d+)-", p.name)[0]) for p in (run / "cache").glob("*.safetensors"))
    assert sizes == [53, 77]  # the ID test and OoD passes only
    assert [t["peak_fit_rows"] for t in two] == [128, 113]  # 241 rows = 8 + 8 batches of 16: no rank held all
    rec = json.loads((run / "model.json").read_text())
    fits = {k: v["n_fit"] for k, v in rec["detectors"].items()}
    assert fits.keys() >= {"mahalanobis++", "knn", "vim", "relation", "nnguide", "nnguide:raw"}
    assert set(fits.values()) == {241}


@pytest.mark.slow
def test_torchrun_evaluate_cli_gives_the_single_process_results(tiny: Path, tmp_path: Path) -> None:
    runs = {w: tmp_path / f"run{w}" for w in (1, 2)}
    for r in runs.values():
        shutil.copytree(tiny / "run", r)
    args = ["--ood", "mnist", "--detectors", "feature_norm,msp,knn,mahalanobis", "--combine",
            "feature_norm,knn", "--data-root", str(tiny / "data"), "--device", "cpu", "--precision", "fp32",
            "--batch-size", "16", "--no-progress"]
    p1 = subprocess.run([sys.executable, "-m", "l2ood", "evaluate", str(runs[1]), *args, "--out", str(tmp_path / "o1")],
                        capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "l2ood", "evaluate", str(runs[2]), *args, "--out", str(tmp_path / "o2")],
                        capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    assert p2.returncode == 0, p2.stderr[-3000:]
    a, b = (json.loads((r / "eval" / "results.json").read_text())["runs"] for r in runs.values())
    (ra,), (rb,) = a.values(), b.values()
    assert ra["n_id_test"] == rb["n_id_test"] == 81 and ra["id_accuracy"] == rb["id_accuracy"]
    for ds, entry in ra["ood"].items():
        for det, m in entry["detectors"].items():
            want = rb["ood"][ds]["detectors"][det]
            if det == "mahalanobis":
                assert m["auroc"] == pytest.approx(want["auroc"], abs=2.5e-4)
            else:
                assert m == want, (ds, det)
    s1, s2 = (np.load(r / "eval" / "scores.npz") for r in runs.values())
    for k in s1.files:
        if "mahalanobis" not in k:
            assert np.array_equal(s1[k], s2[k]), k


@pytest.mark.slow
def test_torchrun_posthoc_bench_on_streamed_images_gives_the_single_process_cell(tmp_path: Path) -> None:
    """`l2ood bench` of a pretrained classifier on OpenOOD-style image lists (streamed files), 2 ranks vs 1: the same
    cell. The sets are smaller than one batch of 256, so rank 1's shards are empty (it still takes part)."""
    from safetensors.torch import save_file

    from l2ood.data.synthetic import write_photo_folder
    from l2ood.models import ModelConfig, build_model

    root = tmp_path / "openood"
    imgs, lists = root / "images_largescale", root / "benchmark_imglist" / "imagenet200"
    lists.mkdir(parents=True)
    write_photo_folder(imgs / "gen" / "train", 8, 3, photo_size=(60, 80), seed=1)
    write_photo_folder(imgs / "gen" / "test", 5, 3, photo_size=(60, 80), seed=2)
    write_photo_folder(imgs / "gen" / "ood", 3, 4, photo_size=(60, 80), seed=3)
    for split in ("train", "test"):
        lines = [f"gen/{split}/{d.name}/{f.name} {k}"
                 for k, d in enumerate(sorted((imgs / "gen" / split).iterdir())) for f in sorted(d.iterdir())]
        (lists / f"{split}_imagenet200.txt").write_text("\n".join(lines) + "\n")
    ood = [f"gen/ood/{d.name}/{f.name} -1\n"
           for d in sorted((imgs / "gen" / "ood").iterdir()) for f in sorted(d.iterdir())]
    for name in ("ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"):
        (lists / f"test_{name}.txt").write_text("".join(ood))
    torch.manual_seed(0)
    clf = build_model(ModelConfig(arch="resnet18", width=4, head="ce", num_classes=3))
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in clf.state_dict().items() if "input_" not in k}, str(weights))
    args = ["bench", "--benchmark", "imagenet200", "--data-root", str(root), "--image-size", "32", "--seeds", "0",
            "--detectors", "feature_norm,msp,mahalanobis,odin", "--device", "cpu", "--precision", "fp32",
            "--workers", "0", "--no-progress", "--recipe", "pretrained-resnet50", "--archs", "resnet18", "--width", "4",
            "--variants", "ce", "--pretrained", str(weights), "--n-fit", "20"]
    p1 = subprocess.run([sys.executable, "-m", "l2ood", *args, "--out", str(tmp_path / "b1")], capture_output=True,
                        text=True, env=_env(tmp_path), timeout=120)
    assert p1.returncode == 0, p1.stderr[-3000:]
    p2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                         "l2ood", *args, "--out", str(tmp_path / "b2")], capture_output=True, text=True,
                        env=_env(tmp_path), timeout=120)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert p2.stderr.count("detectors fitted on 20 training images") == 1  # rank 0 alone logs
    a, b = (json.loads((tmp_path / o / "cells" / "resnet18-ce-seed0.json").read_text())["runs"]["resnet18-ce-seed0"]
            for o in ("b1", "b2"))
    assert a["n_id_test"] == b["n_id_test"] == 15 and a["id_accuracy"] == b["id_accuracy"]
    for ds, entry in a["ood"].items():
        assert entry["n"] == b["ood"][ds]["n"] == 12
        for det, m in entry["detectors"].items():
            want = b["ood"][ds]["detectors"][det]
            assert (m["auroc"] == pytest.approx(want["auroc"], abs=1 / 180)) if det == "mahalanobis" else m == want
    assert (tmp_path / "b1" / "results.csv").read_text().count("\n") == (tmp_path / "b2" / "results.csv").read_text(
    ).count("\n")


# ------------------------------------------------------------------------------------------------ the ranks' side

def _primitives(out: Path) -> None:
    from l2ood.columns import Column
    from l2ood.detectors import Extraction, Head
    from l2ood.distributed import dist_from_env, ensure_group
    from l2ood.errors import ConfigError, RunError

    info = ensure_group("cpu")
    r = info.rank
    # uneven shards, one of them empty, over several rounds of 2 rows
    sizes = {0: 5, 1: 0}
    t = torch.arange(sizes[r] * 6, dtype=torch.float32).reshape(sizes[r], 3, 2) + 1000 * r
    g = gather_rows(t, round_bytes=2 * 6 * 4)
    assert torch.equal(g, torch.arange(30, dtype=torch.float32).reshape(5, 3, 2))
    lab = gather_rows(torch.arange(r + 3, dtype=torch.int64) + 10 * r)
    assert lab.tolist() == [0, 1, 2, 10, 11, 12, 13]
    assert total(r + 3) == 7 and agree(True) and not agree(r == 0)
    # a failure on rank 0 while writing stops rank 1 too
    try:
        on_main(lambda: 1 / 0)
    except ZeroDivisionError:
        assert r == 0
    except RunError:
        assert r == 1
    # the Gaussian family fitted from the ranks' shards (odd split: 677 + 478 rows) vs the whole set in one process
    z, y, test = _gaussian_data(1155, 24, 5)
    w = torch.randn(5, 24, generator=torch.Generator().manual_seed(1))
    head = Head(w, torch.zeros(5))
    start, stop = (0, 677) if r == 0 else (677, 1155)
    part = Extraction(z[start:stop], head.logits(z[start:stop]), y[start:stop], sharded=True)
    whole = Extraction(z, head.logits(z), y)
    res: dict[str, Any] = {}
    for name in GAUSSIAN:
        a, b = Column.of(name, "ce").fit(whole, head), Column.of(name, "ce").fit(part, head)
        sa, sb = a.detector.state_dict(), b.detector.state_dict()
        state = max(float(((sa[k] - sb[k]).abs().max() / sa[k].abs().max().clamp_min(1e-300)).item()) for k in sa)
        qa, qb = (c.score(Extraction(test, head.logits(test)), head) for c in (a, b))
        res[name] = {"state": state, "scores": float(np.max(np.abs(qa - qb) / np.abs(qa)))}
    # ViM from the ranks' sums vs the whole set: the same origin, residual space (its projector: eigenvector signs
    # are free), α and scores; an empty shard adds nothing. Features with a clear gap at dim (6 strong directions):
    # ViM's float32 products decide the split only to ~1e-7 of the largest eigenvalue, so where the gap is smaller
    # than that, two chunkings of one process already disagree (see test_vim_fit_is_a_sum_over_row_blocks)
    from l2ood.detectors.vim import ViM

    gv = torch.Generator().manual_seed(7)
    zv = torch.randn(1155, 6, generator=gv) @ (5 * torch.randn(6, 24, generator=gv))
    zv = zv + torch.randn(1155, 24, generator=gv)
    wv = Head(torch.randn(5, 24, generator=gv), torch.randn(5, generator=gv))
    qv = Extraction(test - 50, wv.logits(test - 50))
    res["vim"] = {}
    for tag, (lo, hi) in (("odd", (start, stop)), ("empty", ((0, 1155) if r == 0 else (1155, 1155)))):
        va = ViM(dim=6).fit(Extraction(zv, wv.logits(zv)), wv)
        vb = ViM(dim=6).fit(Extraction(zv[lo:hi], wv.logits(zv[lo:hi]), sharded=True), wv)
        pa, pb = va.residual_basis, vb.residual_basis
        proj = float(((pa @ pa.T) - (pb @ pb.T)).abs().max())
        alpha = max(abs(va.alpha(v) - vb.alpha(v)) / abs(va.alpha(v)) for v in ("trained", "raw"))
        qa, qb = va.score(qv, wv), vb.score(qv, wv)
        res["vim"][tag] = {"origin": float((va.origin - vb.origin).abs().max()), "projector": proj, "alpha": alpha,
                           "scores": float(((qa - qb).abs() / qa.abs().clamp_min(1.0)).max())}
    feats = Extraction(test, head.logits(test))
    # Relation with a bank sharded over the ranks (677 + 478 rows, and 1155 + 0): the edges summed per rank and
    # all-reduced are the whole bank's; the bank is saved whole from rank 0
    from l2ood.detectors.relation import Relation

    res["relation"] = {}
    for tag, (lo, hi) in (("odd", (start, stop)), ("empty", ((0, 1155) if r == 0 else (1155, 1155)))):
        ref = Relation(bank_chunk=100).fit(whole, head)
        sh = Relation(bank_chunk=100).fit(Extraction(z[lo:hi], head.logits(z[lo:hi]), y[lo:hi], sharded=True), head)
        assert sh.sharded and not ref.sharded
        _check_saved_whole(sh, ref, r)
        qa, qb = ref.score(feats, head), sh.score(feats, head)
        res["relation"][tag] = {"scores": float(((qa - qb).abs() / qa.abs().clamp_min(1e-30)).max()),
                                "nonzero": int((qa > 0).sum())}
    # a rank whose rows cannot be fitted stops every rank with the same error type
    bad = Extraction(z[:4], head.logits(z[:4]), None if r == 1 else y[:4], sharded=True)
    try:
        Column.of("mahalanobis", "ce").fit(bad, head)
        raise AssertionError("fitted rows without labels")
    except ConfigError as e:
        assert ("labels" in str(e)) == (r == 1) or "another rank" in str(e)
    # rows to rank 0 alone (uneven, one shard empty, several rounds); the other rank gets None
    to_main = gather_rows_to_main(t, round_bytes=2 * 6 * 4)
    assert (r == 0 and torch.equal(to_main, torch.arange(30, dtype=torch.float32).reshape(5, 3, 2))) or (
        r == 1 and to_main is None)
    # KNN with a sharded bank vs the whole bank in one process: k below, near and above one shard's rows
    from l2ood.detectors.knn import KNN

    res["knn"] = {}
    for k, (a, b) in ((5, (0, 677)), (50, (0, 40)), (60, (30, 70)), (1, (0, 1))):
        lo, hi = (a, b) if r == 0 else (b, min(2 * b - a, len(z)))  # rank 1: the next rows, as many (or the rest)
        mine = Extraction(z[lo:hi], head.logits(z[lo:hi]), y[lo:hi], sharded=True)
        ref = KNN(k=k, query_chunk=31, bank_chunk=64).fit(Extraction(z[a : 2 * b - a], head.logits(z[a : 2 * b - a])),
                                                           head)
        sh = KNN(k=k, query_chunk=31, bank_chunk=64).fit(mine, head)
        assert sh.sharded and len(sh.bank) == hi - lo and not ref.sharded
        _check_saved_whole(sh, ref, r)
        qa, qb = ref.score(feats, head), sh.score(feats, head)
        res["knn"][str(k)] = float((qa - qb).abs().max())
    # NNGuide from the shards: each rank builds its bank rows, the ranks gather them: the one-process bank exactly
    from l2ood.detectors.nnguide import NNGuide

    for frac in (0.01, 0.5):
        ng_ref = NNGuide(k=7, fraction=frac, seed=3).fit(whole, head)
        ng = NNGuide(k=7, fraction=frac, seed=3).fit(part, head)
        assert torch.equal(ng.bank, ng_ref.bank), frac
        assert torch.equal(ng.score(feats, head), ng_ref.score(feats, head)), frac
    # k above the bank over every rank: the same error on every rank, before any collective of the scoring
    try:
        KNN(k=3).fit(Extraction(z[r : r + 1], head.logits(z[r : r + 1]), sharded=True), head)
        raise AssertionError("k=3 fitted on 2 rows")
    except ConfigError as e:
        assert "exceeds the size of the ID training bank (2)" in str(e)
    (out / f"prim{dist_from_env().rank}.json").write_text(json.dumps(res))


def _check_saved_whole(sh: Any, ref: Any, rank: int) -> None:
    """A bank sharded over the ranks refuses to be saved piecewise, and ``gathered()`` gives rank 0 the state of the
    one-process fit ``ref`` (every tensor equal) and the other ranks ``None``."""
    try:
        sh.state_dict()
        raise AssertionError(f"saved a shard of the {sh.name} bank")
    except RuntimeError as e:
        assert "shard" in str(e)
    saved = sh.gathered()
    if rank != 0:
        assert saved is None
        return
    got, want = saved.state_dict(), ref.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], v) for k, v in want.items())


def _evaluate_ranks(run: Path, data: str, out: Path, detectors: str) -> None:
    """Evaluate ``run`` (this process's rank of it), recording every write into the run folder (audit hook) and the
    largest training-feature block a rank held."""
    writes: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], str | os.PathLike) and str(run) in str(args[0]):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                writes.append(str(args[0]))
        elif event in ("os.rename", "os.remove", "os.mkdir") and str(run) in str(args[0]):
            writes.append(str(args[0]))

    sys.addaudithook(hook)
    from l2ood.detectors import mahalanobis
    from l2ood.distributed import dist_from_env

    peak = [0]
    fit = mahalanobis.fit_class_gaussians

    def spy(train: Any, *a: Any, **k: Any) -> Any:
        peak[0] = max(peak[0], len(train))
        return fit(train, *a, **k)

    mahalanobis.fit_class_gaussians = spy
    from l2ood.detectors.knn import KNN

    bank_rows = [0]
    knn_score = KNN.score

    def score_spy(self: KNN, x: Any, head: Any) -> Any:
        bank_rows[0] = len(self.bank)  # the bank this rank scores against (the last scoring's)
        return knn_score(self, x, head)

    KNN.score = score_spy  # type: ignore[method-assign]
    res = _evaluation(run, data, detectors)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{dist_from_env().rank}.json").write_text(json.dumps({**res, "writes": writes,
                                                                     "peak_fit_rows": peak[0],
                                                                     "knn_bank_rows": bank_rows[0]}))


def _evaluation(run: Path, data: str, detectors: str) -> dict[str, Any]:
    """Evaluate ``run`` vs MNIST (77 ID test images, batches of 16) and save the results (rank 0)."""
    from l2ood.evaluation import evaluate_run

    r = evaluate_run(run, ["mnist"], detectors.split(","), data_root=data, device="cpu", precision="fp32",
                     batch_size=16, n_id=77)
    r.save(run / "eval")
    res = r.results.model_dump()
    return {"scores": {f"{ds}|{c}": v.tolist() for ds, d in r.scores.items() for c, v in d.items()},
            "ood": res["ood"], "acc": res["id_accuracy"],
            "n": {res["id_dataset"]: res["n_id_test"], **{k: v["n"] for k, v in res["ood"].items()}}}


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE.parent))
    if sys.argv[1] == "primitives":
        _primitives(Path(sys.argv[2]))
    else:
        _evaluate_ranks(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5])
