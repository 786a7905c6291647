"""TRL's vLLM importance-sampling correction per response length, and the sqrt(L) band
(fairalign.integrations.trl_is, FairGRPOTrainer), on CPU without vLLM.

Unit tests inject `importance_sampling_ratio` tensors of known per-length masking. The trainer tests
run TRL's own correction: a `rollout_func` returns completions of 2, 4, 8 and 16 tokens with
"sampler" log-probs shifted from the model's own by a known total mismatch D per length, and the
trainer is switched onto TRL's vLLM code path after it is built (`use_vllm=True`; the only vLLM call
on that path, the weight sync, goes to a stand-in that does nothing). TRL then computes the ratio in
`_generate_and_score_completions`; the tests check what reaches `_compute_loss` (this fails if TRL
stops computing the ratio before `_compute_loss`, as trl#5413 proposes) and the logged rates.
"""
import math
from types import SimpleNamespace

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402

from fairalign.errors import ConfigError  # noqa: E402
from fairalign.integrations.trl import FairGRPOTrainer  # noqa: E402
from fairalign.integrations.trl_is import (LengthRatePool, correction_weights, sqrt_band_ratio,  # noqa: E402
                                          summed_mismatch)
from test_integration_trl import _args, _dataset, model_dir, reward_fit  # noqa: E402,F401

LENGTHS = (2, 4, 8, 16)
MISMATCH = {2: 0.3, 4: -0.9, 8: 0.8, 16: 1.5}  # D = sum over tokens of (train - sampler) log-prob, per length


def _one_process(rows):
    return rows


# ---------------------------------------------------------------------- injected ratios
def test_correction_weights_for_each_mode():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])  # lengths 2, 4, 1
    seq = torch.tensor([[0.0], [2.5], [0.0]])  # sequence_mask: rows 0 and 2 masked
    assert correction_weights(seq, mask, "sequence_mask", None, 3.0).tolist() == [1.0, 0.0, 1.0]
    tok = torch.tensor([[0.0, 1.2, 0.0, 0.0], [0.0, 0.0, 1.0, 0.9], [1.1, 0.0, 0.0, 0.0]])  # zeros past the mask too
    assert correction_weights(tok, mask, "token_mask", None, 3.0).tolist() == [0.5, 0.5, 0.0]
    trunc = torch.tensor([[3.0, 0.5, 1.0, 1.0], [0.2, 3.0, 3.0, 1.0], [0.9, 1.0, 1.0, 1.0]])
    assert correction_weights(trunc, mask, "token_truncate", None, 3.0).tolist() == [0.5, 0.5, 0.0]
    assert correction_weights(trunc, mask, "token_truncate", 0.5, 3.0).tolist() == [1.0, 0.75, 0.0]
    seq_t = torch.tensor([[3.0], [1.7], [0.1]])
    assert correction_weights(seq_t, mask, "sequence_truncate", 0.1, 3.0).tolist() == [1.0, 0.0, 1.0]


def test_pool_reports_rates_per_length_bin_and_lre():
    pool = LengthRatePool("is_mask", "masked")
    # two generation batches with known per-length masking: every 16-token completion masked, one of four 8s
    pool.add(torch.tensor([2, 4, 8, 16]), torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64), _one_process)
    pool.add(torch.tensor([3, 9, 10, 17, 0]), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64),
             _one_process)  # the length-0 row has no loss token: left out
    pool.add(torch.tensor([12]), torch.tensor([0.0], dtype=torch.float64), _one_process)
    m = pool.metrics()
    assert m["is_mask_rate/len/2-4"] == 0.0 and m["is_mask_count/len/2-4"] == 2
    assert m["is_mask_rate/len/8-16"] == 0.25 and m["is_mask_masked/len/8-16"] == 1 and m["is_mask_count/len/8-16"] == 4
    assert m["is_mask_rate/len/16-32"] == 1.0 and m["is_mask/sequences"] == 9 and m["is_mask_frac"] == 3 / 9
    acc = {"2-4": 1.0, "4-8": 1.0, "8-16": 0.75, "16-32": 0.0}  # acceptance per bin; counts 2, 1, 4, 2
    mean = (2 * 1.0 + 1 * 1.0 + 4 * 0.75 + 2 * 0.0) / 9
    assert m["is_mask_lre"] == pytest.approx(max(abs(a / mean - 1) for a in acc.values()))
    assert pool.metrics() == {}  # emptied by each report


def test_pool_gathers_every_process_rows():
    pool = LengthRatePool("is_band", "masked", edges=[0, 8, 64])
    other = [(20, 1.0), (30, 1.0)]  # what another process contributed to the same batch
    pool.add(torch.tensor([4, 40]), torch.tensor([0.0, 0.0], dtype=torch.float64), lambda rows: rows + other)
    m = pool.metrics()
    assert m["is_band_count/len/8-64"] == 3 and m["is_band_masked/len/8-64"] == 2 and m["is_band_count/len/0-8"] == 1


