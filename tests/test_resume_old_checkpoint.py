"""A checkpoint written by fairalign 0.1.0 before the re-layout (commit 2009654) resumes with today's code,
and the resumed steps are the ones the old code computed without interruption.

The fixture tests/fixtures/run_written_by_0.1.0 was made with that commit:
`fairalign train model=tiny rollout.prompts_per_step=2 rollout.generations=2 rollout.max_new_tokens=6 seed=3
keep_last=1 algo.loss=fspo algo.advantage=pgrpo algo.pgrpo_min_count=2 save_every=1 steps=1` (its checkpoint
step-1, config.yaml and logs), and the same command with steps=3 (its metrics.jsonl, kept as
uninterrupted_metrics.jsonl).
Since then the first minibatch's behaviour log-probs are its own forward's (train/update.py) instead of a
separate pass over the whole batch, and the decode runs packed linear weights (rollout/decode_kernels.py):
both round differently. What is sampled (tokens, rewards, lengths, advantages, counts) must be identical,
and the float metrics of the update (loss, approx_kl, gradient norm, entropy) equal to float rounding."""
import json
import shutil
from pathlib import Path

import pytest

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
    rounding = ("loss", "approx_kl", "entropy", "grad_norm")  # rounding of the log-prob sums
    exact = lambda rows: [{k: v for k, v in r.items() if k not in rounding} for r in rows]  # noqa: E731
    assert exact(resumed) == exact(reference)  # rewards, advantages, clip counts, P-GRPO statistics
    for got, want in zip(resumed, reference):
        assert {k: got[k] for k in rounding} == pytest.approx({k: want[k] for k in rounding}, rel=1e-4, abs=1e-6)
    state = json.loads((run / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["estimator"]["groups"]  # P-GRPO's history carried over
