"""Pack the data folder (DATA/) into a few lossless files that are easy to copy to a GPU machine, and unpack them.

DATA/ is the folder laid out as in docs/RESULTS-gpu.md ("Data layout"); ``pack`` reads it from ``--src``
(default: the environment variable ``L2OOD_DATA``). Raw, the data are 236 MB on disk (55 MB of CIFAR-10 JPEG
bytes in 60 000 files, 51 MB of npz packs). Packed, losslessly, into ``gpu_data/`` (ignored by git):

* ``cifar10_jpeg.npz``: the 60 000 JPEG files' bytes, concatenated, plus offsets and relative paths,
  zlib-compressed by ``numpy.savez_compressed``. Every 32×32 JPEG of the copy starts with the same
  ~610 header bytes (quantization and Huffman tables), which deflate removes: ≈ 18 MB. ``unpack`` re-creates
  the files byte for byte (SHA-256 checked), so the data set is the same ``imagefolder:`` tree and goes through
  l2ood's own reader and Pillow decode: still "CIFAR-10 (JPEG copy)".
* ``ood.npz``: every array of every ``*.npz`` pack, each xz-compressed (``lzma``, standard library);
  gray images stored as RGB (MNIST, Fashion-MNIST, scikit-image textures: R = G = B exactly) keep one
  channel and are re-expanded exactly. ≈ 38 MB (Tiny-ImageNet alone ≈ 24 MB). ``unpack`` re-writes each pack
  as an npz with identical arrays (SHA-256 of every array checked), read by l2ood's npz reader.
* ``manifest.json``: digests, sizes and the layout; ``SOURCES.md`` copied when DATA/ has one.
* ``wheels/``: pydantic and its dependencies for Python 3.12, for a GPU machine without network access whose
  Python lacks pydantic (``gpu_paper.sh`` installs them only then). Downloaded once with ``pip download``;
  ``--no-wheels`` skips them (not needed after ``pip install -e .``).

Nothing is dropped. ``--max-mib N`` (off by default) makes ``pack`` refuse to finish when the packed files plus
the git working tree exceed N MiB, for copying both to a machine with a transfer limit; ``size`` reports them.

    python benchmarks/gpu_pack.py pack --src DATA --no-wheels   # DATA/ -> gpu_data/
    python benchmarks/gpu_pack.py unpack gpu_data /tmp/l2ood-data  # gpu_paper.sh does this (or here, to test)
    python benchmarks/gpu_pack.py size [--max-mib N]           # working tree + gpu_data, in MiB
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACK_VERSION = 1
WHEELS = ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing_extensions==4.16.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
JPEG_DIR = "cifar10-jpeg"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _array_sha(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _tree_digest(entries: list[tuple[str, str]]) -> str:
    """One digest over (relative path, file SHA-256) pairs, in the given (sorted) order."""
    h = hashlib.sha256()
    for rel, sha in entries:
        h.update(f"{rel}\t{sha}\n".encode())
    return h.hexdigest()


def pack(src: Path, dst: Path, wheels: bool = True) -> dict:
    """Write ``dst/{cifar10_jpeg.npz, ood.npz, manifest.json, SOURCES.md, wheels/}`` from ``src``."""
    t0 = time.perf_counter()
    dst.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"version": PACK_VERSION, "source": str(src), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    jroot = src / JPEG_DIR
    files = sorted((p for p in jroot.rglob("*") if p.is_file()), key=lambda p: p.relative_to(jroot).parts)
    if not files:
        raise SystemExit(f"{jroot}: no files")
    blobs, rels, entries = [], [], []
    for f in files:
        b = f.read_bytes()
        rel = f.relative_to(jroot).as_posix()
        blobs.append(b)
        rels.append(rel)
        entries.append((rel, _sha(b)))
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    paths = np.frombuffer("\n".join(rels).encode(), dtype=np.uint8)
    np.savez_compressed(dst / "cifar10_jpeg.npz", blob=np.frombuffer(b"".join(blobs), dtype=np.uint8),
                        offsets=offsets, paths=paths)
    manifest["jpeg"] = {"dir": JPEG_DIR, "files": len(files), "bytes": int(offsets[-1]),
                        "tree_sha256": _tree_digest(entries)}
    ood: dict[str, np.ndarray] = {}
    packs: dict[str, dict] = {}
    for p in sorted(src.glob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        info: dict = {"file_sha256": _sha(p.read_bytes()), "arrays": {}}
        for k, a in arrays.items():
            gray = bool(k == "images" and a.ndim == 4 and a.shape[-1] == 3
                        and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
            stored = np.ascontiguousarray(a[..., 0]) if gray else np.ascontiguousarray(a)
            key = f"{p.stem}/{k}"
            ood[key] = np.frombuffer(lzma.compress(stored.tobytes(), preset=9 | lzma.PRESET_EXTREME), dtype=np.uint8)
            info["arrays"][k] = {"dtype": a.dtype.str, "shape": list(a.shape), "gray_to_rgb": gray,
                                 "sha256": _array_sha(a)}
        packs[p.name] = info
    np.savez(dst / "ood.npz", **ood)  # type: ignore[arg-type]
    manifest["npz"] = packs
    if (src / "SOURCES.md").is_file():
        shutil.copy(src / "SOURCES.md", dst / "SOURCES.md")
    if wheels:
        _download_wheels(dst / "wheels")
    manifest["pack_seconds"] = round(time.perf_counter() - t0, 1)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def ensure_excluded(names: tuple[str, ...] = ("/gpu_data/", "/gpu_tiny/")) -> None:
    """List the packed folder in .git/info/exclude (never committed)."""
    git_dir = ROOT / ".git"
    if not git_dir.is_dir():
        return
    exclude = git_dir / "info" / "exclude"
    have = exclude.read_text().splitlines() if exclude.is_file() else []
    missing = [n for n in names if n not in have]
    if missing:
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as f:
            f.write("".join(f"{n}\n" for n in missing))


def _download_wheels(folder: Path) -> None:
    have = {w.name.split("-")[0].lower().replace("_", "-") for w in folder.glob("*.whl")} if folder.is_dir() else set()
    need = [w for w in WHEELS if w.split("==")[0].lower().replace("_", "-") not in have]
    if not need:
        return
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)], "-d", str(folder), *need]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pip download failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}\n"
                         "rerun with network access, or pass --no-wheels (pydantic then comes from `pip install -e .`)")


def unpack(src: Path, dst: Path, verify: bool = True) -> dict:
    """Re-create the data root in ``dst`` (``cifar10-jpeg/`` tree byte for byte, npz packs with the same
    arrays, SOURCES.md); skipped when ``dst/.unpacked`` names the same manifest. Returns timings."""
    t0 = time.perf_counter()
    manifest_bytes = (src / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    stamp = dst / ".unpacked"
    if stamp.is_file() and stamp.read_text() == _sha(manifest_bytes):
        return {"skipped": True, "seconds": round(time.perf_counter() - t0, 2)}
    dst.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    with np.load(src / "cifar10_jpeg.npz", allow_pickle=False) as z:
        blob, offsets = z["blob"].tobytes(), z["offsets"]
        rels = z["paths"].tobytes().decode().split("\n")
    jroot = dst / manifest["jpeg"]["dir"]
    entries = []
    made: set[Path] = set()
    for i, rel in enumerate(rels):
        b = blob[offsets[i]:offsets[i + 1]]
        path = jroot / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(b)
        if verify:
            entries.append((rel, _sha(b)))
    if verify and _tree_digest(entries) != manifest["jpeg"]["tree_sha256"]:
        raise SystemExit("cifar10-jpeg: unpacked files differ from the packed tree (digest mismatch)")
    t_jpeg = time.perf_counter() - t0
    with np.load(src / "ood.npz", allow_pickle=False) as z:
        for name, info in manifest["npz"].items():
            arrays = {}
            for k, a in info["arrays"].items():
                raw = lzma.decompress(z[f"{Path(name).stem}/{k}"].tobytes())
                shape = a["shape"][:-1] if a["gray_to_rgb"] else a["shape"]
                arr = np.frombuffer(raw, dtype=np.dtype(a["dtype"])).reshape(shape)
                if a["gray_to_rgb"]:
                    arr = np.repeat(arr[..., None], 3, axis=-1)
                if verify and _array_sha(arr) != a["sha256"]:
                    raise SystemExit(f"{name}/{k}: unpacked array differs from the original (digest mismatch)")
                arrays[k] = arr
            buf = io.BytesIO()
            np.savez(buf, **arrays)  # type: ignore[arg-type]
            (dst / name).write_bytes(buf.getvalue())
    if (src / "SOURCES.md").is_file():
        shutil.copy(src / "SOURCES.md", dst / "SOURCES.md")
    stamp.write_text(_sha(manifest_bytes))
    return {"skipped": False, "jpeg_files": len(rels), "jpeg_seconds": round(t_jpeg, 2),
            "seconds": round(time.perf_counter() - t0, 2)}


def tree_bytes() -> int:
    """Bytes of the working tree: tracked files plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    total = 0
    for rel in out.decode("utf-8", "surrogateescape").split("\0"):
        p = ROOT / rel
        if rel and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def size_report(dst: Path, max_mib: float | None = None) -> dict:
    """Working tree + packed folder, in bytes; ``fits`` compares them with ``max_mib`` (None: no limit)."""
    tree, packed = tree_bytes(), folder_bytes(dst)
    files = {p.relative_to(dst).as_posix(): p.stat().st_size for p in sorted(dst.rglob("*")) if p.is_file()}
    limit = None if max_mib is None else int(max_mib * 2**20)
    return {"tree_bytes": tree, "packed_bytes": packed, "total_bytes": tree + packed, "limit_bytes": limit,
            "fits": limit is None or tree + packed < limit, "files": files}


