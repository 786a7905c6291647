"""A prompt prefix every row shares runs once (rollout/shared_prefix.py): the split layout on hand-made rows,
and the same samples, log-probs and gradients as the plain one-forward path, in the generation engine and the
training log-prob pass, on the tiny model."""
import pytest
import torch

import fairalign.rollout.shared_prefix as sp
from fairalign.rollout import HFGenerationEngine
from fairalign.rollout.logprobs import sequence_logprobs
from fairalign.rollout.shared_prefix import common_prefix_len, split_prefix


def _left_pad(rows, pad=0):
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), P, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        mask[i, P - len(r):] = 1
    return ids, mask


def test_split_layout_by_hand(monkeypatch):
    monkeypatch.setattr(sp, "MIN_SHARED_PREFIX", 2)
    ids, mask = _left_pad([[5, 6, 7, 8, 9], [5, 6, 7, 3], [5, 6, 7, 8, 1, 2]])
    assert common_prefix_len(ids, mask) == 3  # 5 6 7 shared; 8 is not in row 1
    s = split_prefix(ids, mask, 3)
    assert s.prefix_ids.tolist() == [[5, 6, 7]]
    assert s.suffix_ids[:, -1].tolist() == [9, 3, 2]
    assert s.suffix_mask.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert s.mask.tolist() == [[1, 1, 1, 0, 1, 1], [1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    assert [p[m.bool()].tolist() for p, m in zip(s.position, s.mask)] == [[0, 1, 2, 3, 4], [0, 1, 2, 3],
                                                                          [0, 1, 2, 3, 4, 5]]
    # each row keeps one token after the prefix; short prefixes and single rows stay on the plain path
    ids2, mask2 = _left_pad([[5, 6, 7], [5, 6, 7, 8]])
    assert common_prefix_len(ids2, mask2) == 2
    assert common_prefix_len(*_left_pad([[5, 6, 7, 8]])) == 0
    monkeypatch.setattr(sp, "MIN_SHARED_PREFIX", 4)
    assert common_prefix_len(ids, mask) == 0


def _prompts(vocab: int, n: int, shared: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(3, vocab, (shared,), generator=g).tolist()
    return _left_pad([head + torch.randint(3, vocab, (1 + 3 * i,), generator=g).tolist() for i in range(n)])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("cpu_kernels", [True, False])
def test_engine_samples_what_the_one_forward_prefill_samples(tiny_policy, monkeypatch, temperature, cpu_kernels):
    model, tok = tiny_policy
    ids, mask = _prompts(model.config.vocab_size, n=3, shared=80)
    engine = HFGenerationEngine(model, tok, cpu_kernels=cpu_kernels, max_new_tokens=12, temperature=temperature)
    calls = []
    real = sp.prefill_split
    monkeypatch.setattr("fairalign.rollout.hf_engine.prefill_split",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = engine.sample(ids, mask, torch.Generator().manual_seed(3), generations=2, return_logprobs=True)
    assert calls  # the shared path ran
    monkeypatch.setattr(sp, "MIN_SHARED_PREFIX", 10**6)
    monkeypatch.setattr("fairalign.rollout.hf_engine.common_prefix_len", sp.common_prefix_len)
    plain = engine.sample(ids, mask, torch.Generator().manual_seed(3), generations=2, return_logprobs=True)
    assert len(calls) == 1
    assert torch.equal(shared[0], plain[0]) and torch.equal(shared[1], plain[1])
    torch.testing.assert_close(shared[3], plain[3], rtol=1e-4, atol=1e-5)


def test_training_logprobs_and_gradients_match_the_one_forward_pass(tiny_policy, monkeypatch):
    model, _ = tiny_policy
    V = model.config.vocab_size
    p_ids, p_mask = _prompts(V, n=3, shared=70, seed=1)
    rep = torch.tensor([0, 0, 1, 2, 2])  # prompts 0 and 2 twice (a group), prompt 1 once
    p_ids, p_mask = p_ids[rep], p_mask[rep]
    r_ids = torch.randint(3, V, (5, 6), generator=torch.Generator().manual_seed(2))
    r_mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 6, [1] * 2 + [0] * 4], dtype=torch.bool)

    def run():
        model.zero_grad(set_to_none=True)
        logp, ent = sequence_logprobs(model, p_ids, p_mask, r_ids, r_mask, with_entropy=True)
        (logp * torch.arange(1, 7)).sum().backward()  # weights so every position's gradient counts
        return logp.detach(), ent, [p.grad.clone() for p in model.parameters()]
    calls = []
    real = sp.prefill_split
    monkeypatch.setattr("fairalign.rollout.logprobs.prefill_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = run()
    assert calls
    monkeypatch.setattr("fairalign.rollout.logprobs.common_prefix_len", lambda ids, mask: 0)
    plain = run()
    assert len(calls) == 1
    torch.testing.assert_close(shared[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared[1], plain[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(shared[2], plain[2]):  # float sums in another order: compared relative to the norm
        assert float((a - b).norm()) <= 1e-5 * float(b.norm()) + 1e-7
