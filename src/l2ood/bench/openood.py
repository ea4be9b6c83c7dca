"""OpenOOD v1.5's benchmarks, exactly: its image lists, data-root layout, near/far groups, ID splits and published
numbers (Zhang et al., "OpenOOD v1.5: Enhanced Benchmark for Out-of-Distribution Detection", 2023,
arXiv:2306.09301; code https://github.com/Jingkang50/OpenOOD, MIT licence).

**Layout** (OpenOOD's, as its ``scripts/download/download.py`` and ``openood/evaluation_api/datasets.py`` unpack it
under a data root ``DATA``)::

    DATA/benchmark_imglist/<id>/train_<id>.txt, val_<id>.txt, test_<id>.txt   ID splits (path label, label >= 0)
    DATA/benchmark_imglist/<id>/val_<set>.txt, test_<set>.txt                 OoD sets (path -1)
    DATA/images_classic/<set>/...       cifar10, cifar100, tin, mnist, svhn, texture, places365
    DATA/images_largescale/<set>/...    imagenet_1k, ssb_hard, ninco, inaturalist, openimage_o

Each list line is ``<set>/<relative path> <label>``, relative to the image folder OpenOOD's ``DATA_INFO`` names for
that list (``images_classic`` for the CIFAR benchmarks and for Textures everywhere, ``images_largescale`` for the
rest of the ImageNet benchmarks).

**Protocols** (:data:`PROTOCOLS`, OpenOOD's ``DATA_INFO``):

=====================  ==============  =====================================  ==================================
l2ood benchmark        OpenOOD id      near-OoD                               far-OoD
=====================  ==============  =====================================  ==================================
``openood-cifar10``    ``cifar10``     cifar100, tin                          mnist, svhn, texture, places365
``openood-cifar100``   ``cifar100``    cifar10, tin                           mnist, svhn, texture, places365
``openood-imagenet200``  ``imagenet200``  ssb_hard, ninco                     inaturalist, textures, openimage_o
``openood-imagenet1k``   ``imagenet``     ssb_hard, ninco                     inaturalist, textures, openimage_o
=====================  ==============  =====================================  ==================================

ID splits: ``train_<id>.txt`` (training / fitted detectors), ``test_<id>.txt`` (ID test), ``val_<id>.txt`` and the
OoD validation list ``val_<set>.txt`` (OpenOOD tunes post-processor hyper-parameters on them; l2ood checks them when
present and does not use them). A group's value is the unweighted mean of its data sets' metrics
(``openood/evaluation_api/evaluator.py``: ``np.mean`` over the group), as in :mod:`l2ood.bench.runner`.

**Verification** (:func:`verify_benchmark`, run by :func:`l2ood.bench.definitions.benchmark_specs` before a bench
loads anything): every list the bench reads must exist, have OpenOOD's format (``PATH LABEL`` per line, ``PATH``
below the set's folder, labels in ``[0, classes)`` for ID lists and ``-1`` for OoD lists, no path twice), match the
digest recorded in ``openood_imglists.json`` (:func:`entries_digest`; lists without a known digest are checked for
format only, and say so), and every listed image must be a file under its image folder. All problems are reported
in one message that names each list and path and says where OpenOOD's files go.

**Published numbers**: ``openood_published.json`` holds OpenOOD v1.5's leaderboard rows (near/far AUROC, ID
accuracy) and, where a public source gives them with the leaderboard's AUROC, near/far FPR@95 in OpenOOD's convention
(OoD positive: the fraction of ID flagged when 95 % of the OoD images are flagged; l2ood's ``fpr95_ood_pos``).
Every row names its source. :func:`published_section` writes them beside a bench's own numbers.

Run ``python -m l2ood.bench.openood_check DATA [BENCHMARK ...]`` to check a data root without running anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..data.errors import DataFormatError, DataNotFoundError
from ..errors import ConfigError

LIST_DIR = "benchmark_imglist"
CLASSIC, LARGESCALE = "images_classic", "images_largescale"
REQUIRED_ROLES = ("train", "test", "near", "far")  # what `l2ood bench` reads
OPTIONAL_ROLES = ("val", "ood_val")  # OpenOOD's validation lists: checked when present, not read
MANIFEST = "openood_imglists.json"
PUBLISHED = "openood_published.json"
DOWNLOAD = ("OpenOOD v1.5's download: benchmark_imglist.zip and one zip per data set, fetched by "
            "scripts/download/download.py (python scripts/download/download.py --contents datasets --datasets "
            "{dl} --save_dir DATA) or openood.evaluation_api.datasets.data_setup(DATA, '{oid}') of "
            "https://github.com/Jingkang50/OpenOOD")


@dataclass(frozen=True)
class ImageList:
    """One OpenOOD image list: ``role`` (train, val, test, ood_val, near, far), the data set's OpenOOD name, the list
    path relative to the data root and the image folder (``images_classic`` / ``images_largescale``) its paths are
    relative to."""

    role: str
    dataset: str
    path: str
    image_dir: str

    @property
    def folder(self) -> str:
        """The first folder of every path the list holds (OpenOOD's folder of the data set)."""
        return {"textures": "texture", "imagenet200": "imagenet_1k", "imagenet": "imagenet_1k"}.get(self.dataset,
                                                                                                self.dataset)

    @property
    def key(self) -> str:
        """The list's key in ``openood_imglists.json``: ``<id>/<file>``."""
        return self.path.removeprefix(LIST_DIR + "/")

    def spec(self, root: str) -> str:
        """The ``imglist:LIST@IMAGEROOT`` data-set spec under ``root`` (``{root}`` kept as a template)."""
        return f"imglist:{root}/{self.path}@{root}/{self.image_dir}"


@dataclass(frozen=True)
class Protocol:
    """One OpenOOD v1.5 benchmark: its l2ood name, OpenOOD id, ID classes, input size and lists."""

    name: str
    openood_id: str
    num_classes: int
    size: tuple[int, int]
    stream: bool
    lists: tuple[ImageList, ...]
    reference_arch: str  # the backbone of OpenOOD's own table
    download_name: str  # the benchmark's name for scripts/download/download.py --datasets

    def role(self, role: str) -> list[ImageList]:
        """The lists of one role, in OpenOOD's order."""
        return [lst for lst in self.lists if lst.role == role]

    def one(self, role: str) -> ImageList:
        """The single list of a role (train, val, test, ood_val)."""
        (lst,) = self.role(role)
        return lst

    @property
    def groups(self) -> dict[str, list[str]]:
        """``{"near": [...], "far": [...]}``: OpenOOD's names of the OoD sets of each group."""
        return {g: [lst.dataset for lst in self.role(g)] for g in ("near", "far")}


def _protocol(name: str, oid: str, classes: int, size: int, stream: bool, id_dir: str, ood_val: str,
              near: Sequence[str], far: Sequence[str], arch: str, download: str) -> Protocol:
    def ood_dir(ds: str) -> str:  # OpenOOD's DATA_INFO: Textures lives in images_classic for every benchmark
        return CLASSIC if ds in ("texture", "textures") or id_dir == CLASSIC else LARGESCALE

    lists = [ImageList(split, oid, f"{LIST_DIR}/{oid}/{split}_{oid}.txt", id_dir) for split in ("train", "val", "test")]
    lists.append(ImageList("ood_val", ood_val, f"{LIST_DIR}/{oid}/val_{ood_val}.txt", ood_dir(ood_val)))
    lists += [ImageList(g, ds, f"{LIST_DIR}/{oid}/test_{ds}.txt", ood_dir(ds))
              for g, sets in (("near", near), ("far", far)) for ds in sets]
    return Protocol(name, oid, classes, (size, size), stream, tuple(lists), arch, download)


_FAR_CIFAR = ("mnist", "svhn", "texture", "places365")
_IMAGENET_OOD = {"near": ("ssb_hard", "ninco"), "far": ("inaturalist", "textures", "openimage_o")}

#: OpenOOD v1.5's benchmarks (``openood/evaluation_api/datasets.py``, ``DATA_INFO``), by l2ood name
PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    _protocol("openood-cifar10", "cifar10", 10, 32, False, CLASSIC, "tin", ("cifar100", "tin"), _FAR_CIFAR,
              "ResNet18", "cifar-10"),
    _protocol("openood-cifar100", "cifar100", 100, 32, False, CLASSIC, "tin", ("cifar10", "tin"), _FAR_CIFAR,
              "ResNet18", "cifar-100"),
    _protocol("openood-imagenet200", "imagenet200", 200, 224, True, LARGESCALE, "openimage_o", **_IMAGENET_OOD,
              arch="ResNet18", download="imagenet-200"),
    _protocol("openood-imagenet1k", "imagenet", 1000, 224, True, LARGESCALE, "openimage_o", **_IMAGENET_OOD,
              arch="ResNet50", download="imagenet-1k"),
)}


