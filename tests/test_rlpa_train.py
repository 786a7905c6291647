"""RLPA through the trainer and the CLI on the tiny model: whole dialogues per step, every
(history, candidate) pair a sample, profile/response rewards logged; eval-dialogue writes JSON+PNG."""
import json
import subprocess
import sys

from fairalign.train.config import build_config
from fairalign.train.trainer import Trainer


def test_rlpa_two_steps_tiny(tmp_path):
    cfg = build_config({"model": "tiny", "task": "rlpa", "steps": 2, "seed": 0, "output_dir": str(tmp_path / "run"),
                        "task_options": {"max_turns": 2, "n_train": 16, "n_test": 4},
                        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 8},
                        "algo": {"advantage": "pgrpo", "loss": "fspo", "micro_batch_size": 4},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg)
    rows = tr.train()
    assert len(rows) == 2
    # 2 dialogues x 2 turns x 2 candidates = 8 samples per step
    db = tr.last_dialogues
    assert db.turn == 2 and len(db.records) == 4
    for key in ("reward/profile", "reward/response", "reward/format", "reward/mean"):
        assert key in rows[0]
    assert 0.0 <= rows[0]["reward/mean"] <= 2.0
    assert any(k.startswith("reward/group/") for k in rows[0])
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and isinstance(samples[0]["prompt"], list)  # chat-message prompts (the dialogue so far)


def test_eval_dialogue_cli_tiny(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fairalign", "eval-dialogue", "tiny", "--profiles", "2",
                          "--max-turns", "3", "--max-new-tokens", "6", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "dialogue_eval.json").read_text())
    assert len(out["al_by_turn"]) == 3 and {"avg", "n_ir", "n_r2"} <= set(out)
    assert (tmp_path / "dialogue_al.png").stat().st_size > 1000


def test_fairalign_eval_points_rlpa_to_eval_dialogue():
    res = subprocess.run([sys.executable, "-m", "fairalign", "eval", "tiny", "task=rlpa"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "eval-dialogue" in res.stderr
