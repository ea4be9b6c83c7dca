"""Screen image files with an exported l2ood model, with onnxruntime, numpy and Pillow only (no torch, no l2ood).

    l2ood export RUN -o screen.onnx --calibration default     # the model and its calibrated screen, one file
    python examples/onnx_screen_client.py screen.onnx PHOTOS/ more.png [--jsonl]
    python examples/onnx_screen_client.py --small             # trains, calibrates and exports a tiny run first

Extra: ``onnxruntime`` (``pip install 'l2ood[export]'``, or on a serving machine without l2ood
``pip install onnxruntime numpy pillow``); ``--small`` also needs l2ood, which it runs as a separate program.

The client reads the preprocessing from the model's metadata (``l2ood.preprocessing``) and reproduces what l2ood
does (``l2ood.data.preprocess``, ``l2ood.data.transforms``): Pillow decodes the first frame to 8-bit gray or RGB
(16-bit and float images scaled, palette and alpha images composited on white); channels are converted in float32
(RGB → gray by BT.601 luma ``0.299 R + 0.587 G + 0.114 B``, gray → RGB by repetition); the image is resized with
torch's antialiased bilinear filter, computed here term by term in float32 as torch computes it (the same weights,
the taps summed with fused multiply-adds as torch's x86-64 CPU kernels do; width first, then height; an axis whose
size does not change is not resampled), for the fit the metadata names: ``resize``
(stretch to the model size), ``crop`` (shorter side to the model size, centre crop) or ``imagenet`` (shorter
side to size/0.875, centre crop); rounded half to even to uint8 and scaled to [0, 1]. Any other decoder, resize
method or fit is refused. It prints, per file: the class, the score, the conformal p-value and the verdict
(``out`` = out of distribution), as ``l2ood screen`` does; with ``--jsonl`` one JSON object per line. (l2ood's
decode budget, which refuses files whose structure implies excessive decoding work, is not reproduced here: keep
untrusted uploads behind ``l2ood serve`` or check them first.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

try:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image
except ImportError as _missing:  # the one clear message, not a traceback
    print(f"onnx_screen_client needs numpy, Pillow and onnxruntime ({_missing.name} is missing): "
          "pip install 'l2ood[export]' (or: pip install onnxruntime numpy pillow)", file=sys.stderr)
    raise SystemExit(2) from None

FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF")  # what l2ood decodes
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
DECODER, RESIZE = "pillow-8bit", "bilinear-antialias"  # the only preprocessing this client reproduces
FITS = {"resize": ("stretch", 1.0), "crop": ("shorter-side", 1.0), "imagenet": ("shorter-side", 0.875)}
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as float32 like l2ood's
MAX_PIXELS = 40_000_000  # l2ood's default decompression-bomb guard
F32 = np.float32


class Refused(Exception):
    """Something this client cannot do the way l2ood does it: the message is shown, then exit status 2."""


# ------------------------------------------------------------------------------------------------ decoding
def to_8bit(im: Image.Image) -> np.ndarray:
    """Any Pillow image → uint8 (H, W) gray or (H, W, 3) RGB (l2ood.data.preprocess._to_8bit)."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max(initial=0) > 255 or mode.startswith("I;16") else 255.0
        return np.clip(np.round(a * 255.0 / hi), 0, 255).astype(np.uint8)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode == "P":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return np.asarray(out.convert("L") if mode in ("LA", "La") else out)
    if mode == "L":
        return np.asarray(im)
    return np.asarray(im.convert("RGB"))


