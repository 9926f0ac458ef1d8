"""ensemble-distill: ensemble distillation for structured prediction.

Every stage produces or consumes per-position distributions over a label or token vocabulary.
"""

__version__ = "0.1.0"
