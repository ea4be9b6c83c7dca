"""The openood-* benchmarks follow OpenOOD v1.5 exactly (issue 26): its image lists in its data-root layout
(``benchmark_imglist/<id>/*.txt`` + ``images_classic/`` / ``images_largescale/``), its near/far groups and ID splits,
lists verified against recorded digests, one clear message for what is missing, and OpenOOD's published numbers
beside ours in results.md (FPR95 in OpenOOD's OoD-positive convention) for these benchmarks only.

Everything runs on a generated data root: a few tiny PNG/JPEG images per set, lists in OpenOOD's format. The
digests of generated lists are recorded in a stand-in manifest (the package's manifest holds OpenOOD's)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from l2ood.bench import BENCHMARKS, aggregate
from l2ood.bench import openood as oo
from l2ood.bench.definitions import benchmark_specs, get_benchmark, listed_benchmarks
from l2ood.cli import main
from l2ood.data import ImageSet
from l2ood.data.errors import DataFormatError, DataNotFoundError
from l2ood.data.imglist import default_mode
from l2ood.data.source import open_images
from l2ood.results import BenchCell, ResultsFile, record_of

RNG = np.random.default_rng(26)
NAMES = ("openood-cifar10", "openood-cifar100", "openood-imagenet200", "openood-imagenet1k")


def _img(path: Path, size: tuple[int, int], gray: bool = False) -> None:
    """A random image file (PNG or JPEG by suffix), ``size`` = (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if gray else (size[1], size[0], 3)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(path)


# OpenOOD's file naming per CIFAR data set (as in its lists): (relative path of image k, (w, h), gray)
_CIFAR_FILES = {
    "cifar10": lambda k, split: (f"cifar10/{split}/{('airplane', 'cat', 'truck')[k % 3]}/{k:04d}.png", (32, 32)),
    "cifar100": lambda k, split: (f"cifar100/{split}/{('apple', 'worm')[k % 2]}/{k:04d}.png", (32, 32)),
    "tin": lambda k, split: (f"tin/val/images/val_{k}.JPEG", (64, 64)),
    "mnist": lambda k, split: (f"mnist/test/{k % 10}_{k}.jpg", (28, 28)),
    "svhn": lambda k, split: (f"svhn/test/{k:06d}_{k % 10}.jpg", (32, 32)),
    "texture": lambda k, split: (f"texture/gauzy/gauzy_{k:04d}.jpg", (56, 40)),  # not square, as DTD's
    "places365": lambda k, split: (f"places365/field-cultivated/Places365_val_{k:08d}.jpg", (48, 48)),
}


def make_cifar_root(root: Path, oid: str = "cifar10", n: int = 4) -> dict[str, list[str]]:
    """OpenOOD's CIFAR layout under ``root`` with ``n`` images per OoD set (3 ID classes: 12 train, 6 test, 3 val);
    returns ``{list file name: lines}``."""
    other = "cifar100" if oid == "cifar10" else "cifar10"
    lists: dict[str, list[str]] = {}
    for split, count in (("train", 12), ("test", 6), ("val", 3)):
        lines = []
        for k in range(count):
            k2 = k + {"train": 0, "test": 100, "val": 200}[split]
            rel, size = _CIFAR_FILES[oid](k2, "train" if split == "train" else "test")
            _img(root / "images_classic" / rel, size)
            lines.append(f"{rel} {k2 % 3 if oid == 'cifar10' else k2 % 2}")
        lists[f"{split}_{oid}.txt"] = lines
    for ds in (other, "tin", "mnist", "svhn", "texture", "places365"):
        lines = []
        for k in range(n):
            rel, size = _CIFAR_FILES[ds](k, "test")
            _img(root / "images_classic" / rel, size, gray=ds == "mnist")
            lines.append(f"{rel} -1")
        lists[f"test_{ds}.txt"] = lines
    lists["val_tin.txt"] = [f"{_CIFAR_FILES['tin'](k, 'test')[0]} -1" for k in range(n, n + 2)]
    for k in range(n, n + 2):
        _img(root / "images_classic" / _CIFAR_FILES["tin"](k, "test")[0], (64, 64))
    folder = root / "benchmark_imglist" / oid
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in lists.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    return lists


def reference_digest(lines: list[str]) -> str:
    """The manifest's digest, computed from its documented definition."""
    return hashlib.sha256(("\n".join(sorted(lines)) + "\n").encode()).hexdigest()


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, list[str]]]:
    """A generated OpenOOD CIFAR-10 data root whose lists the manifest records (as OpenOOD's are in the package)."""
    root = tmp_path / "DATA"
    lists = make_cifar_root(root)
    fake = {"lists": {f"cifar10/{name}": {"sha256": reference_digest(lines), "lines": len(lines), "status": "agreed"}
                      for name, lines in lists.items()}}
    monkeypatch.setattr(oo, "manifest", lambda: fake)
    monkeypatch.setenv("L2OOD_CACHE", str(tmp_path / "cache"))
    return root, lists


