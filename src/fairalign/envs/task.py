"""`Task`: a dataset of prompts, the reward functions that score completions, and the rollout that
turns a step's examples into a scored `RolloutBatch`.

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
"""
from __future__ import annotations

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
    info: dict = field(default_factory=dict)  # task-specific facts (group shares, split sizes, ...)

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
