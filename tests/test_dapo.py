"""DAPO as DAPO: the soft overlong penalty, truncation masking, dynamic sampling (tied prompt groups
left out, more rounds until the step has enough informative groups), its P-GRPO meaning,
`reward/frac_zero_std` for every estimator, and the `dapo` preset — the pure functions against
hand-computed values, then through the trainer on the tiny model with a task whose tied groups are
known (tests/dapo_support.py)."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from dapo_support import TIE_REWARD, make_task, task_spec
from replay_support import replay_engine, run_ranks, write_worker
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import (ESTIMATOR_REGISTRY, PreferenceGroupNormalizer, group_order, overlong_penalty,
                             select_groups, tied_groups, zero_groups)
from fairalign.errors import ConfigError
from fairalign.config import build_config
from fairalign.train.data import PromptSampler
from fairalign.config.presets import get_preset, merge
from fairalign.train.rollout_stage import split_contiguous
from fairalign.train.trainer import Trainer

TIMING = ("step_s", "tokens_per_s", "time/")


# ----------------------------------------------------------------------------- pure functions
def test_overlong_penalty_matches_the_formula_by_hand():
    """L_max 10, L_cache 4: 0 up to 6 tokens, then −1/4 per token, −1 at 10 (and beyond)."""
    lengths = torch.tensor([1, 6, 7, 8, 9, 10, 12])
    assert overlong_penalty(lengths, 10, 4).tolist() == [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0]
    assert overlong_penalty(lengths, 10, 4, factor=2.0).tolist() == [0.0, 0.0, -0.5, -1.0, -1.5, -2.0, -2.0]
    # a fractional buffer (fairalign sets it as a share of max_new_tokens): 0.25 x 10 = 2.5 tokens
    pen = overlong_penalty(torch.tensor([7, 8, 9, 10]), 10, 2.5)
    torch.testing.assert_close(pen, torch.tensor([0.0, -0.2, -0.6, -1.0]))
    torch.testing.assert_close(overlong_penalty(torch.tensor([3, 10]), 10, 10), torch.tensor([-0.3, -1.0]))  # all buffer
    for bad in (0, -1, 11):
        with pytest.raises(ValueError, match="buffer"):
            overlong_penalty(lengths, 10, bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=20), st.integers(1, 32), st.floats(0.05, 1.0),
       st.floats(0.0, 3.0))
def test_overlong_penalty_properties(lengths, max_len, frac, factor):
    """In [−factor, 0], zero below the buffer, −factor at or past L_max, non-increasing in L."""
    buf = frac * max_len
    L = torch.tensor(sorted(lengths))
    pen = overlong_penalty(L, max_len, buf, factor).double()
    assert bool(((pen <= 0) & (pen >= -factor - 1e-6)).all())
    assert bool((pen[L <= max_len - buf] == 0).all())
    assert torch.allclose(pen[L >= max_len], torch.full_like(pen[L >= max_len], -factor), atol=1e-6)
    assert bool((pen[1:] <= pen[:-1] + 1e-7).all())


def test_tie_detection_by_hand():
    index = torch.tensor([5, 5, 2, 2, 9, 9, 2])                 # groups seen in the order 5, 2, 9
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 3.0, 3.0, 0.0])
    order, pos = group_order(index)
    assert order.tolist() == [5, 2, 9] and pos.tolist() == [0, 0, 1, 1, 2, 2, 1]
    assert tied_groups(rewards, index).tolist() == [True, False, True]
    near = torch.tensor([1.0, 1.0 + 1e-7, 1.0, 1.0 + 1e-5])     # within the 1e-6 tolerance, and not
    assert tied_groups(near.double(), torch.tensor([0, 0, 1, 1])).tolist() == [True, False]
    assert tied_groups(torch.tensor([4.0]), torch.tensor([0])).tolist() == [True]  # a group of one ties
    adv = torch.tensor([0.0, 0.0, 0.7, -0.7, 0.3, 0.3, 0.0])    # group 9 ties at a NON-zero advantage
    assert zero_groups(adv, index).tolist() == [True, False, False]


def test_group_selection_and_refill_by_hand():
    flags = [False, True, False, True, True, False]
    assert select_groups(flags, 2) == ([1, 3], [])              # the first two informative groups
    assert select_groups(flags, 3) == ([1, 3, 4], [])
    assert select_groups(flags, 5) == ([0, 1, 2, 3, 4], [0, 2])  # short: the earliest tied ones fill up
    assert select_groups([False] * 3, 2) == ([0, 1], [0, 1])
    assert split_contiguous([1, 3, 4, 7], 2) == [[1, 3], [4, 7]]
    assert split_contiguous([1, 3, 4], 2) == [[1, 3], [4]]


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, fragment", [
    ("rollout.dynamic_sampling=maybe", "'rollout.dynamic_sampling' has unknown value 'maybe'; allowed: none, advantage, reward"),
    ("rollout.dynamic_max_extra_rounds=-1", "'rollout.dynamic_max_extra_rounds' must be >= 0"),
    ("rollout.overlong_buffer_frac=1.5", "'rollout.overlong_buffer_frac' must be in [0, 1]"),
    ("rollout.overlong_penalty=-1", "'rollout.overlong_penalty' must be >= 0"),
    ("rollout.mask_truncated=maybe", "'rollout.mask_truncated' expects true or false"),
])
def test_bad_dapo_values_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_config({}, [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_dynamic_sampling_needs_groups_of_two():
    with pytest.raises(ConfigError, match="'rollout.generations' must be >= 2 for rollout.dynamic_sampling=reward"):
        build_config({}, ["algo.advantage=reinforce_pp_baseline", "rollout.generations=1",
                          "rollout.dynamic_sampling=reward"])


def test_the_dapo_preset_turns_everything_on():
    r = build_config(get_preset("dapo")).rollout
    assert (r.dynamic_sampling, r.overlong_buffer_frac, r.overlong_penalty, r.mask_truncated) == \
        ("advantage", 0.2, 1.0, True)
    assert r.dynamic_max_extra_rounds >= 1
    assert build_config({}).rollout.dynamic_sampling == "none"  # off by default


# ----------------------------------------------------------------------------- through the trainer
def _cfg(tmp_path, name="run", **over):
    base = {"model": "tiny", "task": task_spec(), "task_options": {"pattern": "TM"}, "steps": 1, "seed": 3,
            "output_dir": str(tmp_path / name),
            "rollout": {"prompts_per_step": 2, "generations": 3, "max_new_tokens": 6},
            "optim": {"lr": 1e-3, "grad_clip": 0.0},
            "log": {"tensorboard": False, "progress": False}}
    return build_config(merge(base, over))


def _replay(tr, width):
    tr.engine.generate = replay_engine(tr.engine, tr.model.config.vocab_size, width=width, truncation=True)
    return tr


def _spy(tr):
    """Record every step's pool (all sampled groups) and training batch."""
    seen = {"pools": [], "batches": []}
    sample, training = tr.rollout_stage.sample, tr.rollout_stage.training_batch

    def spy_sample(step):
        pool = sample(step)
        seen["pools"].append(pool)
        return pool

    def spy_training(pool):
        batch = training(pool)
        seen["batches"].append(batch)
        return batch
    tr.rollout_stage.sample, tr.rollout_stage.training_batch = spy_sample, spy_training
    return seen