def _default_src() -> str | None:
    return os.environ.get("L2OOD_DATA") or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="DATA/ -> gpu_data/")
    p.add_argument("--src", default=_default_src(),
                   help="the data folder DATA/ (default: $L2OOD_DATA; required when that is unset)")
    p.add_argument("--dst", default=str(ROOT / "gpu_data"))
    p.add_argument("--no-wheels", action="store_true", help="do not download the pydantic wheels")
    p.add_argument("--max-mib", type=float, default=None, metavar="N",
                   help="fail when the working tree plus the packed files exceed N MiB (default: no check)")
    # no size check is the default now; the flag is still accepted so that older command lines keep working
    p.add_argument("--no-size-check", action="store_true", help=argparse.SUPPRESS)
    u = sub.add_parser("unpack", help="gpu_data/ -> a data folder laid out like DATA/")
    u.add_argument("src")
    u.add_argument("dst")
    u.add_argument("--no-verify", action="store_true")
    s = sub.add_parser("size", help="the working tree plus gpu_data/, in MiB")
    s.add_argument("--dst", default=str(ROOT / "gpu_data"))
    s.add_argument("--max-mib", type=float, default=None, metavar="N", help="exit 1 when the total exceeds N MiB")
    args = ap.parse_args()
    if args.cmd == "pack":
        if not args.src:
            p.error("no data folder: pass --src DATA or set L2OOD_DATA (layout: docs/RESULTS-gpu.md, 'Data layout')")
        if Path(args.dst).resolve().parent == ROOT:
            ensure_excluded()
        m = pack(Path(args.src), Path(args.dst), wheels=not args.no_wheels)
        print(json.dumps({k: v for k, v in m.items() if k != "npz"}, indent=1))
        if args.max_mib is not None:
            rep = size_report(Path(args.dst), args.max_mib)
            mib = {k: round(v / 2**20, 2) for k, v in rep["files"].items()}
            print(json.dumps(mib, indent=1))
            print(f"tree {rep['tree_bytes'] / 2**20:.1f} MiB + packed {rep['packed_bytes'] / 2**20:.1f} MiB"
                  f" = {rep['total_bytes'] / 2**20:.1f} MiB of at most {args.max_mib:g} MiB")
            if not rep["fits"]:
                raise SystemExit(f"working tree + {args.dst} exceed --max-mib {args.max_mib:g}")
    elif args.cmd == "unpack":
        print(json.dumps(unpack(Path(args.src), Path(args.dst), verify=not args.no_verify)))
    else:
        rep = size_report(Path(args.dst), args.max_mib)
        print(json.dumps({k.replace("_bytes", "_mib"): (round(v / 2**20, 2) if isinstance(v, int)
                                                         and not isinstance(v, bool) else v)
                          for k, v in rep.items() if k != "files"}, indent=1))
        sys.exit(0 if rep["fits"] else 1)


if __name__ == "__main__":
    main()
