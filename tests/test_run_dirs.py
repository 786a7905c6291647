"""A run directory belongs to one run, and `--resume` follows one rule, through the CLI (tiny model):
a second `fairalign train` into a finished run's folder refuses in one line and leaves it untouched,
`--overwrite` starts clean, a resumed run takes an edited config file and KEY=VALUE under the same rule,
a finished run says so, steps below the checkpoint are refused, the header names the run, and the file
paths in config.yaml resolve from any folder."""
import json
import os
from pathlib import Path

import pytest
import yaml

from fairalign.cli import main
from fairalign.config import build_config
from fairalign.errors import ConfigError

TINY = ["model=tiny", "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=6",
        "log.tensorboard=false", "log.progress=false"]


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def _run(capsys, *argv) -> tuple[int, str, list[str]]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.fixture
def finished(tmp_path, capsys):
    """A finished 2-step run in tmp_path/run (seed 1)."""
    run = tmp_path / "run"
    code, _, err = _run(capsys, "train", "pgrpo-fspo", *TINY, "steps=2", "seed=1", f"output_dir={run}")
    assert code == 0, err
    return run


def test_train_into_another_runs_directory_refuses_and_leaves_it_as_it_was(finished, capsys):
    before = {p: p.read_bytes() for p in (finished / "metrics.jsonl", finished / "config.yaml")}
    code, out, err = _run(capsys, "train", "grpo", *TINY, "steps=1", f"output_dir={finished}")
    assert code == 2 and len(err) == 1 and out == ""
    assert err[0] == (f"fairalign: error: output_dir '{finished}' holds another run (metrics.jsonl, samples.jsonl, "
                      f"final/, checkpoints/step-2); continue it with --resume {finished}, choose a new "
                      f"output_dir=..., or delete it and start over with --overwrite")
    assert {p: p.read_bytes() for p in before} == before  # nothing appended, config.yaml not replaced
    assert _checkpoints(finished) == ["step-2"]
    with pytest.raises(ConfigError, match="holds another run"):  # the Python API refuses the same way
        from fairalign.train.trainer import Trainer

        Trainer(build_config({}, [*TINY, "steps=1", f"output_dir={finished}"]))


def test_overwrite_deletes_the_old_run_and_leaves_other_files(finished, capsys):
    (finished / "notes.txt").write_text("mine")
    code, _, err = _run(capsys, "train", "grpo", *TINY, "steps=1", "save_every=1", f"output_dir={finished}",
                        "--overwrite")
    assert code == 0, err
    assert _steps(finished) == [1]  # the old run's steps 1, 2 are gone, not continued
    assert _checkpoints(finished) == ["step-1"]
    saved = yaml.safe_load((finished / "config.yaml").read_text())
    assert saved["algo"]["loss"] == "ppo" and saved["seed"] == 0
    assert (finished / "notes.txt").read_text() == "mine"


def test_a_folder_with_only_a_config_yaml_is_reused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: tiny\n")  # a run stopped before its first step: nothing to mix
    code, _, err = _run(capsys, "train", *TINY, "steps=1", f"output_dir={run}")
    assert code == 0, err
    assert _steps(run) == [1]


