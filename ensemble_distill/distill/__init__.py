"""Ensemble distillation, for both tasks: the losses, memoising a teacher ensemble, training a student."""
