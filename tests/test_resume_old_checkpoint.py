"""A checkpoint written by fairalign 0.1.0 before the re-layout (commit 2009654) resumes with today's code,
and the resumed steps are the ones the old code computed without interruption.

The fixture tests/fixtures/run_written_by_0.1.0 was made with that commit:
`fairalign train model=tiny rollout.prompts_per_step=2 rollout.generations=2 rollout.max_new_tokens=6 seed=3
keep_last=1 algo.loss=fspo algo.advantage=pgrpo algo.pgrpo_min_count=2 save_every=1 steps=1` (its checkpoint
step-1, config.yaml and logs), and the same command with steps=3 (its metrics.jsonl, kept as
uninterrupted_metrics.jsonl)."""
import json
import shutil
from pathlib import Path

from fairalign.cli import main

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_written_by_0.1.0"
TIMINGS = ("time/", "step_s", "tokens_per_s")


def _rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(TIMINGS)}
            for line in path.read_text().splitlines()]


def test_a_checkpoint_of_the_previous_layout_resumes_to_the_same_steps(tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    assert main(["train", "--resume", str(run), "steps=3", "log.progress=false", "log.tensorboard=false"]) == 0, \
        capsys.readouterr().err
    resumed = _rows(run / "metrics.jsonl")
    reference = _rows(FIXTURE / "uninterrupted_metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert resumed == reference  # losses, gradient norms, clip counts, P-GRPO statistics: all equal
    state = json.loads((run / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["estimator"]["groups"]  # P-GRPO's history carried over
