"""Metrics (higher score = ID). ``fpr95`` has ID as the positive class, ``fpr95_ood_pos`` OoD (OpenOOD v1.5)."""

from .ood import OODMetrics, fpr_at_tpr, fpr_at_tpr_ood_pos, ood_metrics, roc, threshold_at_tpr

__all__ = ["OODMetrics", "fpr_at_tpr", "fpr_at_tpr_ood_pos", "ood_metrics", "roc", "threshold_at_tpr"]
