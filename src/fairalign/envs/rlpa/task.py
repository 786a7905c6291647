"""The `rlpa` task for `fairalign train`: training examples are user profiles; the trainer runs
whole dialogues for them (DialogueBatch) instead of scoring single replies.

Options (task_options.*): max_turns, user ("rules" | "openai" with user_options), judge
("rules" | "openai" with judge_options), group_by (occupation_category | cluster | a slot),
completion_prefix (text pre-filled at the start of every assistant turn, default "<profile>"),
profiles (a JSONL file of your own profiles; its train/test split is seeded 90/10), n_train /
n_test (subsample the built-in 2700 / 300 split), demo_turns (length of the oracle dialogues that
supply the `sft.*` warm-up's demonstrations, default 10: the evaluation horizon, whatever
max_turns the RL dialogues use).
"""
from __future__ import annotations

import random

from fairalign.envs.base import Task, register_task
from fairalign.envs.rlpa.generator import get_profiles, profile_group, split_profiles
from fairalign.envs.rlpa.profile import load_profiles_jsonl
from fairalign.envs.rlpa.prompts import POLICY_SYSTEM_PROMPT

GROUP_BY_CHOICES = ("occupation_category", "cluster")


def _examples(profiles, group_by: str, opening: str = "Hello") -> list[dict]:
    first = [{"role": "system", "content": POLICY_SYSTEM_PROMPT}, {"role": "user", "content": opening}]
    return [{"prompt": first, "profile": p, "group": profile_group(p, group_by)} for p in profiles]


@register_task("rlpa")
def make_task(*, seed: int = 0, max_turns: int = 10, user="rules", judge="rules", user_options=None,
              judge_options=None, group_by: str = "occupation_category", completion_prefix: str = "<profile>",
              profiles: str | None = None, n_train: int = 0, n_test: int = 0, demo_turns: int = 10) -> Task:
    for name, value in (("max_turns", max_turns), ("demo_turns", demo_turns)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"task option '{name}' must be an integer >= 1, got {value!r}")
    for name, value in (("user", user), ("judge", judge)):
        if value not in ("rules", "openai"):
            raise ValueError(f"task option '{name}' must be 'rules' or 'openai' for training "
                             f"(an 'hf' {name} needs a model object: use the Python API), got {value!r}")
    if profiles:
        train, test = split_profiles(load_profiles_jsonl(profiles), test_fraction=0.1, seed=seed)
    else:
        train, test = get_profiles("train"), get_profiles("test")
    if n_train:
        train = random.Random(seed).sample(train, min(n_train, len(train)))
    if n_test:
        test = test[:n_test]
    user_spec = {"backend": user, **(user_options or {})} if user != "rules" else "rules"
    judge_spec = {"backend": judge, **(judge_options or {})} if judge != "rules" else "rules"

    def demonstrations(n: int, demo_seed: int) -> list[dict]:
        """`n` oracle turns (for the sft.* warm-up) from dialogues with training profiles and the rules user."""
        from fairalign.envs.rlpa.oracle import oracle_demonstrations

        n_dialogues = -(-n // demo_turns)
        rng = random.Random(demo_seed)
        picked = [train[rng.randrange(len(train))] for _ in range(n_dialogues)]
        return oracle_demonstrations(picked, max_turns=demo_turns, seed=demo_seed,
                                     completion_prefix=completion_prefix, group_by=group_by)[:n]

    info = {"dialogue": {"max_turns": max_turns, "user": user_spec, "judge": judge_spec, "group_by": group_by},
            "completion_prefix": completion_prefix, "demonstrations": demonstrations}
    return Task(name="rlpa", train_examples=_examples(train, group_by), test_examples=_examples(test, group_by),
                rewards=[], description="multi-turn personalized dialogue with a simulated user (RLPA)",
                info=info)
