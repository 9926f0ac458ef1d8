"""ensemble-distill: ensemble distillation for structured prediction.

Every stage produces or consumes per-position distributions over a label or token vocabulary.
"""

__version__ = "0.1.0"


def load_model(folder, device: str = "cpu"):
    """A model rebuilt from its own folder (member, individual or student): see tasks.load_model."""
    from .tasks import load_model as load

    return load(folder, device)
