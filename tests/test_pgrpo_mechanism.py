"""The P-GRPO mechanism study's harness (docs/evidence/pgrpo_mechanism) on the tiny model, so it cannot rot:
mechanism.py's step-1 batch is the batch the study's runs train on first (same mean reward as each arm's
logged step 1), its shares are the estimators' own advantages on that batch, P-GRPO at step 1 equals
GRPO (cold start), and the spec runs one step per arm through `fairalign compare`."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fairalign.algos import compute_advantages
from fairalign.cli import main

HERE = Path(__file__).resolve().parents[1] / "docs" / "evidence" / "pgrpo_mechanism"
SPEC = HERE / "spec.yaml"
TINY = ["model=tiny", "rollout.max_new_tokens=8", "rollout.prompts_per_step=4", "rollout.generations=2", "threads=1",
        "task_options.shares={concise: 0.4, detailed_list: 0.15, formal: 0.15, gardener: 0.15, casual: 0.15}",
        "log.tensorboard=false", "seeds=[3]"]


def _mechanism():
    spec = importlib.util.spec_from_file_location("pgrpo_mechanism", HERE / "mechanism.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("mech")
    mech = _mechanism()
    assert mech.main([str(SPEC), *TINY, f"output_dir={out}", "--history-prompts", "2"]) == 0
    result = json.loads((out / "mechanism.json").read_text())
    assert main(["compare", str(SPEC), *TINY, f"output_dir={out}", "steps=1", "eval.examples=10"]) == 0
    return out, result


def test_spec_is_the_pre_registered_design():
    import yaml

    spec = yaml.safe_load(SPEC.read_text())
    assert list(spec["arms"]) == ["batch_joint", "grpo", "pgrpo"]  # primary difference: pgrpo − batch_joint
    assert {a: v["algo.advantage"] for a, v in spec["arms"].items()} == {a: a for a in spec["arms"]}
    assert "algo.loss" not in str(spec["arms"])  # one loss for all (base)
    base = spec["base"]
    assert base["steps"] >= 20 and base["rollout"]["prompts_per_step"] == 8 and base["rollout"]["generations"] == 4
    assert base["task_options"]["test_mix"] == "balanced" and base["task_options"]["n_test"] >= 5 * 16
    assert spec["eval"]["examples"] >= 5 * 16 and base["rollout"]["max_new_tokens"] >= 96


def test_mechanism_batch_is_every_arms_step_one(study):
    out, result = study
    (seed,) = result["seeds"]
    for arm in ("batch_joint", "grpo", "pgrpo"):
        rows = [json.loads(line) for line in (out / arm / "seed-3" / "metrics.jsonl").read_text().splitlines()]
        assert rows[0]["step"] == 1
        assert rows[0]["reward/mean"] == pytest.approx(seed["reward_mean"], abs=1e-6)
    assert json.loads((out / "comparison.json").read_text())["arms"] == ["batch_joint", "grpo", "pgrpo"]


def test_mechanism_shares_are_the_estimators_advantages(study):
    _, result = study
    (seed,) = result["seeds"]
    b = seed["batch"]
    r, idx, groups = torch.tensor(b["rewards"]), torch.tensor(b["index"]), b["groups"]
    assert seed["minorities"] == ["detailed_list", "formal", "gardener", "casual"]
    assert set(seed["estimators"]) == {"batch_joint", "grpo", "pgrpo@step1", "pgrpo", "pgrpo_floor"}
    for name in ("grpo", "batch_joint"):
        torch.testing.assert_close(torch.tensor(b["advantages"][name]), compute_advantages(name, r, idx))
    assert b["advantages"]["pgrpo@step1"] == b["advantages"]["grpo"]  # cold start: P-GRPO is GRPO at step 1
    mino = [i for i, g in enumerate(groups) if g != "concise"]
    assert mino, "the override's mix puts minorities in the batch"
    for name, adv in b["advantages"].items():
        pos = sum(adv[i] > 0 for i in mino) / len(mino)
        zero = sum(adv[i] == 0 for i in mino) / len(mino)
        assert seed["estimators"][name]["minority"] == {"n": len(mino), "pos": pytest.approx(pos),
                                                         "zero": pytest.approx(zero)}
    # the history reading: (r − mean_p) / (std_p + eps) per sample whose group has >= min_count history
    # samples with spread (the spec's min_count 4 = 2 prompts x 2 generations here)
    checked = {"pgrpo": 0, "pgrpo_floor": 0}
    for i, g in enumerate(groups):
        h = seed["by_group"][g]
        if h["history_n"] >= 4 and h["history_std"] > 1e-3:
            want = (r[i].item() - h["history_mean"]) / (h["history_std"] + 1e-6)
            assert b["advantages"]["pgrpo"][i] == pytest.approx(want, rel=1e-4, abs=1e-5)
            checked["pgrpo"] += 1
        if h["history_n"] >= 4:  # the floor always uses the history, std floored at 0.1
            want = (r[i].item() - h["history_mean"]) / (max(h["history_std"], 0.1) + 1e-6)
            assert b["advantages"]["pgrpo_floor"][i] == pytest.approx(want, rel=1e-4, abs=1e-5)
            checked["pgrpo_floor"] += 1
    assert checked["pgrpo"] > 0 and checked["pgrpo_floor"] == len(groups)


def test_seed_count_from_the_pilot_hand_computed(tmp_path, capsys):
    """Pilot differences 0.0, 0.1, 0.2 (sd 0.1): mde80(n) = (t_.975,n−1 + t_.80,n−1)·0.1/√n is 0.1065 at
    n = 9 ((2.306 + 0.889)/3) and 0.0995 at n = 10 ((2.262 + 0.883)/√10), so 10 seeds detect 0.10."""
    spec = importlib.util.spec_from_file_location("pgrpo_seeds", HERE / "seeds.py")
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)
    groups = {"casual": 0.5, "detailed_list": 0.5, "formal": 0.5, "gardener": 0.5, "concise": 0.9}
    for s, d in enumerate((0.0, 0.1, 0.2)):
        for arm, shift in (("batch_joint", 0.0), ("pgrpo", d)):
            run = tmp_path / arm / f"seed-{s}"
            run.mkdir(parents=True)
            by_group = {g: v + (shift if g != "concise" else -1.0) for g, v in groups.items()}
            (run / "eval.json").write_text(json.dumps({"by_group": by_group}))
    assert seeds.mde80(0.1, 9) == pytest.approx(0.1065, abs=2e-4)
    assert seeds.mde80(0.1, 10) == pytest.approx(0.0995, abs=2e-4)
    assert seeds.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "paired sd 0.1000" in out and "seeds for mde80 <= 0.1: 10" in out and "+0.1" not in out
    assert "fairalign compare docs/evidence/pgrpo_mechanism/spec.yaml seeds=10" in out
    (tmp_path / "pgrpo" / "seed-2" / "eval.json").unlink()  # one seed left in both arms: too few
    (tmp_path / "pgrpo" / "seed-1" / "eval.json").unlink()
    assert seeds.main([str(tmp_path)]) == 2
