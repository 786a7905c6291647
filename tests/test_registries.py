"""The method registries are the one source of method names and hyperparameters: the config's
choices, defaults and `--keys` docs are derived from them and cannot drift; a hyperparameter of
another method is an error; users bring their own loss and estimator as `file.py:function`."""
import inspect
import json
import textwrap

import pytest
import torch

from fairalign.algos import (ESTIMATOR_REGISTRY, LOCAL, POLICY_LOSS_REGISTRY, AdvantageEstimator, build_estimator,
                             compute_advantages)
from fairalign.diagnostics import clip_rate_metrics, length_reweighting_error, lre_from_pooled_counts
from fairalign.config import build_config, dump_yaml, field_docs, load_yaml
from fairalign.config.schema import CHOICES
from fairalign.errors import ConfigError
from fairalign.train.trainer import Trainer

FAST = {"model": "tiny", "task": "personas", "steps": 2, "seed": 2,
        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 6},
        "log": {"tensorboard": False, "progress": False}}


def test_config_choices_are_the_registries():
    assert CHOICES["algo.loss"] == tuple(POLICY_LOSS_REGISTRY)
    assert CHOICES["algo.advantage"] == tuple(ESTIMATOR_REGISTRY)
    docs = field_docs()
    for name in POLICY_LOSS_REGISTRY:
        assert name in docs["algo.loss"]
    for name in ESTIMATOR_REGISTRY:
        assert name in docs["algo.advantage"]


def test_every_hyperparameter_key_is_documented_with_its_owner_and_default():
    docs = field_docs()
    for spec in POLICY_LOSS_REGISTRY.values():
        params = inspect.signature(spec.fn).parameters
        for hp, default in spec.hparams.items():
            assert params[hp].default == default, (spec.name, hp)  # the function agrees with its registration
            if f"algo.{hp}" in docs:
                assert f"{spec.name} {default!r}" in docs[f"algo.{hp}"]
    for spec in ESTIMATOR_REGISTRY.values():
        for hp, default in spec.hparams.items():
            assert f"[advantage: {spec.name} {default!r}]" in docs[f"algo.{spec.config_prefix}{hp}"]