def decode(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The first frame of an image file as uint8 (H, W) or (H, W, 3); ``ValueError`` with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ValueError(f"image too large: {w}×{h} pixels > {max_pixels}")
                im.load()
                return to_8bit(im)
    except ValueError:
        raise
    except Exception as e:  # Pillow raises many types for bad files
        raise ValueError(f"cannot decode: {e}") from None


# ------------------------------------------------------------------------------------------------ resizing
def aa_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index (out, m), weight (out, m))`` of torch's antialiased bilinear resampling of one axis, computed in
    float32 with torch's promotions (``_compute_indices_min_size_weights_aa`` for float input; padded taps have
    weight 0 and index 0)."""
    scale = F32(F32(n_in) / F32(n_out))
    support = scale if scale >= 1.0 else F32(1.0)  # interp_size / 2 = 1 for bilinear
    invscale = F32(1.0 / float(scale)) if scale >= 1.0 else F32(1.0)
    m = math.ceil(float(support)) * 2 + 1
    idx = np.zeros((n_out, m), dtype=np.int64)
    wts = np.zeros((n_out, m), dtype=np.float32)
    for i in range(n_out):
        center = F32(float(scale) * (i + 0.5))
        xmin = max(int(float(F32(center - support)) + 0.5), 0)
        xsize = min(int(float(F32(center + support)) + 0.5), n_in) - xmin
        xsize = min(max(xsize, 0), m)
        total = F32(0.0)
        w = np.zeros(m, dtype=np.float32)
        for j in range(xsize):
            d = F32(F32(j + xmin) - center)
            x = abs(F32((float(d) + 0.5) * float(invscale)))
            w[j] = F32(1.0) - x if x < 1.0 else F32(0.0)
            total = F32(total + w[j])
        if total != 0.0:
            w = (w / total).astype(np.float32)
        idx[i, :xsize] = np.arange(xmin, xmin + xsize)
        wts[i] = w
    return idx, wts


def resample_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Antialiased bilinear resampling of float32 ``x`` along ``axis`` to ``n_out``: ``t = x_0·w_0``, then
    ``t = fma(x_j, w_j, t)`` tap by tap, as torch's CPU kernel computes it (its x86-64 builds fuse the multiply and
    the add; a float32 product is exact in float64, so the float64 sum rounded to float32 is the fused result)."""
    idx, w = aa_weights(x.shape[axis], n_out)
    x = np.moveaxis(x, axis, -1)
    acc = x[..., idx[:, 0]] * w[:, 0]
    w64 = w.astype(np.float64)
    for j in range(1, idx.shape[1]):
        acc = (acc.astype(np.float64) + x[..., idx[:, j]].astype(np.float64) * w64[:, j]).astype(np.float32)
    return np.moveaxis(acc, -1, axis)


def resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """``F.interpolate(x, (h, w), mode="bilinear", antialias=True)`` of float32 (C, H, W): width, then height."""
    if x.shape[2] != w:
        x = resample_axis(x, 2, w)
    if x.shape[1] != h:
        x = resample_axis(x, 1, h)
    return x


def crop_geometry(h: int, w: int, size: tuple[int, int], crop_pct: float) -> tuple[tuple[int, int], int, int]:
    """Shorter side → ``round(max(size)/crop_pct)``, then the centre ``size`` (l2ood.data.transforms)."""
    th, tw = size
    s = round(max(th, tw) / crop_pct)
    nh, nw = (int(s * h / w), s) if w <= h else (s, int(s * w / h))
    nh, nw = max(nh, th), max(nw, tw)
    return (nh, nw), round((nh - th) / 2), round((nw - tw) / 2)


class Preprocess:
    """The preprocessing named in the model's metadata; refuses (:class:`Refused`) what it cannot reproduce."""

    def __init__(self, meta: dict[str, Any]) -> None:
        if meta.get("decode") != DECODER or meta.get("resize") != RESIZE:
            raise Refused(f"the model's images are decoded by {meta.get('decode')!r} and resized by "
                          f"{meta.get('resize')!r}; this client reproduces only {DECODER!r} with {RESIZE!r}")
        fit = meta.get("fit")
        if fit not in FITS:
            raise Refused(f"unknown fit {fit!r}: this client reproduces {', '.join(FITS)}")
        mode, pct = FITS[fit]
        if meta.get("resize_mode", mode) != mode or float(meta.get("crop_pct", pct)) != pct:
            raise Refused(f"fit {fit!r} with resize_mode {meta.get('resize_mode')!r} and crop_pct "
                          f"{meta.get('crop_pct')!r} is not l2ood's {fit!r} ({mode}, {pct})")
        self.channels = int(meta["channels"])
        if self.channels not in (1, 3):
            raise Refused(f"the model takes {self.channels} channels; l2ood models take 1 or 3")
        self.size = (int(meta["size"][0]), int(meta["size"][1]))
        self.mode, self.crop_pct = mode, pct

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W) or (H, W, 3) → uint8 (channels, *size): l2ood.data.transforms.convert_format."""
        a = image[None] if image.ndim == 2 else np.transpose(image, (2, 0, 1))
        c, h, w = a.shape
        if c == self.channels and (h, w) == self.size and self.crop_pct == 1.0:
            return np.ascontiguousarray(a)
        x = a.astype(np.float32)
        if c == 3 and self.channels == 1:
            x = (x[0] * LUMA[0] + x[1] * LUMA[1] + x[2] * LUMA[2])[None]  # channel by channel, in float32
        elif c == 1 and self.channels == 3:
            x = np.repeat(x, 3, axis=0)
        if self.mode == "shorter-side" and ((h, w) != self.size or self.crop_pct != 1.0):
            (nh, nw), top, left = crop_geometry(h, w, self.size, self.crop_pct)
            if (nh, nw) != (h, w):
                x = resize(x, nh, nw)
            x = x[:, top : top + self.size[0], left : left + self.size[1]]
        elif (h, w) != self.size:
            x = resize(x, *self.size)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ screening
def discover(paths: list[str]) -> list[str]:
    """Files as given; folders walked (sorted), keeping image suffixes."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(SUFFIXES)]
        else:
            out.append(p)
    return out


