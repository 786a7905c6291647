"""vLLM rollout engine (optional GPU extra `fairalign[vllm]`): not implemented in this release.

`rollout.engine=vllm` fails at start-up with one line that says what is missing; it never falls
back silently to the transformers engine. See docs/performance.md ("vLLM (GPU)").
"""
from __future__ import annotations


def make_vllm_engine(model, tokenizer, rollout_cfg):
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise ValueError("rollout.engine=vllm needs vLLM on a CUDA GPU: pip install 'fairalign[vllm]' "
                         "(or use rollout.engine=hf)")
    if not torch.cuda.is_available():
        raise ValueError("rollout.engine=vllm needs a CUDA GPU; none is visible (use rollout.engine=hf)")
    raise ValueError("rollout.engine=vllm is not available in this fairalign release (the colocated vLLM "
                     "engine with weight sync is planned); use rollout.engine=hf")