@pytest.mark.parametrize("estimator", sorted(ESTIMATOR_REGISTRY))
def test_frac_zero_std_is_logged_for_every_estimator(tmp_path, estimator):
    """Every example every step (prompts_per_step = 4 of "TTTM"): 3 of 4 groups tie."""
    cfg = _cfg(tmp_path, task_options={"pattern": "TTTM"}, steps=2,
               rollout={"prompts_per_step": 4},
               algo={"advantage": estimator, **({"critic": "head"} if estimator == "gae" else {})})
    rows = Trainer(cfg).train()
    assert [r["reward/frac_zero_std"] for r in rows] == [0.75, 0.75]
    assert not any(k.startswith("dynamic/") for k in rows[0])  # dynamic sampling is off


def _expected_dynamic(pattern: str, seed: int, per_round: int, extra_rounds: int, steps: int) -> list[dict]:
    """Dynamic sampling by hand: rounds of `per_round` prompts in the sampler's order; "M" groups are
    informative; stop at `per_round` of them or after the extra rounds; fill up with the earliest "T"s."""
    sampler, out = PromptSampler(len(pattern), seed), []
    for _ in range(steps):
        drawn = []
        for _k in range(1 + extra_rounds):
            drawn += sampler.take(per_round)
            if sum(pattern[i] == "M" for i in drawn) >= per_round:
                break
        kept = [i for i in drawn if pattern[i] == "M"][:per_round]
        fill = [i for i in drawn if pattern[i] == "T"][:per_round - len(kept)]
        out.append({"rounds": len(drawn) // per_round, "drawn": drawn, "kept": kept, "fill": fill,
                    "train": [i for i in drawn if i in kept or i in fill], "offset": sampler.offset})
    return out


