"""PPO with a learned critic in the trainer (tiny model): the config rules (a critic exactly with an
estimator that uses values, critic keys only with a critic, the `ppo` preset, the RLPA PPO + GAE config
through `fairalign config`), a run whose value loss falls for both kinds of critic, token advantages
reaching the loss, and an exact resume (metrics, policy and critic state) from a mid-run checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fairalign.errors import ConfigError
from fairalign.config import build_config
from fairalign.config.presets import get_preset, merge
from fairalign.train.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
FAST = {"model": "tiny", "task": "personas", "seed": 4,
        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 8},
        "log": {"tensorboard": False, "progress": False}}
TIMING = ("step_s", "tokens_per_s", "time/")


def _cfg(tmp_path, name, **algo):
    base = merge(merge(get_preset("ppo"), FAST), {"output_dir": str(tmp_path / name), "algo": algo})
    return base


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, needle", [
    (["algo.advantage=gae"], "config key 'algo.critic' is 'none' but algo.advantage=gae needs a critic"),
    (["algo.critic=head"], "config key 'algo.critic' is 'head' but algo.advantage=grpo does not use values"),
    (["algo.vf_coef=0.5"], "config key 'algo.vf_coef' applies only to a critic"),
    (["algo.critic_lr=1e-4"], "config key 'algo.critic_lr' applies only to a critic"),
    (["algo.lam=0.9"], "config key 'algo.lam' does not apply to algo.advantage=grpo"),
    (["algo.advantage=gae", "algo.critic=model", "algo.gamma=1.5"], "config key 'algo.gamma': gamma and lam"),
    (["algo.advantage=gae", "algo.critic=value"], "config key 'algo.critic' has unknown value 'value'"),
    (["algo.advantage=gae", "algo.critic=head", "algo.value_clip=0"], "config key 'algo.value_clip' must be > 0"),
])
def test_critic_config_errors_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        build_config({}, overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_ppo_preset_is_critic_and_gae_and_the_clipped_loss_stays_reachable():
    ppo = build_config(get_preset("ppo")).algo
    assert (ppo.loss, ppo.advantage, ppo.critic, ppo.value_clip, ppo.vf_coef) == ("ppo", "gae", "model", 0.5, 0.1)
    plain = build_config({}, ["algo.loss=ppo"]).algo      # the critic-free clipped loss (GRPO's)
    assert (plain.loss, plain.advantage, plain.critic) == ("ppo", "grpo", "none")
    assert build_config(get_preset("ppo"), ["algo.critic=head"]).algo.critic == "head"


def test_rlpa_ppo_gae_config_resolves_through_the_cli():
    out = subprocess.run([sys.executable, "-m", "fairalign", "config", str(ROOT / "configs" / "rlpa-ppo-gae.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import yaml

    cfg = yaml.safe_load(out.stdout)
    assert cfg["task"] == "rlpa" and cfg["task_options"]["max_turns"] == 10
    assert cfg["rollout"]["generations"] == 4          # 4 candidates per history (the best continues)
    a = cfg["algo"]
    assert (a["loss"], a["advantage"], a["critic"], a["gamma"], a["lam"]) == ("ppo", "gae", "model", 1.0, 0.95)
    assert a["ppo_epochs"] * a["minibatches"] >= 2


# ----------------------------------------------------------------------------- training
def _file_task(tmp_path):
    """Prompts whose reward is fixed by the prompt (1.0 or 1.5): a critic can learn it."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Tell me about item {i}.", "group": f"g{i % 2}",
                                        "target": 1.0 + 0.5 * (i % 2)}) + "\n" for i in range(8)))
    rewards = tmp_path / "fixed_reward.py"
    rewards.write_text("def fixed(prompts, completions, target, **kw):\n    return [float(t) for t in target]\n")
    return {"task": str(data), "task_reward": [f"{rewards}:fixed"]}


