"""Compare two bench ``results.csv`` files row by row: which AUROCs / FPR95s moved, by how much.

Usage::

    python benchmarks/compare_results.py OLD.csv NEW.csv [--metric auroc] [--min 1e-4] [--doc FILE --title T]

Rows are matched on (arch, variant, seed, detector, ood). Prints the largest absolute change, the number of rows
that moved more than ``--min`` (in the metric's own units, AUROC as a fraction) and, per detector, the mean and
largest change and the mean over seeds of the group (near/far) values before and after. With ``--doc`` the same
table is written as a markdown section (replacing an earlier section with the same title).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path

KEY = ("arch", "variant", "seed", "detector", "ood")


def _read(path: Path) -> dict[tuple[str, ...], dict[str, str]]:
    with path.open(newline="") as f:
        return {tuple(r[k] for k in KEY): r for r in csv.DictReader(f)}


def compare(old: Path, new: Path, metric: str = "auroc", tol: float = 1e-4) -> tuple[str, dict[str, float]]:
    """Markdown report of the per-row changes of ``metric`` from ``old`` to ``new`` and summary figures."""
    a, b = _read(old), _read(new)
    common = sorted(set(a) & set(b))
    only_old, only_new = len(set(a) - set(b)), len(set(b) - set(a))
    delta = {k: 100 * (float(b[k][metric]) - float(a[k][metric])) for k in common}
    moved = {k: d for k, d in delta.items() if abs(d) > 100 * tol}
    by_det: dict[tuple[str, str], list[float]] = defaultdict(list)
    for k, d in delta.items():
        by_det[(k[1], k[3])].append(d)
    # group means (near / far) per (variant, detector), mean over seeds, before and after
    grp: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: {"old": [], "new": []})
    per_seed: dict[tuple[str, str, str, str], dict[str, list[float]]] = defaultdict(lambda: {"old": [], "new": []})
    for k in common:
        g = a[k]["group"]
        per_seed[(k[1], k[3], g, k[2])]["old"].append(float(a[k][metric]))
        per_seed[(k[1], k[3], g, k[2])]["new"].append(float(b[k][metric]))
    for (v, det, g, _s), d in per_seed.items():
        grp[(v, det, g)]["old"].append(100 * statistics.mean(d["old"]))
        grp[(v, det, g)]["new"].append(100 * statistics.mean(d["new"]))
    lines = [f"Rows compared: {len(common)} (only in old: {only_old}, only in new: {only_new}). "
             f"{metric} in %; rows that moved by more than {100 * tol:g} points: {len(moved)}; largest change: "
             f"{max((abs(d) for d in delta.values()), default=0.0):.4f} points.", ""]
    changed = sorted({(k[1], k[3]) for k in moved})
    if changed:
        lines += [f"| variant | detector | rows moved | mean change | largest change | near {metric} before → after "
                  f"| far {metric} before → after |", "|---|---|---|---|---|---|---|"]
        for v, det in changed:
            ds = by_det[(v, det)]
            n_moved = sum(1 for k in moved if (k[1], k[3]) == (v, det))
            cells = []
            for g in ("near", "far"):
                o, n = grp[(v, det, g)]["old"], grp[(v, det, g)]["new"]
                cells.append(f"{statistics.mean(o):.2f} ± {_sd(o):.2f} → {statistics.mean(n):.2f} ± {_sd(n):.2f}")
            lines.append(f"| {v} | {det} | {n_moved}/{len(ds)} | {statistics.mean(ds):+.3f} | "
                         f"{max(ds, key=abs):+.3f} | {cells[0]} | {cells[1]} |")
    summary = {"rows": float(len(common)), "moved": float(len(moved)),
               "max_abs": max((abs(d) for d in delta.values()), default=0.0)}
    return "\n".join(lines), summary


def _sd(x: list[float]) -> float:
    return statistics.stdev(x) if len(x) > 1 else 0.0


def _write_section(doc: Path, title: str, body: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    head = f"## {title}\n"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + text[nxt + 1:] if nxt != -1 else text[:start]
    doc.write_text(text.rstrip("\n") + f"\n\n{head}\n{body}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--metric", default="auroc", choices=["auroc", "fpr95", "fpr95_ood_pos", "aupr_in", "aupr_out"])
    p.add_argument("--min", type=float, default=1e-4, help="a row 'moved' when |change| exceeds this (fraction)")
    p.add_argument("--doc", type=Path, help="markdown file to write the section into")
    p.add_argument("--title", default="Which numbers moved")
    p.add_argument("--intro", default="", help="text put before the table")
    args = p.parse_args()
    body, _ = compare(args.old, args.new, args.metric, args.min)
    print(body)
    if args.doc:
        _write_section(args.doc, args.title, (args.intro + "\n\n" if args.intro else "") + body)


if __name__ == "__main__":
    main()
