"""Rollouts: the batch structure, the transformers generation engine, and the log-prob pass."""
from fairalign.rollout.batch import RolloutBatch, concat_batches
from fairalign.rollout.hf_engine import HFGenerationEngine, decode_completions, filter_logits
from fairalign.rollout.logprobs import (
    entropy_from_logits,
    gather_logprobs,
    sequence_logprobs,
    supports_logits_to_keep,
)

__all__ = [
    "HFGenerationEngine",
    "RolloutBatch",
    "concat_batches",
    "decode_completions",
    "entropy_from_logits",
    "filter_logits",
    "gather_logprobs",
    "sequence_logprobs",
    "supports_logits_to_keep",
]
