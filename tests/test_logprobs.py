"""sequence_logprobs against a naive per-row full-forward reference; padding invariance; efficiency."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.rollout import HFGenerationEngine, entropy_from_logits, gather_logprobs, sequence_logprobs


@pytest.fixture(scope="module")
def batch(tiny_policy):
    """A sampled batch with varied prompt and response lengths (a tenth of the vocabulary stops rows)."""
    model, tok = tiny_policy
    prompts = ["Hi", "What is 12 + 7? Answer briefly.", "Tell me a long story about the quick brown fox.", "Yo"]
    eng = HFGenerationEngine(model, tok, max_new_tokens=12, eos_token_id=list(range(0, 817, 10)))
    b = eng.generate(prompts, generations=2, generator_seed=0)
    assert len(set(b.lengths.tolist())) > 1 and len(set(b.prompt_mask.sum(1).tolist())) > 1
    return b


def naive_reference(model, batch, temperature=1.0):
    """Row by row, no padding at all: full forward, log_softmax over all logits, gather; and entropy."""
    B, R = batch.response_ids.shape
    logp, ent = torch.zeros(B, R), torch.zeros(B, R)
    for i in range(B):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i]]
        n = int(batch.lengths[i])
        resp = batch.response_ids[i, :n]
        logits = model(torch.cat([prompt, resp])[None]).logits[0] / temperature  # [p + n, V]
        logsm = torch.log_softmax(logits, dim=-1)[len(prompt) - 1: len(prompt) - 1 + n]  # [n, V]
        logp[i, :n] = logsm.gather(1, resp[:, None])[:, 0]
        ent[i, :n] = -(logsm.exp() * logsm).sum(-1)
    return logp, ent


def args(b):
    return b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_naive_full_forward(tiny_policy, batch, temperature):
    model, _ = tiny_policy
    with torch.no_grad():
        logp, ent = sequence_logprobs(model, *args(batch), with_entropy=True, temperature=temperature)
        ref_logp, ref_ent = naive_reference(model, batch, temperature)
    assert logp.shape == ent.shape == batch.response_ids.shape
    assert torch.allclose(logp, ref_logp, atol=1e-5), (logp - ref_logp).abs().max()
    assert torch.allclose(ent, ref_ent, atol=1e-4), (ent - ref_ent).abs().max()
    assert (logp[~batch.response_mask] == 0).all() and (ent[~batch.response_mask] == 0).all()


def test_left_padding_invariance(tiny_policy, batch):
    model, tok = tiny_policy
    extra = 7
    pad_ids = torch.full((len(batch), extra), tok.pad_token_id)
    more_ids = torch.cat([pad_ids, batch.prompt_ids], 1)
    more_mask = torch.cat([torch.zeros(len(batch), extra, dtype=torch.bool), batch.prompt_mask], 1)
    with torch.no_grad():
        a, _ = sequence_logprobs(model, *args(batch))
        b, _ = sequence_logprobs(model, more_ids, more_mask, batch.response_ids, batch.response_mask)
        # one row alone (its own, minimal padding) gives the same numbers as inside the batch
        solo, _ = sequence_logprobs(model, *(t[2:3] for t in args(batch)))
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert torch.allclose(a[2:3], solo, atol=1e-5)


def test_micro_batches_and_gradients_match(fresh_tiny_policy, batch):
    model, _ = fresh_tiny_policy
    weight = model.model.layers[0].mlp.up_proj.weight
    full, _ = sequence_logprobs(model, *args(batch))
    (grad_full,) = torch.autograd.grad(full.sum(), weight)
    chunked, none = sequence_logprobs(model, *args(batch), micro_batch_size=3)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), weight)
    ref, _ = naive_reference(model, batch)
    (grad_ref,) = torch.autograd.grad(ref.sum(), weight)
    assert none is None
    assert torch.allclose(full, chunked, atol=1e-6)
    assert torch.allclose(grad_full, grad_ref, atol=1e-4) and torch.allclose(grad_chunked, grad_ref, atol=1e-4)


def test_logits_only_for_response_positions(tiny_policy, batch):
    """lm_head sees at most max(lengths) positions per row, never the prompt (rows that share a
    prompt get their first response logit from one shared prompt pass)."""
    model, _ = tiny_policy
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    try:
        with torch.no_grad():
            sequence_logprobs(model, *args(batch))
    finally:
        hook.remove()
    n = int(batch.lengths.max())
    assert all(rows <= len(batch) and pos <= n and h == model.config.hidden_size for rows, pos, h in seen)
    assert sum(rows * pos for rows, pos, _ in seen) <= len(batch) * n


class NoKeepWrapper(torch.nn.Module):
    """A model whose forward does not accept logits_to_keep (the fallback path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_fallback_without_logits_to_keep(tiny_policy, batch):
    model, _ = tiny_policy
    with torch.no_grad():
        a, _ = sequence_logprobs(model, *args(batch))
        b, _ = sequence_logprobs(NoKeepWrapper(model), *args(batch))
    assert torch.allclose(a, b, atol=1e-6)


def test_all_masked_rows_and_columns_are_zero(tiny_policy, batch):
    model, _ = tiny_policy
    mask = batch.response_mask.clone()
    mask[1] = False
    with torch.no_grad():
        logp, ent = sequence_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask,
                                      with_entropy=True)
        full, _ = sequence_logprobs(model, *args(batch))
    assert (logp[1] == 0).all() and (ent[1] == 0).all()
    assert torch.allclose(logp[0], full[0], atol=1e-6)


