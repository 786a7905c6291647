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
    assert main(["compare", str(SPEC), *TINY, f"output_dir={out}", "steps=2", "eval.examples=10"]) == 0
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


@pytest.mark.parametrize("control", ["grpo", "pgrpo"])
def test_during_replays_each_arms_own_advantages_step_by_step(study, control, capsys):
    """Replaying a run's logged batches reproduces the advantages that run trained with, at every step: the
    control's own estimator (P-GRPO with the history it built over the steps) gives the logged `advantage`
    of each sample; the table pools the shares over steps as the JSON's blocks say."""
    out, _ = study
    mech = _mechanism()
    assert mech.main([str(SPEC), *TINY, f"output_dir={out}", "--during", control, "--block", "1"]) == 0
    result = json.loads((out / f"mechanism_during_{control}.json").read_text())
    (seed,) = result["seeds"]
    logged = [json.loads(x) for x in (out / control / "seed-3" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in seed["steps"]] == [1, 2] and len(logged) == 2 * 4 * 2
    for s in seed["steps"]:
        rows = [r for r in logged if r["step"] == s["step"]]
        assert s["rewards"] == [r["reward"] for r in rows] and s["groups"] == [r["group"] for r in rows]
        assert s["advantages"][control] == pytest.approx([r["advantage"] for r in rows], abs=1e-5)
        torch.testing.assert_close(torch.tensor(s["advantages"]["batch_joint"], dtype=torch.float64),
                                   compute_advantages("batch_joint", torch.tensor(s["rewards"]),
                                                      torch.tensor(s["index"])).double())
    assert "pgrpo_floor" in seed["steps"][0]["estimators"]
    step2 = seed["steps"][1]
    mino = [i for i, g in enumerate(step2["groups"]) if g in seed["minorities"]]
    block = result["blocks"][1]
    assert block["steps"] == [2, 2] and block["minority_n"] == len(mino)
    if mino:
        want = sum(step2["advantages"]["grpo"][i] > 0 for i in mino) / len(mino)
        assert block["estimators"]["grpo"]["pos"] == pytest.approx(want)
    assert "on the batches " + control + " trained on" in capsys.readouterr().out
    assert mech.main([str(SPEC), *TINY, f"output_dir={out}", "--during", control, "--from-step", "2",
                      "--block", "5", "--out", str(out / "from2.json")]) == 0
    assert json.loads((out / "from2.json").read_text())["blocks"] == [block]  # steps 2-2: the same pool


def test_during_train_trains_the_missing_control_runs_as_compare_does(study, tmp_path, capsys):
    """--train trains the control's run where the study's is missing, the way compare does: compare then
    finds it trained (to evaluate) and its first step equals the study's run of the same seed."""
    from fairalign.compare.spec import load_study
    from fairalign.compare.study import run_state

    out, _ = study
    mech = _mechanism()
    args = [str(SPEC), *TINY, f"output_dir={tmp_path}", "steps=2"]
    assert mech.main([*args, "--during", "grpo", "--train"]) == 0
    printed = capsys.readouterr().out
    assert "[grpo seed 3] step 1/2  reward" in printed and "study 1/2 steps" in printed  # only the control's steps
    assert run_state(load_study(SPEC, args[1:]), "grpo", 3)[0] == "evaluate"
    first = [json.loads((d / "grpo" / "seed-3" / "metrics.jsonl").read_text().splitlines()[0]) for d in (out, tmp_path)]
    assert first[0]["reward/mean"] == pytest.approx(first[1]["reward/mean"], abs=1e-6)
    assert (tmp_path / "mechanism_during_grpo.json").exists() and not (tmp_path / "pgrpo").exists()


def test_during_refuses_a_run_that_logged_part_of_its_batches(study, tmp_path, capsys):
    out, _ = study
    mech = _mechanism()
    assert mech.main([str(SPEC), *TINY, f"output_dir={out}", "log.samples_per_step=3", "--during", "nope"]) == 2
    assert "--during 'nope' is not an arm" in capsys.readouterr().err
    part = tmp_path / "grpo" / "seed-3"
    part.mkdir(parents=True)
    lines = (out / "grpo" / "seed-3" / "samples.jsonl").read_text().splitlines()
    (part / "samples.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert mech.main([str(SPEC), *TINY, f"output_dir={tmp_path}", "--during", "grpo"]) == 2
    assert "step 1 logs 3 of the batch's 8 samples: train the run with log.samples_per_step >= 8" \
        in capsys.readouterr().err
    rows = [json.loads(x) for x in lines[:8]]
    (part / "samples.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n"
                                                for r in rows))
    assert mech.main([str(SPEC), *TINY, f"output_dir={tmp_path}", "--during", "grpo"]) == 2
    assert "step 1's samples have no prompt index" in capsys.readouterr().err
