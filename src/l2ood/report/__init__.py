"""Reports: terminal tables, markdown, PNG plots."""

from .markdown import write_report
from .plots import norm_histograms, roc_curves
from .table import format_table, markdown_table

__all__ = ["format_table", "markdown_table", "norm_histograms", "roc_curves", "write_report"]
