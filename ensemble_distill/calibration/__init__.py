"""Calibration and task metrics for per-position distributions; metrics.py has the definitions.

The plotting and report modules (matplotlib) are imported on first use, so `import ensemble_distill.calibration`
stays light.
"""

from ensemble_distill.calibration.bootstrap import Difference, Interval, bootstrap, bootstrap_ci, paired_bootstrap
from ensemble_distill.calibration.metrics import (
    BalancedCalibration,
    TypeCalibration,
    balanced_calibration,
    brier,
    dense_topk_events,
    ece,
    entity_type_confidences,
    gold_entity_types,
    stratified_brier,
    topk_ece,
    topk_events,
)
from ensemble_distill.calibration.task_metrics import (
    OperatingPoint,
    bleu_from_stats,
    bleu_stats,
    label_span_counts,
    label_span_type_counts,
    precision_recall_at,
    span_counts,
    span_metrics,
    span_scores,
    threshold_for_precision,
    type_span_metrics,
)
from ensemble_distill.calibration.temperature import apply_temperature, fit_temperature

_LAZY = {
    "evaluate": "report", "format_table": "report", "compare": "comparison", "format_comparison": "comparison",
    "precision_recall_curve": "plots", "EventRanking": "plots", "PRCurve": "plots",
    "reliability_diagram": "plots", "pr_curve_plot": "plots",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"ensemble_distill.calibration.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ensemble_distill.calibration' has no attribute {name!r}")


__all__ = [
    "BalancedCalibration", "TypeCalibration", "balanced_calibration", "brier", "ece", "entity_type_confidences",
    "gold_entity_types", "stratified_brier", "topk_ece", "topk_events", "dense_topk_events",
    "Interval", "bootstrap", "bootstrap_ci", "Difference", "paired_bootstrap", "bleu_from_stats", "bleu_stats",
    "span_counts", "label_span_counts", "label_span_type_counts", "span_scores", "span_metrics", "type_span_metrics",
    "OperatingPoint", "threshold_for_precision", "precision_recall_at",
    "apply_temperature", "fit_temperature", *_LAZY,
]
