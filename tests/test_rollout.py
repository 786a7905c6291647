"""HFGenerationEngine and RolloutBatch on the tiny model: shapes, padding, EOS handling, sampling, seeds."""
import pytest
import torch

from fairalign.rollout import HFGenerationEngine, RolloutBatch, decode_completions, filter_logits

PROMPTS = ["Hello there, how are you today?", "What is 2 + 3?", "Tell me a short story about the sea please."]


def engine(policy, **kw):
    model, tok = policy
    return HFGenerationEngine(model, tok, **{"max_new_tokens": 8, **kw})


def check_mask_and_eos(batch, eos_ids, pad_id):
    """The EOS / mask / padding contract, checked row by row."""
    eos = set(eos_ids)
    for ids, mask, trunc, length in zip(batch.response_ids.tolist(), batch.response_mask.tolist(),
                                         batch.truncated.tolist(), batch.lengths.tolist()):
        n = sum(mask)
        assert mask == [True] * n + [False] * (len(mask) - n) and n == length >= 1
        first_eos = next((t for t, tok in enumerate(ids) if tok in eos), None)
        if trunc:
            assert first_eos is None and n == len(ids)
        else:
            assert first_eos == n - 1  # mask covers up to and including the first EOS
        assert all(tok == pad_id for tok in ids[n:])


def test_batch_shapes_adjacency_and_index(tiny_policy):
    batch = engine(tiny_policy).generate(PROMPTS, generations=3, index=[7, 3, 5], groups=["a", "b", "a"],
                                         generator_seed=0)
    B = 9
    assert isinstance(batch, RolloutBatch) and len(batch) == B
    P = batch.prompt_ids.shape[1]
    assert batch.prompt_mask.shape == (B, P) and batch.prompt_mask.dtype == torch.bool
    assert batch.response_ids.shape[0] == B and 1 <= batch.response_ids.shape[1] <= 8
    assert batch.response_mask.dtype == torch.bool and batch.truncated.dtype == torch.bool
    assert batch.index.tolist() == [7, 7, 7, 3, 3, 3, 5, 5, 5]
    assert batch.groups == ["a"] * 3 + ["b"] * 3 + ["a"] * 3
    assert batch.prompts == [p for p in PROMPTS for _ in range(3)]
    assert torch.equal(batch.lengths, batch.response_mask.sum(1))
    for i in range(3):  # one prompt's generations are adjacent and share the prompt tokens
        rows = batch.prompt_ids[3 * i: 3 * i + 3]
        assert (rows == rows[0]).all()
    assert batch.old_logp is None and batch.rewards is None and batch.advantages is None
    assert len(batch.completions) == B


def test_default_index_and_groups(tiny_policy):
    batch = engine(tiny_policy, max_new_tokens=2).generate(PROMPTS[:2], generations=2)
    assert batch.index.tolist() == [0, 0, 1, 1] and batch.groups == [None] * 4


