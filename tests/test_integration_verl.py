"""verl 0.9.1 integration (fairalign.integrations.verl), called the way verl calls it, on CPU.

verl is installed without its heavy dependencies, as verl's own *_on_cpu tests run it. Two verl modules
(verl/protocol.py, verl/single_controller/base/worker.py) `import ray` at the top and touch only
`ray.ObjectRef` (annotations) while being imported; when ray is not installed a placeholder module stands
in for that import and is removed from sys.modules right after; any other use of it raises.

The loss goes through verl's actor loss `verl.workers.utils.losses.ppo_loss` with the ActorConfig that
verl's worker instantiates from the documented command line (Hydra compose of verl's ppo_trainer.yaml);
the estimator through `core_algos.get_adv_estimator_fn` with the kwargs `compute_advantage` builds. The
references are fairalign's own functions, the FSPO clip rule of docs/algorithms.md written out here, and verl's GRPO.
verl's v1 trainer itself (Ray, TransferQueue) cannot be imported here: a stand-in class with the one method
the group recorder wraps returns what 0.9.1's method returns, and a source check pins the trainer facts used.
"""
import ast
import copy
import importlib.util
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "integrations.md"


class _RayPlaceholder(types.ModuleType):
    """`ray` while verl is imported without it: verl touches only ray.ObjectRef then."""

    class ObjectRef:  # nothing is ever an instance of it
        pass

    def __getattr__(self, name):
        raise AttributeError(f"ray is not installed (placeholder for verl's import); verl used ray.{name}")


_placeholder = importlib.util.find_spec("ray") is None and "ray" not in sys.modules
if _placeholder:
    sys.modules["ray"] = _RayPlaceholder("ray")
try:
    verl = pytest.importorskip("verl")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.metric import Metric
    from verl.workers.utils.losses import ppo_loss
    from tensordict import TensorDict

    import fairalign.integrations.verl as fv
    from fairalign.integrations import verl_pgrpo
finally:
    if _placeholder:
        del sys.modules["ray"]

from fairalign.algos import POLICY_LOSS_REGISTRY, PreferenceGroupNormalizer, aggregate, compute_policy_loss  # noqa: E402
from fairalign.diagnostics import clip_rate_metrics  # noqa: E402

VERL_DIR = Path(verl.__file__).parent


