"""RLPA rollout for the trainer: run whole dialogues for a step's profiles.

Every (history, candidate) pair of every turn becomes one training sample; the G candidates of a
history form one prompt group (for the advantage estimator); the best candidate continues the
dialogue. Returns (batch, totals [B], per-reward parts, n_errors, generation seconds).
"""
from __future__ import annotations

import time

import torch

from fairalign.rollout import concat_batches


def rollout_dialogues(trainer, examples: list[dict], seed: int):
    """Run whole dialogues for these examples' profiles with the trainer's engine and task options."""
    from fairalign.envs.rlpa import DialogueBatch

    G = trainer.cfg.rollout.generations
    opts = trainer.dialogue
    db = DialogueBatch([ex["profile"] for ex in examples], user=opts["user"], judge=opts["judge"],
                       max_turns=opts["max_turns"], seed=seed, group_by=opts["group_by"],
                       completion_prefix=trainer.engine.completion_prefix)
    turns, totals, parts = [], [], {"profile": [], "response": [], "format": []}
    t_gen = 0.0
    while not db.done:
        t0 = time.perf_counter()
        with trainer.dtype_ctx():
            b = trainer.engine.generate(db.policy_prompts(), generations=G, groups=db.groups(),
                                        generator_seed=seed * 17 + db.turn)
        t_gen += time.perf_counter() - t0
        cands = [b.completions[i * G:(i + 1) * G] for i in range(len(b) // G)]
        scores = db.score(cands)
        flat = [sc for row in scores for sc in row]
        totals += [sc["total"] for sc in flat]
        parts["profile"] += [sc["profile"] for sc in flat]
        parts["response"] += [sc["response"] for sc in flat]
        parts["format"] += [float(sc["format_ok"]) for sc in flat]
        db.advance([row[j] for row, j in zip(cands, db.best(scores))])
        turns.append(b)
    batch = concat_batches(turns, trainer.engine.pad_token_id)
    trainer.last_dialogues = db
    per_reward = {k: torch.tensor(v) for k, v in parts.items()}
    return batch, torch.tensor(totals), per_reward, 0, t_gen