# --- protocol: OpenOOD's DATA_INFO ---------------------------------------------------------------------------------

def test_protocols_are_openood_data_info() -> None:
    """Groups, splits, list files and image folders as in OpenOOD's openood/evaluation_api/datasets.py."""
    c10, c100, i200, i1k = (oo.PROTOCOLS[n] for n in NAMES)
    assert c10.groups == {"near": ["cifar100", "tin"], "far": ["mnist", "svhn", "texture", "places365"]}
    assert c100.groups == {"near": ["cifar10", "tin"], "far": ["mnist", "svhn", "texture", "places365"]}
    for p in (i200, i1k):
        assert p.groups == {"near": ["ssb_hard", "ninco"], "far": ["inaturalist", "textures", "openimage_o"]}
    assert [(x.role, x.path, x.image_dir) for x in c10.lists] == [
        ("train", "benchmark_imglist/cifar10/train_cifar10.txt", "images_classic"),
        ("val", "benchmark_imglist/cifar10/val_cifar10.txt", "images_classic"),
        ("test", "benchmark_imglist/cifar10/test_cifar10.txt", "images_classic"),
        ("ood_val", "benchmark_imglist/cifar10/val_tin.txt", "images_classic"),
        *[(g, f"benchmark_imglist/cifar10/test_{d}.txt", "images_classic") for g, d in (
            ("near", "cifar100"), ("near", "tin"), ("far", "mnist"), ("far", "svhn"), ("far", "texture"),
            ("far", "places365"))]]
    # ImageNet: everything in images_largescale but Textures, which OpenOOD keeps in images_classic
    dirs = {x.dataset: x.image_dir for x in i1k.lists}
    assert dirs == {"imagenet": "images_largescale", "openimage_o": "images_largescale",
                    "ssb_hard": "images_largescale", "ninco": "images_largescale",
                    "inaturalist": "images_largescale", "textures": "images_classic"}
    assert i1k.one("test").path == "benchmark_imglist/imagenet/test_imagenet.txt" and i1k.num_classes == 1000
    assert i200.one("train").path == "benchmark_imglist/imagenet200/train_imagenet200.txt"
    assert i200.one("ood_val").path == "benchmark_imglist/imagenet200/val_openimage_o.txt"
    assert {x.folder for x in i200.lists} == {"imagenet_1k", "openimage_o", "ssb_hard", "ninco", "inaturalist",
                                              "texture"}
    assert (c10.num_classes, c100.num_classes, i200.num_classes) == (10, 100, 200)
    assert (c10.size, i200.size, c10.stream, i200.stream) == ((32, 32), (224, 224), False, True)


def test_benchmarks_are_listed_and_old_names_keep_their_meaning() -> None:
    assert set(NAMES) <= set(listed_benchmarks())
    # the archive-based names are unchanged (same sets), with a note saying they are not OpenOOD's lists
    assert BENCHMARKS["cifar10"]["ood"] == {"near": ["cifar100", "tin"], "far": ["mnist", "svhn", "dtd", "places365"]}
    assert BENCHMARKS["cifar10"]["id"] == "cifar10" and "openood-cifar10" in BENCHMARKS["cifar10"]["note"]
    assert "openood-cifar100" in BENCHMARKS["cifar100"]["note"]
    assert "openood" not in BENCHMARKS["cifar10"] and "openood" not in BENCHMARKS["imagenet200"]
    # the older list-based names read the same lists; Textures is searched in images_classic/ too (OpenOOD's place)
    legacy = benchmark_specs(BENCHMARKS["imagenet200"], "/D")
    assert [s.split("@")[0] for s, _ in legacy[2]] == [
        s.split("@")[0] for g in ("near", "far") for s in
        (x.spec("/D") for x in oo.PROTOCOLS["openood-imagenet200"].role(g))]
    assert "imglist:/D/benchmark_imglist/imagenet200/test_textures.txt" in [s for s, _ in legacy[2]]