def test_resume_refuses_an_edited_config_file_like_the_same_key_value(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run(capsys, "config", "pgrpo-fspo", "output_dir=runs/my_run", *TINY, "steps=2")
    Path("my_run.yaml").write_text(out)
    assert _run(capsys, "train", "my_run.yaml")[0] == 0
    edited = out.replace("  lr: 1.0e-05\n", "  lr: 3.0e-05\n")
    assert edited != out
    Path("edited.yaml").write_text(edited)
    rule = ("a resumed run may change only steps, save_every, keep_last, log.*, eval.*, dist_strategy, device, "
            "threads, cpu_allocator, reward_timeout_s, task_options.eval_turns (docs/training.md); for a different run "
            "choose a new output_dir")
    code, _, err = _run(capsys, "train", "edited.yaml", "steps=3", "--resume", "runs/my_run")
    assert code == 2 and err == [f"fairalign: error: --resume: 'optim.lr' differs from the checkpoint's config "
                                 f"(1e-05 in runs/my_run/config.yaml, 3e-05 in edited.yaml); {rule}"]
    code, _, err = _run(capsys, "train", "--resume", "runs/my_run", "steps=3", "optim.lr=3e-5")
    assert code == 2 and err == [f"fairalign: error: --resume: 'optim.lr' differs from the checkpoint's config "
                                 f"(1e-05 in runs/my_run/config.yaml, 3e-05 on the command line); {rule}"]
    assert _steps(Path("runs/my_run")) == [1, 2]
    # what may change is applied, from the file as from KEY=VALUE
    Path("my_run.yaml").write_text(out.replace("keep_last: 2\n", "keep_last: 1\n"))
    code, out3, err = _run(capsys, "train", "my_run.yaml", "steps=3", "save_every=1", "--resume", "runs/my_run")
    assert code == 0, err
    assert out3.splitlines()[:3] == ["fairalign train -> runs/my_run",
                                     "  model tiny, task personas, loss fspo, advantage pgrpo",
                                     "  steps 3-3 of 3 (resumed), each 2 prompts x 2 samples"]
    assert _steps(Path("runs/my_run")) == [1, 2, 3]
    saved = yaml.safe_load(Path("runs/my_run/config.yaml").read_text())
    assert (saved["steps"], saved["keep_last"], saved["save_every"]) == (3, 1, 1)
    assert _checkpoints(Path("runs/my_run")) == ["step-3"]  # keep_last=1


def test_finished_run_says_so_and_steps_below_the_checkpoint_are_refused(finished, capsys):
    final = (finished / "final" / "model.safetensors").stat().st_mtime_ns
    code, out, err = _run(capsys, "train", "--resume", str(finished))
    assert code == 0 and err == []
    assert out.strip() == (f"{finished} is already finished (2 of 2 steps; final model in {finished / 'final'}); to "
                           f"train on, raise the total: fairalign train --resume {finished} steps=4")
    assert "nan" not in out
    assert (finished / "final" / "model.safetensors").stat().st_mtime_ns == final and _steps(finished) == [1, 2]
    code, _, err = _run(capsys, "train", "--resume", str(finished), "steps=1")
    assert code == 2 and err == [f"fairalign: error: --resume: steps=1 is below the run's newest checkpoint, step 2; "
                                 f"steps is the run's total, so give steps=3 or more to train on"]


def test_train_prints_the_run_before_its_first_step(tmp_path, capsys):
    run = tmp_path / "r"
    code, out, err = _run(capsys, "train", "pgrpo-fspo", *TINY, "steps=1", f"output_dir={run}")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:3] == [f"fairalign train -> {run}", "  model tiny, task personas, loss fspo, advantage pgrpo",
                         "  1 steps, each 2 prompts x 2 samples"]
    assert lines[-1].startswith(f"done: 1 steps in {run} (last reward/mean ")


DATA = "\n".join(json.dumps({"prompt": f"Say something about {w}.", "group": g})
                 for w, g in [("tea", "a"), ("rain", "b"), ("maps", "a"), ("owls", "b"), ("soup", "a")] * 2) + "\n"
REWARD = "def short(completions, **kw):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
LOSS = ("from fairalign.algos import compute_policy_loss\n\n"
        "def my_ppo(logp, old_logp, advantages, mask, *, agg, global_tokens, global_seqs, horizon):\n"
        "    return compute_policy_loss('ppo', logp, old_logp, advantages, mask, agg, global_tokens=global_tokens,\n"
        "                               global_seqs=global_seqs, horizon=horizon)\n")


def test_relative_paths_are_stored_absolute_so_eval_and_resume_work_from_another_folder(tmp_path, capsys,
                                                                                         monkeypatch):
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    (here / "data.jsonl").write_text(DATA)
    (here / "my_rewards.py").write_text(REWARD)
    (here / "my_loss.py").write_text(LOSS)
    monkeypatch.chdir(here)
    code, _, err = _run(capsys, "train", "task=data.jsonl", "task_reward=my_rewards.py:short",
                        "algo.loss=my_loss.py:my_ppo", *TINY, "steps=2", "output_dir=runs/file_task")
    assert code == 0, err
    saved = yaml.safe_load((here / "runs/file_task/config.yaml").read_text())
    assert saved["task"] == str(here / "data.jsonl")
    assert saved["task_reward"] == [f"{here / 'my_rewards.py'}:short"]
    assert saved["algo"]["loss"] == f"{here / 'my_loss.py'}:my_ppo"
    assert saved["output_dir"] == "runs/file_task"  # the run directory stays where the user put it
    monkeypatch.chdir(elsewhere)
    run = str(here / "runs/file_task")
    code, out, err = _run(capsys, "eval", run, "eval.examples=2")
    assert code == 0, err
    assert json.loads(out)["n"] == 1  # the file's held-out 10%: 1 of 10 prompts
    code, _, err = _run(capsys, "train", "--resume", run, "steps=3")
    assert code == 0, err
    assert _steps(Path(run)) == [1, 2, 3]


def test_rlpa_profiles_path_is_stored_absolute(tmp_path, capsys, monkeypatch):
    from fairalign.envs.rlpa import get_profiles, save_profiles_jsonl

    monkeypatch.chdir(tmp_path)
    save_profiles_jsonl(get_profiles("train")[:20], "my_profiles.jsonl")
    code, _, err = _run(capsys, "train", "task=rlpa", "task_options.profiles=my_profiles.jsonl",
                        "task_options.max_turns=1", *TINY, "steps=1", "output_dir=runs/rlpa")
    assert code == 0, err
    saved = yaml.safe_load(Path("runs/rlpa/config.yaml").read_text())
    assert saved["task_options"]["profiles"] == str(tmp_path / "my_profiles.jsonl")
    assert os.path.isabs(saved["task_options"]["profiles"]) and saved["task"] == "rlpa"
