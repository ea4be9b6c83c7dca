"""Reports: terminal tables, markdown, PNG plots."""

from typing import Any

from .markdown import write_report
from .table import format_table, markdown_table

__all__ = ["format_table", "markdown_table", "norm_histograms", "roc_curves", "write_report"]


def __getattr__(name: str) -> Any:  # the plots need matplotlib (the `report` extra): imported on first use
    if name in ("norm_histograms", "roc_curves"):
        from ..extras import require

        require("matplotlib", "report", "plotting")
        from . import plots

        return getattr(plots, name)
    raise AttributeError(name)
