"""docs/extending.md is runnable: its code blocks are written to files and its `fairalign train`
commands run on the tiny model (sizes shrunk), through the CLI, exactly as a user would."""
import json
import re
import shlex
from pathlib import Path

import pytest

from fairalign.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
SMALL = ["model=tiny", "steps=2", "rollout.prompts_per_step=2", "rollout.generations=2",
         "rollout.max_new_tokens=6", "log.tensorboard=false", "log.progress=false"]


def _files(tmp_path):
    text = DOC.read_text()
    blocks = re.findall(r"```python title=(\S+)\n(.*?)```", text, re.S)
    assert {name for name, _ in blocks} == {"my_loss.py", "my_estimator.py", "guess_game.py"}
    for name, code in blocks:
        (tmp_path / name).write_text(code)


def _commands():
    text = DOC.read_text()
    return [shlex.split(c.strip()) for block in re.findall(r"```bash\n(.*?)```", text, re.S)
            for c in block.strip().splitlines()]


@pytest.mark.parametrize("k", range(len(_commands())))
def test_every_documented_command_trains(tmp_path, k, capsys):
    _files(tmp_path)
    argv = _commands()[k]
    assert argv[:2] == ["fairalign", "train"]
    args = [a.replace("my_loss.py", str(tmp_path / "my_loss.py"))
             .replace("my_estimator.py", str(tmp_path / "my_estimator.py"))
             .replace("guess_game.py", str(tmp_path / "guess_game.py")) for a in argv[2:]]
    args = [a for a in args if not a.startswith("task_options.n_train")] + SMALL + [f"output_dir={tmp_path / 'run'}"]
    assert main(["train", *args]) == 0, capsys.readouterr().err
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    if "RunningMean" in " ".join(argv):
        state = json.loads((tmp_path / "run" / "checkpoints" / "step-2" / "trainer_state.json").read_text())
        assert state["estimator"]["count"] == 8  # 2 steps x 2 prompts x 2 generations
        assert "running_mean/baseline" in rows[-1]
    if "guess_game" in " ".join(argv):
        assert "reward/blue" in rows[0]


def test_the_guess_game_is_evaluated_by_fairalign_eval_with_its_own_rollout(tmp_path, capsys):
    """A multi-turn task of the user's own is evaluated by `fairalign eval RUN` with no code beyond the task:
    Task.evaluate runs the task's rollout on the held-out examples (4 examples x 2 turns x 1 generation)."""
    _files(tmp_path)
    run = tmp_path / "run"
    assert main(["train", f"task={tmp_path / 'guess_game.py'}:make_task", *SMALL, "steps=1",
                 f"output_dir={run}"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", str(run), "eval.examples=4"]) == 0, capsys.readouterr().err
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((run / "eval.json").read_text())
    assert printed["kind"] == saved["kind"] == "heldout"
    assert saved["n"] == 8 and set(saved["by_reward"]) == {"blue"} and set(saved["by_group"]) == {"all"}
    assert saved["metrics"]["heldout/reward"] == pytest.approx(saved["mean"])
    assert 0.0 <= saved["mean"] <= 0.5  # only turn-2 answers can score