def get_protocol(name: str) -> Protocol:
    """The protocol of an ``openood-*`` benchmark; :class:`ConfigError` naming the known ones otherwise."""
    if name not in PROTOCOLS:
        raise ConfigError(f"'{name}' is not an OpenOOD v1.5 benchmark; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def benchmark_definition(name: str) -> dict[str, Any]:
    """The :data:`l2ood.bench.definitions.BENCHMARKS` entry of an ``openood-*`` benchmark: ``imglist:`` specs with
    ``{root}`` templates, each with its explicit image folder, and an ``openood`` key naming the protocol."""
    p = get_protocol(name)
    r = "{root}"
    return {
        "id": p.one("test").spec(r), "train": p.one("train").spec(r), "channels": 3, "size": list(p.size),
        **({"stream": True} if p.stream else {}),
        "ood": {g: [lst.spec(r) for lst in p.role(g)] for g in ("near", "far")},
        "openood": {"benchmark": name, "id": p.openood_id, "val": p.one("val").spec(r),
                    "ood_val": p.one("ood_val").spec(r)},
        "note": f"OpenOOD v1.5 {p.openood_id}: its image lists (benchmark_imglist/{p.openood_id}/), layout and "
                "near/far groups, lists verified against recorded digests; published OpenOOD numbers are shown "
                "beside ours in results.md.",
    }


# --- list digests and strict reading ---------------------------------------------------------------------------

def canonical_lines(text: str) -> list[str]:
    """The entries of a list's text as ``PATH LABEL`` lines (blank lines dropped, white space normalised)."""
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        s = line.strip()
        if s:
            parts = s.split(maxsplit=1)
            out.append(parts[0] + (" " + parts[1].strip() if len(parts) == 2 else ""))
    return out


def entries_digest(lines: Iterable[str]) -> str:
    """Order-free SHA-256 of a list's entries: ``sha256("\\n".join(sorted(lines)) + "\\n")`` over
    :func:`canonical_lines` — equal digests mean the same images with the same labels, whatever the line order or
    line ends.

    >>> entries_digest(["b.png -1", "a.png -1"]) == entries_digest(canonical_lines("a.png  -1\\r\\nb.png -1\\r\\n"))
    True
    """
    return hashlib.sha256(("\n".join(sorted(lines)) + "\n").encode("utf-8")).hexdigest()


def read_list_strict(path: Path, lst: ImageList, num_classes: int) -> tuple[list[str], list[str]]:
    """``(relative image paths, canonical lines)`` of an OpenOOD list, in file order; :class:`DataFormatError` naming
    ``path:line`` for any line that is not ``<folder>/<path> <label>`` with the label OpenOOD gives the list's role
    (``0 <= label < num_classes`` for the ID splits, ``-1`` for OoD sets), and for a path listed twice."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: not a readable UTF-8 text file ({e})") from e
    is_id = lst.role in ("train", "val", "test")
    rels: list[str] = []
    seen: set[str] = set()
    for i, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        s = line.strip()
        if not s:
            continue
        parts = s.split()
        where = f"{path}:{i}"
        if len(parts) != 2:
            raise DataFormatError(f"{where}: expected '<path> <label>' (OpenOOD's list format), got {s[:200]!r}")
        rel, lab = parts
        try:
            label = int(lab)
        except ValueError:
            raise DataFormatError(f"{where}: label {lab[:30]!r} is not an integer") from None
        if is_id and not 0 <= label < num_classes:
            raise DataFormatError(f"{where}: ID label {label} outside [0, {num_classes})")
        if not is_id and label != -1:
            raise DataFormatError(f"{where}: OoD lists label every image -1, got {label}")
        parts = rel.split("/")
        if rel.startswith("/") or ".." in parts or "\\" in rel:
            raise DataFormatError(f"{where}: image path {rel[:200]!r} leaves the image folder")
        if parts[0] != lst.folder or len(parts) < 2:
            raise DataFormatError(f"{where}: image path {rel[:200]!r} is not below '{lst.folder}/' (OpenOOD lists "
                                  f"name the images of '{lst.dataset}' as {lst.folder}/...)")
        if rel in seen:
            raise DataFormatError(f"{where}: {rel[:200]!r} is listed twice")
        seen.add(rel)
        rels.append(rel)
    if not rels:
        raise DataFormatError(f"{path}: the image list is empty")
    return rels, canonical_lines(text)


@cache
def _package_json(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(resources.files("l2ood.bench").joinpath(name).read_text(encoding="utf-8"))
    return data


def manifest() -> dict[str, Any]:
    """``openood_imglists.json``: the recorded digest (or none), line count, status and evidence of every list."""
    return _package_json(MANIFEST)


def missing_images(image_root: Path, rels: Sequence[str]) -> list[str]:
    """The listed paths that are not files under ``image_root`` (one directory listing per folder, so the 1.28 M
    images of ImageNet's training list cost one ``os.scandir`` per class)."""
    by_dir: dict[str, list[str]] = defaultdict(list)
    for rel in rels:
        d, _, name = rel.rpartition("/")
        by_dir[d].append(name)
    out = []
    for d, names in by_dir.items():
        try:
            with os.scandir(image_root / d) as it:
                files = {e.name for e in it if e.is_file()}
        except OSError:
            files = set()
        out += [f"{d}/{n}" if d else n for n in names if n not in files]
    return out


@dataclass
class ListCheck:
    """The state of one list under a data root: ``status`` is ``verified`` (digest and images ok), ``format-only``
    (no digest is known: format and images ok), ``missing``, ``bad-format``, ``mismatch`` (another digest) or
    ``images-missing``."""

    lst: ImageList
    path: Path
    image_root: Path
    status: str
    lines: int | None = None
    digest: str | None = None
    expected: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("verified", "format-only")

    def problem(self) -> str:
        """One line saying what is wrong and where."""
        what = f"{self.lst.role} set '{self.lst.dataset}'"
        if self.status == "missing":
            return f"missing image list {self.path} ({what})"
        if self.status == "bad-format":
            return f"{self.detail} ({what})"
        if self.status == "mismatch":
            return (f"{self.path} ({what}) is not OpenOOD v1.5's list: entries sha256 {self.digest} ({self.lines} "
                    f"lines), expected {self.expected.get('sha256')} ({self.expected.get('lines')} lines)")
        if self.status == "images-missing":
            return (f"{len(self.missing)} of {self.lines} images listed in {self.path} ({what}) are not files under "
                    f"{self.image_root} (first: {self.image_root / self.missing[0]})")
        return f"{self.path}: {self.status}"


def check_list(root: Path, lst: ImageList, num_classes: int, *, images: bool = True) -> ListCheck:
    """Check one list under the data root ``root`` (see :class:`ListCheck`)."""
    path, image_root = root / lst.path, root / lst.image_dir
    if not path.is_file():
        return ListCheck(lst, path, image_root, "missing")
    try:
        rels, lines = read_list_strict(path, lst, num_classes)
    except DataFormatError as e:
        return ListCheck(lst, path, image_root, "bad-format", detail=str(e))
    rec = manifest()["lists"].get(lst.key) or {}
    digest = entries_digest(lines)
    check = ListCheck(lst, path, image_root, "verified" if rec.get("sha256") else "format-only", len(lines), digest,
                      rec)
    if rec.get("sha256") and digest != rec["sha256"]:
        check.status = "mismatch"
        return check
    if images:
        check.missing = missing_images(image_root, rels)
        if check.missing:
            check.status = "images-missing"
    return check


def check_benchmark(name: str, root: str | Path, roles: Sequence[str] = (*REQUIRED_ROLES, *OPTIONAL_ROLES), *,
                    images: bool = True) -> list[ListCheck]:
    """:func:`check_list` for every list of ``roles`` of the benchmark ``name`` under ``root``."""
    p = get_protocol(name)
    return [check_list(Path(root), lst, p.num_classes, images=images) for lst in p.lists if lst.role in roles]


def verify_benchmark(name: str, root: str | Path, *, images: bool = True) -> list[ListCheck]:
    """Check an ``openood-*`` benchmark's lists under ``root`` (see the module doc) and raise one error naming every
    problem: :class:`DataNotFoundError` when lists or images are missing, :class:`DataFormatError` when a list has
    another format or other entries than OpenOOD's. Validation lists (``val_*.txt``) are checked only when present
    and never fail the check. Returns the checks of the lists the bench reads."""
    p = get_protocol(name)
    root = Path(root).expanduser()
    checks = check_benchmark(name, root, images=images)
    needed = [c for c in checks if c.lst.role in REQUIRED_ROLES]
    bad = [c for c in needed if not c.ok]
    if not bad:
        return needed
    lines = [f"OpenOOD v1.5 benchmark '{name}' cannot run on the data root {root}:",
             *(f"  - {c.problem()}" for c in bad)]
    if any(c.status in ("missing", "images-missing") for c in bad):
        sets = sorted({(c.lst.image_dir, c.lst.folder) for c in needed})
        lines += ["Put OpenOOD's files in its layout under the data root:",
                  f"  {root / LIST_DIR / p.openood_id}/  <- benchmark_imglist/{p.openood_id}/*.txt from "
                  "benchmark_imglist.zip",
                  *(f"  {root / d / s}/  <- the '{s}' image zip" for d, s in sets),
                  "  from " + DOWNLOAD.format(dl=p.download_name, oid=p.openood_id) + "."]
    if any(c.status in ("mismatch", "bad-format") for c in bad):
        lines.append("The openood-* benchmarks run only on OpenOOD v1.5's own lists (digests in "
                     f"l2ood/bench/{MANIFEST}); replace the file(s) above with the ones from benchmark_imglist.zip, "
                     "or run other lists as imglist:LIST@IMAGEROOT data sets (then OpenOOD's published numbers do "
                     "not apply).")
    err = DataNotFoundError if all(c.status in ("missing", "images-missing") for c in bad) else DataFormatError
    raise err("\n".join(lines))


# --- published numbers ---------------------------------------------------------------------------------------------

def published() -> dict[str, Any]:
    """``openood_published.json``: OpenOOD v1.5's published rows and their sources."""
    return _package_json(PUBLISHED)


def published_rows(name: str) -> list[dict[str, Any]]:
    """The published rows of one ``openood-*`` benchmark."""
    return [r for r in published()["rows"] if r["benchmark"] == name]


#: l2ood (variant, detector column) → OpenOOD (training, postprocessor). Detectors of the normalized heads are
#: reported as ``<detector>:trained`` / ``<detector>:raw`` (:mod:`l2ood.models.heads`); OpenOOD scores LogitNorm's
#: raw logits (W·z + b) and T2FNorm through its ``forward_ood_inference`` (softmax of W·z/τ + b; W·z + b for
#: ImageNet-1K), which ``msp:raw`` approaches (exact for ImageNet-1K).
_CE = {"msp": "MSP", "energy": "EBO", "maxlogit": "MLS", "temp_scale": "TempScale", "odin": "ODIN",
       "mahalanobis": "MDS", "rmds": "RMDS", "gradnorm": "GradNorm", "react": "ReAct", "klm": "KLM", "vim": "VIM",
       "knn": "KNN", "dice": "DICE", "rankfeat": "RankFeat", "ash_b": "ASH", "she": "SHE", "gen": "GEN",
       "openmax": "OpenMax", "relation": "Relation", "scale": "SCALE", "fdbd": "fDBD", "mahalanobis++": "MDS++",
       "nnguide": "NNGuide"}
PUBLISHED_MATCH: dict[tuple[str, str], tuple[str, str]] = {
    **{("ce", det): ("CrossEntropy", pp) for det, pp in _CE.items()},
    ("logitnorm", "msp:raw"): ("LogitNorm", "MSP"),
    ("t2fnorm", "msp:raw"): ("T2FNorm", "T2FNorm"),
}


def _arch_key(arch: str) -> str:
    """``torchvision:vit_b_16``, ``timm:vit-b/16`` and OpenOOD's ``ViT-B/16`` → ``vitb16``."""
    return "".join(ch for ch in arch.rsplit(":", 1)[-1].lower() if ch.isalnum())


def match_published(name: str, arch: str, variant: str, detector: str) -> dict[str, Any] | None:
    """The published row for our ``(arch, variant, detector)``: OpenOOD's (training, postprocessor) of
    :data:`PUBLISHED_MATCH`, on our backbone if OpenOOD has it, else on its reference backbone; ``None`` if none."""
    want = PUBLISHED_MATCH.get((variant, detector))
    if want is None or name not in PROTOCOLS:
        return None
    rows = [r for r in published_rows(name) if (r["training"], r["postprocessor"]) == want]
    for key in (_arch_key(arch), _arch_key(PROTOCOLS[name].reference_arch)):
        hit = [r for r in rows if _arch_key(r["arch"]) == key]
        if hit:
            return min(hit, key=lambda r: (r["outlier_data"], r["description"] != "torchvision ckpt"))
    return None


def _ours(v: Sequence[float]) -> str:
    a = 100 * np.asarray(v, dtype=float)
    return f"{a.mean():.2f}" if len(a) < 2 else f"{a.mean():.2f} ± {a.std(ddof=1):.2f}"


def _theirs(row: Mapping[str, Any], key: str, tag: str = "") -> str:
    v, s = row.get(key), row.get(f"{key}_std")
    if v is None:
        return "-"
    return f"{v:.2f}" + (f" ± {s:.2f}" if s is not None else "") + (f" [{tag}]" if tag else "")


def published_section(name: str, ours: Mapping[tuple[str, str, str], Mapping[str, Sequence[float]]]) -> list[str]:
    """Markdown lines: our group means beside OpenOOD v1.5's published row for every (arch, variant, detector) of
    ``ours`` that has one (:func:`match_published`); ``[]`` for a benchmark that is not an ``openood-*`` one.
    ``ours`` maps ``(arch, variant, detector)`` to per-seed values keyed ``near_auroc``, ``far_auroc``,
    ``near_fpr95_ood_pos``, ``far_fpr95_ood_pos``, ``id_acc`` (fractions)."""
    if name not in PROTOCOLS:
        return []
    src = published()["sources"]
    tags = {"leaderboard": "L", "gradresp-eval-api": "G", "t2fnorm-readme": "T"}
    head = ["arch", "variant", "detector", "OpenOOD row", "near AUROC", "near AUROC (OpenOOD)", "far AUROC",
            "far AUROC (OpenOOD)", "near FPR95 (OoD+)", "near FPR95 (OoD+, OpenOOD)", "far FPR95 (OoD+)",
            "far FPR95 (OoD+, OpenOOD)", "ID acc", "ID acc (OpenOOD)"]
    rows = []
    for (arch, variant, det), vals in sorted(ours.items()):
        r = match_published(name, arch, variant, det)
        if r is None:
            continue
        fsrc = tags.get(r.get("fpr95_source") or "", "")
        mine = {k: _ours(vals[k]) if vals.get(k) else "-"
                for k in ("near_auroc", "far_auroc", "near_fpr95_ood_pos", "far_fpr95_ood_pos", "id_acc")}
        rows.append("| " + " | ".join([
            arch, variant, det, f"{r['training']} / {r['postprocessor']}, {r['arch']}, {r['description']}",
            mine["near_auroc"], _theirs(r, "near_auroc", "L"), mine["far_auroc"], _theirs(r, "far_auroc", "L"),
            mine["near_fpr95_ood_pos"], _theirs(r, "near_fpr95", fsrc), mine["far_fpr95_ood_pos"],
            _theirs(r, "far_fpr95", fsrc), mine["id_acc"], _theirs(r, "id_acc", "L")]) + " |")
    lines = ["", "## Beside OpenOOD v1.5's published numbers", "",
             f"The '(OpenOOD)' columns are OpenOOD v1.5's published numbers for {name} (Zhang et al., 2023, "
             "arXiv:2306.09301), **not ours**; ours are the mean (± sample std) over our seeds. Both sides use "
             "OpenOOD's image lists and groups (group = unweighted mean of its data sets) and FPR95 in OpenOOD's "
             "convention (**OoD+**: the fraction of ID test images flagged when 95 % of the OoD images are flagged; "
             "our CSV column `fpr95_ood_pos`). A row is matched by training (variant) and post-processor "
             "(detector); OpenOOD tunes some post-processors' hyper-parameters on its validation lists, l2ood uses "
             "each detector's documented defaults, and OpenOOD's models are its own (see the 'OpenOOD row' column "
             "for backbone and schedule).", ""]
    if rows:
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows]
    else:
        lines.append("None of the (variant, detector) columns above has a published OpenOOD v1.5 row "
                     f"(l2ood/bench/{PUBLISHED} lists them).")
    lines += ["", "Sources: " + "; ".join(f"[{tags[k]}] {v['title']}, {v['url']}" for k, v in src.items()
                                          if k in tags) + ". OpenOOD's leaderboard has no FPR95: [G] and [T] values "
              "are taken only where that source's near and far AUROC equal the leaderboard's. '-': not published."]
    return lines


# --- command line -----------------------------------------------------------------------------------------------

def check_main(argv: Sequence[str] | None = None) -> int:
    """``python -m l2ood.bench.openood_check DATA [BENCHMARK ...] [--no-images]``: print every list's state
    (:class:`ListCheck`); exit status 1 when a list the bench reads is not usable, else 0."""
    ap = argparse.ArgumentParser(
        prog="python -m l2ood.bench.openood_check",
        description="Check a data root in OpenOOD v1.5's layout for the openood-* benchmarks: every image list "
                    "(present, OpenOOD's format, recorded digest) and every listed image.")
    ap.add_argument("root", help="the data root (holds benchmark_imglist/, images_classic/, images_largescale/)")
    ap.add_argument("benchmarks", nargs="*", default=list(PROTOCOLS), help=f"default: {' '.join(PROTOCOLS)}")
    ap.add_argument("--no-images", action="store_true", help="check the lists only")
    a = ap.parse_args(argv)
    bad = 0
    for name in a.benchmarks:
        checks = check_benchmark(name, a.root, images=not a.no_images)
        print(f"{name}:")
        for c in checks:
            optional = c.lst.role in OPTIONAL_ROLES
            state = c.status if c.ok else c.problem()
            print(f"  {c.lst.role:8s} {c.lst.key:34s} {state}" + (" (images not checked)" if a.no_images and c.ok
                                                                   else "")
                  + (" (not read by the bench)" if optional else ""))
            bad += not c.ok and not optional
    return 1 if bad else 0