def test_sqrt_band_ratio_by_hand():
    old = torch.zeros(3, 16)
    mask = torch.zeros(3, 16)
    for row, length in enumerate((4, 9, 16)):
        mask[row, :length] = 1
    lengths = mask.sum(1).long()
    d = torch.tensor([0.5, -1.0, 1.1])  # summed mismatch; band [-0.3*sqrt(L), 0.3*sqrt(L)] = 0.6, 0.9, 1.2
    sampling = old - (d / lengths).unsqueeze(1) * mask
    sampling[1, 3] = float("nan")  # a token the sampler could not score counts as no mismatch (TRL's rule)
    d_seen = summed_mismatch(old, sampling, mask)  # [3, 1]
    torch.testing.assert_close(d_seen[:, 0], torch.tensor([0.5, -1.0 + 1.0 / 9, 1.1]))
    w, outside = sqrt_band_ratio(d_seen, lengths, 0.3, 0.3)
    assert outside.tolist() == [False, False, False]
    torch.testing.assert_close(w, torch.exp(d_seen))
    w, outside = sqrt_band_ratio(d_seen, lengths, 0.2, 0.3)  # lower edge -0.6 at L = 9: -0.889 is outside
    assert outside.tolist() == [False, True, False] and w[1, 0] == 0
    w, outside = sqrt_band_ratio(d_seen, lengths, None, 0.2)  # upper edges 0.4, 0.6, 0.8; no lower edge
    assert outside.tolist() == [True, False, True] and w[0, 0] == 0 and w[2, 0] == 0
    # centred at mu*L with mu = 0.05: d - mu*L = 0.3, -1.339, 0.3 against edges -0.2*sqrt(L), 0.2*sqrt(L)
    w, outside = sqrt_band_ratio(d_seen, lengths, 0.2, 0.2, mu=0.05)
    assert outside.tolist() == [False, True, False] and w[2, 0] == pytest.approx(math.exp(1.1))
    big = sqrt_band_ratio(torch.tensor([[500.0]]), torch.tensor([4]), None, 0.1)[0]  # far outside: 0, not inf*0
    assert big.tolist() == [[0.0]]


@pytest.mark.parametrize("fields, named", [
    ({"fair_is_band_low": 0.2}, "fair_is_band_low"),
    ({"fair_is_band_drift": "none"}, "fair_is_band_drift"),
    ({"fair_is_band_high": 0.3, "fair_is_band_drift": "mean"}, "fair_is_band_drift"),
    ({"fair_is_band_high": -1.0}, "fair_is_band_high"),
    ({"fair_is_band_high": 0.3, "vllm_importance_sampling_mode": "token_mask"}, "vllm_importance_sampling_mode"),
    ({"fair_is_band_high": 0.3, "vllm_importance_sampling_correction": False}, "vllm_importance_sampling_correction"),
])
def test_bad_band_field_is_one_line_error(tmp_path, fields, named):
    with pytest.raises(ConfigError) as err:
        _args(tmp_path, **fields)
    assert named in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------- through TRL's correction
def _mismatch_rollout(prompts, trainer):
    """Completions of LENGTHS tokens (cycling over rows) whose sampler log-probs are the model's own
    minus MISMATCH[L] / L per token, so TRL's summed mismatch is D = MISMATCH[L]. The model's log-probs
    come from TRL's own pass on the batch as TRL pads it (one prompt length, completions right-padded),
    so they are TRL's to the bit."""
    tok = trainer.processing_class
    width = max(LENGTHS)
    prompt_ids, completion_ids, rows, masks = [], [], [], []
    for r, prompt in enumerate(prompts):
        p = tok(prompt, add_special_tokens=False)["input_ids"][:4]  # one prompt length: no left padding
        length = LENGTHS[r % len(LENGTHS)]
        c = [5 + (7 * r + 3 * k) % 100 for k in range(length - 1)] + [tok.eos_token_id]
        prompt_ids.append(p)
        completion_ids.append(c)
        rows.append(p + c + [tok.pad_token_id] * (width - length))
        masks.append([1] * (len(p) + length) + [0] * (width - length))
    with torch.no_grad():
        logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.tensor(rows), torch.tensor(masks), width,
            batch_size=trainer.args.per_device_train_batch_size)  # [N, width]
    logprobs = [(logp[r, :len(c)] - MISMATCH[len(c)] / len(c)).tolist() for r, c in enumerate(completion_ids)]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


