"""Evaluation. `dialogue` holds pure metrics (no models, no files; the RLPA environment uses them);
`dialogue_cli` is `fairalign eval-dialogue`, which loads a model and builds an engine, and is
therefore not imported here."""

from .dialogue import alignment_by_turn, dialogue_metrics

__all__ = ["alignment_by_turn", "dialogue_metrics"]
