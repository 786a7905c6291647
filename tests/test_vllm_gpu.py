"""The vLLM engine against real vLLM on a CUDA GPU (marker `gpu`; run with `pytest -m gpu`).

Skips unless CUDA and vLLM are importable. Checks that greedy decoding of the tiny model gives the
same completions through vLLM as through the transformers engine, that vLLM's log-probs agree with
the training model's, and that `sync_weights` makes vLLM follow a change of the policy's weights.
Never run in this release's development (no GPU was available): see docs/performance.md.
"""
import gc

import pytest
import torch

pytestmark = pytest.mark.gpu

PROMPTS = ["Hello there, how are you today?", "What is 2 + 3?", "Tell me a short story about the sea please."]
MAX_NEW = 16


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    """(model, tokenizer, vLLM engine) on a private copy of the tiny model; vLLM on the GPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("vllm")
    from fairalign.models import load_policy
    from fairalign.rollout import VLLMGenerationEngine

    model, tok = load_policy(tiny_model_dir)
    model.eval()
    engine = VLLMGenerationEngine(model, tok, max_new_tokens=MAX_NEW, temperature=0, dtype="float32",
                                  gpu_memory_utilization=0.25, enforce_eager=True, seed=0)
    yield model, tok, engine
    engine.close()
    del engine
    gc.collect()
    torch.cuda.empty_cache()


def _hf_greedy(model, tok, generations=1):
    from fairalign.rollout import HFGenerationEngine

    return HFGenerationEngine(model, tok, max_new_tokens=MAX_NEW, temperature=0).generate(
        PROMPTS, generations=generations, return_logprobs=True)


def test_greedy_matches_the_transformers_engine(setup):
    model, tok, engine = setup
    ref = _hf_greedy(model, tok, generations=2)
    got = engine.generate(PROMPTS, generations=2)
    assert torch.equal(got.prompt_ids.cpu(), ref.prompt_ids.cpu())
    assert got.completions == ref.completions
    assert torch.equal(got.response_ids.cpu(), ref.response_ids.cpu())
    assert torch.equal(got.truncated.cpu(), ref.truncated.cpu())
    gap = (got.engine_logp.cpu() - ref.old_logp.cpu()).abs()[ref.response_mask.cpu()]
    assert gap.max() < 1e-3, f"vLLM vs training-model log-prob gap {gap.max():.2e}"


def test_sync_weights_changes_what_vllm_generates(setup):
    model, tok, engine = setup
    before = engine.generate(PROMPTS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    ref = _hf_greedy(model, tok)
    assert ref.completions != before.completions  # the perturbation matters for greedy decoding
    stale = engine.generate(PROMPTS)
    assert stale.completions == before.completions  # vLLM serves its own copy until synced
    engine.sync_weights(model)
    after = engine.generate(PROMPTS)
    assert after.completions == ref.completions
    assert torch.equal(after.response_ids.cpu(), ref.response_ids.cpu())