@pytest.mark.parametrize("overrides, key", [
    (["algo.loss=ppo", "algo.c_low=0.05"], "algo.c_low"),
    (["algo.loss=fspo", "algo.clip_high=0.3"], "algo.clip_high"),
    (["algo.loss=gspo", "algo.drift=kl"], "algo.drift"),
    (["algo.advantage=grpo", "algo.pgrpo_min_count=4"], "algo.pgrpo_min_count"),
    (["algo.loss=ppo", "algo.loss_args.c_low=0.1"], "algo.loss_args.c_low"),
])
def test_a_hyperparameter_of_another_method_is_an_error(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_config({}, overrides)


def test_a_hyperparameter_of_another_method_is_refused_even_at_its_default(tmp_path):
    """One rule, no exception for values equal to another method's default: a key that the chosen loss or
    estimator does not take is an error; the config the run writes (null for unset keys) loads again."""
    with pytest.raises(ConfigError, match="'algo.c_low' does not apply to algo.loss=ppo"):
        build_config({"algo": {"loss": "ppo", "c_low": 0.02}})
    with pytest.raises(ConfigError, match="'algo.pgrpo_min_count' does not apply to algo.advantage=grpo"):
        build_config({"algo": {"advantage": "grpo", "pgrpo_min_count": 8}})
    cfg = build_config({"algo": {"loss": "fspo", "advantage": "pgrpo", "c_low": 0.05, "pgrpo_min_count": 4}})
    assert build_config(load_yaml_text(tmp_path, dump_yaml(cfg))) == cfg


def load_yaml_text(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return load_yaml(p)


def test_estimators_match_the_pure_functions_and_hold_state():
    r = torch.tensor([1.0, 0.0, 2.0, 2.0, 5.0, 1.0])
    idx = torch.tensor([0, 0, 1, 1, 2, 2])
    for name in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"):
        est = build_estimator(name)
        torch.testing.assert_close(est(r, idx, ["g"] * 6, LOCAL), compute_advantages(name, r, idx))
        assert est.state_dict() is None
    p = build_estimator("pgrpo", min_count=2)
    p(r, idx, ["a", "b"] * 3, LOCAL)
    state = json.loads(json.dumps(p.state_dict()))
    q = build_estimator("pgrpo", min_count=2)
    q.load_state_dict(state)
    torch.testing.assert_close(q(r, idx, ["a", "b"] * 3, LOCAL), p(r, idx, ["a", "b"] * 3, LOCAL))
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        build_estimator("grpo", min_count=3)


def test_clip_weights_count_a_sequence_by_its_share_of_clipped_tokens():
    L = torch.tensor([4, 4, 20, 20])
    w = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=torch.float64)
    m = clip_rate_metrics(L, w, torch.ones(4), edges=[1, 8, 32])
    assert m["clip_rate/len/1-8"] == pytest.approx(0.25)
    assert m["clip_rate/len/8-32"] == pytest.approx(0.25)
    assert m["lre"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clip_rate_metrics(L, torch.tensor([2.0, 0, 0, 0]), torch.ones(4))


def test_pooled_lre_equals_the_lre_of_all_samples_together():
    g = torch.Generator().manual_seed(0)
    steps = [(torch.randint(1, 64, (12,), generator=g), torch.rand(12, generator=g) < 0.3) for _ in range(5)]
    counts, clipped = {}, {}
    for L, c in steps:
        for k, v in clip_rate_metrics(L, c, torch.ones(12), edges=[1, 4, 16, 64]).items():
            if k.startswith("clip_count/len/"):
                counts[k[15:]] = counts.get(k[15:], 0) + v
            if k.startswith("clip_clipped/len/"):
                clipped[k[17:]] = clipped.get(k[17:], 0) + v
    allL = torch.cat([s[0] for s in steps])
    allc = torch.cat([s[1] for s in steps])
    assert lre_from_pooled_counts(counts, clipped) == pytest.approx(
        length_reweighting_error(allL, allc, edges=[1, 4, 16, 64]))


# ------------------------------------------------------------------ bring your own method
USER_CODE = textwrap.dedent('''
    import torch
    from fairalign.algos import AdvantageEstimator, compute_policy_loss

    CALLS = []

    def scaled_ppo(logp, old_logp, advantages, mask, *, agg, global_tokens, global_seqs, horizon, scale=1.0):
        """PPO with the advantages scaled: a user loss wrapping the built-in one."""
        CALLS.append(scale)
        return compute_policy_loss("ppo", logp, old_logp, advantages * scale, mask, agg,
                                   horizon=horizon, global_tokens=global_tokens, global_seqs=global_seqs)

    def centred(rewards, index, groups):
        return rewards - rewards.mean()

    class Counting(AdvantageEstimator):
        """Stateful: counts the samples it has seen (saved in checkpoints)."""
        def __init__(self):
            self.seen = 0
        def estimate(self, rewards, index, groups, collectives):
            self.seen += sum(collectives.all_gather_objects(rewards.numel()))
            return rewards - rewards.mean()
        def state_dict(self):
            return {"seen": self.seen}
        def load_state_dict(self, state):
            self.seen = state["seen"]
        def metrics(self):
            return {"counting/seen": float(self.seen)}
''')


def _user_file(tmp_path):
    path = tmp_path / "my_methods.py"
    path.write_text(USER_CODE)
    return path


def test_user_loss_and_estimator_from_a_file_train(tmp_path):
    path = _user_file(tmp_path)
    cfg = build_config({**FAST, "output_dir": str(tmp_path / "run")},
                       [f"algo.loss={path}:scaled_ppo", "algo.loss_args.scale=0.5", f"algo.advantage={path}:centred"])
    rows = Trainer(cfg).train()
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert "clip_rate/upper" in rows[0]  # the wrapped built-in reports its clip flags


def test_user_estimator_state_is_checkpointed_and_resumed(tmp_path):
    path = _user_file(tmp_path)
    cfg = build_config({**FAST, "output_dir": str(tmp_path / "run"), "save_every": 1},
                       [f"algo.advantage={path}:Counting"])
    tr = Trainer(cfg)
    tr.train(stop_after=1)
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-1" / "trainer_state.json").read_text())
    assert state["estimator"] == {"seen": 4}
    rows = Trainer(cfg, resume=True).train()
    assert rows[-1]["counting/seen"] == 8.0


def test_user_loss_hyperparameters_go_in_loss_args(tmp_path):
    path = _user_file(tmp_path)
    with pytest.raises(ConfigError, match="loss_args"):
        build_config({}, [f"algo.loss={path}:scaled_ppo", "algo.clip_low=0.1"])


def test_bad_user_spec_is_one_line(tmp_path):
    cfg = build_config({**FAST, "output_dir": str(tmp_path / "run")}, [f"algo.loss={tmp_path}/nope.py:f"])
    with pytest.raises(ValueError, match="algo.loss.*does not exist"):
        Trainer(cfg)


def test_user_estimator_class_protocol():
    class Half(AdvantageEstimator):
        def estimate(self, rewards, index, groups, collectives):
            return rewards / 2
    est = build_estimator(Half)
    torch.testing.assert_close(est(torch.tensor([2.0, 4.0]), torch.tensor([0, 0]), ["a", "a"]),
                               torch.tensor([1.0, 2.0]))