@pytest.mark.parametrize("extra_rounds, pattern", [(4, "TTM" * 4), (1, "TTTTTM" * 2)])
def test_dynamic_sampling_through_the_trainer(tmp_path, extra_rounds, pattern):
    """Real sampling on the tiny model. Only "M" groups are trained on, in the order they were drawn;
    with the cap hit, the earliest tied groups fill the batch with zero loss weight."""
    G, steps = 3, 2
    cfg = _cfg(tmp_path, task_options={"pattern": pattern}, steps=steps,
               rollout={"dynamic_sampling": "reward", "dynamic_max_extra_rounds": extra_rounds})
    tr = Trainer(cfg)
    seen = _spy(tr)
    rows = tr.train()
    want = _expected_dynamic(pattern, cfg.seed, 2, extra_rounds, steps)
    if extra_rounds == 1:
        assert any(w["fill"] for w in want), "the scenario must hit the cap"
    prompts = [ex["prompt"] for ex in make_task(pattern=pattern).train_examples]
    for m, w, pool, batch in zip(rows, want, seen["pools"], seen["batches"]):
        assert m["dynamic/rounds"] == w["rounds"]
        assert m["dynamic/sampled_groups"] == len(w["drawn"])
        assert m["dynamic/informative_groups"] == sum(pattern[i] == "M" for i in w["drawn"])
        assert m["dynamic/kept_groups"] == len(w["kept"])
        assert m["dynamic/filler_groups"] == len(w["fill"])
        assert m["dynamic/dropped_groups"] == len(w["drawn"]) - len(w["kept"])
        assert m["reward/frac_zero_std"] == pytest.approx(sum(pattern[i] == "T" for i in w["drawn"]) / len(w["drawn"]))
        assert pool.prompts == [prompts[i] for i in w["drawn"] for _ in range(G)]
        assert batch.prompts == [prompts[i] for i in w["train"] for _ in range(G)]
        weight = [i in w["kept"] for i in w["train"] for _ in range(G)]
        assert batch.train_mask.tolist() == weight
        assert m["loss/masked_frac"] == pytest.approx(1 - sum(weight) / len(weight))
        torch.testing.assert_close(m["dynamic/sampled_reward_mean"], float(pool.rewards.mean()))
    assert tr.sampler.offset == want[-1]["offset"]  # every drawn prompt is used up


