"""Calibration and task metrics for per-position distributions; metrics.py has the definitions.

The plotting and report modules (matplotlib) are imported on first use, so `import ensemble_distill.calibration`
stays light.
"""

from ensemble_distill.calibration.bootstrap import Interval, bootstrap, bootstrap_ci
from ensemble_distill.calibration.metrics import (
    BalancedCalibration,
    TypeCalibration,
    balanced_calibration,
    brier,
    ece,
    entity_type_confidences,
    gold_entity_types,
    stratified_brier,
    topk_ece,
    topk_events,
)
from ensemble_distill.calibration.task_metrics import bleu_from_stats, bleu_stats, span_counts, span_scores
from ensemble_distill.calibration.temperature import apply_temperature, fit_temperature

_LAZY = {
    "evaluate": "report", "format_table": "report",
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
    "gold_entity_types", "stratified_brier", "topk_ece", "topk_events",
    "Interval", "bootstrap", "bootstrap_ci", "bleu_from_stats", "bleu_stats", "span_counts", "span_scores",
    "apply_temperature", "fit_temperature", *_LAZY,
]
