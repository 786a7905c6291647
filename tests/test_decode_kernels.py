"""The fast paths give the plain paths' numbers: packed linear weights and the growing KV cache in the decode
loop (rollout/decode_kernels.py, `HFGenerationEngine(cpu_kernels=...)`), and behaviour log-probs taken from
the first minibatch's own forward (train/update.py) instead of a separate pass, through the Trainer."""
import pytest
import torch

from fairalign.rollout import HFGenerationEngine
from fairalign.rollout.decode_kernels import growing_cache, packed_linears, packing_available

PROMPTS = ["Hello there, how are you today?", "What is 2 + 3?", "Tell me a short story about the sea please.",
           "Name three colours."]

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
def test_packed_linears_match_f_linear_and_are_removed_on_exit():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False))
    x = torch.randn(5, 3, 16)  # [b, t, in]: any leading shape
    with torch.no_grad():
        want = net(x)
        with packed_linears(net, rows=5) as n:
            assert n == 2 and all("forward" in m.__dict__ for m in (net[0], net[2]))
            got = net(x)
    assert not any("forward" in m.__dict__ for m in net.modules())  # plain Linear.forward again
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's bf16 linear
        want16 = net(x)
        with packed_linears(net, rows=5):
            got16 = net(x)
    assert got16.dtype == want16.dtype == torch.bfloat16
    torch.testing.assert_close(got16.float(), want16.float(), rtol=2e-2, atol=2e-2)


def test_packing_is_skipped_where_it_cannot_run():
    net = torch.nn.Linear(4, 4).to(torch.float64)  # an unsupported dtype: left alone
    with packed_linears(net, rows=2) as n:
        assert n == 0 and "forward" not in net.__dict__
    assert packing_available(net) == torch.backends.mkldnn.is_available()  # a CPU model: available with oneDNN


def _decode_logits(model, cache, steps: int, select: torch.Tensor | None):
    """Prefill 2 prompts, repeat each twice, decode `steps` greedy tokens (dropping rows `select` keeps
    after the first step): the logits [rows, V] of every step."""
    ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    kw = {} if cache is None else {"past_key_values": cache}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)
    logits = out.logits[:, -1].repeat_interleave(2, 0)  # [4, V]
    attn, nxt = mask.repeat_interleave(2, 0), pos[:, -1:].repeat_interleave(2, 0) + 1
    seen = []
    for s in range(steps):
        tok = logits.argmax(-1)
        seen.append(logits)
        if s == 1 and select is not None:
            cache.batch_select_indices(select)
            tok, attn, nxt = tok[select], attn[select], nxt[select]
        attn = torch.cat([attn, torch.ones(len(attn), 1, dtype=attn.dtype)], 1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=nxt, past_key_values=cache,
                    use_cache=True)
        cache, logits, nxt = out.past_key_values, out.logits[:, -1], nxt + 1
    return seen + [logits]


@pytest.mark.parametrize("select", [None, torch.tensor([0, 2, 3])])
def test_growing_cache_gives_the_default_caches_logits(tiny_policy, select):
    model, _ = tiny_policy
    cache = growing_cache(model)
    assert cache is not None  # the tiny Qwen2 has full attention only
    with torch.no_grad():
        want = _decode_logits(model, None, 70, select)  # > SPARE_POSITIONS: the buffer grows
        got = _decode_logits(model, cache, 70, select)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _eos_that_ends_rows_early(policy, **kw) -> list[int]:
    """Tokens the plain engine samples at steps 3, 7 and 11 of rows 0, 4 and 8 (three prompts) with these
    settings: as EOS, rows end (and leave the cache) at different steps."""
    model, tok = policy
    batch = HFGenerationEngine(model, tok, cpu_kernels=False, **kw).generate(PROMPTS, generations=4,
                                                                             generator_seed=3)
    return sorted({int(batch.response_ids[r, s]) for r, s in ((0, 2), (4, 6), (8, 10))})


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_with_cpu_kernels_samples_what_the_plain_engine_samples(tiny_policy, temperature):
    model, tok = tiny_policy
    kw = dict(max_new_tokens=16, temperature=temperature)
    kw["eos_token_id"] = _eos_that_ends_rows_early(tiny_policy, **kw)
    plain = HFGenerationEngine(model, tok, cpu_kernels=False, **kw).generate(
        PROMPTS, generations=4, generator_seed=3, return_logprobs=True)
    fast = HFGenerationEngine(model, tok, cpu_kernels=True, **kw).generate(
        PROMPTS, generations=4, generator_seed=3, return_logprobs=True)
    lengths = plain.lengths.tolist()
    assert len(set(lengths)) > 2 and min(lengths) < 8  # rows really ended at different steps
    assert torch.equal(fast.response_ids, plain.response_ids)
    assert torch.equal(fast.response_mask, plain.response_mask)
    assert torch.equal(fast.truncated, plain.truncated)
    torch.testing.assert_close(fast.old_logp, plain.old_logp, rtol=1e-5, atol=1e-5)


