"""The review page: a self-contained HTML page for people checking what a screen flagged.

It shows the score histogram of the calibration (held-out ID) images and of the screened inputs with the
threshold, then thumbnails of the flagged inputs sorted by score (most out-of-distribution first) with
their path, score and p-value, and the inputs that could not be read. Everything is inline (SVG
histogram, PNG thumbnails as data URIs, a few lines of CSS and script): no CDN, works offline, can be
mailed. Used by ``l2ood screen --html`` and served by ``l2ood serve`` at ``/review``.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

THUMB_PX = 96


@dataclass
class Flagged:
    score: float
    path: str
    index: int | None
    p_value: float | None
    pred_name: str | None
    thumb_png: bytes | None


def thumbnail_png(image: np.ndarray | Any, size: int = THUMB_PX) -> bytes:
    """A PNG thumbnail (longest side ``size``) of a uint8 array ``(H, W)``, ``(H, W, C)`` or a tensor ``(C, H, W)``."""
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    im = Image.fromarray(a.astype(np.uint8))
    im.thumbnail((size, size), Image.Resampling.LANCZOS if max(im.size) > size else Image.Resampling.NEAREST)
    if max(im.size) < size:  # small model-size inputs: scale up without blurring
        f = max(1, size // max(im.size))
        im = im.resize((im.size[0] * f, im.size[1] * f), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True)
    return buf.getvalue()


class ReviewCollector:
    """Collects screen records for the page: all scores, the ``max_thumbs`` lowest-scoring flagged inputs
    (thumbnails made only for those kept), and up to ``max_errors`` unreadable inputs. Memory is bounded
    by ``max_thumbs`` thumbnails plus one float per screened image."""

    def __init__(self, max_thumbs: int = 200, max_errors: int = 200) -> None:
        self.max_thumbs, self.max_errors = max_thumbs, max_errors
        self.scores: list[float] = []
        self.n_out = 0
        self.errors: list[tuple[str, str]] = []
        self.n_errors = 0
        self._heap: list[tuple[float, int, Flagged]] = []  # max-heap on score via negation
        self._count = itertools.count()

    def add(self, rec: dict[str, Any], thumb: Callable[[], bytes | None] | None = None) -> None:
        if rec["status"] != "ok":
            self.n_errors += 1
            if len(self.errors) < self.max_errors:
                self.errors.append((self._name(rec), str(rec.get("error"))))
            return
        s = float(rec["score"])
        self.scores.append(s)
        if rec.get("verdict") != "out":
            return
        self.n_out += 1
        if len(self._heap) >= self.max_thumbs and -self._heap[0][0] <= s:
            return  # not among the lowest max_thumbs scores: no thumbnail is made
        png = None
        if thumb is not None:
            try:
                png = thumb()
            except Exception:  # a thumbnail is a courtesy; the record itself is already written
                png = None
        item = Flagged(s, str(rec["path"]), rec.get("index"), rec.get("p_value"), rec.get("pred_name"), png)
        entry = (-s, next(self._count), item)
        if len(self._heap) < self.max_thumbs:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    @staticmethod
    def _name(rec: dict[str, Any]) -> str:
        return f"{rec['path']}[{rec['index']}]" if rec.get("index") is not None else str(rec["path"])

    @property
    def flagged(self) -> list[Flagged]:
        """Kept flagged inputs, most out-of-distribution (lowest score) first."""
        return [e[2] for e in sorted(self._heap, key=lambda e: (-e[0], e[1]))]

    def html(self, *, calibration_scores: list[float] | None, threshold: float | None, rule: str, title: str,
             subtitle: str = "") -> str:
        return render_review(self, calibration_scores=calibration_scores, threshold=threshold, rule=rule,
                             title=title, subtitle=subtitle)


def _histogram_svg(cal: np.ndarray, screened: np.ndarray, threshold: float | None, w: int = 760,
                   h: int = 240) -> str:
    vals = np.concatenate([a for a in (cal, screened) if a.size]) if (cal.size or screened.size) else np.zeros(1)
    lo, hi = float(np.percentile(vals, 0.5)), float(np.percentile(vals, 99.5))
    if threshold is not None and math.isfinite(threshold):
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 1.0, hi + 1.0
    bins = np.linspace(lo, hi, 41)
    ml, mr, mt, mb = 48, 12, 12, 36
    pw, ph = w - ml - mr, h - mt - mb

    def dens(a: np.ndarray) -> np.ndarray:
        if not a.size:
            return np.zeros(len(bins) - 1)
        c, _ = np.histogram(np.clip(a, lo, hi), bins=bins)
        return c / max(1, c.sum())

    dc, ds = dens(cal), dens(screened)
    top = max(float(dc.max(initial=0)), float(ds.max(initial=0)), 1e-9)

    def x(v: float) -> float:
        return ml + (v - lo) / (hi - lo) * pw

    def path(d: np.ndarray) -> str:
        pts = [f"{x(bins[0]):.1f},{mt + ph:.1f}"]
        for i, v in enumerate(d):
            y = mt + ph - v / top * ph
            pts += [f"{x(bins[i]):.1f},{y:.1f}", f"{x(bins[i + 1]):.1f},{y:.1f}"]
        pts.append(f"{x(bins[-1]):.1f},{mt + ph:.1f}")
        return " ".join(pts)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="score histogram">',
             f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    if cal.size:
        parts.append(f'<polygon class="cal" points="{path(dc)}" fill="#1f77b4" fill-opacity="0.35" '
                     'stroke="#1f77b4"/>')
    if screened.size:
        parts.append(f'<polygon class="screened" points="{path(ds)}" fill="#ff7f0e" fill-opacity="0.35" '
                     'stroke="#ff7f0e"/>')
    if threshold is not None and math.isfinite(threshold):
        parts.append(f'<line x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="{mt}" y2="{mt + ph}" '
                     'stroke="#d62728" stroke-width="2" stroke-dasharray="5,3"/>')
        parts.append(f'<text x="{x(threshold) + 4:.1f}" y="{mt + 14}" font-size="12" fill="#d62728">threshold '
                     f'{threshold:.4g}</text>')
    for v in np.linspace(lo, hi, 6):
        parts.append(f'<text x="{x(v):.1f}" y="{h - 18}" font-size="11" text-anchor="middle">{v:.3g}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{h - 3}" font-size="12" text-anchor="middle">score (higher = more '
                 'in-distribution)</text>')
    parts.append(f'<text x="12" y="{mt + ph / 2:.1f}" font-size="12" transform="rotate(-90 12 {mt + ph / 2:.1f})" '
                 'text-anchor="middle">fraction</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} .sub{color:#666;margin:0 0 16px} .stats span{margin-right:18px}
.legend span{display:inline-block;margin-right:16px} .sw{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:middle} .grid{display:flex;flex-wrap:wrap;gap:10px}
figure.card{margin:0;width:132px;border:1px solid #ddd;border-radius:6px;padding:6px;background:#fff}
figure.card img{width:120px;height:120px;object-fit:contain;image-rendering:pixelated;background:#eee}
figcaption{font-size:11px;word-break:break-all} .score{font-weight:600} table{border-collapse:collapse;
font-size:12px} td,th{border:1px solid #ddd;padding:3px 6px;text-align:left}
"""


