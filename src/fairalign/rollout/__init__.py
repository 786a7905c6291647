"""Rollouts: the batch structure, the generation engines (transformers; vLLM, optional and GPU only),
and the log-prob pass. Importing this package never imports vLLM."""
from fairalign.rollout.batch import RolloutBatch, concat_batches
from fairalign.rollout.engine_base import GenerationEngineBase, Sampling, decode_completions
from fairalign.rollout.hf_engine import HFGenerationEngine, filter_logits
from fairalign.rollout.logprobs import (
    entropy_from_logits,
    gather_logprobs,
    sequence_logprobs,
    supports_logits_to_keep,
)
from fairalign.rollout.vllm_engine import VLLMGenerationEngine

__all__ = [
    "GenerationEngineBase",
    "HFGenerationEngine",
    "RolloutBatch",
    "Sampling",
    "concat_batches",
    "decode_completions",
    "entropy_from_logits",
    "filter_logits",
    "gather_logprobs",
    "sequence_logprobs",
    "supports_logits_to_keep",
    "VLLMGenerationEngine",
]
