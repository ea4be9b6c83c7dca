"""``l2ood analyze``: plots and verdicts from tracked runs (L2 vs CE on the same axes).

Claims checked, from the numbers alone (Haas, Yolland & Rabus, TMLR 2024):

(a) ‖z‖ separates ID from OoD better after L2 training than after CE training: final-epoch AUROC of
    the feature norm, L2 vs CE, per OoD set (mean over runs of the same head).
(b) L2 reaches the CE model's final AUROC in fewer epochs: the first tracked epoch at which the L2
    runs' mean AUROC (averaged over OoD sets) is ≥ the CE runs' final mean AUROC.
(c) NC metrics differ between L2 and CE: final-epoch values; a metric "differs" when the relative
    difference |L2 − CE| / max(|L2|, |CE|) exceeds 25 % (a threshold we state, not a test).

With several runs (seeds) per head, curves and tables show mean ± standard deviation over runs, and a
difference counts in (a) and (c) only when it also exceeds the seed spread
sqrt(sd_L2² + sd_CE²); smaller differences are reported as "within seed spread".
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

from .. import jsonio
from ..errors import ConfigError
from ..provenance import code_version
from ..record import read_record
from ..runfolder import META, TRACK_DIR, TRACK_LOG

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

NC_KEYS = ("nc1", "nc2_equinorm", "nc2_equiangularity", "nc3", "nc4")
COLORS = {"l2": "tab:blue", "ce": "tab:red", "t2fnorm": "tab:green", "logitnorm": "tab:purple"}
DIFF_THRESHOLD = 0.25


def load_track(run: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(head, records)`` of a tracked run; clear errors for untracked folders."""
    run = Path(run)
    track_p = run / TRACK_LOG
    if not track_p.is_file():
        raise ConfigError(f"{run}: no track.jsonl — train with `l2ood train --track every=K`")
    head = read_record(run).model.head if (run / META).is_file() else "?"
    recs = [json.loads(line) for line in track_p.read_text().splitlines() if line.strip()]
    if not recs:
        raise ConfigError(f"{run}: track.jsonl is empty")
    return head, recs