def test_truncated_rows_get_zero_loss_weight_through_the_trainer(tmp_path):
    """One update (minibatches 1): the loss normalizers count only non-truncated rows, and the truncated
    rows' advantages do not change the update at all; without the mask they do."""
    def run(name, mask, scale_truncated_adv=None):
        cfg = _cfg(tmp_path, name, task_options={"pattern": "M", "repeat": 4},
                   rollout={"prompts_per_step": 4, "max_new_tokens": 4, "mask_truncated": mask},
                   algo={"minibatches": 1, "ppo_epochs": 1})
        tr = _replay(Trainer(cfg), width=4)
        calls, training = [], tr.rollout_stage.training_batch

        class SpyLoss:  # the configured loss, recording the normalizers of each call
            def __init__(self, inner):
                self.inner = inner

            def __getattr__(self, name):
                return getattr(self.inner, name)

            def __call__(self, *a, **k):
                calls.append(k)
                return self.inner(*a, **k)

        def training_batch(pool):
            batch = training(pool)
            if scale_truncated_adv is not None:
                t = batch.truncated.bool()
                batch.advantages[t] = batch.advantages[t] * scale_truncated_adv + 5.0
            calls.append({"batch": batch})
            return batch
        tr.loss, tr.rollout_stage.training_batch = SpyLoss(tr.loss), training_batch
        tr.train()
        return calls, {n: p.detach().clone() for n, p in tr.model.named_parameters()}

    calls, params = run("a", True)
    batch = calls[0]["batch"]
    t = batch.truncated.bool()
    assert 0 < int(t.sum()) < len(t), "the replay must give truncated and finished rows"
    assert batch.train_mask.tolist() == (~t).tolist()
    assert calls[1]["global_tokens"] == float(batch.lengths[~t].sum())
    assert calls[1]["global_seqs"] == float((~t).sum())
    _, params_scaled = run("b", True, scale_truncated_adv=-3.0)
    for k in params:
        assert torch.equal(params[k], params_scaled[k]), k
    _, unmasked = run("c", False)
    _, unmasked_scaled = run("d", False, scale_truncated_adv=-3.0)
    assert any(not torch.equal(unmasked[k], unmasked_scaled[k]) for k in params)


def test_overlong_penalty_is_a_reward_part_through_the_trainer(tmp_path):
    """Replay lengths 2..10 with max_new_tokens 10 and a 30% buffer (3 tokens): the reward is the task's
    plus −(L − 7)/3 for L > 7, and the penalty is logged as `reward/overlong`."""
    cfg = _cfg(tmp_path, task_options={"pattern": "TM", "repeat": 2},
               rollout={"prompts_per_step": 4, "max_new_tokens": 10, "overlong_buffer_frac": 0.3})
    tr = _replay(Trainer(cfg), width=10)
    seen = _spy(tr)
    m = tr.train()[0]
    pool = seen["pools"][0]
    L = pool.lengths.tolist()
    pen = [-min(max(x - 7, 0), 3) / 3 for x in L]
    assert any(p < 0 for p in pen) and any(p == 0 for p in pen)
    torch.testing.assert_close(pool.reward_parts["overlong"], torch.tensor(pen))
    task = [TIE_REWARD if p.startswith("tie") else sum(map(ord, c)) / 1000.0
            for p, c in zip(pool.prompts, pool.completions)]
    torch.testing.assert_close(pool.rewards, torch.tensor(task) + torch.tensor(pen))
    assert m["reward/overlong"] == pytest.approx(sum(pen) / len(pen), abs=1e-6)
    assert m["reward/tie_or_mix"] == pytest.approx(sum(task) / len(task), abs=1e-6)