def render_review(col: ReviewCollector, *, calibration_scores: list[float] | None, threshold: float | None,
                  rule: str, title: str, subtitle: str = "") -> str:
    """The page as one HTML string (see the module doc)."""
    cal = np.asarray(calibration_scores or [], dtype=np.float64)
    scr = np.asarray(col.scores, dtype=np.float64)
    flagged = col.flagged
    cards = []
    for f in flagged:
        src = ("data:image/png;base64," + base64.b64encode(f.thumb_png).decode()) if f.thumb_png else ""
        name = f"{f.path}[{f.index}]" if f.index is not None else f.path
        p = "" if f.p_value is None else f" · p {f.p_value:.3g}"
        pred = "" if not f.pred_name else f" · {html.escape(f.pred_name)}"
        img = (f'<img class="thumb" alt="{html.escape(name)}" src="{src}">' if src
               else '<div class="thumb missing">no preview</div>')
        cards.append(f'<figure class="card">{img}<figcaption><span class="score">{f.score:.4g}</span>{p}{pred}'
                     f'<br>{html.escape(name)}</figcaption></figure>')
    more = col.n_out - len(flagged)
    errors = "".join(f"<tr><td>{html.escape(p)}</td><td>{html.escape(e)}</td></tr>" for p, e in col.errors)
    n_ok = len(col.scores)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>
<p class="stats"><span><b>{n_ok}</b> screened</span><span><b>{col.n_out}</b> flagged out-of-distribution</span>
<span><b>{n_ok - col.n_out}</b> in-distribution</span><span><b>{col.n_errors}</b> unreadable</span></p>
<p>Rule: {html.escape(rule)}</p>
<p class="legend"><span><i class="sw" style="background:#1f77b4"></i>calibration (held-out ID,
n = {cal.size})</span><span><i class="sw" style="background:#ff7f0e"></i>screened inputs (n = {n_ok})</span>
<span><i class="sw" style="background:#d62728"></i>threshold</span></p>
{_histogram_svg(cal, scr, threshold)}
<h2>Flagged inputs, most out-of-distribution first</h2>
<div class="grid" id="flagged">{"".join(cards) or "<p>Nothing was flagged.</p>"}</div>
{f"<p>… and {more} more flagged inputs (the page keeps the {len(flagged)} lowest scores).</p>" if more > 0 else ""}
<h2>Unreadable inputs</h2>
{f"<table><tr><th>input</th><th>reason</th></tr>{errors}</table>" if errors else "<p>None.</p>"}
<script>document.body.dataset.thumbs = String(document.querySelectorAll("img.thumb").length);</script>
</body></html>
"""
