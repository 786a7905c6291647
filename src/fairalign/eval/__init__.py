"""Pure evaluation metrics (no models, no files)."""

from .dialogue import alignment_by_turn, dialogue_metrics

__all__ = ["alignment_by_turn", "dialogue_metrics"]