def _trainer(tmp_path, name, **algo):
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    cfg = build_config({"model": "tiny", "task": "personas", "seed": 5, "steps": 2, "output_dir": str(tmp_path / name),
                        "rollout": {"prompts_per_step": 3, "generations": 4, "max_new_tokens": 8},
                        "optim": {"lr": 1e-3}, "log": {"progress": False, "tensorboard": False},
                        "algo": {"loss": "fspo", "advantage": "grpo", **algo}})
    return Trainer(cfg, progress=False)


@pytest.mark.parametrize("algo", [{"minibatches": 2}, {"minibatches": 3, "micro_batch_size": 2},
                                  {"minibatches": 1, "ppo_epochs": 2}])
def test_behaviour_logprobs_from_the_first_minibatch_match_a_separate_pass(tmp_path, algo):
    """The trainer's step with the first minibatch's own forward as its behaviour log-probs equals the step
    with a separate behaviour pass over every row (the plain path), to float rounding: the same metrics,
    the same weights after two steps."""
    fast = _trainer(tmp_path, "fast", **algo)
    computed = []
    original = fast.policy.logprobs
    fast.policy.logprobs = lambda *a, **k: computed.append(len(k["rows"])) or original(*a, **k)
    plain = _trainer(tmp_path, "plain", **algo)
    plain.update.later_rows = lambda B, step: torch.arange(B)  # the plain path: every row
    for _ in range(2):
        m_fast, m_plain = fast.train_step(), plain.train_step()
        for key in ("loss", "grad_norm", "reward/mean", "clip/seq_frac", "approx_kl"):
            if key in m_plain:
                assert m_fast[key] == pytest.approx(m_plain[key], rel=1e-4, abs=1e-6), key
    B = 12
    first = B // algo.get("minibatches", 2) if algo.get("minibatches", 2) > 1 else B
    assert computed == [B - first, B - first]  # the separate pass skipped the first minibatch's rows
    for p, q in zip(fast.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=2e-5)  # Adam: lr-sized steps where a gradient is ~0


def test_bf16_log_probs_agree_with_fp32_within_the_stated_tolerance(tmp_path):
    """precision=bf16 (autocast) against fp32 on the same weights and responses, through the trainer's
    Policy.forward: token log-probs within 0.05 nats on average and 0.5 at most (docs/performance.md;
    SmolLM2 measured 0.032 / 0.20 with benchmarks/precision_agreement.py)."""
    trainer = _trainer(tmp_path, "bf16", minibatches=1)
    trainer.cfg.precision = trainer.policy.precision = "bf16"
    with trainer.policy.autocast():
        batch = trainer.rollout_stage.sample(1)
    rows = torch.arange(len(batch))
    lp16, _, mask, _ = trainer.policy.forward(trainer.model, batch, rows, with_entropy=False)
    trainer.policy.precision = "fp32"
    lp32, _, _, _ = trainer.policy.forward(trainer.model, batch, rows, with_entropy=False)
    d = (lp16 - lp32).detach()[mask.bool()].abs()
    assert lp16.dtype == torch.float32 and d.numel() > 50
    assert 0 < float(d.mean()) <= 0.05 and float(d.max()) <= 0.5  # > 0: bf16 really ran


class _Rows:
    """The fields of a RolloutBatch that length_buckets reads."""

    def __init__(self, lengths, prompts, prompt_len=10):
        self.lengths = torch.tensor(lengths)
        self.index = torch.tensor(prompts)
        self.prompt_mask = torch.ones(len(lengths), prompt_len, dtype=torch.bool)


def test_length_buckets_split_only_where_padding_costs_more_than_a_forward():
    from fairalign.train.policy import length_buckets

    # one forward: 4 prompts x 10 + 1.27 x 4 rows x 40 + 16 = 259.2; short rows apart: 53.62 + 76.8 = 130.4
    parts = length_buckets(_Rows([40, 2, 2, 2], [0, 1, 2, 3]), torch.tensor([0, 1, 2, 3]))
    assert [p.tolist() for p in parts] == [[1, 2, 3], [0]]
    even = length_buckets(_Rows([9, 9, 9, 9], [0, 0, 1, 1]), torch.tensor([3, 1, 0, 2]))
    assert len(even) == 1 and sorted(even[0].tolist()) == [0, 1, 2, 3]  # equal lengths: one forward
    lengths = [1 + 3 * (i % 10) for i in range(30)]
    many = length_buckets(_Rows(lengths, [i // 3 for i in range(30)]), torch.arange(30))
    assert 1 < len(many) <= 4 and sorted(torch.cat(many).tolist()) == list(range(30))  # a partition
    spans = [(min(lengths[i] for i in p.tolist()), max(lengths[i] for i in p.tolist())) for p in many]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # contiguous in length order
