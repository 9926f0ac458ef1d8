"""Calibration: metrics over (confidence, correct) events; see metrics.py for the definitions."""

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

__all__ = [
    "BalancedCalibration",
    "TypeCalibration",
    "balanced_calibration",
    "brier",
    "ece",
    "entity_type_confidences",
    "gold_entity_types",
    "stratified_brier",
    "topk_ece",
    "topk_events",
]
