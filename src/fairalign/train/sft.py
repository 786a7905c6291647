"""Supervised warm-up before RL (`sft.steps`): next-token cross-entropy on the task's demonstrations.

A small policy that cannot yet follow a task's output format gives RL almost no signal (every
sample scores 0). A few supervised steps on demonstrations fix the format; RL then improves the
content. Demonstrations come from the task (`task.demonstrations(n, seed)` returning dicts with
"prompt" and "completion"); the `rlpa` task provides an oracle's turns.

The loss uses the rollout engine's own prompt rendering (chat template + completion prefix) and the
training log-prob pass, so the warm-up trains exactly the token sequences the policy later samples.
It has its own AdamW optimizer (discarded afterwards: the RL optimizer starts fresh), runs on every
process with the batch sharded and the loss normalized by the global token count, and writes
`sft_metrics.jsonl` in the run directory.
"""
from __future__ import annotations

import json
import math
import time

import torch

from fairalign.dist import DeepSpeedDist
from fairalign.errors import ConfigError
from fairalign.rollout.logprobs import sequence_logprobs
from fairalign.train.build import adamw
from fairalign.train.logging import Progress
from fairalign.train.policy import Policy


def demonstrations(task, n: int, seed: int) -> list[dict]:
    """`n` demonstrations from the task, or a one-line error naming what is missing."""
    demos = task.demonstrations(n, seed)
    for k, d in enumerate(demos):
        if not isinstance(d.get("completion"), str) or not d["completion"]:
            raise ConfigError(f"task '{task.name}': demonstration {k} has no non-empty 'completion' text")
    return demos


def encode_completions(tokenizer, texts: list[str], eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion texts + EOS, right-padded: ids [N, R] long, mask [N, R] bool."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos_id] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    return ids, mask


def run_sft_warmup(policy: Policy, task, cfg, run_dir, *, show_progress: bool = True) -> list[dict]:
    """Run cfg.sft.steps supervised steps on `policy`'s model with `task`'s demonstrations, logging to
    run_dir/sft_metrics.jsonl; returns one metric dict per step."""
    dist, engine = policy.dist, policy.engine
    s = cfg.sft
    if isinstance(dist, DeepSpeedDist):  # DeepSpeed owns the weights and the one optimizer it was given
        raise ConfigError("sft.steps > 0 is not supported with dist_strategy=deepspeed: run the warm-up with "
                         "ddp or fsdp2 and resume with dist_strategy=deepspeed, or set sft.steps=0")
    demos = demonstrations(task, s.steps * s.batch_size, cfg.seed)
    if len(demos) < s.batch_size:
        raise ConfigError(f"sft.batch_size={s.batch_size} exceeds the {len(demos)} demonstrations available")
    order = torch.randperm(len(demos), generator=torch.Generator().manual_seed(cfg.seed))
    params = policy.parameters()
    opt = adamw(params, s.lr, cfg)
    micro = cfg.algo.micro_batch_size or s.batch_size
    rows: list[dict] = []
    log = open(run_dir / "sft_metrics.jsonl", "w") if dist.is_main else None
    bar = Progress(s.steps, enabled=show_progress and dist.is_main, description="sft warm-up")
    try:
        for step in range(1, s.steps + 1):
            t0 = time.time()
            pick = [int(order[((step - 1) * s.batch_size + k) % len(demos)]) for k in range(s.batch_size)]
            mine = dist.shard(pick)
            batch = [demos[i] for i in mine]
            p_ids, p_mask = engine.encode_prompts([d["prompt"] for d in batch])
            r_ids, r_mask = encode_completions(policy.tokenizer, [d["completion"] for d in batch],
                                               engine.eos_token_ids[0], engine.pad_token_id)
            n_tokens = dist.sum_metric(float(r_mask.sum()))
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for mic in torch.split(torch.arange(len(batch)), micro):
                with policy.autocast():
                    logp, _ = sequence_logprobs(policy.model, p_ids[mic], p_mask[mic], r_ids[mic], r_mask[mic],
                                                all_ranks=dist.all_ranks)
                loss = -(logp.float() * r_mask[mic].to(logp.device)).sum() / n_tokens
                dist.backward(loss, policy.model)
                loss_sum += float(loss.detach())
            dist.sync_gradients(policy.model)
            gn = dist.clip_grad_norm(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
            loss_all = dist.sum_metric(loss_sum)
            if not (math.isfinite(loss_all) and torch.isfinite(gn)):
                raise FloatingPointError(f"sft warm-up step {step}: non-finite loss or gradient norm "
                                         f"(loss {loss_all}); lower sft.lr")
            opt.step()
            row = {"sft_step": step, "sft/loss": loss_all, "sft/tokens": n_tokens,
                   "sft/grad_norm": float(gn), "sft/step_s": time.time() - t0}
            rows.append(row)
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
            bar.update(step, row)
    finally:
        bar.close()
        if log is not None:
            log.close()
    opt.zero_grad(set_to_none=True)
    del opt
    return rows