def _documented_overrides(doc=DOC) -> list[str]:
    """The `key=value` arguments of the documented `python3 -m verl.trainer.main_ppo` command, as the shell
    passes them."""
    block = next(b for b in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S) if "main_ppo" in b)
    argv = shlex.split(block.replace("\\\n", " ").replace("$HOME", "/home/user"))
    assert argv[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    return argv[3:]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(VERL_DIR / "trainer" / "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def _edited(cfg, key, value):
    """A copy of the composed config with `key` set (or added, like Hydra's `+key=value`)."""
    out = copy.deepcopy(cfg)
    OmegaConf.set_struct(out, False)
    OmegaConf.update(out, key, value)
    return out


@pytest.fixture(scope="module")
def cfg():
    return _compose(_documented_overrides())


@pytest.fixture(scope="module")
def actor_config(cfg):
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # as verl's actor worker builds it


@pytest.fixture
def driver():
    verl_pgrpo.DRIVER.reset()
    yield verl_pgrpo.DRIVER
    verl_pgrpo.DRIVER.reset()


def test_documented_command_is_accepted_by_verl(cfg, actor_config):
    assert actor_config.policy_loss.loss_mode == "fspo"
    assert (actor_config.clip_ratio_low, actor_config.clip_ratio_high) == (0.02, 0.03)
    assert cfg.algorithm.adv_estimator == "pgrpo" and cfg.algorithm.pgrpo_group_key == "extra_info.persona"
    assert cfg.trainer.use_v1  # the trainer that builds checkpoint callbacks
    assert verl_pgrpo.read_hparams(cfg.algorithm) == {"min_count": 8, "eps": 1e-6, "decay": None, "min_std": 1e-3,
                                                        "zero_std": "fallback"}
    # the alternative import hook of the docs is a valid override too
    env = _compose(["+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=fairalign.integrations.verl"])
    assert env.ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES == "fairalign.integrations.verl"
    # and verl rejects a new FSPO key (what +actor_rollout_ref.actor.policy_loss.fspo_drift=kl adds), which is
    # why FSPO uses verl's clip_ratio_low/high
    bad = _edited(cfg, "actor_rollout_ref.actor.policy_loss.fspo_drift", "kl")
    with pytest.raises(Exception, match="fspo_drift"):
        omega_conf_to_dataclass(bad.actor_rollout_ref.actor)


# ---------------------------------------------------------------------------------------------- FSPO
def _rollout(seed, B=6, P=4, R=12, scale=0.05):
    """A padded micro-batch as verl's actor sees it, and the flat model output ppo_loss slices."""
    g = torch.Generator().manual_seed(seed)
    plen = torch.randint(1, P + 1, (B,), generator=g)
    rlen = torch.randint(1, R + 1, (B,), generator=g)
    rlen[0] = R  # one unpadded row
    attn = torch.zeros(B, P + R, dtype=torch.long)
    for j in range(B):
        attn[j, P - plen[j]:P] = 1
        attn[j, P:P + rlen[j]] = 1
    mask = attn[:, P:].bool()  # [B, R], right padded
    old = -torch.rand(B, R, generator=g) * 3  # [B, R]
    logp = (old + scale * torch.randn(B, R, generator=g)) * mask  # [B, R]
    seq_adv = torch.randn(B, generator=g)  # [B]
    seq_adv[seq_adv.abs() < 0.05] = 0.3
    # model output: one row per sequence of (prompt_len + resp_len) values; logp of response token t sits
    # at position prompt_len - 1 + t (next-token shift); other positions hold values no loss may use
    chunks = []
    for j in range(B):
        row = torch.full((int(plen[j] + rlen[j]),), 7.0)
        row[plen[j] - 1:plen[j] - 1 + rlen[j]] = logp[j, :rlen[j]]
        chunks.append(row)
    data = TensorDict({"prompts": torch.zeros(B, P, dtype=torch.long), "responses": torch.zeros(B, R, dtype=torch.long),
                       "attention_mask": attn, "response_mask": mask.long(), "old_log_probs": old,
                       "advantages": seq_adv[:, None] * mask}, batch_size=[B])
    return data, torch.cat(chunks), logp, old, seq_adv, mask, plen


def _fspo_clipped_by_hand(logp, old, seq_adv, mask, c_low, c_high):
    """docs/algorithms.md: clipped_i = (A>0 and S>c_high·√L) or (A<0 and S<−c_low·√L), drift none."""
    S = ((logp - old) * mask).sum(1).double()
    root = mask.sum(1).double().sqrt()
    return ((seq_adv > 0) & (S > c_high * root)) | ((seq_adv < 0) & (S < -c_low * root))


@pytest.mark.parametrize("seed", range(4))
def test_fspo_through_verls_ppo_loss_equals_fairalign(actor_config, seed):
    actor_config.global_batch_info.clear()
    data, flat, logp, old, seq_adv, mask, plen = _rollout(seed)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    flat = flat.clone().requires_grad_(True)
    loss, metrics = ppo_loss(actor_config, {"log_probs": flat}, data)
    loss.backward()
    ref_logp = logp.clone().requires_grad_(True)
    ref, _ = compute_policy_loss("fspo", ref_logp, old, seq_adv, mask, agg="token-mean", c_low=0.02, c_high=0.03)
    ref.backward()
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-7)
    grad = torch.zeros_like(logp)  # verl's gradient mapped back onto [B, R]
    start = 0
    for j in range(logp.shape[0]):
        L = int(mask[j].sum())
        grad[j, :L] = flat.grad[start + plen[j] - 1:start + plen[j] - 1 + L]
        start += int(plen[j]) + L
    torch.testing.assert_close(grad, ref_logp.grad, rtol=1e-5, atol=1e-7)

    clipped = _fspo_clipped_by_hand(logp, old, seq_adv, mask, 0.02, 0.03)
    assert 0 < int(clipped.sum()) < len(clipped)  # the band is exercised
    lengths = mask.sum(1)
    got = {k: m.aggregate() for k, m in metrics.items()}
    for lo, hi in zip(fv.LENGTH_EDGES, fv.LENGTH_EDGES[1:]):
        sel = (lengths >= lo) & (lengths < hi)
        assert got[f"actor/fspo/len_count/{lo}-{hi}"] == int(sel.sum())
        assert got[f"actor/fspo/len_clipped/{lo}-{hi}"] == int((sel & clipped).sum())
    assert got["actor/fspo/seq_clipped_pos"] == int((clipped & (seq_adv > 0)).sum())
    assert got["actor/fspo/seq_count_neg"] == int((seq_adv < 0).sum())
    assert math.isclose(got["actor/pg_loss"], ref.item(), rel_tol=1e-5, abs_tol=1e-7)


def test_fspo_global_normalization_and_same_keys_on_every_rank(actor_config):
    """dp_size 2 with the global token count: verl's normalization (sum / global tokens × dp_size), and
    verl's own cross-rank metric reduction accepts two ranks with different lengths."""
    per_rank = []
    for seed in (10, 11):
        actor_config.global_batch_info.clear()
        data, flat, logp, old, seq_adv, mask, _ = _rollout(seed, R=40)
        tu.assign_non_tensor(data, dp_size=2, batch_num_tokens=500, global_batch_size=12)
        loss, metrics = ppo_loss(actor_config, {"log_probs": flat}, data)
        ref, _ = compute_policy_loss("fspo", logp, old, seq_adv, mask, c_low=0.02, c_high=0.03, global_tokens=500)
        assert math.isclose(loss.item(), 2 * ref.item(), rel_tol=1e-5, abs_tol=1e-7)
        per_rank.append(metrics)
    assert per_rank[0].keys() == per_rank[1].keys()
    for key in per_rank[0]:
        if key.startswith("actor/fspo/"):
            Metric.aggregate_dp([per_rank[0][key], per_rank[1][key]])  # raises if the ranks disagree


@pytest.mark.parametrize("mode", ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean",
                                  "seq-mean-token-sum-norm"])
