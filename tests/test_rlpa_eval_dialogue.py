"""`fairalign eval-dialogue` for paired studies (issue 14, RLPA over 10 turns): one record per
dialogue and turn in dialogue_eval.json, the share of replies cut at max_new_tokens per turn (with a
warning), and `--checkpoint N` to evaluate a run's checkpoint (step 0 = right after the warm-up)."""
import json

import pytest

from fairalign.cli import main as cli_main
from fairalign.envs.rlpa import get_profiles, run_dialogues
from fairalign.envs.rlpa.evaluate import evaluate_dialogues, per_dialogue, truncation_warning
from fairalign.models import load_policy
from fairalign.rollout import HFGenerationEngine
from fairalign.config import build_config
from fairalign.train.trainer import Trainer


def _turn(profile: dict, reply: str) -> str:
    return f"<profile>{json.dumps(profile)}</profile>\n<response>{reply}</response>"


def test_per_dialogue_records_rebuild_al_and_pick_the_chosen_candidates_flag():
    profiles = get_profiles("test")[:2]
    # candidate 0 is garbage, candidate 1 a good turn: the best (1) continues every dialogue
    res = run_dialogues(lambda prompts, n: [["garbage", _turn({}, f"Hi! Where do you live {len(prompts[0])}?")]
                                            for _ in prompts], profiles, max_turns=3, G=2)
    cut = [[True, False, False, True]] * 3  # per turn, [2 dialogues x 2 candidates]
    ds = per_dialogue(res, cut, generations=2, first=5)
    assert [d["dialogue"] for d in ds] == [5, 6] and [d["profile_id"] for d in ds] == [p.id for p in profiles]
    assert [[t["turn"] for t in d["turns"]] for d in ds] == [[1, 2, 3], [1, 2, 3]]
    assert all(t["chosen"] == 1 for d in ds for t in d["turns"])
    assert [t["truncated"] for t in ds[0]["turns"]] == [False] * 3  # dialogue 0, candidate 1 -> flag index 1
    assert [t["truncated"] for t in ds[1]["turns"]] == [True] * 3   # dialogue 1, candidate 1 -> flag index 3
    for k in range(3):  # AL(k) = 100 * mean total / 2, from the per-dialogue records
        assert res.al_by_turn[k] == pytest.approx(50.0 * sum(d["turns"][k]["total"] for d in ds) / 2)


def test_eval_reports_replies_cut_at_max_new_tokens(tiny_policy):
    model, tok = tiny_policy
    eng = HFGenerationEngine(model, tok, max_new_tokens=2, temperature=0.0, completion_prefix="<profile>")
    out = evaluate_dialogues(eng, get_profiles("test")[:2], max_turns=2)
    assert len(out["dialogues"]) == 2 and all(len(d["turns"]) == 2 for d in out["dialogues"])
    # independent reference for turn 1: every dialogue's first prompt is system prompt + "Hello"
    from fairalign.envs.rlpa.prompts import POLICY_SYSTEM_PROMPT

    ref = bool(eng.generate([[{"role": "system", "content": POLICY_SYSTEM_PROMPT},
                              {"role": "user", "content": "Hello"}]]).truncated[0])
    assert [d["turns"][0]["truncated"] for d in out["dialogues"]] == [ref, ref]
    assert out["truncated_by_turn"][0] == (100.0 if ref else 0.0)
    assert ref  # 2 tokens cannot hold a turn: the tiny model's greedy reply is cut
    assert "max_new_tokens=2" in truncation_warning(out) and "turn 1 100%" in truncation_warning(out)
    assert truncation_warning({**out, "truncated_by_turn": [0.0, 0.0]}) is None


@pytest.fixture(scope="module")
def warm_run(tmp_path_factory):
    """A tiny rlpa run: 1 warm-up step (checkpoint step-0), then 1 RL step (step-1 and final/)."""
    run = tmp_path_factory.mktemp("rlpa") / "run"
    cfg = build_config({"model": "tiny", "task": "rlpa", "steps": 1, "seed": 0, "output_dir": str(run),
                        "task_options": {"max_turns": 2, "n_train": 8, "n_test": 4, "eval_turns": 2},
                        "rollout": {"prompts_per_step": 1, "generations": 2, "max_new_tokens": 6},
                        "sft": {"steps": 1, "batch_size": 2, "lr": 1e-2}, "eval": {"examples": 2},
                        "log": {"tensorboard": False, "progress": False}})
    Trainer(cfg).train()
    return run


def test_eval_dialogue_checkpoint_evaluates_that_checkpoints_model(warm_run, capsys):
    assert cli_main(["eval-dialogue", str(warm_run), "--checkpoint", "0"]) == 0
    out = json.loads((warm_run / "eval-step-0" / "dialogue_eval.json").read_text())
    step0 = warm_run / "checkpoints" / "step-0" / "model"
    assert out["settings"]["model"] == str(step0) and out["settings"]["max_new_tokens"] == 6  # the run's settings
    model, tok = load_policy(step0)
    eng = HFGenerationEngine(model, tok, max_new_tokens=6, temperature=0.0, completion_prefix="<profile>")
    ref = evaluate_dialogues(eng, get_profiles("test")[:2], max_turns=2)
    assert [t["reply"] for d in out["dialogues"] for t in d["turns"]] == \
        [t["reply"] for d in ref["dialogues"] for t in d["turns"]]
    assert cli_main(["eval-dialogue", str(warm_run), "--checkpoint", "1", "--out", str(warm_run / "o1")]) == 0
    assert json.loads((warm_run / "o1" / "dialogue_eval.json").read_text())["settings"]["model"] == \
        str(warm_run / "checkpoints" / "step-1" / "model")


def test_eval_dialogue_checkpoint_errors(warm_run, capsys):
    assert cli_main(["eval-dialogue", str(warm_run), "--checkpoint", "7"]) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint step-7" in err and "complete checkpoints: 0, 1" in err
    assert cli_main(["eval-dialogue", "tiny", "--checkpoint", "0"]) == 2
    assert "--checkpoint needs a run directory" in capsys.readouterr().err
