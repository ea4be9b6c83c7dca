"""PNG plots: histograms of ‖z‖ (ID vs each OoD set) and ROC curves, for one or more models."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..metrics import roc

Scores = dict[str, dict[str, np.ndarray]]  # set -> detector -> scores


def norm_histograms(models: list[tuple[str, str, Scores]], path: str | Path,
                    detector: str = "feature_norm") -> Path:
    """One row per model, one panel per OoD set: density histograms of the ID and OoD scores.

    ``models`` is a list of ``(label, id_set_name, scores)``.
    """
    sets = [s for s in models[0][2] if s != models[0][1]]
    nrow, ncol = len(models), max(1, len(sets))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for i, (label, id_name, scores) in enumerate(models):
        id_s = scores[id_name][detector]
        for j, s in enumerate(sets):
            ax = axes[i][j]
            ood_s = scores[s][detector]
            lo = float(min(id_s.min(), ood_s.min()))
            hi = float(max(np.percentile(id_s, 99.5), np.percentile(ood_s, 99.5)))
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 60)
            ax.hist(id_s, bins=bins, density=True, alpha=0.55, label=f"ID ({id_name})", color="tab:blue")
            ax.hist(ood_s, bins=bins, density=True, alpha=0.55, label=f"OoD ({s})", color="tab:red")
            ax.set_title(f"{label}: {s}", fontsize=9)
            ax.set_xlabel("‖z‖₂" if detector == "feature_norm" else detector, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curves(models: list[tuple[str, str, Scores]], path: str | Path,
               detectors: list[str] | None = None) -> Path:
    """One panel per OoD set; a ROC curve per (model, detector). ID is the positive class."""
    sets = [s for s in models[0][2] if s != models[0][1]]
    ncol = max(1, len(sets))
    fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 4.4), squeeze=False)
    curves = [(label, id_name, scores, det) for label, id_name, scores in models
              for det in (detectors or list(scores[id_name]))]
    # distinct colours for up to 20 curves (tab20), line styles per model beyond that; AUROC in the legend
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10").colors  # type: ignore[attr-defined]
    styles = {label: ls for (label, _, _), ls in zip(models, ("-", "--", "-.", ":") * 8, strict=False)}
    for j, s in enumerate(sets):
        ax = axes[0][j]
        for k, (label, id_name, scores, det) in enumerate(curves):
            fpr, tpr = roc(scores[id_name][det], scores[s][det])
            auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoid rule
            ax.plot(fpr, tpr, lw=1.2, color=colors[k % len(colors)], ls=styles[label],
                    label=f"{label} {det} ({100 * auc:.1f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.axhline(0.95, color="gray", lw=0.6, ls="--")
        ax.set_title(f"ROC vs {s}", fontsize=9)
        ax.set_xlabel("FPR (OoD accepted)", fontsize=8)
        ax.set_ylabel("TPR (ID accepted)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right", title="model detector (AUROC %)", title_fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