def test_fspo_every_verl_agg_mode_and_rollout_weights(actor_config, mode):
    actor_config.global_batch_info.clear()
    _, _, logp, old, seq_adv, mask, _ = _rollout(3)
    fn = core_algos.get_policy_loss_fn(actor_config.policy_loss.loss_mode)
    adv = seq_adv[:, None] * mask
    loss, _ = fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode,
                 config=actor_config, rollout_is_weights=None)
    loss_mat, _ = POLICY_LOSS_REGISTRY["fspo"].fn(logp, old, seq_adv, mask, c_low=0.02, c_high=0.03)
    ref = (loss_mat * mask).sum() if mode == "token-sum" else aggregate(loss_mat, mask, mode)
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-7)
    w = torch.rand(mask.shape, generator=torch.Generator().manual_seed(5)) + 0.5
    weighted, _ = fn(old_log_prob=old, log_prob=logp, advantages=adv, response_mask=mask, loss_agg_mode=mode,
                     config=actor_config, rollout_is_weights=w)
    ref_w = (loss_mat * w * mask).sum() if mode == "token-sum" else aggregate(loss_mat * w, mask, mode)
    assert math.isclose(weighted.item(), ref_w.item(), rel_tol=1e-5, abs_tol=1e-7)


def test_length_fairness_from_verl_averaged_counts(actor_config):
    """Counts averaged by verl over micro-batches give the pooled clip rates and LRE of fairalign's diagnostics."""
    fn = core_algos.get_policy_loss_fn("fspo")
    pooled = {}
    lengths, clipped, advs = [], [], []
    for seed in range(3):
        actor_config.global_batch_info.clear()
        _, _, logp, old, seq_adv, mask, _ = _rollout(seed, B=16, R=40, scale=0.08)
        _, metrics = fn(old_log_prob=old, log_prob=logp, advantages=seq_adv[:, None] * mask, response_mask=mask,
                        loss_agg_mode="token-mean", config=actor_config, rollout_is_weights=None)
        for key, value in Metric.from_dict(metrics, aggregation="mean").items():
            pooled.setdefault(key, Metric(aggregation="mean")).extend(value)
        lengths.append(mask.sum(1))
        clipped.append(_fspo_clipped_by_hand(logp, old, seq_adv, mask, 0.02, 0.03))
        advs.append(seq_adv)
    got = fv.length_fairness({k: m.aggregate() for k, m in pooled.items()})
    ref = clip_rate_metrics(torch.cat(lengths), torch.cat(clipped), torch.cat(advs), edges=fv.LENGTH_EDGES)
    rates = {k: v for k, v in ref.items() if k.startswith("clip_rate/")}
    assert set(rates) == {k for k in got if k.startswith("clip_rate/")}
    for key, value in rates.items():
        assert math.isclose(got[key], value, abs_tol=1e-12), key
    assert math.isclose(got["lre"], ref["lre"], abs_tol=1e-12) and ref["lre"] > 0


