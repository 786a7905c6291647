"""RLPA through the trainer and the CLI on the tiny model: whole dialogues per step, every
(history, candidate) pair a sample, profile/response rewards logged; eval-dialogue writes JSON+PNG."""
import json
import shutil
import subprocess
import sys

from fairalign.cli import main as cli_main
from fairalign.config import build_config, dump_yaml
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
    db = tr.task.last_dialogues  # the task keeps its last rollout's dialogues
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


def _fake_run(tmp_path, tiny_model_dir, **config):
    """A finished run directory: the tiny model as its final model and a resolved config.yaml."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "final")
    (run / "config.yaml").write_text(dump_yaml(build_config({"model": "tiny", "output_dir": str(run), **config})))
    return run


def test_eval_dialogue_reads_the_run_config_and_overrides(tmp_path, tiny_model_dir):
    run = _fake_run(tmp_path, tiny_model_dir, task="rlpa", seed=3, rollout={"max_new_tokens": 5},
                    task_options={"max_turns": 4, "eval_turns": 2, "n_train": 4, "n_test": 3,
                                  "completion_prefix": "<profile>{"},
                    eval={"examples": 2})
    assert cli_main(["eval-dialogue", str(run)]) == 0
    out = json.loads((run / "dialogue_eval.json").read_text())
    assert out["profiles"] == 2 and out["max_turns"] == 2 and len(out["al_by_turn"]) == 2  # eval_turns, not max_turns
    st = out["settings"]
    assert st["max_new_tokens"] == 5 and st["seed"] == 3 and st["completion_prefix"] == "<profile>{"
    assert st["temperature"] == 0.0 and st["model"] == str(run / "final")
    # KEY=VALUE overrides (as for `fairalign train`), then the flags, which are their aliases
    assert cli_main(["eval-dialogue", str(run), "rollout.max_new_tokens=7", "eval.examples=1", "--profiles", "3",
                     "--max-turns", "1", "--out", str(tmp_path / "o")]) == 0
    out = json.loads((tmp_path / "o" / "dialogue_eval.json").read_text())
    assert out["settings"]["max_new_tokens"] == 7 and out["profiles"] == 3 and out["max_turns"] == 1
    assert (tmp_path / "o" / "dialogue_al.png").is_file()


def test_eval_dialogue_rejects_a_non_rlpa_run_and_bad_keys(tmp_path, tiny_model_dir, capsys):
    run = _fake_run(tmp_path, tiny_model_dir, task="personas")
    assert cli_main(["eval-dialogue", str(run)]) == 2
    assert "eval-dialogue evaluates the rlpa task" in capsys.readouterr().err
    assert cli_main(["eval-dialogue", "tiny", "rollout.max_new_tokns=3"]) == 2
    assert "unknown config key 'rollout.max_new_tokns'" in capsys.readouterr().err
    assert cli_main(["eval-dialogue", "tiny", "--user", "openai"]) == 2
    assert "user_options needs base_url and model" in capsys.readouterr().err


def test_fairalign_eval_evaluates_rlpa_with_the_dialogue_metrics():
    """`fairalign eval` serves every task through Task.evaluate: an rlpa target gets AL(k), AVG, N-IR."""
    res = subprocess.run([sys.executable, "-m", "fairalign", "eval", "tiny", "task=rlpa", "eval.examples=2",
                          "task_options.eval_turns=2", "rollout.max_new_tokens=4"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["kind"] == "dialogue" and out["profiles"] == 2 and len(out["al_by_turn"]) == 2
    assert set(out["metrics"]) == {"dialogue/avg", "dialogue/n_ir", "dialogue/n_r2", "dialogue/al/1", "dialogue/al/2"}


def test_eval_dialogue_openai_flags_merge_into_the_config():
    from fairalign.eval.dialogue_cli import resolve

    from fairalign.config import build_config

    overrides = resolve("tiny", ["task_options.user=openai", "task_options.user_options.base_url=http://h/v1"],
                        {"model": "m", "api_key_env": "MY_KEY"})
    cfg = build_config({}, overrides)
    assert cfg.task == "rlpa"
    assert cfg.task_options["user_options"] == {"base_url": "http://h/v1", "model": "m", "api_key_env": "MY_KEY"}
    assert cfg.task_options["judge_options"] == {"model": "m", "api_key_env": "MY_KEY"}
