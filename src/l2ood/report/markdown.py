"""Markdown report with the results table and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..extras import available
from ..results import ResultsRecord
from ..runfolder import atomic_write_bytes
from .table import markdown_table

Scores = dict[str, dict[str, np.ndarray]]


def write_report(out_dir: str | Path, models: list[tuple[str, ResultsRecord, Scores]],
                 title: str = "l2ood report", command: str | None = None) -> Path:
    """Write ``report.md`` plus ``norm_hist.png`` and ``roc.png`` into ``out_dir`` (the figures need matplotlib,
    the ``report`` extra; without it the report says so and has the tables only).

    ``models`` is a list of ``(label, results, scores)`` as produced by
    :func:`l2ood.evaluation.evaluate`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_in = [(lbl, r.id_dataset, s) for lbl, r, s in models]
    has_norm = all("feature_norm" in r.detectors for _, r, _ in models)
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", f"```\n{command}\n```", ""]
    first = models[0][1]
    lines += [
        f"ID data: **{first.id_dataset}** ({first.n_id_test} test images). "
        f"Model: {first.model['arch']} width {first.model['width']}, runtime {first.runtime}.",
        "",
        "Scores: higher = more in-distribution. AUROC and FPR@95TPR in %. **FPR95 (ID+)** (l2ood's `fpr95`, ID "
        "positive) = fraction of OoD images accepted at the threshold that keeps 95 % of ID test images; "
        "**FPR95 (OoD+)** (`fpr95_ood_pos`, OoD positive, the convention of OpenOOD v1.5 and pytorch-ood) = "
        "fraction of ID test images flagged at the threshold that flags 95 % of the OoD images.",
        "",
        markdown_table([(lbl, r) for lbl, r, _ in models]),
        "",
    ]
    for lbl, r, _ in models:
        sets = ", ".join(f"{k} (n={v.n})" for k, v in r.ood.items())
        acc = "-" if r.id_accuracy is None else f"{100 * r.id_accuracy:.2f} %"
        lines.append(f"- {lbl}: head `{r.head}`, ID accuracy {acc}, OoD: {sets}")
    lines.append("")
    for lbl, r, _ in models:
        lines += selection_section(lbl, r)
    if not available("matplotlib"):
        lines += ["Figures: not drawn, matplotlib is not installed (`pip install 'l2ood[report]'`).", ""]
        has_norm = plots = False
    else:
        from .plots import norm_histograms, roc_curves

        plots = True
    if has_norm:
        norm_histograms(plot_in, out / "norm_hist.png")
        roc_curves(plot_in, out / "roc.png", detectors=["feature_norm"])
        lines += ["## Feature norm ‖z‖ — ID vs OoD", "", "![norm histograms](norm_hist.png)", "",
                  "## ROC curves of the feature norm", "", "![ROC](roc.png)", ""]
    if plots and any(d != "feature_norm" for _, r, _ in models for d in r.detectors):
        roc_curves(plot_in, out / "roc_all.png")
        lines += ["## ROC curves, all detectors", "", "![ROC all](roc_all.png)", ""]
    path = out / "report.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def selection_section(label: str, results: ResultsRecord) -> list[str]:
    """Markdown lines for ``results.selection`` (hyper-parameters chosen on validation data); none without."""
    sel = results.selection
    if not sel:
        return []
    lines = [f"## Hyper-parameters selected on validation data — {label}", "",
             f"Criterion: {sel['criterion']}. ID validation: {sel['val_id']} ({sel['n_val_id']} images); validation "
             f"OoD: {sel['val_ood']} ({sel['n_val_ood']} images), kept apart from the test sets. The test columns "
             "above use the chosen values.", "",
             "| column | default | validation AUROC (default) | chosen | validation AUROC (chosen) | points tried |",
             "|---|---|---|---|---|---|"]
    for col, c in sel["columns"].items():
        d_au = "-" if c["default_auroc"] is None else f"{100 * c['default_auroc']:.2f}"
        n_ok = sum("auroc" in t for t in c["tried"])
        skipped = len(c["tried"]) - n_ok
        lines.append(f"| {col} | {_params(c['default'])} | {d_au} | {_params(c['chosen'])} | "
                     f"{100 * c['chosen_auroc']:.2f} | {n_ok}" + (f" (+{skipped} refused)" if skipped else "") + " |")
    if not sel["columns"]:
        lines.append("| (no requested detector has a search space) | | | | | |")
    return [*lines, ""]


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in p.items())
