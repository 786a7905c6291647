"""The policy handle: the model being trained with what running it needs (tokenizer, engine, strategy,
device, precision, log-prob temperature). The trainer's helpers (critic, warm-up, reference) take this
small object instead of the trainer.

Simplifications, on purpose:
- Log-probs use the sampling temperature (logits / T; T = 1 for greedy), like the sampler that produced
  the tokens.
- precision=bf16 is autocast around every forward; parameters, optimizer state and log-probs stay fp32.
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
        for mic in torch.split(todo, micro) if len(todo) else ():
            lp, _, _, rlen = self.forward(model, batch, mic, with_entropy=False)
            out[mic.to(self.device), :rlen] = lp.to(self.device)
        return out