def _series(recs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    ep = np.array([r["epoch"] for r in recs])
    if key == "auroc_mean":
        v = np.array([np.mean([o["auroc"] for o in r["ood"].values()]) for r in recs])
    elif key.startswith("auroc:"):
        v = np.array([r["ood"][key[6:]]["auroc"] for r in recs])
    elif key == "test_acc":
        v = np.array([r["test_acc"] for r in recs], dtype=float)
    else:
        v = np.array([r["nc"][key] for r in recs])
    return ep, v


Loaded = list[tuple[str, str, list[dict[str, Any]]]]  # (run path, head, track records)


def _mean_by_head(runs: Loaded, key: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Per head: ``(epochs tracked by all its runs, mean, std over runs, number of runs)``."""
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for _, head, recs in runs:
        groups[head].append(_series(recs, key))
    out = {}
    for head, ss in groups.items():
        common = sorted(set.intersection(*[set(e.tolist()) for e, _ in ss]))
        vals = np.array([[v[list(e).index(c)] for c in common] for e, v in ss])
        out[head] = (np.array(common), vals.mean(0), vals.std(0, ddof=1) if len(ss) > 1 else 0 * vals[0], len(ss))
    return out


def _pm(mean: float, sd: float, n: int, scale: float = 1.0, fmt: str = ".2f") -> str:
    return f"{scale * mean:{fmt}}" + (f" ± {scale * sd:{fmt}}" if n > 1 else "")


def _plot_heads(ax: Any, loaded: Loaded, key: str, scale: float = 1.0) -> None:
    """One line per head: the run itself, or the mean over runs with a ±1 std band."""
    for head, (ep, mean, sd, n) in _mean_by_head(loaded, key).items():
        color = COLORS.get(head)
        label = head.upper() + (f" (mean ± sd, {n} runs)" if n > 1 else "")
        ax.plot(ep, scale * mean, "-o", ms=3, color=color, label=label)
        if n > 1:
            ax.fill_between(ep, scale * (mean - sd), scale * (mean + sd), color=color, alpha=0.2)


def analyze(runs: list[str | Path], out_dir: str | Path, hist_epochs: list[int] | None = None) -> Path:
    """Write ``nc.png``, ``auroc.png``, ``norm_hist.png``, ``analysis.md`` (with verdicts) and
    ``analysis.json`` (the numbers behind the verdicts)."""
    out = Path(out_dir)
    loaded = [(str(r), *load_track(r)) for r in runs]  # inputs checked before anything is created
    out.mkdir(parents=True, exist_ok=True)
    ood_sets = list(loaded[0][2][-1]["ood"])

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, key in zip(axes.flat, (*NC_KEYS, "test_acc"), strict=True):
        _plot_heads(ax, loaded, key)
        if key == "nc1":
            ax.set_yscale("log")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "nc.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(ood_sets), figsize=(4 * len(ood_sets), 3.4), squeeze=False)
    for ax, s in zip(axes[0], ood_sets, strict=True):
        _plot_heads(ax, loaded, f"auroc:{s}", scale=100)
        ax.set_title(f"feature-norm AUROC vs {s}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("AUROC (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "auroc.png", dpi=100)
    plt.close(fig)

    # histograms at chosen epochs (default: first and last tracked), one row per head (its first run)
    eps = hist_epochs or sorted({loaded[0][2][0]["epoch"], loaded[0][2][-1]["epoch"]})
    first_by_head: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
    for run in loaded:
        first_by_head.setdefault(run[1], run)
    firsts = list(first_by_head.values())
    fig, axes = plt.subplots(len(firsts), len(eps), figsize=(4.2 * len(eps), 2.8 * len(firsts)), squeeze=False)
    for i, (name, head, _) in enumerate(firsts):
        for j, e in enumerate(eps):
            ax = axes[i][j]
            f = Path(name) / TRACK_DIR / f"epoch-{e:04d}.npz"
            if not f.is_file():
                ax.set_title(f"{head.upper()} epoch {e}: not tracked", fontsize=8)
                continue
            with np.load(f) as z:
                arrays = {k: z[k] for k in z.files}
            hi = max(np.percentile(a, 99.5) for a in arrays.values())
            bins = np.linspace(0, hi, 60)
            for k, a in arrays.items():
                ax.hist(a, bins=bins, density=True, alpha=0.45, label="ID" if k == "id" else k)
            ax.set_title(f"{head.upper()} ({Path(name).parent.name}/{Path(name).name}) epoch {e}: ‖z‖", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "norm_hist.png", dpi=100)
    plt.close(fig)

    lines = ["# l2ood analysis", "", "Runs: " + ", ".join(f"`{n}` ({h})" for n, h, _ in loaded), "",
             "![NC metrics](nc.png)", "", "![feature-norm AUROC](auroc.png)", "",
             "![norm histograms](norm_hist.png)", ""]
    lines += verdicts(loaded, ood_sets)
    lines += norm_table(loaded, ood_sets)
    path = out / "analysis.md"
    path.write_text("\n".join(lines))
    summary = {"runs": [{"run": name, "head": head} for name, head, _ in loaded], "ood_sets": ood_sets,
               "verdicts": verdict_data(loaded, ood_sets), "code_version": code_version()}
    (out / "analysis.json").write_text(jsonio.dumps(summary, indent=1))
    return path


def _beyond_spread(a: float, sa: float, b: float, sb: float, n: int) -> bool:
    return bool(n < 2 or abs(a - b) > float(np.hypot(sa, sb)))


def verdict_data(loaded: Loaded, ood_sets: list[str]) -> dict[str, Any] | None:
    """The numbers behind claims (a)–(c) (JSON-ready); ``None`` without runs of both ``l2`` and ``ce``."""
    if not {"l2", "ce"} <= {h for _, h, _ in loaded}:
        return None
    counts = {h: sum(1 for _, hh, _ in loaded if hh == h) for h in ("l2", "ce")}
    n = min(counts.values())
    rows_a: list[dict[str, Any]] = []
    for s in ood_sets:
        m = _mean_by_head(loaded, f"auroc:{s}")
        (_, l2, l2s, _), (_, ce, ces, _) = m["l2"], m["ce"]
        rows_a.append({"ood": s, "l2": float(l2[-1]), "l2_sd": float(l2s[-1]), "ce": float(ce[-1]),
                       "ce_sd": float(ces[-1]), "beyond_spread": _beyond_spread(l2[-1], l2s[-1], ce[-1], ces[-1], n)})
    better = sum(r["beyond_spread"] and r["l2"] > r["ce"] for r in rows_a)
    worse = sum(r["beyond_spread"] and r["l2"] < r["ce"] for r in rows_a)
    m = _mean_by_head(loaded, "auroc_mean")
    ce_ep, ce_v = m["ce"][:2]
    l2_ep, l2_v = m["l2"][:2]
    target = float(ce_v[-1])
    reach = next((int(e) for e, v in zip(l2_ep, l2_v, strict=True) if v >= target), None)
    ce_reach = next((int(e) for e, v in zip(ce_ep, ce_v, strict=True) if v >= target), int(ce_ep[-1]))
    per_run = {h: [next((int(e) for e, v in zip(*_series(recs, "auroc_mean"), strict=True) if v >= target), None)
                   for _, hh, recs in loaded if hh == h] for h in ("l2", "ce")}
    inf = float("inf")
    pairs = [(inf if a is None else a, inf if b is None else b)
             for a, b in zip(per_run["l2"], per_run["ce"], strict=False)]  # unpaired extra runs are left out
    paired = {"l2_earlier": sum(a < b for a, b in pairs), "ce_earlier": sum(a > b for a, b in pairs),
              "ties": sum(a == b for a, b in pairs)}
    rows_c = []
    for k in NC_KEYS:
        mm = _mean_by_head(loaded, k)
        (_, a, sa, _), (_, b, sb, _) = mm["l2"], mm["ce"]
        rel = abs(a[-1] - b[-1]) / max(abs(a[-1]), abs(b[-1]), 1e-12)
        real = _beyond_spread(a[-1], sa[-1], b[-1], sb[-1], n)
        rows_c.append({"metric": k, "l2": float(a[-1]), "l2_sd": float(sa[-1]), "ce": float(b[-1]),
                       "ce_sd": float(sb[-1]), "relative_difference": float(rel), "beyond_spread": real,
                       "differs": bool(rel > DIFF_THRESHOLD and real)})
    return {
        "runs": counts,
        "a": {"verdict": "HOLDS" if better == len(ood_sets) else ("PARTLY HOLDS" if better else "DOES NOT HOLD"),
              "l2_better": better, "ce_better": worse, "sets": rows_a},
        "b": {"verdict": "HOLDS" if reach is not None and reach < ce_reach else "DOES NOT HOLD",
              "target_auroc": target, "l2_epoch": reach, "ce_epoch": ce_reach, "epochs": int(ce_ep[-1]),
              "per_run": per_run, "paired": paired,
              "curve": [{"epoch": int(e), "l2": float(a), "ce": float(b)}
                        for e, a, b in zip(l2_ep, l2_v, ce_v, strict=False)]},
        "c": {"threshold": DIFF_THRESHOLD, "n_differ": sum(r["differs"] for r in rows_c), "metrics": rows_c},
    }


def verdicts(loaded: Loaded, ood_sets: list[str]) -> list[str]:
    """Markdown verdict section for claims (a)–(c); needs runs of both heads ``l2`` and ``ce``."""
    v = verdict_data(loaded, ood_sets)
    if v is None:
        heads = sorted({h for _, h, _ in loaded})
        return ["## Verdicts", "", f"Not computed: need runs of both heads l2 and ce (got {heads})."]
    counts, n = v["runs"], min(v["runs"].values())
    out = ["## Verdicts", "", f"Runs: {counts['l2']} L2, {counts['ce']} CE"
           + (" — values are mean ± sd over runs; a difference counts only beyond the seed spread "
              "sqrt(sd_L2² + sd_CE²)." if n > 1 else " (one run each: no seed spread to compare against)."), ""]
    a = v["a"]
    rows = [f"| {r['ood']} | {_pm(r['l2'], r['l2_sd'], n, 100)} | {_pm(r['ce'], r['ce_sd'], n, 100)} | "
            f"{100 * (r['l2'] - r['ce']):+.2f}{'' if r['beyond_spread'] else ' (within seed spread)'} |"
            for r in a["sets"]]
    out += [f"**(a) ‖z‖ separates ID/OoD better after L2 than after CE: {a['verdict']}** "
            f"(L2 better on {a['l2_better']}/{len(a['sets'])} OoD sets, CE better on {a['ce_better']}).", "",
            "| OoD set | L2 final AUROC | CE final AUROC | L2 − CE |", "|---|---|---|---|", *rows, ""]
    b = v["b"]
    if b["l2_epoch"] is None:
        verdict_b = f"DOES NOT HOLD: L2 never reaches the CE final mean AUROC {100 * b['target_auroc']:.2f} %"
    else:
        verdict_b = (f"{b['verdict']}: L2 reaches the CE final mean AUROC ({100 * b['target_auroc']:.2f} %) at "
                     f"epoch {b['l2_epoch']}; CE itself first reaches it at epoch {b['ce_epoch']} (of {b['epochs']})")
    runs_b = "; ".join(f"{h.upper()} runs: " + ", ".join("never" if e is None else str(e) for e in eps)
                       for h, eps in b["per_run"].items())
    curve = " · ".join(f"{p['epoch']}: {100 * p['l2']:.1f}/{100 * p['ce']:.1f}" for p in b["curve"])
    out += [f"**(b) L2 reaches CE's final AUROC in fewer epochs: {verdict_b}.**", "",
            f"First epoch at which each run's own mean AUROC reaches that target — {runs_b}. Paired in the "
            f"order given (i-th L2 run with i-th CE run, i.e. by seed): L2 earlier in {b['paired']['l2_earlier']}, "
            f"CE earlier in {b['paired']['ce_earlier']}, ties {b['paired']['ties']}.", "",
            f"Mean feature-norm AUROC over the OoD sets, epoch: L2/CE — {curve}.", ""]
    c = v["c"]
    rows = [f"| {r['metric']} | {_pm(r['l2'], r['l2_sd'], n, fmt='.3g')} | {_pm(r['ce'], r['ce_sd'], n, fmt='.3g')} | "
            f"{100 * r['relative_difference']:.0f} %{'' if r['beyond_spread'] else ' (within seed spread)'} |"
            for r in c["metrics"]]
    out += [f"**(c) NC metrics differ between L2 and CE: {c['n_differ']}/{len(NC_KEYS)} metrics differ by more than "
            f"{100 * DIFF_THRESHOLD:.0f} %" + (" and beyond the seed spread" if n > 1 else "") + ".**", "",
            "| metric (final epoch) | L2 | CE | relative difference |", "|---|---|---|---|", *rows, ""]
    return out


def norm_table(loaded: Loaded, ood_sets: list[str]) -> list[str]:
    """Final-epoch ‖z‖ per head: ID test mean, each OoD set's mean as a ratio of it, and the spread of
    the per-class means of the training features (coefficient of variation); mean over runs."""
    out = ["## Feature norms at the final epoch", "",
           "‖z‖ of the ID test images, each OoD set's mean ‖z‖ divided by the ID mean (< 1: OoD smaller, as "
           "the method needs), and the coefficient of variation of the per-class mean ‖z‖ on training images.",
           "", "| head | runs | ID ‖z‖ mean (sd) | " + " | ".join(f"{s} / ID" for s in ood_sets)
           + " | per-class CV |", "|---|---|---|" + "---|" * len(ood_sets) + "---|"]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for _, head, recs in loaded:
        groups[head].append(recs[-1])
    for head, finals in groups.items():
        idm = float(np.mean([r["id_norm_mean"] for r in finals]))
        ids = float(np.mean([r["id_norm_std"] for r in finals]))
        ratios = [float(np.mean([r["ood"][s]["norm_mean"] / r["id_norm_mean"] for r in finals])) for s in ood_sets]
        cv = float(np.mean([np.std(r["nc"]["norm_mean_per_class"]) / np.mean(r["nc"]["norm_mean_per_class"])
                            for r in finals]))
        out.append(f"| {head.upper()} | {len(finals)} | {idm:.3g} ({ids:.3g}) | "
                   + " | ".join(f"{x:.2f}" for x in ratios) + f" | {cv:.3f} |")
    return [*out, ""]