@pytest.mark.parametrize("criterion", ["advantage", "reward"])
def test_pgrpo_dynamic_sampling_meaning(tmp_path, criterion):
    """P-GRPO normalizes a tied group against its preference group's history. Step 1 is the cold start
    (GRPO fallback: a tied group has zero advantages, left out either way). From step 2 the history of
    "g" (every reward sampled in step 1, kept or not) gives the tied groups A = (0.5 − mean)/(std + eps):
    criterion=advantage keeps them, criterion=reward (DAPO's literal rule) still leaves them out."""
    pattern = "TM" * 4
    cfg = _cfg(tmp_path, task_options={"pattern": pattern}, steps=2,
               rollout={"dynamic_sampling": criterion, "dynamic_max_extra_rounds": 3},
               algo={"advantage": "pgrpo", "pgrpo_min_count": 2})
    tr = Trainer(cfg)
    seen = _spy(tr)
    states = []
    real_step = tr.train_step

    def step_and_record():
        m = real_step()
        states.append(tr.estimator.state_dict())
        return m
    tr.train_step = step_and_record
    rows = tr.train()
    p1, p2 = seen["pools"]
    tied1 = tied_groups(p1.rewards, p1.index)
    assert rows[0]["dynamic/informative_groups"] == int((~tied1).sum())  # cold start: ties are uninformative
    # the history after step 1 holds every sampled reward (an independent normalizer fed all of them)
    ref = PreferenceGroupNormalizer(min_count=2)
    ref.update(p1.rewards.double(), p1.groups)
    assert states[0]["n"] == [float(len(p1))]
    assert states[0]["mean"] == pytest.approx(ref.state_dict()["mean"], abs=1e-12)
    mean = float(p1.rewards.double().mean())
    std = float(p1.rewards.double().std(unbiased=False))
    tied2 = tied_groups(p2.rewards, p2.index)
    assert bool(tied2.any()), "step 2 must sample a tied group"
    if criterion == "advantage":
        assert rows[1]["dynamic/informative_groups"] == rows[1]["dynamic/sampled_groups"]
        assert rows[1]["dynamic/rounds"] == 1
        b2 = seen["batches"][1]
        t = torch.tensor([p.startswith("tie") for p in b2.prompts])
        assert bool(t.any())
        want = (TIE_REWARD - mean) / (std + 1e-6)
        torch.testing.assert_close(b2.advantages[t], torch.full((int(t.sum()),), want), atol=1e-5, rtol=1e-5)
    else:
        assert rows[1]["dynamic/informative_groups"] == int((~tied2).sum())
        assert not any(p.startswith("tie") for p in seen["batches"][1].prompts)