def test_fspo_band_from_verl_keys_says_when_they_are_verls_ppo_defaults(monkeypatch, caplog):
    monkeypatch.setattr(fv, "_warned_defaults", False)
    assert fv.fspo_band({"clip_ratio_low": None, "clip_ratio_high": 0.03, "clip_ratio": 0.02}) == (0.02, 0.03)
    assert not caplog.records
    with caplog.at_level("WARNING", logger=fv.__name__):
        assert fv.fspo_band({"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}) == (0.2, 0.2)
    assert "verl's PPO defaults 0.2/0.2" in caplog.text


def test_fspo_bad_band_names_the_verl_key(cfg):
    bad = omega_conf_to_dataclass(_edited(cfg, "actor_rollout_ref.actor.clip_ratio_high", 0).actor_rollout_ref.actor)
    _, _, logp, old, seq_adv, mask, _ = _rollout(0)
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.clip_ratio_high \(FSPO's c_high\)"):
        core_algos.get_policy_loss_fn("fspo")(old_log_prob=old, log_prob=logp, advantages=seq_adv[:, None] * mask,
                                              response_mask=mask, config=bad)


# -------------------------------------------------------------------------------------------- P-GRPO
class _TrainerStandIn:
    """verl 0.9.1's v1 PPOTrainer, reduced to what the group recorder wraps: `config` and
    `_fetch_one_gen_batch`, which returns the dataloader batch with fresh uids as a verl TensorDict
    (tu.get_tensordict of the collate output)."""

    def __init__(self, config, batches):
        self.config, self._batches = config, iter(batches)

    def _fetch_one_gen_batch(self):
        return tu.get_tensordict(next(self._batches))


def _dataset_batch(step, personas):
    n = len(personas)
    obj = lambda xs: np.fromiter(xs, dtype=object, count=n)  # noqa: E731 (verl's collate_fn output)
    return {"dummy_tensor": torch.zeros(n, 1, dtype=torch.uint8),
            "raw_prompt": obj([[{"role": "user", "content": f"q{step}-{i}"}] for i in range(n)]),
            "data_source": obj(["personas"] * n),
            "extra_info": obj([{"index": i, "persona": p} for i, p in enumerate(personas)]),
            "uid": np.array([f"uid-{step}-{i}" for i in range(n)], dtype=object)}


def _step_rewards(uids, n, seed, T=6):
    """verl's rows for one step: each prompt's uid repeated rollout.n times, the sequence reward on the
    last response token of token_level_rewards [B, T]."""
    g = torch.Generator().manual_seed(seed)
    index = np.array([u for u in uids for _ in range(n)], dtype=object)  # [B]
    B = len(index)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()  # [B, T]
    scores = torch.randint(0, 2, (B,), generator=g).float() + 0.1 * torch.randn(B, generator=g)  # [B]
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = scores
    return rewards, mask, index, scores


def _estimate(cfg, rewards, mask, index, **extra):
    fn = core_algos.get_adv_estimator_fn(cfg.algorithm.adv_estimator)
    return fn(token_level_rewards=rewards, response_mask=mask, config=cfg.algorithm, index=index, **extra)


def _prompt_index(index):
    ids = {}
    return torch.tensor([ids.setdefault(u, len(ids)) for u in index])


def test_pgrpo_two_steps_checkpoint_and_resume_through_verls_callback(cfg, driver, tmp_path, monkeypatch):
    run = OmegaConf.merge(cfg, {"algorithm": {"pgrpo_min_count": 4},
                                "trainer": {"default_local_dir": str(tmp_path), "resume_mode": "auto"}})
    personas = [["a", "a", "b"], ["b", "a", "c"], ["a", "c", "c"]]
    batches = [_dataset_batch(s, p) for s, p in enumerate(personas)]
    trainer_base = types.ModuleType("verl.trainer.ppo.v1.trainer_base")
    trainer_base.PPOTrainer = _TrainerStandIn
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.v1.trainer_base", trainer_base)
    monkeypatch.setattr(_TrainerStandIn, "_fetch_one_gen_batch", _TrainerStandIn._fetch_one_gen_batch)
    callback = build_checkpoint_callback(run)  # verl's builder: the class named in trainer.checkpoint_callback_class
    assert isinstance(callback, fv.PGRPOCheckpointCallback)
    trainer = _TrainerStandIn(run, batches)

    reference = PreferenceGroupNormalizer(min_count=4)
    for step in range(2):
        fetched = trainer._fetch_one_gen_batch()
        rewards, mask, index, scores = _step_rewards(list(fetched["uid"]), n=2, seed=step)
        adv, returns = _estimate(run, rewards, mask, index)
        groups = [p for p in personas[step] for _ in range(2)]
        expected = reference(scores, groups, _prompt_index(index))
        torch.testing.assert_close(adv, expected[:, None] * mask)
        torch.testing.assert_close(returns, adv)
        assert not driver.pending  # the batch's groups are consumed
    # after two steps group "a" has 5 rewards >= min_count: its next samples use history, by hand
    n, mean, std = reference.stats()["a"]
    assert n == 6 and driver.estimator.normalizer.stats()["a"] == (n, mean, std)

    fetched = trainer._fetch_one_gen_batch()  # step 3 fetched, then verl checkpoints (async modes do this)
    ckpt = tmp_path / "global_step_2"
    callback.on_save(trainer=trainer, global_step=2, checkpoint_dir=str(ckpt))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("2")  # verl's tracker file
    saved = json.loads((ckpt / verl_pgrpo.STATE_FILE).read_text())
    assert saved["pending"] == [[f"uid-2-{i}", p] for i, p in enumerate(personas[2])]

    driver.reset()  # a new process
    build_checkpoint_callback(run)  # resumes from global_step_2 like verl's _load_checkpoint
    assert driver.estimator.normalizer.stats() == reference.stats()
    rewards, mask, index, scores = _step_rewards(list(fetched["uid"]), n=2, seed=2)
    adv, _ = _estimate(run, rewards, mask, index)
    expected = reference(scores, [p for p in personas[2] for _ in range(2)], _prompt_index(index))
    torch.testing.assert_close(adv, expected[:, None] * mask)
    a = [i for i, u in enumerate(index) if u in ("uid-2-0",)]
    assert torch.allclose(adv[a, 0].double(), (scores[a].double() - mean) / (std + 1e-6))  # by hand


def test_pgrpo_cold_start_equals_verls_grpo(cfg, driver):
    """While no group has min_count rewards, P-GRPO is GRPO: verl's own compute_grpo_outcome_advantage."""
    run = OmegaConf.merge(cfg, {"algorithm": {"pgrpo_min_count": 10_000}})
    rewards, mask, index, _ = _step_rewards([f"u{i}" for i in range(5)], n=4, seed=7)
    rewards[:4] = 0.0
    rewards[:4, 0] = 1.0  # one prompt whose 4 samples have equal reward: std 0
    groups = {"non_tensor_batch": {"uid": index, "extra_info": np.array([{"persona": "p"}] * len(index))}}
    adv, _ = _estimate(run, rewards, mask, index, **groups)
    ref, _ = core_algos.compute_grpo_outcome_advantage(token_level_rewards=rewards, response_mask=mask, index=index)
    torch.testing.assert_close(adv, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["persona", "extra_info.persona"])
def test_pgrpo_reads_the_group_key_from_a_non_tensor_field(cfg, driver, key):
    run = OmegaConf.merge(cfg, {"algorithm": {"pgrpo_group_key": key, "pgrpo_min_count": 2}})
    reference = PreferenceGroupNormalizer(min_count=2)
    for step in range(3):
        rewards, mask, index, scores = _step_rewards([f"s{step}-{i}" for i in range(4)], n=3, seed=20 + step)
        personas = [("x", 1)[i % 2] for i in range(len(index))]  # str and int groups
        column = np.fromiter(personas, dtype=object, count=len(personas))
        nt = {"uid": index, "persona": column} if key == "persona" else \
            {"uid": index, "extra_info": np.fromiter(({"persona": p} for p in personas), dtype=object,
                                                     count=len(personas))}
        adv, _ = _estimate(run, rewards, mask, index, non_tensor_batch=nt)
        torch.testing.assert_close(adv, reference(scores, personas, _prompt_index(index))[:, None] * mask)
    assert driver.estimator.normalizer.stats() == reference.stats()


def test_pgrpo_errors_name_what_to_set(cfg, driver):
    rewards, mask, index, _ = _step_rewards(["u0", "u1"], n=2, seed=0)
    with pytest.raises(ValueError, match="trainer.checkpoint_callback_class=fairalign.integrations.verl"):
        _estimate(cfg, rewards, mask, index)  # no recorder, nothing recorded
    typo = _edited(cfg, "algorithm.pgrpo_min_cout", 3)
    with pytest.raises(ValueError, match="unknown algorithm.pgrpo_min_cout"):
        _estimate(typo, rewards, mask, index)
    bad = OmegaConf.merge(cfg, {"algorithm": {"pgrpo_min_count": 0}})
    driver.reset()  # the first call above built the estimator with this run's settings
    with pytest.raises(ValueError, match="algorithm.pgrpo_.*min_count"):
        _estimate(bad, rewards, mask, index, non_tensor_batch={"extra_info": np.array([{"persona": 1}] * 4)})
    no_key = OmegaConf.create({"adv_estimator": "pgrpo"})
    with pytest.raises(ValueError, match=r"\+algorithm.pgrpo_group_key"):
        _estimate(OmegaConf.create({"algorithm": no_key}), rewards, mask, index,
                  non_tensor_batch={"persona": np.array(["a"] * 4)})
    with pytest.raises(ValueError, match="has no such column; columns: uid, persona"):
        verl_pgrpo.read_groups({"uid": index, "persona": np.array(["a"] * 4)}, "group")


def test_resume_without_pgrpo_state_is_an_error(cfg, driver, tmp_path):
    (tmp_path / "global_step_3").mkdir()
    run = OmegaConf.merge(cfg, {"trainer": {"resume_mode": "resume_path",
                                            "resume_from_path": str(tmp_path / "global_step_3")}})
    with pytest.raises(ValueError, match="holds no fairalign_pgrpo.json"):
        fv.PGRPOCheckpointCallback(config=run, trainer_cls=type("T", (_TrainerStandIn,), {}))


# ---------------------------------------------------------------------- worker processes and verl's trainer
def test_verl_imports_the_module_in_a_fresh_process():
    """VERL_USE_EXTERNAL_MODULES (verl/__init__.py) registers both names with no import line; the
    entry point fairalign declares is loaded from the same place of verl/__init__.py."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["verl.plugins"]
    assert entry == {"fairalign": "fairalign.integrations.verl"}
    code = ("import sys, types\n"
            "class R(types.ModuleType):\n    class ObjectRef: pass\n"
            "sys.modules.setdefault('ray', R('ray'))\n"
            "import verl.trainer.ppo.core_algos as c\n"
            "print('fspo' in c.POLICY_LOSS_REGISTRY, 'pgrpo' in c.ADV_ESTIMATOR_REGISTRY)\n")
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "fairalign.integrations.verl",
           "VERL_USE_EXTERNAL_PLUGINS": "none", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "True"]


def test_verl_0_9_1_trainer_facts_the_integration_relies_on():
    """Source check of verl's v1 trainer (not importable without Ray/TransferQueue)."""
    tree = ast.parse((VERL_DIR / "trainer" / "ppo" / "v1" / "trainer_base.py").read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "PPOTrainer")
    methods = {n.name: ast.unparse(n) for n in trainer.body if isinstance(n, ast.FunctionDef)}
    assert "build_checkpoint_callback(config)" in methods["__init__"]
    fetch = methods["_fetch_one_gen_batch"]
    assert "batch_dict['uid'] = " in fetch and "return tu.get_tensordict(batch_dict)" in fetch
    assert "self.checkpoint_callback.on_save(" in methods["_save_checkpoint"]
    assert "find_latest_ckpt_path(checkpoint_folder)" in methods["_load_checkpoint"]
    advantage = methods["_compute_advantage"]
    assert "config=self.config.algorithm" in advantage and "non_tensor_batch['uid']" in advantage
    assert methods["_next_train_batch"].count("self._fetch_one_gen_batch()") == 1