def test_argument_errors(tiny_policy, batch):
    model, _ = tiny_policy
    with pytest.raises(ValueError, match="temperature"):
        sequence_logprobs(model, *args(batch), temperature=0)
    with pytest.raises(ValueError, match="left-padded"):
        right = batch.prompt_mask.flip(1)
        sequence_logprobs(model, batch.prompt_ids, right, batch.response_ids, batch.response_mask)
    with pytest.raises(ValueError, match="micro_batch_size"):
        sequence_logprobs(model, *args(batch), micro_batch_size=0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=2, max_size=12), st.data())
def test_gather_and_entropy_match_log_softmax(values, data):
    logits = torch.tensor(values, dtype=torch.float64)
    ids = torch.tensor(data.draw(st.integers(0, len(values) - 1)))
    logsm = torch.log_softmax(logits, -1)
    assert torch.allclose(gather_logprobs(logits, ids), logsm[ids])
    assert torch.allclose(entropy_from_logits(logits), -(logsm.exp() * logsm).sum())
    lse = torch.logsumexp(logits, -1)
    assert torch.allclose(gather_logprobs(logits, ids, lse), logsm[ids])
    assert torch.allclose(entropy_from_logits(logits, lse), -(logsm.exp() * logsm).sum())


def test_entropy_hand_values():
    assert math.isclose(float(entropy_from_logits(torch.zeros(8))), math.log(8), rel_tol=1e-6)
    two = torch.tensor([0.0, 0.0, -1e4])  # two equal tokens, a third with ~zero mass
    assert math.isclose(float(entropy_from_logits(two)), math.log(2), rel_tol=1e-6)


def test_position_ids_count_real_tokens_only(tiny_policy, batch):
    """RoPE hides a uniform position shift, so check the position ids handed to the model directly."""
    model, _ = tiny_policy
    seen = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():  # another rank that cannot share prompts: the one-forward-per-row path
            sequence_logprobs(model, *args(batch), all_ranks=lambda flag: False)
    finally:
        hook.remove()
    (pos,) = seen
    n_pad = (~batch.prompt_mask).sum(1)  # [B]; the forward trims columns that are padding in every row
    trimmed = int((~batch.prompt_mask).all(0).sum())
    for i in range(len(batch)):
        real = pos[i, int(n_pad[i]) - trimmed:]
        assert real.tolist() == list(range(len(real)))


def test_shared_prompt_prefix_position_ids(tiny_policy, batch):
    """Shared-prompt path: the prompt pass counts real tokens from 0 and each row's response
    positions continue right after its own prompt."""
    model, _ = tiny_policy
    seen = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw["position_ids"]), with_kwargs=True)
    try:
        with torch.no_grad():
            sequence_logprobs(model, *args(batch))
    finally:
        hook.remove()
    assert len(seen) == 2, "generations of one prompt must share one prompt pass"
    pos_prompt, pos_resp = seen
    for row in pos_prompt.tolist():   # left padding: zeros, then 0..k-1 over the k real tokens
        k = row[-1] + 1
        assert row[len(row) - k:] == list(range(k)) and all(v == 0 for v in row[:len(row) - k])
    assert sorted({row[-1] + 1 for row in pos_prompt.tolist()}) == sorted(set(batch.prompt_mask.sum(1).tolist()))
    n_real = batch.prompt_mask.sum(1)  # [B]
    for i in range(len(batch)):
        assert pos_resp[i].tolist() == list(range(int(n_real[i]), int(n_real[i]) + pos_resp.shape[1]))


def test_shared_prompt_prefix_matches_one_forward_per_row(tiny_policy):
    """Rows sharing a prompt run the prompt once (KV cache gathered); log-probs and gradients equal
    the one-forward-per-row computation (taken when `all_ranks` says some rank cannot share)."""
    model, tok = tiny_policy
    torch.manual_seed(0)
    prompt = torch.randint(5, 200, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, :3] = False                                              # one left-padded prompt
    p_ids = prompt.repeat_interleave(2, 0)[[0, 3, 1, 2, 5, 4]]       # shared prompts, shuffled rows
    p_mask = mask.repeat_interleave(2, 0)[[0, 3, 1, 2, 5, 4]]
    r_ids = torch.randint(5, 200, (6, 5))
    r_mask = torch.ones(6, 5, dtype=torch.bool)
    r_mask[2, 3:] = False
    out, asked = {}, []
    for name, agree in (("shared", lambda flag: asked.append(flag) or flag), ("full", lambda flag: False)):
        model.zero_grad(set_to_none=True)
        logp, ent = sequence_logprobs(model, p_ids, p_mask, r_ids, r_mask, with_entropy=True, all_ranks=agree)
        logp.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[name] = (logp.detach(), ent, grads)
    model.zero_grad(set_to_none=True)
    # this rank could share prompts; the paths are agreed per micro-batch: the shared-prompt path, then a
    # shared prefix of the distinct prompts (none here: 7-token prompts, shared_prefix.MIN_SHARED_PREFIX)
    assert asked == [True, False]
    torch.testing.assert_close(out["shared"][0], out["full"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["shared"][1], out["full"][1], atol=1e-4, rtol=1e-4)
    for n in out["full"][2]:
        torch.testing.assert_close(out["shared"][2][n], out["full"][2][n], atol=1e-5, rtol=1e-4)
