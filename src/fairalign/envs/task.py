"""`Task`: a dataset of prompts, the reward functions that score completions, the rollout that turns a
step's examples into a scored `RolloutBatch`, and the held-out evaluation (`Task.evaluate`).

The rollout is the task's: the trainer hands it an engine, the step's examples, the group size G
and a seed, and gets back a batch with `rewards`, `reward_parts`, `reward_errors` and
`generate_s` filled. The default is single-turn (one generate call, then the task's TRL-style
reward functions); a multi-turn task (RLPA's dialogues) overrides `rollout`.

Simplifications (fairalign's choices):
- The default rollout makes exactly one `engine.generate` call for all the examples; `generate_s`
  is its wall time (rewards are not included).
- An example without a "group" is in group "all".
- The reward columns are every key but "prompt", over all the examples (a key missing from an
  example is None there), each repeated G times, one per generation.
- The default evaluation is the task's own rollout on held-out examples (chosen round-robin across
  preference groups), so a multi-turn task is evaluated by its own dialogues with no extra code; it
  reports the mean reward overall, per preference group and per reward part. A task with metrics of
  its own (RLPA: AL(k), AVG, N-IR, N-R²) overrides `evaluate`. It runs in parts (`eval.batch_size`
  examples each); given a store (`parts=`, `fairalign eval` keeps one in the output folder) a part
  finished before a fault (a remote service that keeps failing) is not redone by a rerun.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from fairalign.envs.rewards import RewardSpec, collate_columns, compute_rewards

if TYPE_CHECKING:  # the engine and its batch live in fairalign.rollout (imported by the caller)
    from fairalign.rollout import RolloutBatch


@dataclass
class Task:
    """A dataset of prompts with reward functions. Every example is a dict with at least "prompt"
    (a string or a list of chat messages) and "group" (its preference group)."""
    name: str
    train_examples: list[dict]
    test_examples: list[dict]
    rewards: list[RewardSpec]
    description: str = ""
    info: dict = field(default_factory=dict)  # descriptive facts for people (group shares, topics, the file)
    completion_prefix: str = ""  # text the engine pre-fills at the start of every response (e.g. "<profile>")
    train_sources: list[str] | None = None  # where each training example came from ("file: line 3"), for errors

    def demonstrations(self, n: int, seed: int) -> list[dict]:
        """`n` supervised demonstrations ({"prompt", "completion", ...}) for the `sft.*` warm-up. The
        default task has none; a task that has (RLPA: an oracle's turns) overrides this."""
        raise ValueError(f"sft.steps > 0 needs demonstrations, and task '{self.name}' has none "
                         f"(the rlpa task provides oracle demonstrations); set sft.steps=0")

    def group_counts(self, split: str = "train") -> dict:
        """Number of examples per preference group in `split` ("train" or "test")."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        counts: dict = {}
        for ex in self.train_examples if split == "train" else self.test_examples:
            counts[ex["group"]] = counts.get(ex["group"], 0) + 1
        return counts

    def rollout(self, engine, examples: list[dict], generations: int, seed: int, *,
                on_reward_error: str = "raise") -> RolloutBatch:
        """Sample `generations` responses per example with `engine` and score them.

        Returns the engine's batch (B = len(examples) * generations, one example's generations
        adjacent) with `rewards` [B] float32 (weighted total, on the responses' device),
        `reward_parts` {reward name: [B] unweighted}, `reward_errors` (values scored 0 under
        on_reward_error="zero") and `generate_s` filled.
        """
        if not examples:
            raise ValueError(f"task {self.name!r}: rollout needs at least one example")
        prompts = [ex["prompt"] for ex in examples]
        groups = [ex.get("group", "all") for ex in examples]
        t0 = time.perf_counter()
        batch = engine.generate(prompts, generations=generations, groups=groups, generator_seed=seed)
        batch.generate_s = time.perf_counter() - t0
        self.score(batch, collate_columns(examples, generations), on_reward_error=on_reward_error)
        return batch

    def score(self, batch: RolloutBatch, columns: dict, *, on_reward_error: str = "raise") -> RolloutBatch:
        """Fill `batch.rewards`, `reward_parts` and `reward_errors` from the task's reward functions;
        `columns`: column -> one value per sample of the batch (see collate_columns)."""
        totals, parts, n_errors = compute_rewards(self.rewards, batch.prompts, batch.completions, columns,
                                                  on_error=on_reward_error)
        device = batch.response_ids.device
        batch.rewards = totals.to(device=device, dtype=torch.float32)  # [B]
        batch.reward_parts = {k: v.to(device) for k, v in parts.items()}  # name -> [B]
        batch.reward_errors = int(n_errors)
        return batch

    def evaluation_examples(self, n: int) -> list[dict]:
        """Up to `n` held-out examples (0 = all), round-robin across preference groups so minorities are
        seen as well as the majority; in their test-split order."""
        if not self.test_examples:
            raise ValueError(f"task '{self.name}' has no held-out examples")
        chosen = balanced_subset([ex.get("group", "all") for ex in self.test_examples], n)
        return [self.test_examples[i] for i in chosen]

    def evaluate(self, engine, *, examples: int = 0, generations: int = 1, seed: int = 0, batch_size: int = 32,
                 on_reward_error: str = "raise", progress=None, parts=None) -> dict:
        """Held-out evaluation with `engine` (whose sampling settings are the evaluation's): the task's own
        rollout on `evaluation_examples(examples)`, `batch_size` examples per rollout (seed `seed * 31 +
        first index`). Returns {"kind": "heldout", "mean", "by_group": {g: mean}, "by_reward": {name: mean},
        "n", "response_length", "metrics": {flat name: value}, "samples": [{"group", "reward"}] in sample
        order (the same order for the same examples and seed, so two policies pair sample by sample)};
        `progress(done, total)` after each part; `parts`: a store of the finished parts (see
        `evaluation_part`), so a rerun after a fault skips them."""
        chosen = self.evaluation_examples(examples)
        rewards: list[float] = []
        groups: list[str] = []
        lengths: list[float] = []
        per_reward: dict[str, list] = {}
        for s in range(0, len(chosen), batch_size):
            def rollout_part(s=s) -> dict:
                with torch.no_grad():
                    batch = self.rollout(engine, chosen[s:s + batch_size], generations, seed * 31 + s,
                                         on_reward_error=on_reward_error)
                return {"examples": len(chosen[s:s + batch_size]), "rewards": batch.rewards.tolist(),
                        "groups": [str(g) for g in batch.groups], "lengths": batch.lengths.tolist(),
                        "reward_parts": {k: v.tolist() for k, v in batch.reward_parts.items()}}
            part = evaluation_part(parts, s, rollout_part)
            rewards += part["rewards"]
            groups += part["groups"]
            lengths += part["lengths"]
            for k, v in part["reward_parts"].items():
                per_reward.setdefault(k, []).extend(v)
            if progress is not None:
                progress(min(s + batch_size, len(chosen)), len(chosen))
        by_group: dict[str, list[float]] = {}
        for g, r in zip(groups, rewards):
            by_group.setdefault(g, []).append(r)
        out = {"kind": "heldout", "mean": sum(rewards) / len(rewards),
               "by_group": {g: sum(v) / len(v) for g, v in sorted(by_group.items())},
               "by_reward": {k: sum(v) / len(v) for k, v in per_reward.items()},
               "n": len(rewards), "response_length": sum(lengths) / len(lengths),
               "samples": [{"group": g, "reward": r} for g, r in zip(groups, rewards)]}
        out["metrics"] = {"heldout/reward": out["mean"], "heldout/response_length": out["response_length"],
                          **{f"heldout/group/{g}": v for g, v in out["by_group"].items()}}
        return out


def evaluation_part(parts, key, compute) -> dict:
    """Part `key` of an evaluation (e.g. the batch starting at example `key`): the one an earlier attempt
    kept in the store `parts` (`parts.get(key)`, None when absent), else `compute()`, kept now
    (`parts.put(key, part)`). A part is JSON-able with an "examples" count; it is read back through JSON
    either way, so a rerun that reads kept parts reports what an uninterrupted evaluation reports."""
    kept = parts.get(key) if parts is not None else None
    if kept is not None:
        return kept
    part = json.loads(json.dumps(compute()))
    if parts is not None:
        parts.put(key, part)
    return part


def balanced_subset(groups: list, k: int) -> list[int]:
    """Up to k indices chosen round-robin across preference groups (in first-seen order within a
    group), sorted; k <= 0 = all."""
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    queues = [list(v) for _, v in sorted(by_group.items(), key=lambda kv: str(kv[0]))]
    out: list[int] = []
    limit = len(groups) if k <= 0 else min(k, len(groups))
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return sorted(out)
