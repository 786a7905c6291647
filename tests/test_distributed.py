"""Data parallelism on CPU (gloo, tiny model): one global batch split over 2 processes gives the
same loss, gradients, updated parameters, P-GRPO state and gradient cosine (`log.grad_cosine`) as 1 process
with the same batch.
Also: `fairalign.dist.from_env` returns one class per strategy (plain `Dist` for one process), and which
strategies make `all_ranks` a collective.

Sampling is made identical with a replay engine: each (prompt, generation) gets fixed response
tokens derived from a hash of the prompt, so the batch does not depend on how it is split."""
import textwrap

import pytest
import torch
from replay_support import run_ranks, write_worker

from fairalign.dist import DDPDist, DeepSpeedDist, Dist, FSDP2Dist, from_env, make_dist

WORKER = textwrap.dedent('''
    import json, sys, torch
    from replay_support import replay_engine
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    out, mode = sys.argv[1], sys.argv[2]
    cfg = build_config({"model": "tiny", "task": "personas", "steps": 2, "seed": 5,
                        "output_dir": out + "/run-" + mode,
                        "rollout": {"prompts_per_step": 4, "generations": 3, "max_new_tokens": 10},
                        "algo": {"loss": "fspo", "drift": "kl", "advantage": "pgrpo", "pgrpo_min_count": 2, "minibatches": 2,
                                 "agg": sys.argv[3], "micro_batch_size": 2},
                        "optim": {"lr": 1e-3, "grad_clip": 0.0},
                        "log": {"tensorboard": False, "progress": False, "grad_cosine": True}})
    tr = Trainer(cfg)
    eng = tr.engine
    V = tr.model.config.vocab_size

    eng.generate = replay_engine(eng, V)
    grads = []
    real_step = tr.optimizer.step
    def step_and_record(*a, **k):
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)
    tr.optimizer.step = step_and_record
    rows = tr.train()
    if tr.dist.is_main or mode == "dp":
        torch.save({"rows": [{k: v for k, v in r.items() if not k.startswith(("time/", "step_s", "tokens_per_s"))}
                             for r in rows],
                    "grads": grads, "params": {n: p.detach().clone() for n, p in tr.model.named_parameters()},
                    "pgrpo": tr.estimator.state_dict()},
                   f"{out}/{mode}-rank{tr.dist.rank}.pt")
''')


@pytest.mark.parametrize("configured,env,cls,strategy", [
    ("auto", {}, DDPDist, "ddp"),
    ("ddp", {}, DDPDist, "ddp"),
    ("fsdp2", {}, FSDP2Dist, "fsdp2"),
    ("auto", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, FSDP2Dist, "fsdp2"),
    ("deepspeed", {}, DeepSpeedDist, "deepspeed"),
    ("auto", {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, DeepSpeedDist, "deepspeed"),
])
def test_from_env_picks_the_class_per_strategy(monkeypatch, configured, env, cls, strategy):
    """One process: the plain `Dist` whatever the strategy; several: the strategy's class (the process
    group is faked: `from_env` only asks it for the rank and world size)."""
    import fairalign.dist.deepspeed as dz

    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("WORLD_SIZE", "1")
    one = from_env(configured)
    assert type(one) is Dist and one.strategy == strategy and (one.rank, one.world) == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dz, "import_deepspeed", lambda: None)   # the package is not needed to pick the class
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    many = from_env(configured)
    assert type(many) is cls and many.strategy == strategy and (many.rank, many.world) == (1, 2)
    if cls is DeepSpeedDist:
        assert many.zero_stage == int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))


def test_collectives_and_all_ranks_per_class():
    """The collectives object advantage estimators use, and `all_ranks`: the local flag unless
    forwards are collectives (FSDP2, ZeRO-3)."""
    one = Dist()
    assert (one.rank, one.world, one.all_gather_objects({"a": 1}), one.sum_metric(2.5)) == (0, 1, [{"a": 1}], 2.5)
    assert one.all_ranks is bool and make_dist(0, 2, "ddp").all_ranks is bool
    assert make_dist(0, 2, "deepspeed", {"zero_stage": 2}).all_ranks is bool
    for d in (make_dist(1, 2, "fsdp2"), make_dist(1, 2, "deepspeed", {"zero_stage": 3})):
        assert d.all_ranks == d.all_true
    with pytest.raises(ValueError, match="unknown distributed strategy 'zero3'"):
        make_dist(0, 2, "zero3")



@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_two_processes_equal_one(tmp_path, agg):
    script = tmp_path / "worker.py"
    write_worker(script, WORKER)
    single = run_ranks(script, [tmp_path, "single", agg], 1, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    dp = run_ranks(script, [tmp_path, "dp", agg], 2, timeout=600)
    assert dp.returncode == 0, dp.stderr[-3000:]
    one = torch.load(tmp_path / "single-rank0.pt", weights_only=False)
    r0 = torch.load(tmp_path / "dp-rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "dp-rank1.pt", weights_only=False)
    # loss and every reduced metric
    for a, b in zip(one["rows"], r0["rows"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["reward/mean"] == pytest.approx(b["reward/mean"], abs=1e-6)
        for key in ("reward/std", "advantage/std"):  # over every rank's samples, not a mean of per-rank stds
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        assert ("clip_frac" in a) == ("clip_frac" in b)   # absent when every update is on-policy
        assert a.get("clip_frac", 0.0) == pytest.approx(b.get("clip_frac", 0.0), abs=1e-6)
        # the gradient-cosine diagnostic: over the global minibatch, so the same with 2 processes
        assert a["grad_cosine/updates"] == b["grad_cosine/updates"] == 1  # 2 minibatches: 1 can clip
        assert a["grad_cosine"] == pytest.approx(b["grad_cosine"], abs=1e-5)
        assert {k for k in a if k.startswith("reward/group/")} == {k for k in b if k.startswith("reward/group/")}
    # gradients of every optimizer step (summed over ranks) and the updated parameters
    assert len(one["grads"]) == len(r0["grads"]) == 4  # 2 steps x 2 minibatches
    for g1, g0, gr1 in zip(one["grads"], r0["grads"], r1["grads"]):
        for name in g1:
            torch.testing.assert_close(g0[name], g1[name], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(gr1[name], g0[name], atol=0, rtol=0)   # ranks hold identical grads
    for name, p in one["params"].items():
        torch.testing.assert_close(r0["params"][name], p, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r1["params"][name], r0["params"][name], atol=0, rtol=0)
    # P-GRPO state: identical on both ranks and equal to the single process's
    assert r0["pgrpo"] == r1["pgrpo"]
    assert r0["pgrpo"]["groups"] == one["pgrpo"]["groups"]
    for key in ("n", "mean", "m2"):
        assert r0["pgrpo"][key] == pytest.approx(one["pgrpo"][key], abs=1e-9)