def test_prompts_are_chat_templated_and_left_padded(tiny_policy):
    _, tok = tiny_policy
    eng = engine(tiny_policy)
    ids, mask = eng.encode_prompts(["Hi", [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Yo"}]])
    texts = ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nYo<|im_end|>\n<|im_start|>assistant\n"]
    for row, m, text in zip(ids, mask, texts):
        expected = tok(text, add_special_tokens=False)["input_ids"]
        n = int(m.sum())
        assert row[m].tolist() == expected and m.tolist() == [False] * (len(m) - n) + [True] * n
        assert (row[~m] == tok.pad_token_id).all()


def test_raw_text_prompts_and_template_errors(tiny_policy):
    _, tok = tiny_policy
    ids, mask = engine(tiny_policy, chat_template="none").encode_prompts(["What is 2 + 3?"])
    assert ids[mask].tolist() == tok("What is 2 + 3?")["input_ids"]
    with pytest.raises(ValueError, match="chat template"):
        engine(tiny_policy, chat_template="none").encode_prompts([[{"role": "user", "content": "x"}]])
    with pytest.raises(ValueError, match="chat_template='chatml'.*auto"):
        engine(tiny_policy, chat_template="chatml")
    custom = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    ids, mask = engine(tiny_policy, chat_template=custom).encode_prompts(["hey"])
    assert ids[mask].tolist() == tok("[hey]", add_special_tokens=False)["input_ids"]


def test_max_prompt_length_keeps_the_end(tiny_policy):
    full, fmask = engine(tiny_policy).encode_prompts([PROMPTS[2]])
    cut, cmask = engine(tiny_policy, max_prompt_length=5).encode_prompts([PROMPTS[2]])
    assert cut.shape == (1, 5) and cmask.all() and cut[0].tolist() == full[fmask][-5:].tolist()


def test_greedy_matches_transformers_generate(tiny_policy):
    model, tok = tiny_policy
    eos = list(range(3, 300))  # many stop ids, so rows end at different steps
    batch = engine(tiny_policy, max_new_tokens=12, temperature=0, eos_token_id=eos).generate(PROMPTS)
    ref = model.generate(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask.long(), do_sample=False,
                         max_new_tokens=12, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    ref = ref[:, batch.prompt_ids.shape[1]:]
    assert torch.equal(batch.response_ids, ref)
    check_mask_and_eos(batch, eos, tok.pad_token_id)


def test_greedy_is_deterministic_and_ignores_seed(tiny_policy):
    eng = engine(tiny_policy, temperature=0)
    a, b = eng.generate(PROMPTS, generations=2, generator_seed=1), eng.generate(PROMPTS, generations=2, generator_seed=2)
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.response_ids[0::2], a.response_ids[1::2])  # greedy generations of a prompt agree


def test_generator_seed_reproduces_sampling(tiny_policy):
    eng = engine(tiny_policy, max_new_tokens=16)
    state = torch.get_rng_state()
    a = eng.generate(PROMPTS, generations=2, generator_seed=123)
    b = eng.generate(PROMPTS, generations=2, generator_seed=123)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call leaves the global RNG alone
    c = eng.generate(PROMPTS, generations=2, generator_seed=124)
    assert torch.equal(a.response_ids, b.response_ids) and a.completions == b.completions
    assert not torch.equal(a.response_ids, c.response_ids)
    torch.manual_seed(5)
    d = eng.generate(PROMPTS, generations=2)
    torch.manual_seed(5)
    e = eng.generate(PROMPTS, generations=2)
    assert torch.equal(d.response_ids, e.response_ids)  # unseeded calls follow torch.manual_seed


def test_response_mask_stops_after_first_eos(tiny_policy):
    _, tok = tiny_policy
    eos = list(range(0, 817, 9))  # ~1/9 of the vocabulary stops a row
    batch = engine(tiny_policy, max_new_tokens=10, eos_token_id=eos).generate(PROMPTS, generations=4,
                                                                             generator_seed=0)
    check_mask_and_eos(batch, eos, tok.pad_token_id)
    lengths = set(batch.lengths.tolist())
    assert len(lengths) > 2  # rows really stopped at different steps
    assert not batch.truncated.all()


def test_truncated_flag(tiny_policy):
    model, tok = tiny_policy
    greedy = engine(tiny_policy, max_new_tokens=4, temperature=0).generate(PROMPTS[:1])
    first = int(greedy.response_ids[0, 0])
    unused = next(t for t in range(3, 800) if t not in greedy.response_ids[0].tolist())
    stop_now = engine(tiny_policy, max_new_tokens=4, temperature=0, eos_token_id=[first]).generate(PROMPTS[:1])
    assert stop_now.response_ids.tolist() == [[first]] and stop_now.lengths.tolist() == [1]
    assert stop_now.truncated.tolist() == [False]
    never = engine(tiny_policy, max_new_tokens=4, temperature=0, eos_token_id=[unused]).generate(PROMPTS[:1])
    assert never.truncated.tolist() == [True] and never.lengths.tolist() == [4]
    everything = engine(tiny_policy, max_new_tokens=4, eos_token_id=list(range(len(tok)))).generate(PROMPTS, 2)
    assert everything.response_ids.shape[1] == 1 and not everything.truncated.any()


def test_all_ranks_keeps_decoding_until_every_rank_is_done(tiny_policy):
    """`all_ranks` answering False (another rank's rows still decode) keeps the loop going: the same
    forward calls as that rank, this rank's rows still end at their EOS."""
    model, tok = tiny_policy
    first = int(engine(tiny_policy, max_new_tokens=1, temperature=0).generate(PROMPTS[:1]).response_ids[0, 0])
    asked, calls = [], []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: calls.append(1), with_kwargs=True)
    try:
        batch = engine(tiny_policy, max_new_tokens=4, temperature=0, eos_token_id=[first],
                       all_ranks=lambda flag: asked.append(flag) and False).generate(PROMPTS[:1])
    finally:
        hook.remove()
    # the shared-prefix pre-fill is agreed first (no shared prefix with one prompt), then each decode stop
    assert asked == [False, True, True, True] and len(calls) == 4   # pre-fill + 3 decode steps
    assert batch.lengths.tolist() == [1] and batch.response_ids[0, 0] == first
    assert (batch.response_ids[0, 1:] == tok.pad_token_id).all() and not batch.truncated.any()


def test_tiny_top_p_is_greedy(tiny_policy):
    greedy = engine(tiny_policy, temperature=0).generate(PROMPTS)
    nucleus = engine(tiny_policy, temperature=1.0, top_p=1e-6).generate(PROMPTS, generator_seed=3)
    top1 = engine(tiny_policy, temperature=1.0, top_k=1).generate(PROMPTS, generator_seed=4)
    assert torch.equal(greedy.response_ids, nucleus.response_ids)
    assert torch.equal(greedy.response_ids, top1.response_ids)


def test_filter_logits_hand_values():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = filter_logits(logits, top_p=0.7)  # mass before each token: 0, .5, .8, .95
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    assert torch.allclose(kept[0, :2], logits[0, :2])
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=3)).tolist() == [[True, True, True, False]]
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.7)).tolist() == [[False, True, False, True]]


