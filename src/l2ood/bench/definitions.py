"""Benchmark definitions and training recipes — data, not code branches.

A benchmark names its ID data set and its OoD groups (near / far) by data-set names understood by
:func:`l2ood.data.load_dataset`; ``{root}`` is replaced by ``--data-root`` (where the official
files or OpenOOD's ``benchmark_imglist`` + images live). Averages per group are the unweighted means
of the per-data-set metrics, as OpenOOD v1.5 reports them (Zhang et al., "OpenOOD v1.5: Enhanced
Benchmark for Out-of-Distribution Detection", 2023).

Two families:

* ``openood-cifar10``, ``openood-cifar100``, ``openood-imagenet200``, ``openood-imagenet1k``: OpenOOD v1.5 exactly
  (:mod:`l2ood.bench.openood`): its image lists, layout, groups and ID splits; :func:`benchmark_specs` verifies the
  lists (recorded digests) and every listed image before anything is loaded, and ``results.md`` shows OpenOOD's
  published numbers beside ours. Only these are comparable with OpenOOD's tables.
* ``cifar10``, ``cifar100`` (the official archives: whole test splits of Tiny-ImageNet, Places365, DTD, MNIST, SVHN,
  CIFAR — not OpenOOD's curated lists) and ``imagenet200``, ``imagenet`` (OpenOOD's lists, read without digest
  checks): kept as they were, so earlier results keep their meaning; their ``note`` says so.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from .openood import PROTOCOLS, benchmark_definition, verify_benchmark

_ARCHIVES = ("OoD sets from the official archives (whole test splits), not OpenOOD's curated image lists: not "
             "comparable with OpenOOD's published tables; {exact} follows OpenOOD v1.5 exactly.")
_LISTS = ("OpenOOD's image lists read without digest or image checks (textures found in images_classic/ or "
          "images_largescale/); {exact} is the verified benchmark with OpenOOD's published numbers beside ours.")

BENCHMARKS: dict[str, dict[str, Any]] = {
    # OpenOOD v1.5's CIFAR-10 groups on the official archives (near = CIFAR-100, Tiny-ImageNet; far = MNIST, SVHN,
    # Textures, Places365), whole test splits: see openood-cifar10 for OpenOOD's own lists
    "cifar10": {
        "id": "cifar10", "channels": 3, "size": [32, 32],
        "ood": {"near": ["cifar100", "tin"], "far": ["mnist", "svhn", "dtd", "places365"]},
        "note": _ARCHIVES.format(exact="openood-cifar10"),
    },
    "cifar100": {
        "id": "cifar100", "channels": 3, "size": [32, 32],
        "ood": {"near": ["cifar10", "tin"], "far": ["mnist", "svhn", "dtd", "places365"]},
        "note": _ARCHIVES.format(exact="openood-cifar100"),
    },
    # OpenOOD v1.5 ImageNet-200 through its image lists (benchmark_imglist/ + images_largescale/), at 224 px:
    # streamed (random resized crop + flip for training; shorter side 256 + centre crop 224 for evaluation)
    "imagenet200": {
        "id": "imglist:{root}/benchmark_imglist/imagenet200/test_imagenet200.txt@{root}/images_largescale",
        "train": "imglist:{root}/benchmark_imglist/imagenet200/train_imagenet200.txt@{root}/images_largescale",
        "channels": 3, "size": [224, 224], "stream": True,
        "ood": {
            "near": ["imglist:{root}/benchmark_imglist/imagenet200/test_ssb_hard.txt@{root}/images_largescale",
                     "imglist:{root}/benchmark_imglist/imagenet200/test_ninco.txt@{root}/images_largescale"],
            "far": ["imglist:{root}/benchmark_imglist/imagenet200/test_inaturalist.txt@{root}/images_largescale",
                    # no image root: images_classic/ (OpenOOD's place for Textures) or images_largescale/
                    "imglist:{root}/benchmark_imglist/imagenet200/test_textures.txt",
                    "imglist:{root}/benchmark_imglist/imagenet200/test_openimage_o.txt@{root}/images_largescale"],
        },
        "note": _LISTS.format(exact="openood-imagenet200"),
    },
    # OpenOOD v1.5 ImageNet-1k (full-spectrum lists), for post-hoc evaluation of a pretrained classifier
    # (recipe "pretrained-resnet50"); fitted detectors use the training list (subsample with --n-fit)
    "imagenet": {
        "id": "imglist:{root}/benchmark_imglist/imagenet/test_imagenet.txt@{root}/images_largescale",
        "train": "imglist:{root}/benchmark_imglist/imagenet/train_imagenet.txt@{root}/images_largescale",
        "channels": 3, "size": [224, 224], "stream": True,
        "ood": {
            "near": ["imglist:{root}/benchmark_imglist/imagenet/test_ssb_hard.txt@{root}/images_largescale",
                     "imglist:{root}/benchmark_imglist/imagenet/test_ninco.txt@{root}/images_largescale"],
            "far": ["imglist:{root}/benchmark_imglist/imagenet/test_inaturalist.txt@{root}/images_largescale",
                    # no image root: images_classic/ (OpenOOD's place for Textures) or images_largescale/
                    "imglist:{root}/benchmark_imglist/imagenet/test_textures.txt",
                    "imglist:{root}/benchmark_imglist/imagenet/test_openimage_o.txt@{root}/images_largescale"],
        },
        "note": _LISTS.format(exact="openood-imagenet1k"),
    },
    # The project's own CIFAR-10 benchmark (docs/RESULTS-cifar10.md, "Data layout"): CIFAR-10 as a JPEG
    # image-folder tree (lossy copy!), Tiny-ImageNet resized, MNIST, Fashion-MNIST, a DTD subset and
    # scikit-image textures as npz packs under --data-root. Listed only with L2OOD_DEV_BENCHMARKS=1.
    "cifar10-local": {
        "id": "imagefolder:{root}/cifar10-jpeg/test",
        "train": "imagefolder:{root}/cifar10-jpeg/train",
        "channels": 3, "size": [32, 32],
        "ood": {"near": ["npz:{root}/tinyimagenet_test_resize.npz"],
                "far": ["npz:{root}/mnist_test.npz", "npz:{root}/fashionmnist_test.npz",
                        "npz:{root}/dtd_partial10.npz", "npz:{root}/textures_skimage.npz"]},
        "note": "CIFAR-10 (JPEG copy): re-encoded at JPEG quality 75; OoD sets come through other pipelines.",
    },
    # OpenOOD v1.5 exactly: image lists verified against recorded digests, OpenOOD's groups, published numbers
    **{name: benchmark_definition(name) for name in PROTOCOLS},
}

#: benchmarks for the project's own measurements on a fixed file layout: hidden unless $L2OOD_DEV_BENCHMARKS=1
DEV_BENCHMARKS = frozenset({"cifar10-local"})
DEV_ENV = "L2OOD_DEV_BENCHMARKS"


def dev_benchmarks_enabled() -> bool:
    """Whether ``$L2OOD_DEV_BENCHMARKS`` is set to 1 (lists and allows the project's own benchmarks)."""
    return os.environ.get(DEV_ENV, "").strip() in ("1", "true", "yes")


def listed_benchmarks() -> list[str]:
    """The benchmarks ``l2ood bench`` offers: the public ones, plus the project's own with $L2OOD_DEV_BENCHMARKS=1."""
    return [k for k in BENCHMARKS if k not in DEV_BENCHMARKS or dev_benchmarks_enabled()]


def get_benchmark(name: str) -> dict[str, Any]:
    """The definition of benchmark ``name``; :class:`ConfigError` naming the known ones otherwise."""
    if name in DEV_BENCHMARKS and not dev_benchmarks_enabled():
        raise ConfigError(f"'{name}' is the project's own benchmark on a fixed file layout (docs/RESULTS-cifar10.md, "
                          f"Data layout): set {DEV_ENV}=1 to use it; public benchmarks: "
                          f"{', '.join(listed_benchmarks())}")
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{name}'; known: {', '.join(listed_benchmarks())}")
    return BENCHMARKS[name]


# Training recipes (hyper-parameters only). "paper-*": Haas et al. (TMLR 2024), ResNet18 60 epochs and
# ResNet50 100 epochs; "openood": the OpenOOD v1.5 CIFAR baseline (100 epochs); "cpu-small": what a
# 2-core CPU can afford (narrow ResNet18, short schedule).
RECIPES: dict[str, dict[str, Any]] = {
    "paper-resnet18": {"arch": "resnet18", "width": 64, "epochs": 60, "batch_size": 128, "lr": 0.1,
                       "weight_decay": 5e-4, "schedule": "cosine", "pad": 4},
    "paper-resnet50": {"arch": "resnet50", "width": 64, "epochs": 100, "batch_size": 128, "lr": 0.1,
                       "weight_decay": 5e-4, "schedule": "cosine", "pad": 4},
    "openood": {"arch": "resnet18", "width": 64, "epochs": 100, "batch_size": 128, "lr": 0.1,
                "weight_decay": 5e-4, "schedule": "cosine", "pad": 4},
    # OpenOOD v1.5 ImageNet-200 baseline: torchvision-layout ResNet18 at 224 px, 90 epochs, SGD (Nesterov,
    # momentum 0.9, wd 5e-4), lr 0.1 cosine, batch 128 per GPU on 2 GPUs (scripts/ood/*/imagenet200_train_*.sh)
    "openood-imagenet200": {"arch": "torchvision:resnet18", "width": 64, "epochs": 90, "batch_size": 256,
                            "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "pad": 0},
    # no training: a pretrained ImageNet-1k classifier (head included) from a weights file (--pretrained FILE)
    "pretrained-resnet50": {"arch": "torchvision:resnet50", "width": 64, "epochs": 0, "batch_size": 256,
                            "lr": 0.0, "weight_decay": 0.0, "schedule": "cosine", "pad": 0, "pretrained": True},
    "cpu-small": {"arch": "resnet18", "width": 16, "epochs": 10, "batch_size": 128, "lr": 0.1,
                  "weight_decay": 5e-4, "schedule": "cosine", "pad": 4},
}

VARIANTS = ("ce", "l2", "logitnorm", "t2fnorm")

# OpenOOD v1.5 published CIFAR-10 / ResNet18 AUROC (near, far), for comparison in reports.
OPENOOD_CIFAR10_RESNET18 = {
    "knn": (90.64, 92.96), "msp": (88.03, 90.73), "t2fnorm": (92.79, 96.98), "logitnorm": (92.33, 96.74),
}


def benchmark_specs(bdef: dict[str, Any], root: str | None) -> tuple[str, str, list[tuple[str, str]]]:
    """``(training spec, ID test spec, [(OoD spec, group)])`` of a benchmark definition, ``{root}`` filled
    (:func:`resolve`); the training spec is the ID set's unless the definition names another. An OpenOOD v1.5
    benchmark (``openood`` key) is verified first (:func:`l2ood.bench.openood.verify_benchmark`: lists, digests,
    images), so a bench fails with one message before loading anything."""
    specs = (resolve(bdef.get("train", bdef["id"]), root), resolve(bdef["id"], root),
             [(resolve(nm, root), g) for g, names in bdef["ood"].items() for nm in names])
    if "openood" in bdef:
        assert root is not None  # resolve() above needs it
        verify_benchmark(bdef["openood"]["benchmark"], root)
    return specs


def resolve(name: str, root: str | None) -> str:
    """Fill ``{root}`` in a data-set name (error if the name needs a root and none was given)."""
    if "{root}" in name:
        if root is None:
            raise ConfigError(f"benchmark data set '{name}' needs --data-root")
        return name.replace("{root}", str(root).rstrip("/"))
    return name
