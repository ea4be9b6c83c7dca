"""Metrics (higher score = ID; ID is the positive class)."""

from .ood import OODMetrics, fpr_at_tpr, ood_metrics, roc, threshold_at_tpr

__all__ = ["OODMetrics", "fpr_at_tpr", "ood_metrics", "roc", "threshold_at_tpr"]
