"""Plain-text tables for the terminal (and markdown tables for reports)."""

from __future__ import annotations

from typing import Any


def _rows(named: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    sets: list[str] = []
    for _, r in named:
        for s in r["ood"]:
            if s not in sets:
                sets.append(s)
    header = ["model", "ID acc", "detector"] + [f"{s} {m}" for s in sets for m in ("AUROC", "FPR95")]
    rows = []
    for label, r in named:
        for det in r["detectors"]:
            row = [label, f"{100 * r['id_accuracy']:.2f}", det]
            for s in sets:
                m = r["ood"].get(s, {}).get("detectors", {}).get(det)
                row += [f"{100 * m['auroc']:.2f}", f"{100 * m['fpr95']:.2f}"] if m else ["-", "-"]
            rows.append(row)
    return header, rows


def format_table(named: list[tuple[str, dict[str, Any]]]) -> str:
    """Aligned text table: one row per (model, detector), AUROC and FPR@95 (in %) per OoD set."""
    header, rows = _rows(named)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append("AUROC and FPR@95TPR in %; higher AUROC / lower FPR95 is better.")
    return "\n".join(out)


def markdown_table(named: list[tuple[str, dict[str, Any]]]) -> str:
    """The same table in GitHub markdown."""
    header, rows = _rows(named)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
