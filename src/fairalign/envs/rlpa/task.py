"""The `rlpa` task for `fairalign train`: training examples are user profiles, and the task's own
rollout (`RLPATask.rollout`) runs whole dialogues for them (DialogueBatch) instead of scoring
single replies.

Every (history, candidate) pair of every turn becomes one training sample; the G candidates of a
history form one prompt group (for the advantage estimator); the best candidate continues the
dialogue. The rewards are the dialogue's own (profile F1 + response verdict), not TRL-style
functions, so `rewards` is empty and `reward_parts` holds profile, response and format.

Options (task_options.*): max_turns, user ("rules" | "openai" with user_options), judge
("rules" | "openai" with judge_options; an openai user's or judge's options are checked when the task
is built), group_by (occupation_category | cluster | a slot),
completion_prefix (text pre-filled at the start of every assistant turn, default "<profile>"),
profiles (a JSONL file of your own profiles; its train/test split is seeded 90/10), n_train /
n_test (subsample the built-in 2700 / 300 split), demo_turns (length of the oracle dialogues that
supply the `sft.*` warm-up's demonstrations, default 10: the evaluation horizon, whatever
max_turns the RL dialogues use), eval_turns (turns per dialogue of `fairalign eval`, default 10, the
paper's evaluation horizon, whatever max_turns training used), context ("full": the whole visible
conversation, default; "recent": the last context_turns exchanges, default 2, with the policy's last
stated profile: dialogue.py) — what the policy sees in training, in the warm-up's demonstrations and
in evaluation alike.

`RLPATask.evaluate` is the paper's evaluation (envs/rlpa/evaluate.py): AL(k), AVG, N-IR, N-R² over
test profiles, with the task's user and judge; `RLPATask.demonstrations` are an oracle's turns.

Simplifications: the generation seed of turn t is `seed * 17 + t`; reward errors are not caught
(the rules user and judge do not fail; a remote one that still fails after its retries raises an
EnvironmentFault, and the trainer stops with a checkpoint of the last completed step), so
`reward_errors` is 0; `generate_s` sums the turns' generate calls.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from fairalign.envs.registry import register_task
from fairalign.envs.rlpa.dialogue import CONTEXTS, DialogueBatch
from fairalign.envs.rlpa.generator import get_profiles, profile_group, split_profiles
from fairalign.envs.rlpa.profile import load_profiles_jsonl
from fairalign.envs.rlpa.prompts import POLICY_SYSTEM_PROMPT
from fairalign.envs.task import Task
from fairalign.rollout import RolloutBatch, concat_batches

GROUP_BY_CHOICES = ("occupation_category", "cluster")


def _examples(profiles, group_by: str, opening: str = "Hello") -> list[dict]:
    first = [{"role": "system", "content": POLICY_SYSTEM_PROMPT}, {"role": "user", "content": opening}]
    return [{"prompt": first, "profile": p, "group": profile_group(p, group_by)} for p in profiles]


@dataclass
class RLPATask(Task):
    """The rlpa task: examples hold a "profile"; `rollout` plays whole dialogues with them."""
    max_turns: int = 10
    user: Any = "rules"            # simulated-user spec for make_user ("rules" or {"backend": ..., ...})
    judge: Any = "rules"           # response-judge spec for make_judge
    group_by: str = "occupation_category"
    eval_turns: int = 10           # turns per evaluation dialogue (fairalign eval)
    demo_turns: int = 10           # length of the oracle dialogues that supply demonstrations
    context: str = "full"          # what the policy sees: "full" history | "recent" exchanges + its last profile
    context_turns: int = 2         # exchanges kept by context "recent"
    last_dialogues: Any = field(default=None, repr=False, compare=False)  # the last rollout's DialogueBatch

    def demonstrations(self, n: int, seed: int) -> list[dict]:
        """`n` oracle turns (for the sft.* warm-up) from dialogues with training profiles and the rules user."""
        from fairalign.envs.rlpa.oracle import oracle_demonstrations

        train = [ex["profile"] for ex in self.train_examples]
        rng = random.Random(seed)
        picked = [train[rng.randrange(len(train))] for _ in range(-(-n // self.demo_turns))]
        return oracle_demonstrations(picked, max_turns=self.demo_turns, seed=seed,
                                     completion_prefix=self.completion_prefix, group_by=self.group_by,
                                     context=self.context, context_turns=self.context_turns)[:n]

    def evaluate(self, engine, *, examples: int = 0, generations: int = 1, seed: int = 0, batch_size: int = 16,
                 on_reward_error: str = "raise", progress=None, parts=None) -> dict:
        """The paper's evaluation on the first `examples` test profiles (0 = all) x `eval_turns` turns
        (envs/rlpa/evaluate.py), `batch_size` dialogues at a time (`parts`: a store of the finished batches,
        so a rerun after a remote user or judge failed skips them); on_reward_error is not used (the rules
        user and judge do not fail; a remote one that keeps failing raises an EnvironmentFault)."""
        from fairalign.envs.rlpa.evaluate import evaluate_dialogues

        profiles = [ex["profile"] for ex in self.test_examples]
        return evaluate_dialogues(engine, profiles[:examples] if examples else profiles, max_turns=self.eval_turns,
                                  generations=generations, user=self.user, judge=self.judge, seed=seed,
                                  batch_size=batch_size, progress=progress, parts=parts, context=self.context,
                                  context_turns=self.context_turns)

    def rollout(self, engine, examples: list[dict], generations: int, seed: int, *,
                on_reward_error: str = "raise") -> RolloutBatch:
        """Run `max_turns`-turn dialogues for these examples' profiles; at every turn `engine`
        samples `generations` candidates per dialogue and the best continues. Returns one batch
        of all the turns' samples (turn by turn, prompt groups kept distinct)."""
        if not examples:
            raise ValueError("task 'rlpa': rollout needs at least one example")
        G = generations
        db = DialogueBatch([ex["profile"] for ex in examples], user=self.user, judge=self.judge,
                           max_turns=self.max_turns, seed=seed, group_by=self.group_by,
                           completion_prefix=engine.completion_prefix, context=self.context,
                           context_turns=self.context_turns)
        turns = []
        while not db.done:
            t0 = time.perf_counter()
            b = engine.generate(db.policy_prompts(), generations=G, groups=db.groups(),
                                generator_seed=seed * 17 + db.turn)
            b.generate_s = time.perf_counter() - t0
            cands = [b.completions[i * G:(i + 1) * G] for i in range(len(b) // G)]
            scores = db.score(cands)
            flat = [sc for row in scores for sc in row]
            device = b.response_ids.device
            b.rewards = torch.tensor([sc["total"] for sc in flat], dtype=torch.float32, device=device)  # [n*G]
            b.reward_parts = {k: torch.tensor([float(sc[key]) for sc in flat], dtype=torch.float32, device=device)
                              for k, key in (("profile", "profile"), ("response", "response"), ("format", "format_ok"))}
            db.advance([row[j] for row, j in zip(cands, db.best(scores))])
            turns.append(b)
        self.last_dialogues = db
        return concat_batches(turns, engine.pad_token_id)  # sums generate_s and reward_errors (0)


@register_task("rlpa")
def make_task(*, seed: int = 0, max_turns: int = 10, user="rules", judge="rules", user_options=None,
              judge_options=None, group_by: str = "occupation_category", completion_prefix: str = "<profile>",
              profiles: str | None = None, n_train: int = 0, n_test: int = 0, demo_turns: int = 10,
              eval_turns: int = 10, context: str = "full", context_turns: int = 2) -> RLPATask:
    for name, value in (("max_turns", max_turns), ("demo_turns", demo_turns), ("eval_turns", eval_turns),
                        ("context_turns", context_turns)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"task option '{name}' must be an integer >= 1, got {value!r}")
    if context not in CONTEXTS:
        raise ValueError(f"task option 'context' must be one of {', '.join(CONTEXTS)}, got {context!r}")
    for name, value in (("user", user), ("judge", judge)):
        if value not in ("rules", "openai"):
            raise ValueError(f"task option '{name}' must be 'rules' or 'openai' for training "
                             f"(an 'hf' {name} needs a model object: use the Python API), got {value!r}")
    for name, value, options in (("user", user, user_options), ("judge", judge, judge_options)):
        missing = [k for k in ("base_url", "model") if value == "openai" and not (options or {}).get(k)]
        if missing:
            raise ValueError(f"task option '{name}' is 'openai': {name}_options needs {' and '.join(missing)} "
                             f"(e.g. task_options.{name}_options.base_url=..., or eval-dialogue's "
                             f"--openai-base-url / --openai-model)")
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
    for name, options in (("user", user_options), ("judge", judge_options)):
        if (user if name == "user" else judge) == "openai":
            _check_remote_options(f"{name}_options", options or {})

    return RLPATask(name="rlpa", train_examples=_examples(train, group_by), test_examples=_examples(test, group_by),
                    rewards=[], description="multi-turn personalized dialogue with a simulated user (RLPA)",
                    completion_prefix=completion_prefix, max_turns=max_turns, user=user_spec, judge=judge_spec,
                    group_by=group_by, eval_turns=eval_turns, demo_turns=demo_turns, context=context,
                    context_turns=context_turns)


def _check_remote_options(name: str, options: dict) -> None:
    """An `openai` user's or judge's options, checked when the task is built (not at the first request):
    known keys and values OpenAIChat accepts; ValueError naming the task option otherwise."""
    import inspect

    from fairalign.envs.rlpa.backends import OpenAIChat

    valid = [p for p in inspect.signature(OpenAIChat).parameters]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(f"task option '{name}' has unknown key '{unknown[0]}'; valid: {', '.join(valid)}")
    try:
        OpenAIChat(**options)
    except ValueError as e:
        raise ValueError(f"task option '{name}': {e}") from None
