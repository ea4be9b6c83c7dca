"""Issue 15 report: raw bundles of ``benchmarks/gpu_paper.sh`` → docs/results/gpu/paper/ + docs/RESULTS-gpu.md.

    python benchmarks/gpu_report.py --add /work/.device/<files_at> --tag call1   # store one call's files, render
    python benchmarks/gpu_report.py                                               # render from what is stored

Every stored bundle (``docs/results/gpu/paper/<tag>/paper_raw.json`` and the CSV/markdown/log beside it) is
read; for each cell (variant × seed) the complete result of the latest call wins. With no bundle stored the
document is written in its prepared state: status "not yet run", the commands, the time plan, the
anchors and empty tables. Bundles from a CPU (the tiny smoke test) are refused unless ``--allow-cpu``
(tests), and then the document says in its first line that it is a test rendering, not results.

Written: ``docs/RESULTS-gpu.md``; ``docs/results/gpu/paper/merged.csv`` (one row per variant × seed ×
detector × OoD set: AUROC, FPR@95 in both conventions, AUPR, ID accuracy) and
``docs/results/gpu/paper/tracking.csv`` (‖z‖ AUROC / FPR@95 per tracked epoch and OoD set).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_paper import RAW_FILES, converged_epoch  # noqa: E402

VARIANTS = ("ce", "l2", "logitnorm", "t2fnorm")
HEADLINE = ("feature_norm", "msp", "maxlogit", "energy", "knn", "mahalanobis", "vim")
# OpenOOD v1.5, CIFAR-10, ResNet18 (100 epochs, original CIFAR-10), AUROC % near / far
ANCHORS = {"knn": (90.64, 92.96), "msp": (88.03, 90.73), "t2fnorm": (92.79, 96.98), "logitnorm": (92.33, 96.74)}
# our closest rows to each anchor (variant, column). OpenOOD scores LogitNorm models with MSP on the network's
# output f = W·z + b (the normalization is in the loss only): our logitnorm / msp:raw is the same score. Its
# T2FNorm postprocessor takes MSP of fc(z/τ) (unnormalized features divided by τ): between our msp:raw (fc(z))
# and msp:trained (fc(ẑ/τ)), so both are shown.
ANCHOR_ROWS = {"knn": [("ce", "knn")], "msp": [("ce", "msp")],
               "t2fnorm": [("t2fnorm", "msp:raw"), ("t2fnorm", "msp:trained")],
               "logitnorm": [("logitnorm", "msp:raw")]}
EXTRA_FILES = ("nvidia-smi.txt",)
DEVICE_CALL = 'run(command="GIT_COMMIT=<sha> bash benchmarks/gpu_paper.sh", carry=["gpu_data"], timeout_s=430)'


# ---------------------------------------------------------------------------------------------- loading


def add_bundle(src: Path, dest_root: Path, tag: str, force: bool = False) -> Path:
    dest = dest_root / "paper" / tag
    if dest.exists() and not force:
        raise SystemExit(f"{dest} exists (pass --force to replace it)")
    if not (src / "paper_raw.json").is_file():
        raise SystemExit(f"{src}: no paper_raw.json (not a gpu_paper.sh output folder)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*RAW_FILES, *EXTRA_FILES):
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)
    return dest


def load_bundles(results_dir: Path, allow_cpu: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for p in sorted((results_dir / "paper").glob("*/paper_raw.json")):
        raw = json.loads(p.read_text())
        if raw.get("kind") != "l2ood-gpu-paper/1":
            continue
        on_gpu = bool(raw["env"].get("cuda_available")) and str(raw["spec"]["device"]).startswith("cuda")
        if not on_gpu and not allow_cpu:
            raise SystemExit(f"{p}: produced on a CPU ({raw['env'].get('machine')}), not a GPU; refusing to put it "
                             "in the GPU table (tests pass --allow-cpu)")
        out.append((p.parent.name, raw))
    out.sort(key=lambda t: t[1]["t0"])
    return out


def merge_cells(bundles: list[tuple[str, dict[str, Any]]]) -> tuple[dict[tuple[str, int], dict[str, Any]],
                                                                       dict[tuple[str, int], dict[str, Any]]]:
    """(evaluated cells, latest record of every cell) keyed by (variant, seed); later calls win. A cell counts
    as evaluated when it trained to the last epoch and has results (at least the core detectors: a cell stopped
    during its second evaluation phase keeps the first phase's detectors)."""
    complete: dict[tuple[str, int], dict[str, Any]] = {}
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for tag, raw in bundles:
        for c in raw["cells"]:
            key = (c["variant"], int(c["seed"]))
            rec = {**c, "tag": tag}
            if c["state"] != "skipped" or key not in latest:
                latest[key] = rec
            if "cell" in c and int(c["epochs_done"]) == int(c["epochs"]):  # trained; core detectors at least
                complete[key] = rec
    return complete, latest


# ---------------------------------------------------------------------------------------------- tables


def rows_of(complete: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for (variant, seed), c in sorted(complete.items(), key=lambda kv: (_vkey(kv[0][0]), kv[0][1])):
        res, groups = c["cell"]["results"], c["cell"]["groups"]
        for ds, d in res["ood"].items():
            for det, m in d["detectors"].items():
                rows.append({"variant": variant, "seed": seed, "detector": det, "ood": ds,
                             "group": groups.get(ds, "?"), "n_ood": d.get("n"), "id_acc": res["id_accuracy"],
                             "auroc": m["auroc"], "fpr95": m["fpr95"], "fpr95_openood": m.get("fpr95_openood"),
                             "aupr_in": m["aupr_in"], "aupr_out": m["aupr_out"], "call": c["tag"]})
    return rows


def _vkey(v: str) -> int:
    return VARIANTS.index(v) if v in VARIANTS else len(VARIANTS)


def _fmt(vals: list[float]) -> str:
    a = 100 * np.asarray([v for v in vals if v is not None], dtype=float)
    if a.size == 0:
        return "—"
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if a.size > 1 else f"{a.mean():.2f}"


def group_table(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(variant, detector) → metric name → per-seed values (group means over the group's data sets)."""
    per_seed: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        k = (r["variant"], r["detector"], r["seed"])
        for m in ("auroc", "fpr95", "fpr95_openood"):
            if r[m] is not None:
                per_seed[k][f"{r['group']}_{m}"].append(r[m])
        per_seed[k]["id_acc"] = [r["id_acc"]]
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (v, det, _seed), vals in per_seed.items():
        for name, xs in vals.items():
            out[(v, det)][name].append(float(np.mean(xs)))
    return out


def _headline_cols(dets: set[str]) -> list[str]:
    cols = []
    for h in HEADLINE:
        cols += [c for c in (h, f"{h}:trained", f"{h}:raw") if c in dets]
    return cols


GROUP_HEADER = ("| variant | detector | near AUROC | far AUROC | near FPR95 (ID+) | far FPR95 (ID+) | "
                "near FPR95 (OoD+) | far FPR95 (OoD+) | ID acc | seeds |\n|---|---|---|---|---|---|---|---|---|---|")


def _group_line(v: str, det: str, vals: dict[str, list[float]]) -> str:
    cells = [_fmt(vals.get(k, [])) for k in ("near_auroc", "far_auroc", "near_fpr95", "far_fpr95",
                                               "near_fpr95_openood", "far_fpr95_openood", "id_acc")]
    return f"| {v} | {det} | " + " | ".join(cells) + f" | {len(vals.get('id_acc', []))} |"


def render_group_table(rows: list[dict[str, Any]], headline: bool, planned: list[str]) -> str:
    if not rows:
        return GROUP_HEADER + "\n" + "\n".join(f"| {v} | {d} | — | — | — | — | — | — | — | 0 |"
                                               for v in planned for d in (HEADLINE if headline else ("…",)))
    g = group_table(rows)
    lines = [GROUP_HEADER]
    for v in sorted({r["variant"] for r in rows}, key=_vkey):
        dets_v = {r["detector"] for r in rows if r["variant"] == v}
        order = _headline_cols(dets_v) if headline else list(dict.fromkeys(
            r["detector"] for r in rows if r["variant"] == v))
        lines += [_group_line(v, d, g[(v, d)]) for d in order]
    return "\n".join(lines)


def render_per_dataset(rows: list[dict[str, Any]], planned: list[str], sets: list[tuple[str, str]]) -> str:
    head = ("| variant | detector | " + " | ".join(f"{s} ({g})" for g, s in sets) + " |\n|"
            + "---|" * (2 + len(sets)))
    if not rows:
        return head + "\n" + "\n".join(f"| {v} | {d} | " + " | ".join("—" for _ in sets) + " |"
                                       for v in planned for d in HEADLINE)
    vals: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        k = (r["variant"], r["detector"], r["ood"])
        for m in ("auroc", "fpr95", "fpr95_openood"):
            if r[m] is not None:
                vals[k][m].append(r[m])
    lines = [head]
    for v in sorted({r["variant"] for r in rows}, key=_vkey):
        for d in _headline_cols({r["detector"] for r in rows if r["variant"] == v}):
            cells = []
            for _, s in sets:
                x = vals.get((v, d, s))
                cells.append("—" if not x else f"{100 * np.mean(x['auroc']):.2f} / {100 * np.mean(x['fpr95']):.2f}"
                             f" / {100 * np.mean(x['fpr95_openood']):.2f}")
            lines.append(f"| {v} | {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_anchors(rows: list[dict[str, Any]]) -> str:
    g = group_table(rows) if rows else {}
    lines = ["| OpenOOD v1.5 method | OpenOOD near AUROC | OpenOOD far AUROC | our row (variant / detector) | "
             "our near AUROC | our far AUROC |", "|---|---|---|---|---|---|"]
    for name, (near, far) in ANCHORS.items():
        for v, det in ANCHOR_ROWS[name]:
            vals = g.get((v, det), {}) if g else {}
            lines.append(f"| {name} | {near:.2f} | {far:.2f} | {v} / {det} | {_fmt(vals.get('near_auroc', []))} | "
                         f"{_fmt(vals.get('far_auroc', []))} |")
    return "\n".join(lines)


def tracking_rows(latest: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (v, seed), c in sorted(latest.items(), key=lambda kv: (_vkey(kv[0][0]), kv[0][1])):
        groups = c.get("cell", {}).get("groups") or {}
        for t in c.get("track", []):
            for ds, m in t["ood"].items():
                out.append({"variant": v, "seed": seed, "epoch": t["epoch"], "ood": ds, "group": groups.get(ds, "?"),
                            "auroc": m["auroc"], "fpr95": m["fpr95"], "norm_mean": m["norm_mean"],
                            "id_norm_mean": t.get("id_norm_mean"), "test_acc": t.get("test_acc"),
                            "complete": bool(c.get("complete")), "call": c["tag"]})
    return out


def convergence(latest: dict[tuple[str, int], dict[str, Any]], ood_groups: dict[str, str]) -> list[dict[str, Any]]:
    """Per cell: tracked ‖z‖ AUROC (group means) per epoch and the epoch from which it stays within 1 point of
    its final (last tracked) value; only cells whose tracking reached the last epoch get an epoch."""
    out = []
    for (v, seed), c in sorted(latest.items(), key=lambda kv: (_vkey(kv[0][0]), kv[0][1])):
        tr = c.get("track", [])
        if not tr:
            continue
        groups = (c.get("cell", {}).get("groups")) or ood_groups
        series: dict[str, list[tuple[int, float]]] = {"near": [], "far": []}
        for t in tr:
            for grp in series:
                xs = [m["auroc"] for ds, m in t["ood"].items() if groups.get(ds) == grp]
                if xs:
                    series[grp].append((int(t["epoch"]), float(np.mean(xs))))
        full = bool(tr) and int(tr[-1]["epoch"]) == int(c["epochs"])
        out.append({"variant": v, "seed": seed, "epochs": [int(t["epoch"]) for t in tr], "series": series,
                    "final_epoch": int(tr[-1]["epoch"]), "complete": full,
                    "within1": {g: (converged_epoch(s) if full else None) for g, s in series.items()}})
    return out


# ---------------------------------------------------------------------------------------------- document


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def render(bundles: list[tuple[str, dict[str, Any]]], results_dir: Path) -> str:
    complete, latest = merge_cells(bundles)
    rows = rows_of(complete)
    track = tracking_rows(latest)
    write_csv(results_dir / "paper" / "merged.csv", rows)
    write_csv(results_dir / "paper" / "tracking.csv", track)
    ood_groups: dict[str, str] = {}
    for c in complete.values():
        ood_groups.update(c["cell"]["groups"])
    if not ood_groups:
        ood_groups = {"tinyimagenet_test_resize": "near", "mnist_test": "far", "fashionmnist_test": "far",
                      "dtd_partial10": "far", "textures_skimage": "far"}
    sets = sorted(((g, s) for s, g in ood_groups.items()), key=lambda t: ({"near": 0, "far": 1}.get(t[0], 2), t[1]))
    planned = list(VARIANTS)
    tiny = any(raw.get("tiny") for _, raw in bundles)
    cpu = any(not raw["env"].get("cuda_available") for _, raw in bundles)
    conv = convergence(latest, ood_groups)

    if not bundles:
        status = ("**Status: not yet run — no GPU was lent to the session that prepared this.** Every table below "
                  "is empty; `benchmarks/gpu_report.py` fills it from the raw files of a GPU run. No number on this "
                  "page comes from a CPU stand-in. The whole chain (pack → `gpu_paper.sh` → report) is tested on the "
                  "CPU at tiny size (width 4, 1 epoch, a few hundred images) by `tests/test_gpu_prepared.py`.")
    else:
        envs = sorted({f"{raw['env'].get('gpu', 'CPU')} (torch {raw['env']['torch']}, CUDA "
                       f"{raw['env'].get('cuda', '-')})" for _, raw in bundles})
        dets = bundles[-1][1]["spec"].get("detectors")
        det_all = set(dets) if isinstance(dets, list) else None
        partial = []
        for (v, sd), c in complete.items():
            req = set(c["cell"].get("requested", []))
            if not c.get("complete"):
                partial.append(f"{v}/seed{sd} ({len(req)} detectors: second evaluation phase cut)")
            elif det_all is not None and not det_all <= req:
                partial.append(f"{v}/seed{sd}")
        status = (f"**Status: measured** on {', '.join(envs)}; calls {', '.join(t for t, _ in bundles)} "
                  f"({', '.join(raw['started_utc'] for _, raw in bundles)}); {len(complete)} cells trained to the "
                  "last epoch and evaluated" + (f" (partly: {', '.join(partial)})" if partial else "")
                  + ". Not evaluated: "
                  + (", ".join(f"{v}/seed{sd} ({c['state']}, epoch {c['epochs_done']}/{c['epochs']})"
                               for (v, sd), c in latest.items() if (v, sd) not in complete) or "none") + ".")
        if tiny or cpu:
            status = ("**TEST RENDERING from a CPU smoke test (tiny model, few images): these are not results.** "
                      + status)

    lines = [
        "# Results: the paper's CIFAR-10 / ResNet18 table on a GPU (issue 15)", "", status, "",
        "## Setting", "",
        "- **ID**: CIFAR-10 (JPEG copy) from ../shared/data (quality-75 JPEG re-encoding of the official images, "
        "train 50 000 / test 10 000; see ../shared/data/SOURCES.md), carried to the device losslessly "
        "(`benchmarks/gpu_pack.py`: the JPEG files byte for byte, SHA-256 checked) and read by l2ood's image-folder "
        "reader (Pillow decode). Trained on all 50 000 training images, as `l2ood bench` does.",
        "- **OoD** (every set in ../shared/data, all images; l2ood's `cifar10-local` benchmark): near = Tiny-ImageNet "
        "(test, resized 64→32, 10 000); far = MNIST (10 000), Fashion-MNIST (10 000), DTD (10 classes, 1 200), "
        "scikit-image textures (5 000). CIFAR-100, SVHN and Places365 are not available offline, so our near/far "
        "groups differ from OpenOOD's (near CIFAR-100 + TIN; far MNIST, SVHN, Textures, Places365).",
        "- **Model and recipe** (`paper-resnet18`): CIFAR ResNet18, full width (64, 11.2 M parameters), 60 epochs, "
        "batch 128, SGD Nesterov momentum 0.9, lr 0.1 cosine, weight decay 5e-4, random crop (pad 4) + flip; bf16 "
        "autocast + channels_last, data resident on the GPU. Variants: CE (plain), L2 (the paper's method, "
        "logits = fc(z/‖z‖)), LogitNorm (τ 0.04), T2FNorm (τ 0.1).",
        "- **Detectors**: all of l2ood's (`--detectors all`), each from one cached forward pass per data set; "
        "fitted on the 50 000 training images. For normalized heads every logit-based detector is reported on the "
        "trained logits (`:trained`) and on W·z + b (`:raw`).",
        "- **Metrics** (ID = positive class for AUROC; higher score = more ID): AUROC; FPR@95 in two conventions — "
        "**ID+** (l2ood's `fpr95`: fraction of OoD accepted when 95 % of ID is kept) and **OoD+** (OpenOOD v1.5's: "
        "fraction of ID flagged when 95 % of OoD is flagged, `roc_curve(ood, -score)`). Group values are unweighted "
        "means over the group's data sets, then mean ± std over seeds.",
        "- **Tracking** (`--track every=5,n_train=5000,n_test=10000,n_ood=10000`): ‖z‖ AUROC on every OoD set after "
        "epochs 5, 10, …, 60 (model in eval mode).", "",
        "## Commands", "",
        "```bash",
        "# here (CPU), once: ../shared/data -> gpu_data/ (ignored; ≈ 56 MiB; pydantic wheels for the device)",
        "python benchmarks/gpu_pack.py pack",
        "python benchmarks/gpu_pack.py size          # tree + gpu_data must stay under 64 MiB",
        "# tiny CPU smoke test of the same script (width 4, 1 epoch, a few hundred images)",
        "TINY=1 OUT=/tmp/gpu_tiny_out VARIANTS=ce,l2 bash benchmarks/gpu_paper.sh",
        "# device call 1 (a fresh machine; GIT_COMMIT only labels the results):",
        f"#   {DEVICE_CALL}",
        "# device call 2, at once while the machine is warm (30 s): the same command resumes unfinished cells from",
        "# their checkpoints in /tmp/l2ood-gpu-runs (a cold machine starts them again); B = budget_left_s of call 1's",
        "# reply minus 60:",
        '#   run(command="GIT_COMMIT=<sha> BUDGET_S=<B> bash benchmarks/gpu_paper.sh", carry=["gpu_data"],',
        "#       timeout_s=<B + 30>)",
        "# back here, for each call's files:",
        "python benchmarks/gpu_report.py --add <files_at> --tag call1",
        "```", "",
    ]
    if bundles:
        lines += ["Calls as run:", ""]
        for tag, raw in bundles:
            lines.append(f"- `{tag}`: `{raw.get('shell_command') or raw['command']}` — started {raw['started_utc']}, "
                         f"{raw['wall_s']:.0f} s of a {raw['budget_s']:.0f} s budget; "
                         f"phases {json.dumps(raw['phases'])}; l2ood {raw['code_version']['l2ood']}, "
                         f"src sha256 {raw['src_sha256'][:16]}…"
                         + (f", git {raw['git_commit_here'][:10]}" if raw.get("git_commit_here") else ""))
        lines.append("")
    lines += [
        "## Time budget plan", "",
        "About 15 minutes of device time per task, start-up and idle time included; at most 10 minutes per call. "
        "One full-width ResNet18 epoch at batch 128 took 4.42 s on the H200 alone (docs/results/gpu/gpu_b128.json): "
        "one 60-epoch model ≈ 4.4 min of pure training (≈ 4.9 min with the per-epoch checkpoint and the tracking), "
        "and at batch 128 one process leaves the GPU mostly idle (batch 512 runs 3.9× more images per second), so "
        "cells run concurrently. Plan (estimates, to be replaced by the measured times below):", "",
        "| phase | minutes | what |", "|---|---|---|",
        "| machine start + transfer (≈ 59 MiB: tree + gpu_data) | ≈ 1.5 | fresh machine |",
        "| call 1: wheels, unpack, JPEG decode, CUDA start | ≈ 0.7 | pydantic only if missing; 60 000 files "
        "written and SHA-256 checked (7 s on the 2-core CPU here); each cell decodes the JPEGs (≈ 20 s, in parallel) |",
        "| call 1: training | ≈ 5 | CE and L2 (required), LogitNorm and T2FNorm (optional) start together; optional "
        "cells are paused (SIGSTOP) while CE/L2 are projected to miss the stop and continued when CE/L2 are done |",
        "| call 1: evaluation | ≈ 1 | core detectors first (written at once), then the others |",
        "| call 1 stops itself | 6.7 | `BUDGET_S` 400 s after the script started (`timeout_s=430`); cells still "
        "running are killed after their last checkpoint, the bundle is written |",
        "| call 2, machine still warm | ≤ 5.5 | the same command with the budget left: resumes every unfinished "
        "cell from its checkpoint and evaluates it |", "",
        "If call 1 fails in its first minutes (environment), call 2 repeats it in full; a late failure leaves the "
        "bundle of call 1 (progress copies every 30 s) and the checkpoints for call 2. More seeds (`SEEDS=0,1`) "
        "only when the concurrency table shows that 60 epochs at the measured epoch time fit the budget left.", "",
        "## OpenOOD v1.5 anchors", "",
        "OpenOOD v1.5, CIFAR-10, ResNet18, 100 epochs, original CIFAR-10 (AUROC %). Not like for like: our run has "
        "60 epochs, JPEG-degraded ID data and other near/far sets (see Setting). OpenOOD scores LogitNorm models "
        "with MSP on f = W·z + b (our `logitnorm / msp:raw` is that score); its T2FNorm postprocessor takes MSP of "
        "fc(z/τ), which lies between our `msp:raw` (fc(z)) and `msp:trained` (fc(ẑ/τ)), so both are shown.",
        "", render_anchors(rows), "",
        "## Near / far (headline detectors)", "",
        "AUROC and FPR@95 in %, mean ± std over seeds; ID acc = CIFAR-10 (JPEG copy) test accuracy.", "",
        render_group_table(rows, True, planned), "",
        "## Per data set (headline detectors)", "",
        "Each cell: AUROC / FPR@95 (ID+) / FPR@95 (OoD+), %, mean over seeds.", "",
        render_per_dataset(rows, planned, sets), "",
        "## ‖z‖ AUROC over epochs", "",
        "Feature-norm AUROC (%) of the tracked epochs, group means; *within 1 pt from* = the first tracked epoch "
        "from which the AUROC stays within 1 point of its value at the last epoch (5-epoch resolution; only for runs "
        "tracked to the end).", "",
    ]
    if conv:
        eps = sorted({e for c in conv for e in c["epochs"]})
        lines.append("| variant | seed | group | within 1 pt from | " + " | ".join(f"ep {e}" for e in eps) + " |")
        lines.append("|" + "---|" * (4 + len(eps)))
        for c in conv:
            for grp, s in c["series"].items():
                d = dict(s)
                w = c["within1"][grp]
                lines.append(f"| {c['variant']} | {c['seed']} | {grp} | "
                             + (str(w) if w is not None else f"— (tracked to {c['final_epoch']})") + " | "
                             + " | ".join(f"{100 * d[e]:.2f}" if e in d else "" for e in eps) + " |")
    else:
        lines += ["| variant | seed | group | within 1 pt from | ep 5 | ep 10 | … | ep 60 |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v} | 0 | {g} | — | — | — | — | — |" for v in planned for g in ("near", "far")]
    lines += ["", "## Timings and concurrency", ""]
    lines += ["| cell | call | state | epochs | training s (this call) | eval core s | eval rest s | started (s) | "
              "ended (s) |",
              "|---|---|---|---|---|---|---|---|---|"]
    if latest:
        for (v, s), c in sorted(latest.items(), key=lambda kv: (_vkey(kv[0][0]), kv[0][1])):
            ev = {e["event"]: e for e in c.get("events", [])}
            secs = [ev.get(k, {}).get("seconds", "—") for k in ("trained", "eval_core_done", "eval_rest_done")]
            lines.append(f"| {v}/seed{s} | {c['tag']} | {c['state']} | {c['epochs_done']}/{c['epochs']} | "
                         + " | ".join(str(x) for x in secs) + f" | {c['started']} | {c['ended']} |")
    else:
        lines += [f"| {v}/seed0 | — | not run | — | — | — | — | — | — |" for v in planned]
    lines += ["", "Concurrency (K = cells training at once; epoch times are medians; speed-up = K × 4.42 s / "
              "epoch training time, i.e. throughput relative to one process alone):", "",
              "| call | K | epochs measured | epoch training s | epoch wall s (with checkpoint, tracking) | speed-up |",
              "|---|---|---|---|---|---|"]
    conc = [(tag, k, v) for tag, raw in bundles for k, v in raw.get("concurrency", {}).items()]
    if conc:
        lines += [f"| {tag} | {k} | {v['epochs']} | {v['median_epoch_train_s']:.2f} | {v['median_epoch_wall_s']:.2f} | "
                  f"{v['speedup_vs_single']:.2f}× |" for tag, k, v in conc]
    else:
        lines.append("| — | — | — | — | — | — |")
    decisions = [(tag, d) for tag, raw in bundles for d in raw.get("decisions", [])]
    if decisions:
        lines += ["", "Scheduling decisions: " + "; ".join(f"{tag} +{d['t']} s: "
                                                          + (f"paused {d['pause']}" if "pause" in d
                                                             else f"continued {d['continue']}")
                                                          for tag, d in decisions) + "."]
    lines += ["", "## All detectors (near / far)", "", render_group_table(rows, False, planned), "",
              "## Raw files", "",
              "`docs/results/gpu/paper/<call>/`: `paper_raw.json` (environment, spec, per cell: events with timings, "
              "training history, tracking, every detector's metrics incl. both FPR conventions), `results.csv` / "
              "`results.md` (l2ood bench layout), `log.txt`, `nvidia-smi.txt`; `docs/results/gpu/paper/merged.csv` "
              "and `tracking.csv` are written by `benchmarks/gpu_report.py` from them.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--add", default=None, help="a fetched $OUT folder of benchmarks/gpu_paper.sh to store first")
    ap.add_argument("--tag", default=None, help="name of the stored call (default: its start time)")
    ap.add_argument("--force", action="store_true", help="replace a stored call of the same tag")
    ap.add_argument("--results-dir", default=str(ROOT / "docs" / "results" / "gpu"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS-gpu.md"))
    ap.add_argument("--allow-cpu", action="store_true", help="accept CPU bundles (the tiny smoke test; tests only)")
    args = ap.parse_args()
    results_dir = Path(args.results_dir)
    if args.add:
        src = Path(args.add)
        raw = json.loads((src / "paper_raw.json").read_text())
        on_gpu = bool(raw["env"].get("cuda_available")) and str(raw["spec"]["device"]).startswith("cuda")
        if not on_gpu and not args.allow_cpu:
            raise SystemExit(f"{src}: produced on a CPU, not a GPU; not stored (tests pass --allow-cpu)")
        tag = args.tag or raw["started_utc"].replace(":", "").replace("-", "")
        print(f"stored {add_bundle(src, results_dir, tag, args.force)}")
    bundles = load_bundles(results_dir, args.allow_cpu)
    doc = render(bundles, results_dir)
    Path(args.doc).write_text(doc)
    print(f"wrote {args.doc} from {len(bundles)} call(s)")


if __name__ == "__main__":
    main()
