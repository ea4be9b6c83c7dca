"""Plain-text tables for the terminal (and markdown tables for reports).

FPR@95TPR comes in two conventions (:mod:`l2ood.metrics.ood`): ``FPR95`` / ``FPR95 (ID+)`` is l2ood's
``fpr95`` (ID positive: OoD accepted while 95 % of ID is kept); ``FPR95 (OoD+)`` is ``fpr95_ood_pos``
(OpenOOD v1.5's: ID flagged while 95 % of OoD is flagged). The terminal table shows the first (its
footer says so); the markdown table both. Results written before ``fpr95_ood_pos`` existed show "-".
"""

from __future__ import annotations

from ..results import ResultsRecord


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _rows(named: list[tuple[str, ResultsRecord]], both_fpr: bool = False) -> tuple[list[str], list[list[str]]]:
    sets: list[str] = []
    for _, r in named:
        for s in r.ood:
            if s not in sets:
                sets.append(s)
    metrics = (("AUROC", "auroc"), ("FPR95 (ID+)", "fpr95"), ("FPR95 (OoD+)", "fpr95_ood_pos")) if both_fpr \
        else (("AUROC", "auroc"), ("FPR95 (ID+)", "fpr95"))
    header = ["model", "ID acc", "detector"] + [f"{s} {label}" for s in sets for label, _ in metrics]
    rows = []
    for label, r in named:
        for det in r.detectors:
            row = [label, _pct(r.id_accuracy), det]
            for s in sets:
                row += [_pct(r.metric(s, det, key)) for _, key in metrics]
            rows.append(row)
    return header, rows


def format_table(named: list[tuple[str, ResultsRecord]]) -> str:
    """Aligned text table: one row per (model, detector), AUROC and FPR@95 (in %) per OoD set."""
    header, rows = _rows(named)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append("AUROC and FPR@95TPR in %; higher AUROC / lower FPR95 is better. FPR95 (ID+) = fraction of OoD "
               "accepted when 95 % of ID is kept (ID positive, l2ood's); OpenOOD's convention (OoD positive) "
               "is fpr95_ood_pos in results.json and FPR95 (OoD+) in report.md.")
    return "\n".join(out)


def markdown_table(named: list[tuple[str, ResultsRecord]]) -> str:
    """The same table in GitHub markdown, with FPR@95 in both conventions: ``FPR95 (ID+)`` and ``FPR95 (OoD+)``."""
    header, rows = _rows(named, both_fpr=True)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
