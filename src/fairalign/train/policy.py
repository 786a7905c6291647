"""The policy handle: the model being trained with what running it needs (tokenizer, engine, strategy,
device, precision, log-prob temperature). The trainer's helpers (critic, warm-up, reference) take this
small object instead of the trainer.

Simplifications, on purpose:
- Log-probs use the sampling temperature (logits / T; T = 1 for greedy), like the sampler that produced
  the tokens.
- precision=bf16 is autocast around every forward; parameters, optimizer state and log-probs stay fp32.
- A micro-batch runs as up to 4 forwards of rows of similar response length (`length_buckets`), so short
  responses are not padded to the longest one; the results are the same up to float rounding. The cost
  model counts tokens only (matmul efficiency at small shapes is folded into FORWARD_CALL_COST).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from fairalign.dist import Dist
from fairalign.rollout import sequence_logprobs


def trim_padding(batch, idx: torch.Tensor):
    """Sub-batch tensors with padding columns removed (prompt: left, response: right):
    (prompt ids [b, P'], prompt mask [b, P'], response ids [b, R'], response mask [b, R'], R')."""
    pm = batch.prompt_mask[idx]
    first = int(pm.any(0).float().argmax()) if pm.any() else 0
    rlen = max(1, int(batch.lengths[idx].max()))
    return (batch.prompt_ids[idx, first:], pm[:, first:], batch.response_ids[idx, :rlen],
            batch.response_mask[idx, :rlen], rlen)


RESPONSE_TOKEN_COST = 1.27   # a response token's forward cost in prompt tokens (+ the LM head: SmolLM2's 57 / 212 MFLOP)
FORWARD_CALL_COST = 16       # a forward call's fixed cost, in prompt tokens
MAX_LENGTH_BUCKETS = 4


def length_buckets(batch, rows: torch.Tensor, max_parts: int = MAX_LENGTH_BUCKETS) -> list[torch.Tensor]:
    """`rows` [b] as up to `max_parts` forwards of rows of similar response length, the split (contiguous
    in length order) that computes the fewest padded tokens: a forward over rows S computes each distinct
    prompt once at the longest prompt's length and every row at the longest response's length, so its cost
    is distinct(S) x max prompt(S) + RESPONSE_TOKEN_COST x |S| x max response(S) + FORWARD_CALL_COST.
    One forward (all of `rows`) when splitting saves nothing."""
    if len(rows) <= 1:
        return [rows]
    lengths = batch.lengths[rows].cpu()
    order = torch.argsort(lengths, stable=True)
    rows, lengths = rows[order], lengths[order].tolist()  # ascending response length
    prompts = batch.index[rows].tolist()
    p_len = batch.prompt_mask[rows].sum(1).tolist()
    n = len(rows)
    cost = [[0.0] * (n + 1) for _ in range(n + 1)]  # cost[i][j]: one forward over sorted rows i..j-1
    for i in range(n):
        seen, p_max = set(), 0
        for j in range(i, n):
            seen.add(prompts[j])
            p_max = max(p_max, p_len[j])
            cost[i][j + 1] = len(seen) * p_max + RESPONSE_TOKEN_COST * (j + 1 - i) * lengths[j] + FORWARD_CALL_COST
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(max_parts + 1)]  # best[k][j]: rows 0..j-1 in k forwards
    cut = [[0] * (n + 1) for _ in range(max_parts + 1)]
    best[0][0] = 0.0
    for k in range(1, max_parts + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost[i][j]
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    k = min(range(1, max_parts + 1), key=lambda m: (best[m][n], m))
    bounds, j = [], n
    while k > 0:
        i = cut[k][j]
        bounds.append((i, j))
        j, k = i, k - 1
    return [rows[i:j] for i, j in reversed(bounds)]


@dataclass
class Policy:
    """The trained model (as the strategy wrapped it) and how to run it."""
    model: torch.nn.Module
    tokenizer: Any
    engine: Any                     # the generation engine sampling from the same weights
    dist: Dist
    device: torch.device
    precision: str = "fp32"         # fp32 | bf16 (autocast around forwards)
    logp_temperature: float = 1.0   # logits are divided by this before the log-softmax

    def autocast(self):
        """The context every forward runs in (bf16 autocast, or nothing)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters (all of them, or the LoRA adapter's)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def forwards(self, batch, rows: torch.Tensor, micro: int) -> list[torch.Tensor]:
        """`rows` [b] in the forwards that compute them: micro-batches of `micro` rows, each split further by
        response length (`length_buckets`) where forwards are local to this process (a sharded model needs
        the same forward calls on every rank, so there each micro-batch is one forward)."""
        mics = list(torch.split(rows, micro)) if len(rows) else []
        if self.dist.all_ranks is not bool:
            return mics
        return [part for mic in mics for part in length_buckets(batch, mic)]

    def forward(self, model, batch, rows: torch.Tensor, with_entropy: bool, with_hidden: bool = False):
        """Token log-probs (and entropy) of `rows` of the batch under `model` (the policy, its training
        wrapper or a reference): (logp [b, R'] fp32, entropy, response mask [b, R'], R'), and with
        `with_hidden` the final hidden states [b, R', H] as a fifth item (a value head reads them)."""
        p_ids, p_mask, r_ids, r_mask, rlen = trim_padding(batch, rows)
        with self.autocast():
            out = sequence_logprobs(model, p_ids, p_mask, r_ids, r_mask, with_entropy=with_entropy,
                                    temperature=self.logp_temperature, all_ranks=self.dist.all_ranks,
                                    with_hidden=with_hidden)
        return (out[0].float(), out[1], r_mask, rlen) + tuple(out[2:])

    @torch.no_grad()
    def logprobs(self, model, batch, micro: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, R] float32 token log-probs of the batch under `model`, on the policy's device (0 on padding),
        `micro` rows per forward; with `rows` [b] only those rows are computed (the others are NaN)."""
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.device)
        if rows is not None:
            out[:] = float("nan")
            out[rows.to(self.device)] = 0.0
        todo = torch.arange(len(batch)) if rows is None else rows.cpu()  # [b]
        for mic in self.forwards(batch, todo, micro):
            lp, _, _, rlen = self.forward(model, batch, mic, with_entropy=False)
            out[mic.to(self.device), :rlen] = lp.to(self.device)
        return out