class ScreenModel:
    """An exported l2ood model: its metadata, its preprocessing and an onnxruntime session."""

    def __init__(self, path: str) -> None:
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "l2ood.preprocessing" not in meta:
            raise Refused(f"{path} has no l2ood metadata: export it with `l2ood export RUN`")
        self.meta = {k: json.loads(v) for k, v in meta.items() if k.startswith("l2ood.")}
        self.preprocess = Preprocess(self.meta["l2ood.preprocessing"])
        self.class_names: list[str] | None = self.meta.get("l2ood.class_names")
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "score" not in self.outputs:
            raise Refused(f"{path} has no 'score' output: export it again with this version of l2ood")

    def screen(self, files: list[str], batch_size: int = 64) -> list[dict[str, Any]]:
        """One record per file, in order: class, score, p-value, verdict (or the error)."""
        recs: list[dict[str, Any]] = []
        for s in range(0, len(files), batch_size):
            chunk = files[s : s + batch_size]
            ok, errors = [], {}
            for f in chunk:
                try:
                    ok.append((f, self.preprocess(decode(f))))
                except (ValueError, OSError) as e:
                    errors[f] = str(e)
            got: dict[str, np.ndarray] = {}
            if ok:
                x = np.stack([a for _, a in ok]).astype(np.float32) / F32(255.0)
                got = dict(zip(self.outputs, self.session.run(None, {"images": x}), strict=True))
            row = {f: i for i, (f, _) in enumerate(ok)}
            for f in chunk:
                if f in errors:
                    recs.append({"path": f, "status": "error", "error": errors[f]})
                    continue
                i = row[f]
                score = float(got["score"][i])
                if not math.isfinite(score):
                    recs.append({"path": f, "status": "error", "error": "non-finite score; no verdict (fail closed)"})
                    continue
                c = int(got["logits"][i].argmax())
                recs.append({
                    "path": f, "status": "ok", "class": c,
                    "class_name": self.class_names[c] if self.class_names and c < len(self.class_names) else None,
                    "score": score, "p_value": float(got["p_value"][i]) if "p_value" in got else None,
                    "verdict": ("out" if got["verdict"][i] else "in") if "verdict" in got else None,
                })
        return recs


def small_model(folder: Path) -> tuple[str, list[str]]:
    """Train, calibrate and export a tiny run with the l2ood command line (a separate program), and write a few
    images to screen; returns the model path and the image paths."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _data import gratings, noise, write_folder

    data = write_folder(folder / "train_photos")
    run, model = folder / "run", folder / "screen.onnx"
    py = [sys.executable, "-m", "l2ood"]
    for args in (["train", "--dataset", f"imagefolder:{data}", "--epochs", "8", "--width", "8", "--holdout", "40",
                  "--out", str(run), "--no-progress"], ["calibrate", str(run), "--no-progress"],
                 ["export", str(run), "-o", str(model), "--verify-n", "60"]):
        subprocess.run([*py, *args], check=True)
    files = []
    for name, imgs in (("photo", gratings(4, seed=9)[0]), ("odd", noise(4))):
        for i, a in enumerate(imgs):
            files.append(str(folder / f"{name}_{i}.png"))
            Image.fromarray(a).save(files[-1])
    return str(model), files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="an ONNX file written by `l2ood export`")
    ap.add_argument("images", nargs="*", help="image files or folders")
    ap.add_argument("--jsonl", action="store_true", help="one JSON object per file instead of a table")
    ap.add_argument("--small", action="store_true", help="make a tiny model with l2ood first (needs l2ood)")
    args = ap.parse_args(argv)
    model, images = args.model, args.images
    if args.small or model is None:
        model, images = small_model(Path(tempfile.mkdtemp(prefix="l2ood-onnx-client-")))
    try:
        screen = ScreenModel(model)
    except Refused as e:
        print(f"onnx_screen_client: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnxruntime's errors for a missing or broken file
        print(f"onnx_screen_client: cannot load {model}: {str(e).splitlines()[0] if str(e) else e}", file=sys.stderr)
        return 2
    screen_meta = screen.meta.get("l2ood.screen") or {}
    if not args.jsonl:
        print(f"model {model}: {screen_meta.get('rule') or 'not calibrated: scores only (no verdict)'}")
    for rec in screen.screen(discover(images)):
        if args.jsonl:
            print(json.dumps(rec, allow_nan=False))
        elif rec["status"] != "ok":
            print(f"{rec['path']}  error: {rec['error']}")
        else:
            p = "-" if rec["p_value"] is None else f"{rec['p_value']:.4f}"
            print(f"{rec['path']}  class {rec['class_name'] or rec['class']}  score {rec['score']:.6g}  p {p}  "
                  f"{rec['verdict'] or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