def test_definition_resolves_every_set_with_its_group(cifar_root: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = cifar_root
    train, test, ood = benchmark_specs(get_benchmark("openood-cifar10"), str(root))
    lst, img = f"{root}/benchmark_imglist/cifar10", f"{root}/images_classic"
    assert train == f"imglist:{lst}/train_cifar10.txt@{img}"
    assert test == f"imglist:{lst}/test_cifar10.txt@{img}"
    assert ood == [(f"imglist:{lst}/test_{d}.txt@{img}", g) for g, d in (
        ("near", "cifar100"), ("near", "tin"), ("far", "mnist"), ("far", "svhn"), ("far", "texture"),
        ("far", "places365"))]
    d = get_benchmark("openood-cifar10")["openood"]
    assert d["val"] == "imglist:{root}/benchmark_imglist/cifar10/val_cifar10.txt@{root}/images_classic"
    assert d["ood_val"] == "imglist:{root}/benchmark_imglist/cifar10/val_tin.txt@{root}/images_classic"
    # every set opens with the list's images, in the ID format, labelled for the ID splits only
    tr = open_images(train, "train", root=str(root), size=(32, 32), channels=3)
    assert len(tr) == 12 and tr.labels is not None and tr.labels.tolist() == [k % 3 for k in range(12)]
    te = open_images(test, "test", root=str(root), size=(32, 32), channels=3)
    assert len(te) == 6 and te.name == "test_cifar10" and te.shape == (3, 32, 32)
    for spec, _ in ood:
        ds = open_images(spec, "test", root=str(root), size=(32, 32), channels=3)
        assert len(ds) == 4 and ds.labels is None and ds.shape == (3, 32, 32)
        assert ds.name == Path(spec.split("@")[0]).stem
    # OpenOOD's test transform for lists in its layout: shorter side -> 32, centre crop (Resize(32) + CenterCrop)
    assert default_mode(f"{lst}/test_texture.txt") == "crop"
    tex = open_images(ood[4][0], "test", root=str(root), size=(32, 32), channels=3)
    assert isinstance(tex, ImageSet) and tex.view == "crop"
    src = np.asarray(Image.open(root / "images_classic" / "texture/gauzy/gauzy_0000.jpg").convert("RGB"))
    assert src.shape == (40, 56, 3)  # (h, w): the shorter side is the height
    # torchvision Resize(32): int(56·32/40) = 44 wide; CenterCrop(32): columns 6..37
    ref = np.asarray(Image.fromarray(src).resize((44, 32), Image.Resampling.BILINEAR))[:, 6:38]
    got = tex.images[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(got - ref.astype(int)).mean() < 2  # same geometry (a plain resize is ~30 off)


# --- list digests, format, missing files ---------------------------------------------------------------------------

def test_entries_digest_is_the_documented_formula() -> None:
    lines = ["cifar10/test/cat/0001.png 3", "cifar10/test/airplane/0002.png 0"]
    assert oo.entries_digest(lines) == reference_digest(lines)
    # order-free, line-end and blank-insensitive; any change of an entry changes it
    text = "cifar10/test/airplane/0002.png   0\r\n\r\ncifar10/test/cat/0001.png 3\r\n"
    assert oo.entries_digest(oo.canonical_lines(text)) == reference_digest(lines)
    assert oo.entries_digest(["cifar10/test/cat/0001.png 4", lines[1]]) != reference_digest(lines)


def test_manifest_records_every_list_of_every_benchmark() -> None:
    m = oo._package_json(oo.MANIFEST)
    keys = {x.key for p in oo.PROTOCOLS.values() for x in p.lists}
    assert keys <= set(m["lists"])
    for key in keys:
        rec = m["lists"][key]
        assert rec["status"] in ("agreed", "single", "unknown")
        if rec["status"] == "unknown":
            assert rec["sha256"] is None and rec["note"]
        else:
            assert len(rec["sha256"]) == 64 and int(rec["sha256"], 16) >= 0 and rec["lines"] > 0
            assert rec["evidence"] and all(e in m["mirrors"] for e in rec["evidence"])
    # every list the CIFAR benchmarks read is recorded from at least two public copies
    for p in (oo.PROTOCOLS["openood-cifar10"], oo.PROTOCOLS["openood-cifar100"]):
        for x in p.lists:
            assert m["lists"][x.key]["status"] == "agreed" and len(m["lists"][x.key]["evidence"]) >= 2, x.key
    # OpenOOD v1.5's set sizes (its paper's Table 1 for the OoD sets; 9 000 / 1 000 ID test / val split)
    sizes = {k: m["lists"][k]["lines"] for k in ("cifar10/test_cifar10.txt", "cifar10/val_cifar10.txt",
                                                  "cifar10/test_tin.txt", "cifar10/test_mnist.txt",
                                                  "cifar10/test_svhn.txt", "cifar10/test_texture.txt",
                                                  "cifar10/test_places365.txt", "imagenet/test_ssb_hard.txt",
                                                  "imagenet/test_ninco.txt", "imagenet/test_inaturalist.txt",
                                                  "imagenet/test_textures.txt", "imagenet/test_openimage_o.txt")}
    assert list(sizes.values()) == [9000, 1000, 7793, 70000, 26032, 5640, 35195, 49000, 5879, 10000, 5160, 15869]
    # ImageNet-200's OoD lists are ImageNet-1K's
    for ds in ("ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"):
        assert m["lists"][f"imagenet200/test_{ds}.txt"]["sha256"] == m["lists"][f"imagenet/test_{ds}.txt"]["sha256"]


def test_verified_root_passes(cifar_root: tuple[Path, dict[str, list[str]]]) -> None:
    root, lists = cifar_root
    checks = oo.verify_benchmark("openood-cifar10", root)
    assert [c.lst.role for c in checks] == ["train", "test", "near", "near", "far", "far", "far", "far"]
    assert all(c.status == "verified" and c.lines == len(lists[Path(c.lst.path).name]) for c in checks)
    # the validation lists are checked when present, but never required
    for name in ("val_cifar10.txt", "val_tin.txt"):
        (root / "benchmark_imglist" / "cifar10" / name).unlink()
    assert len(oo.verify_benchmark("openood-cifar10", root)) == 8
    allc = oo.check_benchmark("openood-cifar10", root)
    assert {c.lst.role: c.status for c in allc}["val"] == "missing"


def test_missing_list_and_images_name_the_path_and_the_list(cifar_root: tuple[Path, dict[str, list[str]]]) -> None:
    root, _ = cifar_root
    lst = root / "benchmark_imglist" / "cifar10"
    (lst / "test_tin.txt").unlink()
    missing_img = root / "images_classic" / "svhn" / "test" / "000002_2.jpg"
    missing_img.unlink()
    with pytest.raises(DataNotFoundError) as e:
        benchmark_specs(get_benchmark("openood-cifar10"), str(root))
    msg = str(e.value)
    assert msg.startswith(f"OpenOOD v1.5 benchmark 'openood-cifar10' cannot run on the data root {root}:")
    assert f"  - missing image list {lst / 'test_tin.txt'} (near set 'tin')" in msg
    assert (f"  - 1 of 4 images listed in {lst / 'test_svhn.txt'} (far set 'svhn') are not files under "
            f"{root / 'images_classic'} (first: {missing_img})") in msg
    # where each file goes, and where OpenOOD's files come from
    assert f"{lst}/  <- benchmark_imglist/cifar10/*.txt from benchmark_imglist.zip" in msg
    assert f"{root / 'images_classic' / 'tin'}/  <- the 'tin' image zip" in msg
    assert "scripts/download/download.py" in msg and "--datasets cifar-10" in msg
    # the CLI prints it as one message (exit status 2), before anything is loaded or written
    out = root.parent / "bench"
    assert main(["bench", "--benchmark", "openood-cifar10", "--data-root", str(root), "--out", str(out),
                 "--no-progress"]) == 2
    assert not (out / "spec.json").exists()


def test_tampered_list_is_refused(cifar_root: tuple[Path, dict[str, list[str]]]) -> None:
    root, lists = cifar_root
    f = root / "benchmark_imglist" / "cifar10" / "test_cifar10.txt"
    f.write_text(f.read_text().replace(" 0\n", " 1\n", 1))  # one label changed
    with pytest.raises(DataFormatError, match=r"is not OpenOOD v1\.5's list") as e:
        oo.verify_benchmark("openood-cifar10", root)
    want = reference_digest(lists["test_cifar10.txt"])
    assert f"{f} (test set 'cifar10') is not OpenOOD v1.5's list" in str(e.value)
    assert f"expected {want} (6 lines)" in str(e.value)
    # the same entries in another order and with CRLF line ends are OpenOOD's list
    f.write_text("\r\n".join(reversed(lists["test_cifar10.txt"])) + "\r\n")
    assert oo.verify_benchmark("openood-cifar10", root)[1].status == "verified"


@pytest.mark.parametrize(("name", "line", "error"), [
    ("test_tin.txt", "tin/val/images/val_0.JPEG", "expected '<path> <label>'"),
    ("test_tin.txt", "val/images/val_0.JPEG -1", "is not below 'tin/'"),  # a list with the set prefix stripped
    ("test_tin.txt", "tin/val/images/val_0.JPEG 3", "OoD lists label every image -1"),
    ("train_cifar10.txt", "cifar10/train/cat/0001.png 10", r"ID label 10 outside \[0, 10\)"),
    ("train_cifar10.txt", "cifar10/train/cat/0001.png x", "is not an integer"),
    ("test_svhn.txt", "svhn/../../etc/passwd -1", "leaves the image folder"),
])
def test_list_format_is_checked_strictly(cifar_root: tuple[Path, dict[str, list[str]]], name: str, line: str,
                                         error: str) -> None:
    root, lists = cifar_root
    f = root / "benchmark_imglist" / "cifar10" / name
    f.write_text("\n".join([*lists[name][:1], line, *lists[name][1:]]) + "\n")
    with pytest.raises(DataFormatError, match=error) as e:
        oo.verify_benchmark("openood-cifar10", root)
    assert f"{f}:2: " in str(e.value)


def test_a_path_listed_twice_is_refused(cifar_root: tuple[Path, dict[str, list[str]]]) -> None:
    root, lists = cifar_root
    f = root / "benchmark_imglist" / "cifar10" / "test_mnist.txt"
    f.write_text("\n".join([*lists["test_mnist.txt"], lists["test_mnist.txt"][0]]) + "\n")
    with pytest.raises(DataFormatError, match=r"test_mnist\.txt:5: 'mnist/test/0_0\.jpg' is listed twice"):
        oo.verify_benchmark("openood-cifar10", root)


def test_package_manifest_refuses_generated_lists(tmp_path: Path) -> None:
    """With the package's own manifest (OpenOOD's digests), a generated list is not OpenOOD's."""
    root = tmp_path / "DATA"
    make_cifar_root(root)
    with pytest.raises(DataFormatError, match=r"is not OpenOOD v1\.5's list") as e:
        oo.verify_benchmark("openood-cifar10", root)
    assert oo.manifest()["lists"]["cifar10/test_tin.txt"]["sha256"] in str(e.value)


def test_unknown_digest_is_format_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "DATA"
    lists = make_cifar_root(root)
    fake = {"lists": {f"cifar10/{n}": {"sha256": reference_digest(v), "lines": len(v), "status": "agreed"}
                      for n, v in lists.items()}}
    fake["lists"]["cifar10/train_cifar10.txt"] = {"sha256": None, "lines": None, "status": "unknown", "note": "x"}
    monkeypatch.setattr(oo, "manifest", lambda: fake)
    checks = oo.verify_benchmark("openood-cifar10", root)
    assert [c.status for c in checks][:2] == ["format-only", "verified"]


def test_imagenet_layout_keeps_textures_in_images_classic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageNet-200: ID and OoD images in images_largescale/, Textures in images_classic/ (OpenOOD's DATA_INFO)."""
    root = tmp_path / "DATA"
    files = {"train_imagenet200": [f"imagenet_1k/train/n0144353{k}/n0144353{k}_{k}.JPEG {k}" for k in range(3)],
             "test_imagenet200": [f"imagenet_1k/val/ILSVRC2012_val_0000000{k}.JPEG {k % 2}" for k in range(3)],
             "test_ssb_hard": ["ssb_hard/n11622368/n11622368_1063.JPEG -1"],
             "test_ninco": ["ninco/amphiuma_means/amphiuma_means_059_35206920.jpg -1"],
             "test_inaturalist": ["inaturalist/images/98945524784c9c0171c4b8594588d6e1.jpg -1"],
             "test_textures": ["texture/banded/banded_0002.jpg -1"],
             "test_openimage_o": ["openimage_o/images/b85bd6c20e9c378a.jpg -1"]}
    for name, lines in files.items():
        f = root / "benchmark_imglist" / "imagenet200" / f"{name}.txt"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("\n".join(lines) + "\n")
        for line in lines:
            rel = line.split()[0]
            _img(root / ("images_classic" if rel.startswith("texture/") else "images_largescale") / rel, (40, 30))
    fake = {"lists": {f"imagenet200/{n}.txt": {"sha256": reference_digest(v), "lines": len(v)}
                      for n, v in files.items()}}
    monkeypatch.setattr(oo, "manifest", lambda: fake)
    checks = oo.verify_benchmark("openood-imagenet200", root)
    assert {c.lst.dataset: str(c.image_root.relative_to(root)) for c in checks} == {
        "imagenet200": "images_largescale", "ssb_hard": "images_largescale", "ninco": "images_largescale",
        "inaturalist": "images_largescale", "textures": "images_classic", "openimage_o": "images_largescale"}
    _, test, ood = benchmark_specs(get_benchmark("openood-imagenet200"), str(root))
    assert test == f"imglist:{root}/benchmark_imglist/imagenet200/test_imagenet200.txt@{root}/images_largescale"
    assert (f"imglist:{root}/benchmark_imglist/imagenet200/test_textures.txt@{root}/images_classic", "far") in ood
    # Textures put under images_largescale (not OpenOOD's place) is reported where the list expects it
    tex = root / "images_classic" / "texture" / "banded" / "banded_0002.jpg"
    moved = root / "images_largescale" / "texture" / "banded" / "banded_0002.jpg"
    moved.parent.mkdir(parents=True)
    tex.rename(moved)
    want = f"are not files under {root / 'images_classic'} (first: {tex})"
    with pytest.raises(DataNotFoundError, match=re.escape(want)):
        oo.verify_benchmark("openood-imagenet200", root)


def test_check_command(cifar_root: tuple[Path, dict[str, list[str]]], capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = cifar_root
    assert oo.check_main([str(root), "openood-cifar10"]) == 0
    out = capsys.readouterr().out
    assert "  near     cifar10/test_tin.txt" in out and out.count("verified") == 10
    (root / "benchmark_imglist" / "cifar10" / "test_places365.txt").unlink()
    assert oo.check_main([str(root), "openood-cifar10"]) == 1
    assert "missing image list" in capsys.readouterr().out


# --- published numbers ---------------------------------------------------------------------------------------------

def test_published_rows_name_their_sources() -> None:
    pub = oo.published()
    assert set(pub["sources"]) == {"leaderboard", "gradresp-eval-api", "t2fnorm-readme"}
    assert all(s["url"].startswith("https://github.com/") and len(s["commit"]) == 40 for s in pub["sources"].values())
    assert {r["benchmark"] for r in pub["rows"]} == set(NAMES)
    for r in pub["rows"]:
        assert r["source"].startswith("leaderboard: results/") and r["source"].endswith(".csv")
        for k in ("near_auroc", "far_auroc", "near_fpr95", "far_fpr95"):
            assert r[k] is None or 0 <= r[k] <= 100
        assert (r["near_fpr95"] is None) == (r["fpr95_source"] is None)
        assert r["fpr95_source"] in (None, "gradresp-eval-api", "t2fnorm-readme")
    msp = oo.match_published("openood-cifar10", "resnet18", "ce", "msp")
    assert msp is not None and (msp["near_auroc"], msp["near_auroc_std"], msp["far_auroc"]) == (88.03, 0.25, 90.73)
    assert (msp["near_fpr95"], msp["far_fpr95"], msp["id_acc"]) == (48.17, 31.71, 95.06)
    t2f = oo.match_published("openood-cifar10", "resnet18", "t2fnorm", "msp:raw")
    assert t2f is not None and (t2f["near_auroc"], t2f["near_fpr95"], t2f["fpr95_source"]) == (
        92.79, 26.47, "t2fnorm-readme")
    ln = oo.match_published("openood-cifar100", "resnet18", "logitnorm", "msp:raw")
    assert ln is not None and (ln["training"], ln["near_auroc"], ln["far_auroc"], ln["near_fpr95"]) == (
        "LogitNorm", 78.47, 81.53, None)
    # ImageNet-1K: our backbone's row (torchvision ResNet50), not Swin-T's or ViT's
    r50 = oo.match_published("openood-imagenet1k", "torchvision:resnet50", "ce", "knn")
    assert r50 is not None and (r50["arch"], r50["near_auroc"], r50["far_auroc"]) == ("ResNet50", 71.1, 90.18)
    for arch in ("torchvision:vit_b_16", "timm:vit-b/16"):
        vit = oo.match_published("openood-imagenet1k", arch, "ce", "msp")
        assert vit is not None and vit["arch"] == "ViT-B/16" and vit["near_auroc"] == 73.52
    other = oo.match_published("openood-imagenet1k", "timm:convnext_tiny", "ce", "msp")  # no such row: ResNet50's
    assert other is not None and (other["arch"], other["near_auroc"]) == ("ResNet50", 76.02)
    assert oo.match_published("openood-cifar10", "resnet18", "l2", "msp:raw") is None  # no published L2 row
    assert oo.match_published("cifar10", "resnet18", "ce", "msp") is None  # archives: not OpenOOD's benchmark


def _cell(seed: int, benchmark: str, id_acc: float, auroc: dict[str, float], fpr: dict[str, float]) -> str:
    groups = {"test_cifar100": "near", "test_tin": "near", "test_mnist": "far", "test_places365": "far"}
    rec = {"model": {"arch": "resnet18"}, "head": "ce", "id_dataset": "test_cifar10", "n_id_test": 10,
           "id_accuracy": id_acc, "detectors": ["msp"], "code_version": {"l2ood": "0.2.0", "git_commit": None},
           "ood": {s: {"n": 10, "detectors": {"msp": {"auroc": auroc[s], "fpr95": 0.5, "fpr95_ood_pos": fpr[s],
                                                      "aupr_in": 0.5, "aupr_out": 0.5}}} for s in groups}}
    cell = {"arch": "resnet18", "variant": "ce", "seed": seed, "requested": ["msp"], "groups": groups,
            "benchmark": benchmark}
    return json.dumps(ResultsFile.new({f"c{seed}": record_of(rec)}, bench=BenchCell.model_validate(cell)).to_json())


@pytest.mark.parametrize("benchmark", ["openood-cifar10", "cifar10"])
def test_results_md_shows_published_numbers_for_openood_benchmarks_only(tmp_path: Path, benchmark: str) -> None:
    (tmp_path / "cells").mkdir()
    (tmp_path / "spec.json").write_text(json.dumps({"benchmark": benchmark, "recipe": "openood", "hyper": {},
                                                    "definition": BENCHMARKS[benchmark]}))
    near = {"test_cifar100": 0.90, "test_tin": 0.80, "test_mnist": 0.99, "test_places365": 0.95}
    fpr = {"test_cifar100": 0.40, "test_tin": 0.60, "test_mnist": 0.05, "test_places365": 0.15}
    (tmp_path / "cells" / "c0.json").write_text(_cell(0, benchmark, 0.95, near, fpr))
    (tmp_path / "cells" / "c1.json").write_text(_cell(1, benchmark, 0.93, {k: v - 0.02 for k, v in near.items()},
                                                      {k: v + 0.02 for k, v in fpr.items()}))
    _, md_path = aggregate(tmp_path)
    md = md_path.read_text()
    assert f"Benchmark: {BENCHMARKS[benchmark]['note']}" in md
    if benchmark == "cifar10":
        assert "OpenOOD v1.5's published numbers" not in md and "(OpenOOD)" not in md
        return
    assert "## Beside OpenOOD v1.5's published numbers" in md and "**not ours**" in md
    head = next(line for line in md.splitlines() if line.startswith("| arch | variant | detector | OpenOOD row"))
    assert head == ("| arch | variant | detector | OpenOOD row | near AUROC | near AUROC (OpenOOD) | far AUROC | "
                    "far AUROC (OpenOOD) | near FPR95 (OoD+) | near FPR95 (OoD+, OpenOOD) | far FPR95 (OoD+) | "
                    "far FPR95 (OoD+, OpenOOD) | ID acc | ID acc (OpenOOD) |")
    row = next(line for line in md.splitlines() if line.startswith("| resnet18 | ce | msp | CrossEntropy"))
    # ours: group = mean of its sets, then mean ± sample std over seeds: near AUROC (85, 83) -> 84.00 ± 1.41;
    # far (97, 95) -> 96.00 ± 1.41; near FPR (50, 52) -> 51.00 ± 1.41; far (10, 12) -> 11.00 ± 1.41; acc (95, 93)
    assert row == ("| resnet18 | ce | msp | CrossEntropy / MSP, ResNet18, 100 epochs | 84.00 ± 1.41 | 88.03 ± 0.25 [L] "
                   "| 96.00 ± 1.41 | 90.73 ± 0.43 [L] | 51.00 ± 1.41 | 48.17 ± 3.92 [G] | 11.00 ± 1.41 | "
                   "31.71 ± 1.83 [G] | 94.00 ± 1.41 | 95.06 ± 0.30 [L] |")
    assert "[L] OpenOOD v1.5 leaderboard" in md and "zjysteven/OpenOOD/tree/28d3a40" in md
    assert "[G] Third-party re-run" in md and "OoD+" in md and "fpr95_ood_pos" in md


# --- end to end ----------------------------------------------------------------------------------------------------

def test_bench_openood_cifar10_end_to_end(cifar_root: tuple[Path, dict[str, list[str]]], tmp_path: Path) -> None:
    """A 1-epoch width-4 model on the generated root: every set read through its list, OpenOOD's groups, the published
    section beside our numbers."""
    root, lists = cifar_root
    out = tmp_path / "bench"
    assert main(["bench", "--benchmark", "openood-cifar10", "--data-root", str(root), "--recipe", "cpu-small",
                 "--width", "4", "--epochs", "1", "--batch-size", "12", "--variants", "ce", "--seeds", "0",
                 "--detectors", "msp,energy", "--out", str(out), "--no-progress", "--precision", "fp32",
                 "--device", "cpu"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    sets = {r["ood"]: r["group"] for r in rows}
    assert sets == {"test_cifar100": "near", "test_tin": "near", "test_mnist": "far", "test_svhn": "far",
                    "test_texture": "far", "test_places365": "far"}
    cell = json.loads((out / "cells" / "resnet18-ce-seed0.json").read_text())["runs"]["resnet18-ce-seed0"]
    assert cell["n_id_test"] == len(lists["test_cifar10.txt"]) == 6
    assert all(v["n"] == 4 for v in cell["ood"].values())
    md = (out / "results.md").read_text()
    assert "| resnet18 | ce | msp | CrossEntropy / MSP, ResNet18, 100 epochs |" in md
    assert "| resnet18 | ce | energy | CrossEntropy / EBO, ResNet18, 100 epochs |" in md
    near = np.mean([float(r["auroc"]) for r in rows if r["detector"] == "msp" and r["group"] == "near"])
    assert f"| {100 * near:.2f} | 88.03 ± 0.25 [L] |" in md
