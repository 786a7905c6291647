"""`RolloutBatch`: the one structure that flows through a training step (docs/architecture.md).

`B` = sampled responses (prompts × generations, generations of one prompt adjacent), `P` = padded
prompt length (left padding), `R` = padded response length (right padding).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Hashable, Sequence

import torch

_TENSOR_FIELDS = (
    "prompt_ids", "prompt_mask", "response_ids", "response_mask", "lengths", "truncated", "index",
    "old_logp", "ref_logp", "rewards", "advantages", "engine_logp", "train_mask", "values", "returns",
)
_LIST_FIELDS = ("prompts", "completions", "groups")


@dataclass
class RolloutBatch:
    """Sampled responses and everything the step computes about them."""

    prompt_ids: torch.Tensor  # [B, P] long, left-padded prompt token ids
    prompt_mask: torch.Tensor  # [B, P] bool, 1 on real prompt tokens
    response_ids: torch.Tensor  # [B, R] long, right-padded response ids (EOS included when generated)
    response_mask: torch.Tensor  # [B, R] bool, 1 up to and including the first EOS
    lengths: torch.Tensor  # [B] long, response_mask.sum(1)
    truncated: torch.Tensor  # [B] bool, hit max_new_tokens without EOS
    prompts: list[Any]  # [B] the prompt as the task gave it (str or chat messages)
    completions: list[str]  # [B] decoded response text (special tokens skipped)
    index: torch.Tensor  # [B] long, prompt id within the step (shared by one prompt's generations)
    groups: list[Hashable]  # [B] preference group per sample
    old_logp: torch.Tensor | None = None  # [B, R] float, behaviour-policy token log-probs
    ref_logp: torch.Tensor | None = None  # [B, R] float, reference-model token log-probs (beta > 0)
    rewards: torch.Tensor | None = None  # [B] float, total reward (filled by the task's rollout)
    advantages: torch.Tensor | None = None  # [B] or [B, R] float, sequence or token advantages (the estimator)
    # [B, R] float, the rollout engine's own log-prob of each sampled token (vLLM; 0 on padding); only
    # a diagnostic of the train/inference mismatch, never the behaviour log-probs
    engine_logp: torch.Tensor | None = None
    # reward function name -> [B] float, its unweighted score (filled by the task's rollout)
    reward_parts: dict = field(default_factory=dict)
    reward_errors: int = 0  # reward calls that failed and were scored 0 (on_reward_error=zero)
    generate_s: float = 0.0  # seconds the rollout spent in the engine's generate calls
    # [B] bool, the rows that take part in the loss (None = all); rows with False get zero loss weight
    # (truncated completions under rollout.mask_truncated, dynamic sampling's fillers)
    train_mask: torch.Tensor | None = None
    values: torch.Tensor | None = None  # [B, R] float, the critic's V(s_t) before the step's updates (algo.critic)
    returns: torch.Tensor | None = None  # [B, R] float, the critic's targets (from an estimator that uses values)

    def __post_init__(self) -> None:
        B, R = self.response_ids.shape
        if self.prompt_ids.shape != self.prompt_mask.shape or self.prompt_ids.shape[0] != B:
            raise ValueError(
                f"prompt_ids {tuple(self.prompt_ids.shape)} / prompt_mask {tuple(self.prompt_mask.shape)} "
                f"do not match B={B}"
            )
        if self.response_mask.shape != (B, R):
            raise ValueError(f"response_mask {tuple(self.response_mask.shape)} != response_ids {(B, R)}")
        for name in ("lengths", "truncated", "index", "rewards", "train_mask"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (B,):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected ({B},)")
        if self.advantages is not None and tuple(self.advantages.shape) not in ((B,), (B, R)):
            raise ValueError(f"advantages has shape {tuple(self.advantages.shape)}, expected ({B},) or {(B, R)}")
        for name in ("old_logp", "ref_logp", "engine_logp", "values", "returns"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (B, R):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected {(B, R)}")
        for name in _LIST_FIELDS:
            if len(getattr(self, name)) != B:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, expected {B}")

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    def to(self, device: str | torch.device) -> "RolloutBatch":
        """A copy with every tensor on `device`."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if f.name in _TENSOR_FIELDS and getattr(self, f.name) is not None
        }
        return replace(self, **moved, reward_parts={k: v.to(device) for k, v in self.reward_parts.items()})

    def select(self, rows: Sequence[int] | torch.Tensor) -> "RolloutBatch":
        """A new batch with the given rows (e.g. a micro-batch), in that order; padding is kept."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        picked: dict[str, Any] = {}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            picked[name] = None if value is None else value[idx.to(value.device)]
        for name in _LIST_FIELDS:
            value = getattr(self, name)
            picked[name] = [value[i] for i in idx.tolist()]
        picked["reward_parts"] = {k: v[idx.to(v.device)] for k, v in self.reward_parts.items()}
        return RolloutBatch(**picked, reward_errors=self.reward_errors, generate_s=self.generate_s)


def concat_batches(batches: Sequence[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """One batch from several (e.g. the turns of a dialogue rollout): prompts re-padded on the left,
    responses on the right; `index` values are offset so prompt groups stay distinct. Per-sample
    fields that only some batches hold are dropped (`train_mask`: None counts as all True)."""
    if not batches:
        raise ValueError("concat_batches needs at least one batch")
    P = max(b.prompt_ids.shape[1] for b in batches)
    R = max(b.response_ids.shape[1] for b in batches)

    def left(t: torch.Tensor, width: int, value) -> torch.Tensor:
        pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
        return torch.cat([pad, t], dim=1)

    def right(t: torch.Tensor, width: int, value) -> torch.Tensor:
        pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
        return torch.cat([t, pad], dim=1)

    index, offset = [], 0
    for b in batches:
        index.append(b.index + offset)
        offset += int(b.index.max()) + 1 if len(b) else 0
    cat = torch.cat
    return RolloutBatch(
        prompt_ids=cat([left(b.prompt_ids, P, pad_token_id) for b in batches]),
        prompt_mask=cat([left(b.prompt_mask, P, False) for b in batches]),
        response_ids=cat([right(b.response_ids, R, pad_token_id) for b in batches]),
        response_mask=cat([right(b.response_mask, R, False) for b in batches]),
        lengths=cat([b.lengths for b in batches]),
        truncated=cat([b.truncated for b in batches]),
        prompts=[p for b in batches for p in b.prompts],
        completions=[c for b in batches for c in b.completions],
        index=cat(index),
        groups=[g for b in batches for g in b.groups],
        old_logp=None if any(b.old_logp is None for b in batches)
        else cat([right(b.old_logp, R, 0.0) for b in batches]),
        engine_logp=None if any(b.engine_logp is None for b in batches)
        else cat([right(b.engine_logp, R, 0.0) for b in batches]),
        rewards=None if any(b.rewards is None for b in batches) else cat([b.rewards for b in batches]),
        advantages=None if any(b.advantages is None for b in batches) else cat([b.advantages for b in batches]),
        train_mask=None if all(b.train_mask is None for b in batches) else cat(
            [torch.ones(len(b), dtype=torch.bool, device=b.lengths.device) if b.train_mask is None
             else b.train_mask for b in batches]),
        reward_parts={k: cat([b.reward_parts[k] for b in batches]) for k in batches[0].reward_parts
                      if all(k in b.reward_parts for b in batches)},
        reward_errors=sum(b.reward_errors for b in batches),
        generate_s=sum(b.generate_s for b in batches),
    )