@pytest.mark.parametrize("critic, lr", [("head", 2e-2), ("model", 3e-3)])
def test_value_loss_falls(tmp_path, critic, lr):
    """8 steps; the head alone (H + 1 weights on a trunk trained at the policy's small lr) learns slower."""
    base = merge(_cfg(tmp_path, critic, critic=critic, critic_lr=lr, vf_coef=1.0), _file_task(tmp_path))
    base.update(steps=8)
    rows = Trainer(build_config(base)).train()
    losses = [r["critic/value_loss"] for r in rows]
    assert losses[0] > 0.3   # the fresh critic predicts ~0 for returns of 1 to 1.5
    assert max(losses[-2:]) < 0.35 * losses[0], losses
    assert all(0.0 <= r.get("critic/value_clip_frac", 0.0) <= 1.0 for r in rows)
    assert all(k in rows[0] for k in ("critic/values_mean", "critic/returns_mean", "critic/grad_norm"))


def test_token_advantages_reach_the_policy_loss(tmp_path, monkeypatch):
    """The loss receives the estimator's [b, R'] token advantages for its rows (not sequence ones)."""
    cfg = build_config(_cfg(tmp_path, "adv", critic="head", micro_batch_size=1), ["steps=1"])
    tr = Trainer(cfg)
    seen = []
    real = tr.loss.__call__

    def spy(logp, old, adv, mask, **kw):
        seen.append((adv.clone(), mask.clone()))
        return real(logp, old, adv, mask, **kw)

    monkeypatch.setattr(tr, "loss", type("Spy", (), {"__call__": staticmethod(spy), "batch_stats": (),
                                                      "horizon": None})())
    tr.train()
    assert seen and all(a.shape == m.shape and a.dim() == 2 for a, m in seen)
    assert any(a[m].unique().numel() > 1 for a, m in seen)  # advantages differ between a response's tokens


@pytest.mark.parametrize("critic", ["head", "model"])
def test_resume_is_exact(tmp_path, critic):
    """4 steps in one go == 2 steps, a checkpoint, then a resumed run for 2 more: the same metric lines,
    policy weights and critic weights / optimizer state."""
    def cfg(name):
        return build_config(_cfg(tmp_path, name, critic=critic, critic_lr=2e-2, value_clip=0.01),
                            ["steps=4", "save_every=2", "optim.lr=1e-3", "keep_last=3"])

    Trainer(cfg("straight")).train()
    first = Trainer(cfg("resumed"))
    first.train(stop_after=2)
    first._lock.release()
    assert (tmp_path / "resumed" / "checkpoints" / "step-2" / "critic.pt").exists()
    again = Trainer(cfg("resumed"), resume=True)
    assert again.step == 2
    again.train()

    def metrics(name):
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]

    a, b = metrics("straight"), metrics("resumed")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    assert any(r.get("critic/value_clip_frac", 0) > 0 for r in a)  # the value clip was active
    from safetensors.torch import load_file

    pa = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    pb = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    ca = torch.load(tmp_path / "straight" / "checkpoints" / "step-4" / "critic.pt", weights_only=True)
    cb = torch.load(tmp_path / "resumed" / "checkpoints" / "step-4" / "critic.pt", weights_only=True)
    assert ca["kind"] == cb["kind"] == critic
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert ca["scheduler"] == cb["scheduler"]
    for i, st in ca["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(cb["optimizer"]["state"][i][k], v), (i, k)


def test_resume_without_critic_state_is_a_clear_error(tmp_path):
    cfg = build_config(_cfg(tmp_path, "run", critic="head"), ["steps=2", "save_every=1"])
    tr = Trainer(cfg)
    tr.train(stop_after=1)
    tr._lock.release()
    (tmp_path / "run" / "checkpoints" / "step-1" / "critic.pt").unlink()
    (tmp_path / "run" / "checkpoints" / "step-1" / "CHECKSUMS.json").unlink()  # a checkpoint of an older version
    with pytest.raises(ConfigError, match="holds no critic .critic.pt. but algo.critic=head"):
        Trainer(cfg, resume=True)