def test_resume_with_dynamic_sampling_is_exact(tmp_path):
    """Dynamic sampling draws a varying number of prompts per step; a run stopped at its step-2
    checkpoint and resumed draws the same prompts and ends with the same metrics and weights."""
    over = {"task_options": {"pattern": "TTM" * 4}, "steps": 4, "save_every": 2,
            "rollout": {"dynamic_sampling": "advantage", "dynamic_max_extra_rounds": 2, "mask_truncated": True}}
    full = _replay(Trainer(_cfg(tmp_path, "full", **over)), width=6)
    full_rows = full.train()
    cfg = _cfg(tmp_path, "cut", **over)
    _replay(Trainer(cfg), width=6).train(stop_after=2)
    resumed = _replay(Trainer(cfg, resume=True), width=6)
    rows = resumed.train()
    assert [r["step"] for r in rows] == [3, 4]
    assert any(r["dynamic/rounds"] > 1 for r in full_rows)
    strip = [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in full_rows[2:]]
    assert [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows] == strip
    assert resumed.sampler.state_dict() == full.sampler.state_dict()
    for (n, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(a, b), n
    samples = [[json.loads(x)["prompt"] for x in (tmp_path / d / "samples.jsonl").read_text().splitlines()]
               for d in ("full", "cut")]
    assert samples[0] == samples[1]


def test_the_dapo_preset_trains_on_the_tiny_model(tmp_path):
    """dapo = clip-higher + token-mean + dynamic sampling + overlong penalty + truncation mask: it trains
    (replayed responses of 2..8 tokens with max_new_tokens 8, so some finish and some are truncated)."""
    base = merge(get_preset("dapo"), {
        "model": "tiny", "task": task_spec(), "task_options": {"pattern": "TM", "repeat": 3}, "steps": 2, "seed": 1,
        "output_dir": str(tmp_path / "dapo"), "rollout": {"prompts_per_step": 2, "generations": 4, "max_new_tokens": 8},
        "optim": {"lr": 1e-3}, "log": {"tensorboard": False, "progress": False}})
    tr = _replay(Trainer(build_config(base)), width=8)
    before = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    rows = tr.train()
    for m in rows:
        assert torch.isfinite(torch.tensor(m["loss"])) and m["loss"] != 0.0
        for key in ("dynamic/rounds", "dynamic/kept_groups", "reward/overlong", "reward/frac_zero_std",
                    "loss/masked_frac"):
            assert key in m, key
        assert 0 <= m["loss/masked_frac"] < 1
    assert any(not torch.equal(before[n], p) for n, p in tr.model.named_parameters())


# ----------------------------------------------------------------------------- 1 vs 2 processes
WORKER = textwrap.dedent('''
    import sys, torch
    from dapo_support import task_spec
    from replay_support import replay_engine
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    out, mode = sys.argv[1], sys.argv[2]
    cfg = build_config({"model": "tiny", "task": task_spec(), "task_options": {"pattern": "TTMT", "repeat": 4},
                        "steps": 3, "seed": 5, "output_dir": out + "/run-" + mode,
                        "rollout": {"prompts_per_step": 4, "generations": 3, "max_new_tokens": 10,
                                    "dynamic_sampling": "advantage", "dynamic_max_extra_rounds": 2,
                                    "mask_truncated": True, "overlong_buffer_frac": 0.2},
                        "algo": {"advantage": "pgrpo", "pgrpo_min_count": 30, "minibatches": 2, "micro_batch_size": 2},
                        "optim": {"lr": 1e-3, "grad_clip": 0.0},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg)
    tr.engine.generate = replay_engine(tr.engine, tr.model.config.vocab_size, width=10, truncation=True)
    grads, prompts = [], []
    real_step, real_batch = tr.optimizer.step, tr.rollout_stage.training_batch
    def step_and_record(*a, **k):
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)
    def batch_and_record(pool):
        batch = real_batch(pool)
        prompts.append(tr.dist.all_gather_objects(batch.prompts))
        return batch
    tr.optimizer.step, tr.rollout_stage.training_batch = step_and_record, batch_and_record
    rows = tr.train()
    torch.save({"rows": [{k: v for k, v in r.items() if not k.startswith(("time/", "step_s", "tokens_per_s"))}
                         for r in rows],
                "grads": grads, "prompts": [[p for part in step for p in part] for step in prompts],
                "params": {n: p.detach().clone() for n, p in tr.model.named_parameters()},
                "pgrpo": tr.estimator.state_dict()}, f"{out}/{mode}-rank{tr.dist.rank}.pt")
''')



def test_dynamic_sampling_two_processes_equal_one(tmp_path):
    """Dynamic sampling with P-GRPO previews, the overlong penalty and the truncation mask on: 2 processes
    train on the same groups in the same order as 1, with the same gradients, weights and metrics."""
    script = write_worker(tmp_path / "worker.py", WORKER)
    single = run_ranks(script, [tmp_path, "single"], 1, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    dp = run_ranks(script, [tmp_path, "dp"], 2, timeout=600)
    assert dp.returncode == 0, dp.stderr[-3000:]
    one, r0, r1 = (torch.load(tmp_path / f, weights_only=False) for f in ("single-rank0.pt", "dp-rank0.pt", "dp-rank1.pt"))
    assert any(r["dynamic/rounds"] > 1 for r in one["rows"]) and any(r["dynamic/dropped_groups"] for r in one["rows"])
    assert one["prompts"] == r0["prompts"] == r1["prompts"]  # the same groups, in the same global order
    for a, b in zip(one["rows"], r0["rows"]):
        assert a.keys() == b.keys()
        for k in a:
            if k.startswith(("dynamic/", "reward/frac_zero_std", "loss/masked_frac")):
                assert a[k] == b[k], k
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-6)
        assert a["dynamic/sampled_reward_mean"] == pytest.approx(b["dynamic/sampled_reward_mean"], abs=1e-9)
    assert len(one["grads"]) == len(r0["grads"]) > 0
    for g1, g0, gr1 in zip(one["grads"], r0["grads"], r1["grads"]):
        for name in g1:
            torch.testing.assert_close(g0[name], g1[name], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(gr1[name], g0[name], atol=0, rtol=0)
    for name, p in one["params"].items():
        torch.testing.assert_close(r0["params"][name], p, atol=1e-5, rtol=1e-4)
    assert r0["pgrpo"] == r1["pgrpo"]
    for key in ("n", "mean", "m2"):
        assert r0["pgrpo"][key] == pytest.approx(one["pgrpo"][key], abs=1e-9)


def test_dynamic_sampling_with_rlpa_dialogues(tmp_path):
    """The same mechanism around RLPA's multi-turn rollout: a round gives prompts_per_step x turns groups
    (one per dialogue turn), so that is the target. The tiny model never follows the turn format, every
    group ties at 0, and with the cap hit the step trains on nothing (all rows are zero-weight fillers)."""
    cfg = build_config({"model": "tiny", "task": "rlpa", "steps": 1, "seed": 0, "output_dir": str(tmp_path / "rlpa"),
                        "task_options": {"max_turns": 2, "n_train": 8, "n_test": 2},
                        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 6,
                                    "dynamic_sampling": "reward", "dynamic_max_extra_rounds": 1},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg)
    seen = _spy(tr)
    m = tr.train()[0]
    assert m["reward/frac_zero_std"] == 1.0
    assert (m["dynamic/rounds"], m["dynamic/sampled_groups"], m["dynamic/kept_groups"]) == (2, 8, 0)
    assert m["dynamic/filler_groups"] == 4 and m["loss/masked_frac"] == 1.0
    assert len(seen["pools"][0]) == 16 and len(seen["batches"][0]) == 8  # 2 rounds x 2 dialogues x 2 turns x G
    assert tr.sampler.offset == 4


# ----------------------------------------------------------------------------- with a critic (gae)
def test_dynamic_sampling_advantage_with_gae_is_a_config_error(tmp_path):
    cfg = _cfg(tmp_path, "gae-adv", rollout={"dynamic_sampling": "advantage"},
               algo={"advantage": "gae", "critic": "head", "loss": "ppo"})
    with pytest.raises(ConfigError, match="rollout.dynamic_sampling=advantage.*use rollout.dynamic_sampling=reward"):
        Trainer(cfg)


def test_gae_with_dynamic_sampling_and_truncation_mask_trains(tmp_path):
    """The critic's values and GAE are computed on the rows trained on (after the rollout stage's
    selection); masked rows get zero advantages and returns and take no part in the whitening."""
    cfg = _cfg(tmp_path, "gae-dyn", steps=2, task_options={"pattern": "TM", "repeat": 4},
               rollout={"dynamic_sampling": "reward", "mask_truncated": True, "max_new_tokens": 4},
               algo={"advantage": "gae", "critic": "head", "loss": "ppo"})
    tr = _replay(Trainer(cfg), width=4)
    seen = _spy(tr)
    tr.train()
    for batch in seen["batches"]:
        assert batch.values is not None and batch.values.shape == batch.response_ids.shape
        assert batch.advantages.shape == batch.response_ids.shape  # [B, R] token advantages
        if batch.train_mask is not None and (~batch.train_mask).any():
            off = ~batch.train_mask
            assert float(batch.advantages[off].abs().sum()) == 0.0
            assert float(batch.returns[off].abs().sum()) == 0.0
    rows = [json.loads(x) for x in (tmp_path / "gae-dyn" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("critic/value_loss" in r and "reward/frac_zero_std" in r for r in rows)
