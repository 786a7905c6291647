"""A prompt prefix every row shares, run once: the layout both the generation engine's prefill and the
training log-prob pass use when distinct prompts start with the same tokens (a task's long system prompt:
RLPA's is 291 tokens of a ~400-token prompt).

Rows are left-padded prompts [n, P]. When all n real-token sequences start with the same C tokens
(C >= MIN_SHARED_PREFIX, n >= 2), the model runs the prefix once as [1, C], its KV cache is repeated
n times (differentiably: gradients from every row sum into the one prefix computation), and the rest
of each prompt runs as a left-padded suffix [n, S] after it. The cache then holds C + S positions whose
attention mask is `[1]*C + suffix mask`: padding sits between the prefix and the suffix, masked, and
position ids continue from C, so every real token sees exactly what it sees in one forward over the
whole prompt. The results are the same up to float rounding.

Simplification: one prefix shared by all rows (not a prefix tree); C is capped so every row keeps at
least one token after it (its last position predicts the first response token). MIN_SHARED_PREFIX
keeps short shared chat-template preambles (SmolLM2's default system line is ~20 tokens) on the plain
path, where an extra forward call would save little.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_SHARED_PREFIX = 64  # shared tokens below which prompts run as one forward


def common_prefix_len(ids: torch.Tensor, mask: torch.Tensor) -> int:
    """Length C of the real-token prefix all rows of left-padded `ids` [n, P] share (0 when n < 2 or
    C < MIN_SHARED_PREFIX), capped at the shortest row's length - 1."""
    n, P = ids.shape
    if n < 2:
        return 0
    lengths = mask.long().sum(1)  # [n]
    shortest = int(lengths.min())
    if shortest - 1 < MIN_SHARED_PREFIX:
        return 0
    starts = P - lengths  # [n]: first real column of each row
    cols = starts[:, None] + torch.arange(shortest, device=ids.device)  # [n, shortest]
    real = ids.gather(1, cols)  # [n, shortest]: each row's first real tokens, aligned
    same = (real == real[:1]).all(0).long()  # [shortest]
    c = min(int(same.cumprod(0).sum()), shortest - 1)
    return c if c >= MIN_SHARED_PREFIX else 0


@dataclass
class PrefixSplit:
    """Rows [n, P] as a shared prefix [1, C] and left-padded suffixes [n, S]."""
    prefix_ids: torch.Tensor      # [1, C]
    suffix_ids: torch.Tensor      # [n, S]
    suffix_mask: torch.Tensor     # [n, S] long
    suffix_position: torch.Tensor  # [n, S] position ids, continuing from C
    mask: torch.Tensor            # [n, C + S] long: the attention mask of the cache after both forwards
    position: torch.Tensor        # [n, C + S] position ids of those cache positions

    @property
    def length(self) -> int:
        return self.prefix_ids.shape[1]


def split_prefix(ids: torch.Tensor, mask: torch.Tensor, c: int) -> PrefixSplit:
    """Split left-padded rows `ids`/`mask` [n, P] whose first `c` real tokens agree (common_prefix_len)."""
    n, P = ids.shape
    lengths = mask.long().sum(1)  # [n]
    starts = P - lengths  # [n]
    S = int(lengths.max()) - c  # the longest suffix
    cols = torch.arange(P - S, P, device=ids.device)  # [S]: the suffix window of every row
    suffix_mask = (cols[None, :] >= (starts + c)[:, None]).long()  # [n, S]: real and after the prefix
    suffix_ids = ids[:, P - S:]  # [n, S]
    suffix_position = (c + suffix_mask.cumsum(-1) - 1).clamp(min=c)  # [n, S]
    first = int(starts[0])
    prefix_ids = ids[:1, first:first + c]  # [1, C]
    prefix_position = torch.arange(c, device=ids.device).expand(n, c)  # [n, C]
    ones = torch.ones(n, c, dtype=torch.long, device=ids.device)
    return PrefixSplit(prefix_ids, suffix_ids, suffix_mask, suffix_position,
                       torch.cat([ones, suffix_mask], dim=1), torch.cat([prefix_position, suffix_position], dim=1))


def prefill_split(model, split: PrefixSplit, cache=None, **kwargs):
    """Run `split`'s prefix once and its suffixes after it: the model output of the suffix forward (logits
    of its last `logits_to_keep` positions, the cache [n, ..., C + S, ...] in `past_key_values`). The
    cache must support `batch_repeat_interleave` (DynamicCache does); `cache`: an empty cache to fill."""
    c, n = split.length, split.suffix_ids.shape[0]
    first = model(input_ids=split.prefix_ids, attention_mask=torch.ones_like(split.prefix_ids),
                  position_ids=torch.arange(c, device=split.prefix_ids.device)[None], use_cache=True,
                  logits_to_keep=1, **({"past_key_values": cache} if cache is not None else {}))
    cache = first.past_key_values
    cache.batch_repeat_interleave(n)  # [1, ...] -> [n, ...]
    return model(input_ids=split.suffix_ids, attention_mask=split.mask, position_ids=split.suffix_position,
                 past_key_values=cache, use_cache=True, **kwargs)
