"""Shared by the DAPO tests: a task whose prompt groups tie or not by construction, so which groups
tie is known (with replay_support.replay_engine(..., truncation=True) also which rows are truncated,
for any process count).

Task `make_task(pattern="TM")`: one example per letter of `pattern` (repeated `repeat` times):
"T" prompts score 0.5 for every completion (a tied group), "M" prompts score the completion's
character sum / 1000 (different completions, different rewards: a mixed group). Every example is
in preference group "g".
"""
from __future__ import annotations

from pathlib import Path

from fairalign.envs import RewardSpec, Task

SUPPORT = str(Path(__file__).resolve())
TIE_REWARD = 0.5


def tie_or_mix(prompts, completions, kind, **_):
    return [TIE_REWARD if k == "T" else sum(map(ord, c)) / 1000.0 for k, c in zip(kind, completions)]


def make_task(*, seed: int = 0, pattern: str = "TM", repeat: int = 1) -> Task:
    examples = [{"prompt": f"{'tie' if k == 'T' else 'mix'} prompt {i}: say something", "kind": k, "group": "g"}
                for i, k in enumerate(pattern * repeat)]
    return Task("tie_or_mix", examples, examples[:2], [RewardSpec("tie_or_mix", tie_or_mix)])


def task_spec() -> str:
    return f"{SUPPORT}:make_task"