def _run_on_trl_vllm_path(model_dir, tmp_path, **fields):
    """Train 2 optimizer steps on one generation batch of 8 rows (each length twice); return the
    trainer and, per micro-batch, (loss lengths, the importance_sampling_ratio _compute_loss got)."""
    args = _args(tmp_path, fair_loss="fspo", max_steps=2, **fields)
    tr = FairGRPOTrainer(model=str(model_dir), reward_funcs=reward_fit, args=args, train_dataset=_dataset(),
                         rollout_func=_mismatch_rollout)
    tr.use_vllm = True  # TRL's vLLM code path; its one vLLM call here is the weight sync:
    tr.vllm_generation = SimpleNamespace(sync_weights=lambda: None)
    tr._last_loaded_step = -1
    seen = []
    loss = tr._compute_loss

    def loss_rec(model, inputs):
        seen.append((inputs["completion_mask"].sum(1).tolist(), inputs.get("importance_sampling_ratio")))
        return loss(model, inputs)

    tr._compute_loss = loss_rec
    tr.train()
    return tr, seen


def _ratios_by_length(seen):
    assert seen and all(ratio is not None for _, ratio in seen), \
        "TRL no longer hands importance_sampling_ratio to _compute_loss (trl#5413?): FairGRPOTrainer would drop it"
    out: dict[int, list[float]] = {}
    for lengths, ratio in seen:
        assert ratio.shape == (len(lengths), 1)  # sequence_mask: one weight per completion
        for length, w in zip(lengths, ratio[:, 0].tolist()):
            out.setdefault(length, []).append(w)
    return out


def test_trl_mask_reaches_the_loss_and_is_logged_per_length(model_dir, tmp_path):
    tr, seen = _run_on_trl_vllm_path(model_dir, tmp_path)
    by_len = _ratios_by_length(seen)
    assert sorted(by_len) == list(LENGTHS) and all(len(v) == 2 for v in by_len.values())  # each row once
    for length, ws in by_len.items():  # TRL's sequence_mask: exp(D) > 3 (D > 1.0986) is masked
        want = 0.0 if math.exp(MISMATCH[length]) > 3.0 else math.exp(MISMATCH[length])
        assert ws == pytest.approx([want] * 2, abs=1e-4), length
    log = next(h for h in tr.state.log_history if "is_mask_lre" in h)
    assert log["step"] == 1  # the generation batch's rows, once, with that step's log
    for lo, rate in ((2, 0.0), (4, 0.0), (8, 0.0), (16, 1.0)):
        assert log[f"is_mask_rate/len/{lo}-{2 * lo}"] == rate and log[f"is_mask_count/len/{lo}-{2 * lo}"] == 2
    assert log["is_mask_masked/len/16-32"] == 2 and log["is_mask_frac"] == 0.25 and log["is_mask/sequences"] == 8
    assert log["is_mask_lre"] == pytest.approx(1.0)  # acceptance 1, 1, 1, 0 around a mean of 0.75
    assert not any(k.startswith("is_band") for h in tr.state.log_history for k in h)


@pytest.mark.parametrize("drift, masked", [("none", (4, 16)), ("kl", (4,))])
def test_sqrt_band_replaces_trls_mask(model_dir, tmp_path, drift, masked):
    with pytest.warns(UserWarning, match="use_vllm=True"):  # the config is built without vLLM here
        tr, seen = _run_on_trl_vllm_path(model_dir, tmp_path, fair_is_band_high=0.3, fair_is_band_low=0.4,
                                         fair_is_band_drift=drift)
    # drift "kl": mu = sum D / sum L over the generation batch (each length twice) = 1.7 / 30
    mu = 0.0 if drift == "none" else sum(MISMATCH.values()) / sum(LENGTHS)
    by_len = _ratios_by_length(seen)
    for length, ws in by_len.items():  # kept iff -0.4*sqrt(L) <= D - mu*L <= 0.3*sqrt(L)
        inside = -0.4 * math.sqrt(length) <= MISMATCH[length] - mu * length <= 0.3 * math.sqrt(length)
        assert inside == (length not in masked)
        assert ws == pytest.approx([math.exp(MISMATCH[length]) if inside else 0.0] * 2, abs=1e-4), length
    log = next(h for h in tr.state.log_history if "is_band_lre" in h)
    for lo in LENGTHS:
        assert log[f"is_band_rate/len/{lo}-{2 * lo}"] == (1.0 if lo in masked else 0.0)
    assert log["is_band_frac"] == len(masked) / 4
    assert log.get("is_band/drift", 0.0) == pytest.approx(mu, abs=1e-5)
    assert log["is_mask_rate/len/16-32"] == 1.0 and log["is_mask_rate/len/4-8"] == 0.0  # TRL's rule, for comparison
