"""docs/evidence/rlpa/summarize.py (study 3's paired summary) on hand-built results: AL(k) per arm,
paired bootstrap and t intervals over profiles, repetition rate per turn, and the training signal
per turn (tied groups, repeating candidates, stuck histories) from a run's samples.jsonl."""
import importlib.util
import json
from pathlib import Path

import pytest

from fairalign.config import build_config, dump_yaml

_PATH = Path(__file__).resolve().parents[1] / "docs" / "evidence" / "rlpa" / "summarize.py"
_spec = importlib.util.spec_from_file_location("rlpa_summarize", _PATH)
summ = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summ)


def _result(totals, replies, model):
    return {"max_turns": len(totals[0]), "settings": {"model": model, "max_new_tokens": 160},
            "profile_f1_by_turn": [10.0, 20.0], "response_pass_by_turn": [50.0, 50.0], "truncated_by_turn": [0.0, 0.0],
            "dialogues": [{"profile_id": f"p{i}", "turns": [{"total": t, "reply": r} for t, r in zip(ts, rs)]}
                          for i, (ts, rs) in enumerate(zip(totals, replies))]}


A = _result([[0, 1], [1, 1], [0, 0]], [["Where do you live?", "Ok. Where do you live?"],
                                       ["Hi! Any hobbies?", "What is your job?"], ["Hello.", "Nice."]], "step-0")
B = _result([[1, 2], [1, 2], [0, 1]], [["Where do you live?", "How old are you?"],
                                       ["Hi! Any hobbies?", "What is your job?"], ["Hello.", "Nice."]], "final")


def test_al_repeat_and_paired_intervals_hand_computed(tmp_path, capsys):
    assert summ.column_means(summ.al_matrix(A)) == pytest.approx([50 / 3, 100 / 3])
    assert summ.column_means(summ.al_matrix(B)) == pytest.approx([100 / 3, 250 / 3])
    assert summ.column_means(summ.repeat_matrix(A)) == pytest.approx([0.0, 1 / 3])  # "Ok. Where do you live?"
    assert summ.column_means(summ.repeat_matrix(B)) == [0.0, 0.0]
    boot = summ.paired_bootstrap(summ.al_matrix(A), summ.al_matrix(B), resamples=2000, seed=0)
    assert boot["al1"]["diff"] == pytest.approx([50.0, 50.0])  # every profile gains exactly 50 at turn 2
    lo, hi = boot["al0"]["diff"]  # per-profile turn-1 gains are 50, 0, 0
    assert 0.0 <= lo < 50 / 3 < hi <= 50.0
    fa, fb = tmp_path / "a.json", tmp_path / "b.json"
    fa.write_text(json.dumps(A))
    fb.write_text(json.dumps(B))
    assert summ.main([str(fa), str(fb), "--resamples", "500", "--json", str(tmp_path / "s.json")]) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    t = out["avg_paired_t"]  # per-profile AVG gains 50, 25, 25: mean 33.33, sd 14.43, t(0.975, 2) = 4.303
    assert t["mean"] == pytest.approx(100 / 3) and t["sd"] == pytest.approx(14.4338, abs=1e-3)
    assert t["ci95"] == pytest.approx([100 / 3 - 4.30265 * 14.4338 / 3 ** 0.5, 100 / 3 + 4.30265 * 14.4338 / 3 ** 0.5],
                                      abs=1e-3)
    assert out["metrics"]["warmup"]["n_ir"] == pytest.approx(1.0)  # two rising turns: y = (0, 1)
    assert "| 2 | 33.33 | 83.33 | +50.00 [50.00, 50.00] | 33 | 0 |" in capsys.readouterr().out


def test_unpaired_results_are_refused(tmp_path):
    other = json.loads(json.dumps(B))
    other["dialogues"][0]["profile_id"] = "elsewhere"
    (tmp_path / "a.json").write_text(json.dumps(A))
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="not paired"):
        summ.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])


def test_training_signal_per_turn(tmp_path):
    cfg = build_config({"model": "tiny", "task": "rlpa", "task_options": {"max_turns": 2},
                        "rollout": {"prompts_per_step": 1, "generations": 2}})
    (tmp_path / "config.yaml").write_text(dump_yaml(cfg))
    sys_msg = {"role": "system", "content": "s"}
    p1 = [sys_msg, {"role": "user", "content": "Hello"}]
    p2 = p1 + [{"role": "assistant", "content": "Where do you live?"}, {"role": "user", "content": "You said that already."}]
    rows = [{"step": 1, "prompt": p1, "completion": "{}</profile>\n<response>Where do you live?</response>", "reward": 1.0},
            {"step": 1, "prompt": p1, "completion": "{}</profile>\n<response>Any hobbies?</response>", "reward": 1.0},
            {"step": 1, "prompt": p2, "completion": "{}</profile>\n<response>So where do you live?</response>", "reward": 0.0},
            {"step": 1, "prompt": p2, "completion": "{}</profile>\n<response>How old are you?</response>", "reward": 1.0}]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    sig = summ.training_signal(tmp_path)
    assert sig == [{"turn": 1, "groups": 1, "tied_share": 1.0, "candidate_repeat_share": 0.0, "stuck_history_share": 0.0},
                   {"turn": 2, "groups": 1, "tied_share": 0.0, "candidate_repeat_share": 0.5, "stuck_history_share": 1.0}]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]))
    with pytest.raises(SystemExit, match="samples_per_step=4"):
        summ.training_signal(tmp_path)
