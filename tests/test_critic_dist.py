"""PPO with a critic under data parallelism on CPU (gloo, tiny model): 2 processes give the same losses,
critic metrics (value loss, value clip fraction, explained variance, critic grad norm), policy gradients
and weights, critic weights and checkpointed critic state (`critic.pt`, 1-process format) as 1 process
on the same global batch. Covered: a value model under DDP, FSDP2 and DeepSpeed ZeRO-2 (wrapped like the
policy: its own replica / shards / engine) and a value head on an FSDP2-sharded and on a DeepSpeed policy
(replicated head, gradients all-reduced; DeepSpeed's loss × world undone). Sampling is replayed
from prompt hashes (replay_support.py) so the batch does not depend on the split; micro-batches of 2
and an uneven minibatch split make ranks run placeholder passes; value clipping and gradient clipping
are active."""
import textwrap

import pytest
import torch

from replay_support import write_worker
from test_fsdp import _launch

WORKER = textwrap.dedent('''
    import os, sys, torch
    from replay_support import replay_engine
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    out, tag, strategy, critic = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    cfg = build_config({"model": "tiny", "task": "personas", "steps": 2, "seed": 5, "output_dir": f"{out}/run-{tag}",
                        "dist_strategy": strategy,
                        "rollout": {"prompts_per_step": 4, "generations": 3, "max_new_tokens": 10},
                        "algo": {"loss": "ppo", "advantage": "gae", "critic": critic, "lam": 0.9, "vf_coef": 0.5,
                                 "value_clip": 0.01, "critic_lr": 1e-2, "micro_batch_size": 2, "minibatches": 2},
                        "optim": {"lr": 1e-3, "grad_clip": 0.05},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg)
    tr.engine.generate = replay_engine(tr.engine, tr.model.config.vocab_size)
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t   # DTensor shard -> whole tensor
    grads = []
    real_step = tr.optimizer.step
    def step_and_record(*a, **k):
        grads.append({n: full(p.grad).clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)
    tr.optimizer.step = step_and_record
    rows = tr.train()
    res = {"cls": type(tr.critic.dist).__name__, "world": tr.dist.world,
           "rows": [{k: v for k, v in r.items() if not k.startswith(("time/", "step_s", "tokens_per_s"))} for r in rows],
           "grads": grads, "params": {n: full(p).detach().clone() for n, p in tr.model.named_parameters()},
           "critic": {n: full(p).detach().clone() for n, p in tr.critic.module.named_parameters()}}
    torch.save(res, f"{out}/{tag}-rank{tr.dist.rank}.pt")
    tr.dist.close()
    os._exit(0)   # see test_fsdp.EXIT_NOTE
''')

CASES = [("ddp", "model"), ("fsdp2", "model"), ("fsdp2", "head"), ("deepspeed", "model"), ("deepspeed", "head")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):  # tiny_model_dir: built before the ranks start
    tmp = tmp_path_factory.mktemp("critic-dist")
    script = write_worker(tmp / "worker.py", WORKER)
    for critic in sorted({c for _, c in CASES}):
        _launch(script, [tmp, f"single-{critic}", "ddp", critic], 1, tmp)
    for strategy, critic in CASES:
        if strategy != "deepspeed" or _has_deepspeed():
            _launch(script, [tmp, f"{strategy}-{critic}", strategy, critic], 2, tmp)
    return tmp


def _has_deepspeed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def _load(tmp, name):
    return torch.load(tmp / f"{name}.pt", weights_only=False)


@pytest.mark.parametrize("strategy, critic", CASES)
def test_two_processes_equal_one(runs, strategy, critic):
    if strategy == "deepspeed" and not _has_deepspeed():
        pytest.skip("deepspeed is not installed")
    one = _load(runs, f"single-{critic}-rank0")
    r0, r1 = _load(runs, f"{strategy}-{critic}-rank0"), _load(runs, f"{strategy}-{critic}-rank1")
    want_cls = {"head": "DDPDist",
                "model": {"ddp": "DDPDist", "fsdp2": "FSDP2Dist", "deepspeed": "DeepSpeedDist"}[strategy]}[critic]
    assert (one["cls"], r0["cls"], r1["world"]) == ("Dist", want_cls, 2)
    keys = ("loss", "critic/value_loss", "critic/explained_variance", "critic/grad_norm", "critic/values_mean",
            "critic/returns_mean", "critic/value_clip_frac", "grad_norm", "advantage/mean", "advantage/std",
            "reward/std")
    for a, b in zip(one["rows"], r0["rows"]):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    assert any(r["critic/value_clip_frac"] > 0 for r in one["rows"])   # the value clip is active
    assert one["rows"][0]["critic/grad_norm"] > 0.05                   # so is the critic's gradient clipping
    assert len(one["grads"]) == len(r0["grads"]) == 4  # 2 steps x 2 minibatches
    for g1, g0, gr1 in zip(one["grads"], r0["grads"], r1["grads"]) if strategy != "deepspeed" else ():  # ZeRO: partitioned
        for name in g1:
            torch.testing.assert_close(g0[name], g1[name], atol=1e-5, rtol=1e-4, msg=name)
            torch.testing.assert_close(gr1[name], g0[name], atol=0, rtol=0, msg=name)
    # parameters after 4 Adam steps: a coordinate whose gradient is ~0 moves by up to lr whatever its size, so
    # float-rounding differences of the forwards (one process splits its micro-batches by response length,
    # train/policy.py) show up there; the gradients above are the tight check. critic_lr is 1e-2: 1e-4 = 1% of
    # one of its steps.
    for part, atol in (("params", 1e-5), ("critic", 1e-4)):
        for name, p in one[part].items():
            torch.testing.assert_close(r0[part][name], p, atol=atol, rtol=1e-4, msg=name)
            torch.testing.assert_close(r1[part][name], r0[part][name], atol=0, rtol=0, msg=name)
    # the checkpointed critic is written in the 1-process format
    a = torch.load(runs / f"run-single-{critic}" / "checkpoints" / "step-2" / "critic.pt", weights_only=True)
    b = torch.load(runs / f"run-{strategy}-{critic}" / "checkpoints" / "step-2" / "critic.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys() and a["scheduler"] == b["scheduler"]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-4, rtol=1e-4, msg=k)  # as above
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, st in a["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(b["optimizer"]["state"][i][k], st[k], atol=1e-6, rtol=1e-4)
