"""Write the committed corpus of bad inputs (deterministic; rerun to regenerate).

    python tests/corpus/make_corpus.py

One folder per parser: ``npz/`` (npz packs), ``record/`` (run records, each a folder with model.json),
``checkpoint/`` (folders with checkpoint.json), ``images/`` (image files), ``imglist/`` (OpenOOD image
lists), ``cifar/`` (CIFAR binary batches). Every file is hostile or broken on purpose; ``tests/test_corpus.py``
checks that each gives a clear l2ood error (or, where stated in EXPECT, a valid result) within a time and
memory bound, and ``benchmarks/reliability.py`` runs them through the command line.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _npy_bytes(header: dict[str, object], payload: bytes = b"") -> bytes:
    h = repr(header).encode("latin1")
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + payload


def _zip(members: dict[str, bytes], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for k, v in members.items():
            z.writestr(k, v)
    return buf.getvalue()


def _arr(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npz() -> dict[str, bytes]:
    img = np.zeros((2, 4, 4, 3), np.uint8)
    good = _zip({"images.npy": _arr(img), "labels.npy": _arr(np.array([0, 1]))})
    return {
        "empty.npz": b"",
        "not_zip.npz": b"this is not a zip archive at all\n",
        "zip_magic_then_junk.npz": b"PK\x03\x04" + bytes(range(256)) * 4,
        "truncated.npz": good[: len(good) // 2],
        "no_images.npz": _zip({"labels.npy": _arr(np.array([0, 1]))}),
        "object_array.npz": _zip({"images.npy": _npy_bytes({"descr": "|O", "fortran_order": False,
                                                            "shape": (2,)}, b"\x80\x04N.")}),
        "float_images.npz": _zip({"images.npy": _arr(np.zeros((2, 4, 4, 3), np.float32))}),
        "huge_declared_shape.npz": _zip({"images.npy": _npy_bytes(
            {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**4, 10**4, 3)}, b"\x00" * 64)}),
        "huge_image.npz": _zip({"images.npy": _npy_bytes(
            {"descr": "|u1", "fortran_order": False, "shape": (1, 100_000, 100_000, 3)}, b"\x00" * 64)}),
        "five_channels.npz": _zip({"images.npy": _arr(np.zeros((2, 4, 4, 5), np.uint8))}),
        "labels_negative.npz": _zip({"images.npy": _arr(img), "labels.npy": _arr(np.array([0, -3]))}),
        "labels_beyond_names.npz": _zip({"images.npy": _arr(img), "labels.npy": _arr(np.array([0, 7])),
                                         "class_names.npy": _arr(np.array(["a", "b"]))}),
        "labels_wrong_length.npz": _zip({"images.npy": _arr(img), "labels.npy": _arr(np.array([0, 1, 1]))}),
        "labels_float.npz": _zip({"images.npy": _arr(img), "labels.npy": _arr(np.array([0.0, 1.0]))}),
        "header_lies_about_size.npz": _zip({"images.npy": _npy_bytes(
            {"descr": "|u1", "fortran_order": False, "shape": (50, 32, 32, 3)}, b"\x00" * 100)}),
        "bad_npy_magic.npz": _zip({"images.npy": b"\x93NUMPX\x01\x00garbage"}),
        "header_not_a_dict.npz": _zip({"images.npy": b"\x93NUMPY\x01\x00\x08\x00[1,2]  \n"}),
        "many_members.npz": _zip({f"m{i}.npy": _arr(np.zeros(1, np.uint8)) for i in range(100)}),
        "compressed_20gib_declared.npz": _zip({"images.npy": _npy_bytes(
            {"descr": "|u1", "fortran_order": False, "shape": (20 * 1024, 1024, 1024, 1)}, bytes(1 << 20))},
            compress=True),
    }


def _record() -> dict[str, object]:
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    return {
        "schema": "l2ood.run/2",
        "model": {"arch": "resnet18", "width": 2, "head": "l2", "num_classes": 3, "in_channels": 3,
                  "image_size": [16, 16], "mean": mean, "std": std, "class_names": None, "tau": None},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                  "schedule": "cosine", "warmup_epochs": 0.0, "pad": 2, "hflip": None, "seed": 0, "device": "cpu",
                  "precision": "fp32", "checkpoint_every_steps": 0, "sync_bn": False, "compile": False, "extra": {}},
        "data": {"train": None, "holdout": None, "test": None, "test_origin": "none", "n_train": 10,
                 "fingerprint": None},
        "preprocessing": {"decode": "pillow-8bit", "channels": 3, "size": [16, 16], "fit": "resize",
                          "resize": "bilinear-antialias", "mean": mean, "std": std},
        "provenance": {"l2ood": "0.2.0", "git_commit": None, "git_dirty": None, "torch": "2", "python": "3",
                       "runtime": "cpu / fp32", "world_size": 1, "created": ""},
        "history": [], "train_seconds": 1.0, "weights_sha256": "0" * 64, "calibrations": {}, "recipe": None,
        "upgraded_from": None,
    }


def records() -> dict[str, bytes]:
    base = _record()

    def variant(**changes: object) -> bytes:
        r = json.loads(json.dumps(base))
        for dotted, v in changes.items():
            node = r
            *parents, last = dotted.split("__")
            for p in parents:
                node = node[p]
            node[last] = v
        return json.dumps(r).encode()

    cal = {"detector": "feature_norm", "tpr": 0.95, "threshold": 1.0, "alpha": None, "scores": [1.0], "split": {}}
    return {
        "valid": json.dumps(base).encode(),
        "empty": b"",
        "not_json": b"{model: resnet}",
        "nan_token": json.dumps(base).replace('"train_seconds": 1.0', '"train_seconds": NaN').encode(),
        "infinity_threshold": json.dumps({**base, "calibrations": {"default": {**cal, "threshold": 1e999}}}).encode(),
        "deep_nesting": b"[" * 20_000 + b"]" * 20_000,
        "top_level_list": b"[]",
        "unknown_schema": variant(schema="l2ood.run/99"),
        "width_string": variant(model__width="16"),
        "width_huge": variant(model__width=10**9),
        "classes_huge": variant(model__num_classes=10**12),
        "image_size_3d": variant(model__image_size=[16, 16, 3], preprocessing__size=[16, 16, 3]),
        "std_zero": variant(model__std=[0.0, 0.25, 0.25], preprocessing__std=[0.0, 0.25, 0.25]),
        "arch_unknown": variant(model__arch="../../etc/passwd"),
        "head_unknown": variant(model__head="softmax"),
        "channels_five": variant(model__in_channels=5, preprocessing__channels=5),
        "preprocessing_mismatch": variant(preprocessing__size=[32, 32]),
        "epochs_negative": variant(train__epochs=-1),
        "lr_nan_string": variant(train__lr="nan"),
        "bad_op": variant(data__train={"spec": "npz:/x.npz", "split": "train", "root": None,
                                       "ops": [{"op": "rm -rf", "n": 1, "seed": 0}]}),
        "digest_short": variant(weights_sha256="abc"),
        "calibration_unsorted": variant(calibrations={"default": {**cal, "scores": [2.0, 1.0]}}),
        "calibration_tpr_big": variant(calibrations={"default": {**cal, "tpr": 7}}),
        "calibration_name_path": variant(calibrations={"../../x": cal}),
        "calibration_empty_scores": variant(calibrations={"default": {**cal, "scores": []}}),
        "extra_key": variant(surprise=1),
        "v1_without_model": json.dumps({"dataset": "mnist"}).encode(),
        "v1_model_garbage": json.dumps({"model": {"arch": 5, "width": []}, "dataset": "mnist"}).encode(),
        "binary_garbage": bytes(range(256)) * 8,
    }


def checkpoints() -> dict[str, bytes]:
    base = {"model": _record()["model"], "train": _record()["train"], "epoch": 1, "step_in_epoch": 0,
            "global_step": 5, "history": [], "tensors": "checkpoint-000000005.safetensors",
            "optimizer_param_groups": [{"params": [0, 1], "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}]}
    return {
        "empty": b"",
        "not_json": b"checkpoint",
        "path_traversal": json.dumps({**base, "tensors": "../../../etc/passwd"}).encode(),
        "epoch_string": json.dumps({**base, "epoch": "one"}).encode(),
        "negative_step": json.dumps({**base, "global_step": -5}).encode(),
        "lr_infinite": json.dumps({**base, "optimizer_param_groups": [{"params": [0], "lr": 1e999}]}).encode(),
        "no_groups": json.dumps({**base, "optimizer_param_groups": []}).encode(),
        "missing_tensor_file": json.dumps(base).encode(),
        "nan_token": json.dumps(base).replace('"global_step": 5', '"global_step": NaN').encode(),
        "list": b"[1, 2, 3]",
    }


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def images() -> dict[str, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "PNG")
    png = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buf, "JPEG")
    jpg = buf.getvalue()
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 200_000, 200_000, 8, 2, 0, 0, 0)) + \
        _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + _png_chunk(b"IEND", b"")
    zero = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)) + \
        _png_chunk(b"IEND", b"")
    return {
        "empty.png": b"",
        "text.png": b"not an image\n",
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "png_bomb_200000x200000.png": bomb,
        "png_zero_size.png": zero,
        "bad_crc.png": png[:29] + bytes(4) + png[33:],
        "jpeg_header_only.jpg": jpg[:20],
        "gif_header_only.gif": b"GIF89a\x01\x00\x01\x00",
        "zip_named_png.png": _zip({"a.txt": b"x"}),
        "html.jpg": b"<html><body>hello</body></html>",
    }


def imglists() -> dict[str, bytes]:
    return {
        "empty.txt": b"",
        "binary.txt": bytes(range(256)),
        "missing_files.txt": b"nope/a.png 0\nnope/b.png 1\n",
        "traversal.txt": b"../../../../etc/passwd 0\n",
        "bad_labels.txt": b"a.png cat\nb.png 1\n",
        "huge_label.txt": b"a.png 99999999999999999999999\n",
        "only_spaces.txt": b"   \n \n",
    }


def cifar() -> dict[str, bytes]:
    return {
        "empty/cifar-10-batches-bin/test_batch.bin": b"",
        "partial_record/cifar-10-batches-bin/test_batch.bin": bytes(3073 + 17),
        "label_out_of_range/cifar-10-batches-bin/test_batch.bin": bytes([200]) + bytes(3072),
    }


def main() -> None:
    for folder, files in (("npz", npz()), ("images", images()), ("imglist", imglists()), ("cifar", cifar())):
        for name, data in files.items():
            p = HERE / folder / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    for name, data in records().items():
        (HERE / "record" / name).mkdir(parents=True, exist_ok=True)
        (HERE / "record" / name / "model.json").write_bytes(data)
    for name, data in checkpoints().items():
        (HERE / "checkpoint" / name).mkdir(parents=True, exist_ok=True)
        (HERE / "checkpoint" / name / "checkpoint.json").write_bytes(data)
    print(f"wrote the corpus under {HERE}")


if __name__ == "__main__":
    main()
