"""Defects found by the review of the method code (issue 10 §B), each tested the way the trainer
uses the method: FSPO's KL drift must not depend on the micro-batch size, P-GRPO must not blow up on
a zero-variance history, the KL reference is the policy RL starts from (after the warm-up, after a
resume, with LoRA), a NaN from the forward pass is a numerical fault (skip, checkpoint, stop) and not
a usage error, and out-of-range P-GRPO settings fail in the config."""
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import PreferenceGroupNormalizer, compute_policy_loss
from fairalign.errors import ConfigError
from fairalign.config import build_config
from fairalign.train.trainer import Trainer
from fairalign.errors import TrainingError

FAST = {"model": "tiny", "task": "personas", "steps": 1, "seed": 3,
        "rollout": {"prompts_per_step": 2, "generations": 4, "max_new_tokens": 8},
        "log": {"tensorboard": False, "progress": False}}


def _cfg(tmp_path, name="run", **sections):
    d = json.loads(json.dumps(FAST))
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) and k != "task_options" else v
    d["output_dir"] = str(tmp_path / name)
    return build_config(d)


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


# ------------------------------------------------------------------ FSPO drift="kl" is global
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), micro=st.integers(1, 5))
def test_fspo_kl_drift_is_the_whole_batch_mean_whatever_the_split(seed, micro):
    """Micro-batches given the batch's mean log ratio add up to the whole batch's loss and gradient."""
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 7
    mask = torch.rand(B, T, generator=g) < 0.8
    mask[:, 0] = True
    old = -torch.rand(B, T, generator=g) * 3
    logp = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_(True)
    adv = torch.randn(B, generator=g)
    hp = {"c_low": 0.05, "c_high": 0.05, "drift": "kl"}
    tokens = float(mask.sum())
    whole, st_whole = compute_policy_loss("fspo", logp, old, adv, mask, global_tokens=tokens, **hp)
    (g_whole,) = torch.autograd.grad(whole, logp)
    mu = float(((logp.detach() - old) * mask).sum() / mask.sum())
    total = 0.0
    grad = torch.zeros_like(logp)
    flags = []
    for s in range(0, B, micro):
        rows = slice(s, min(B, s + micro))
        lp = logp.detach()[rows].clone().requires_grad_(True)
        part, st_part = compute_policy_loss("fspo", lp, old[rows], adv[rows], mask[rows], global_tokens=tokens,
                                            batch_stats={"mean_log_ratio": mu}, **hp)
        (gp,) = torch.autograd.grad(part, lp)
        grad[rows] = gp
        total += float(part.detach())
        flags.append(st_part["clipped"])
    assert total == pytest.approx(float(whole.detach()), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(grad, g_whole, rtol=1e-5, atol=1e-7)
    assert torch.equal(torch.cat(flags), st_whole["clipped"])


def test_fspo_kl_drift_training_does_not_depend_on_micro_batch_size(tmp_path):
    """Through the trainer: micro_batch_size (a memory setting) leaves clip metrics and weights unchanged.
    A large learning rate and a narrow band make the second minibatch clip."""
    runs = {}
    for micro in (0, 1):
        cfg = _cfg(tmp_path, f"m{micro}", algo={"loss": "fspo", "drift": "kl", "c_low": 0.002, "c_high": 0.002,
                                                "minibatches": 2, "ppo_epochs": 2, "micro_batch_size": micro},
                   optim={"lr": 3e-2, "grad_clip": 0})
        tr = Trainer(cfg)
        m = tr.train()[0]
        runs[micro] = (m, _params(tr))
    (m0, p0), (m1, p1) = runs[0], runs[1]
    assert m0["clip_frac"] > 0, "the test needs clipping to discriminate"
    assert m1["clip_frac"] == pytest.approx(m0["clip_frac"], abs=1e-9)
    assert m1["lre"] == pytest.approx(m0["lre"], abs=1e-9)
    assert m1["loss"] == pytest.approx(m0["loss"], rel=1e-4, abs=1e-7)
    for n in p0:  # Adam turns float noise in near-zero gradients into lr-sized steps: compare at 3% of lr
        torch.testing.assert_close(p1[n], p0[n], rtol=0, atol=1e-3)


# ------------------------------------------------------------------ P-GRPO zero-variance history
def test_pgrpo_zero_variance_history_does_not_blow_up():
    """8 rewards of 0, then a success: the literal formula gives 1/eps = 1e6; the guard falls back to the
    prompt group's GRPO statistics."""
    norm = PreferenceGroupNormalizer(min_count=8)
    norm(torch.zeros(8), ["a"] * 8, torch.arange(8) // 4)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv = norm(r, ["a"] * 4, torch.zeros(4, dtype=torch.long))
    grpo = (r - r.mean()) / (r.std() + 1e-6)
    torch.testing.assert_close(adv, grpo)
    assert norm.last_history_frac == 0.0


def test_pgrpo_history_frac_is_logged(tmp_path):
    cfg = _cfg(tmp_path, algo={"advantage": "pgrpo", "pgrpo_min_count": 2}, steps=2)
    rows = Trainer(cfg).train()
    assert rows[0]["pgrpo/history_frac"] == 0.0  # cold start: every sample uses GRPO statistics
    assert 0.0 <= rows[1]["pgrpo/history_frac"] <= 1.0


@pytest.mark.parametrize("bad", ["algo.pgrpo_min_count=0", "algo.pgrpo_min_count=-1", "algo.pgrpo_eps=0"])
def test_pgrpo_settings_out_of_range_fail_in_the_config(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        build_config({"algo": {"advantage": "pgrpo"}}, [bad])


# ------------------------------------------------------------------ the KL reference
def _rlpa_cfg(tmp_path, name="run", **over):
    d = {"model": "tiny", "task": "rlpa", "steps": 1, "seed": 0, "output_dir": str(tmp_path / name),
         "task_options": {"max_turns": 1, "n_train": 8, "n_test": 2},
         "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 6},
         "sft": {"steps": 2, "batch_size": 4, "lr": 1e-2},
         "algo": {"beta": 0.5, "kl": "k3"},
         "log": {"tensorboard": False, "progress": False}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) and k != "task_options" else v
    return build_config(d)


@pytest.mark.parametrize("lora", [False, True])
def test_kl_reference_is_the_policy_after_the_warm_up(tmp_path, lora):
    """On-policy step 1 right after the warm-up: policy and reference are the same model, so KL = 0."""
    extra = {"lora": {"enabled": True, "r": 4}} if lora else {}
    cfg = _rlpa_cfg(tmp_path, **extra, algo={"beta": 0.5, "ppo_epochs": 1, "minibatches": 1})
    m = Trainer(cfg).train()[0]
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)


def test_kl_reference_survives_resume(tmp_path):
    """After --resume the reference is still the post-warm-up policy: step 2 equals an uninterrupted run."""
    full = Trainer(_rlpa_cfg(tmp_path, "full", steps=2)).train()
    cfg = _rlpa_cfg(tmp_path, "cut", steps=2)
    Trainer(cfg).train(stop_after=1)
    tr = Trainer(cfg, resume=True)  # fresh process state would not have the warm-up model in memory
    del tr
    resumed = Trainer(cfg, resume=True).train()
    assert resumed[-1]["step"] == 2
    assert resumed[-1]["kl"] == pytest.approx(full[-1]["kl"], rel=1e-4, abs=1e-8)


# ------------------------------------------------------------------ NaN from the forward pass
def _nan_logits(model, when):
    def hook(_mod, _inp, out):
        if when():
            logits = out.logits if hasattr(out, "logits") else out[0]
            logits.data.fill_(float("nan"))
        return out
    return model.register_forward_hook(hook)


def test_nan_from_the_forward_pass_is_skipped_not_a_usage_error(tmp_path):
    cfg = _cfg(tmp_path, steps=2, max_skipped_updates=10, algo={"minibatches": 2})
    tr = Trainer(cfg)
    handle = _nan_logits(tr.model, lambda: torch.is_grad_enabled())  # training forwards only
    m = tr.train_step()
    assert m["skipped_updates"] == 2
    handle.remove()
    m = tr.train_step()
    assert m["skipped_updates"] == 0


def test_repeated_nan_from_the_forward_pass_checkpoints_and_stops(tmp_path):
    cfg = _cfg(tmp_path, steps=3, max_skipped_updates=2, algo={"minibatches": 2})
    tr = Trainer(cfg)
    _nan_logits(tr.model, lambda: torch.is_grad_enabled())
    with pytest.raises(TrainingError, match="non-finite"):
        tr.train()
    assert any((tmp_path / "run" / "checkpoints").glob("step-*/COMPLETE"))
