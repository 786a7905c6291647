"""Held-out evaluation: generate on the task's test split (balanced across preference groups) and
report the mean reward overall, per preference group and per reward function."""
from __future__ import annotations

import torch

from fairalign.envs import compute_rewards
from fairalign.rollout import HFGenerationEngine
from fairalign.train.data import balanced_subset


def evaluate_policy(model, tokenizer, task, cfg, *, progress=None) -> dict:
    """Returns {"mean", "by_group": {g: mean}, "by_reward": {name: mean}, "n", "response_length"}."""
    e = cfg.eval
    test = task.test_examples
    if not test:
        raise ValueError(f"task '{task.name}' has no held-out examples")
    groups_all = [ex.get(cfg.group_column, "all") for ex in test]
    chosen = balanced_subset(groups_all, e.examples)
    examples = [test[i] for i in chosen]
    engine = HFGenerationEngine(model, tokenizer, max_new_tokens=cfg.rollout.max_new_tokens,
                                temperature=e.temperature, top_p=cfg.rollout.top_p if e.temperature > 0 else 1.0,
                                chat_template=cfg.rollout.chat_template)
    rewards, groups, lengths = [], [], []
    per_reward: dict[str, list] = {}
    was_training = model.training
    model.eval()
    for s in range(0, len(examples), e.batch_size):
        chunk = examples[s:s + e.batch_size]
        prompts = [ex["prompt"] for ex in chunk]
        g = [ex.get(cfg.group_column, "all") for ex in chunk]
        with torch.no_grad():
            batch = engine.generate(prompts, generations=e.generations, groups=g,
                                    generator_seed=cfg.seed * 31 + s)
        keys = [k for k in chunk[0] if k != "prompt"]
        columns = {k: [ex.get(k) for ex in chunk for _ in range(e.generations)] for k in keys}
        totals, parts, _ = compute_rewards(task.rewards, batch.prompts, batch.completions, columns,
                                           on_error=cfg.on_reward_error)
        rewards += totals.tolist()
        groups += [str(x) for x in batch.groups]
        lengths += batch.lengths.tolist()
        for k, v in parts.items():
            per_reward.setdefault(k, []).extend(v.tolist())
        if progress is not None:
            progress(min(s + e.batch_size, len(examples)), len(examples))
    model.train(was_training)
    by_group: dict[str, list[float]] = {}
    for g, r in zip(groups, rewards):
        by_group.setdefault(g, []).append(r)
    return {
        "mean": sum(rewards) / len(rewards),
        "by_group": {g: sum(v) / len(v) for g, v in sorted(by_group.items())},
        "by_reward": {k: sum(v) / len(v) for k, v in per_reward.items()},
        "n": len(rewards),
        "response_length": sum(lengths) / len(lengths),
    }