def test_sampling_frequencies_follow_temperature(tiny_policy):
    eng = engine(tiny_policy, temperature=2.0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).repeat(20000, 1)
    draws = eng._next_token(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    expected = torch.softmax(torch.tensor([1.0, 0.0, -0.5, 0.5]), 0)  # softmax(logits / 2)
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)


def test_decode_completions_skips_mask_and_specials(tiny_policy):
    _, tok = tiny_policy
    hello = tok("hello world", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([hello + [2, 0], hello + [7, 8]])
    mask = torch.tensor([[True] * (len(hello) + 1) + [False], [True] * len(hello) + [False, False]])
    assert decode_completions(tok, ids, mask) == ["hello world", "hello world"]


def test_engine_argument_errors(tiny_policy):
    with pytest.raises(ValueError, match="temperature"):
        engine(tiny_policy, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        engine(tiny_policy, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine(tiny_policy, max_new_tokens=0)
    eng = engine(tiny_policy)
    with pytest.raises(ValueError, match="generations"):
        eng.generate(PROMPTS, generations=0)
    with pytest.raises(ValueError, match="index"):
        eng.generate(PROMPTS, index=[0])
    with pytest.raises(ValueError, match="groups"):
        eng.generate(PROMPTS, groups=["a"])


def test_generation_restores_training_mode(fresh_tiny_policy):
    model, _ = fresh_tiny_policy
    model.train()
    engine(fresh_tiny_policy, max_new_tokens=2).generate(PROMPTS[:1])
    assert model.training


def _toy_batch(B=4, P=3, R=5):
    return RolloutBatch(
        prompt_ids=torch.arange(B * P).view(B, P), prompt_mask=torch.ones(B, P, dtype=torch.bool),
        response_ids=torch.arange(B * R).view(B, R), response_mask=torch.ones(B, R, dtype=torch.bool),
        lengths=torch.full((B,), R), truncated=torch.zeros(B, dtype=torch.bool),
        prompts=[f"p{i}" for i in range(B)], completions=[f"c{i}" for i in range(B)],
        index=torch.arange(B), groups=list("abab"), rewards=torch.arange(B).float(),
    )


def test_rollout_batch_select_and_validation():
    batch = _toy_batch()
    sub = batch.select([3, 1])
    assert sub.prompts == ["p3", "p1"] and sub.groups == ["b", "b"] and sub.rewards.tolist() == [3.0, 1.0]
    assert torch.equal(sub.response_ids, batch.response_ids[[3, 1]]) and sub.old_logp is None
    assert batch.to("cpu").prompts == batch.prompts
    with pytest.raises(ValueError, match="lengths"):
        RolloutBatch(**{**batch.__dict__, "lengths": torch.zeros(3)})
    with pytest.raises(ValueError, match="completions"):
        RolloutBatch(**{**batch.__dict__, "completions": ["x"]})
    with pytest.raises(ValueError, match="old_logp"):
        RolloutBatch(**{**batch.__dict__, "old_logp": torch.zeros(4, 4)})


@pytest.mark.parametrize("temperature", [1.0, 0.6, 0.0])
def test_sampling_logprobs_match_a_full_forward(tiny_policy, temperature):
    """The KV-cached decode sees exactly what one full forward sees (masks, positions, cache)."""
    from fairalign.rollout import sequence_logprobs

    model, _ = tiny_policy
    eng = engine(tiny_policy, max_new_tokens=12, temperature=temperature, eos_token_id=list(range(0, 817, 11)))
    batch = eng.generate(PROMPTS, generations=3, generator_seed=9, return_logprobs=True)
    assert len(set(batch.prompt_mask.sum(1).tolist())) > 1  # prompts really were padded
    with torch.no_grad():
        ref, _ = sequence_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                                   batch.response_mask, temperature=temperature or 1.0)
    assert batch.old_logp.shape == batch.response_ids.shape
    assert torch.allclose(batch.old_logp, ref, atol=1e-5), (batch.old_logp - ref).abs().max()
    assert engine(tiny_policy).generate(PROMPTS[:1]).old_logp is None


def test_decode_position_ids_continue_each_row(tiny_policy):
    model, _ = tiny_policy
    seen = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: seen.append(kw["position_ids"].clone()),
                                                 with_kwargs=True)
    try:
        batch = engine(tiny_policy, max_new_tokens=4, temperature=0, eos_token_id=[10**6]).generate(PROMPTS)
    finally:
        hook.remove()
    n_real = batch.prompt_mask.sum(1)  # [B]
    prefill, *steps = seen
    for i in range(len(batch)):
        assert prefill[i, -int(n_real[i]):].tolist() == list(range(int(n_real[i])))
    assert [s[:, 0].tolist() for s in steps] == [(n_real + k).tolist() for k in range(len(steps))]
    assert len(steps) == 3


def test_prompts_are_prefilled_once_not_per_generation(tiny_policy):
    model, _ = tiny_policy
    rows = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: rows.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        batch = engine(tiny_policy, max_new_tokens=3, eos_token_id=[10**6]).generate(PROMPTS, generations=4)
    finally:
        hook.remove()
    assert rows[0] == (3, batch.prompt_ids.shape[1])  # pre-fill: one row per distinct prompt
    assert rows[1:] == [(12, 1), (12, 1)]  # decode steps: every generation


def test_sample_categorical_matches_probabilities_and_never_draws_zero_mass():
    from fairalign.rollout.hf_engine import sample_categorical

    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    n = 40_000
    draws = sample_categorical(probs.expand(n, -1).contiguous(), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=6).float() / n
    assert freq[probs == 0].sum() == 0
    sigma = (probs * (1 - probs) / n).sqrt()
    assert ((freq - probs).abs() <= 5 * sigma + 1e-9).all(), freq


def test_sample_categorical_rounding_at_the_top_picks_the_last_positive_token(monkeypatch):
    from fairalign.rollout import hf_engine

    probs = torch.tensor([[0.3, 0.7, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    monkeypatch.setattr(hf_engine.torch, "rand", lambda *a, **k: torch.ones(2, 1))  # u == total
    assert hf_engine.sample_categorical(probs, torch.Generator()).tolist() == [1, 2]
