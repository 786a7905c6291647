"""The clip-rate pool of the TRL integration: per-sequence clip weights of every update that can clip,
pooled over TRL's logging interval and turned into fairalign's length-fairness metrics.

`add` takes one micro-batch (this process's rows); `close_step` gathers the optimizer step's rows from
every process (a collective: call it at the same point on every process); `metrics` computes
`clip_rate/len/<lo>-<hi>`, `clip_count/len/...`, `clip_clipped/len/...`, `lre`, `clip_rate/upper|lower`
and the token-weighted `clip_frac` over everything pooled since the last call, then empties the pool.

Simplifications (fairalign's rules, docs/length_fairness.md): the sequence is the unit for every loss
(a token-level loss counts a sequence by its share of clipped tokens); the caller leaves out the exactly
on-policy updates (ratio = 1); the LRE is computed from the counts pooled over the logging interval,
not averaged over steps.
"""
from __future__ import annotations

import torch

from fairalign.diagnostics import clip_rate_metrics
from fairalign.diagnostics import sequence_clip_weight


class ClipPool:
    def __init__(self, edges=None):
        self.edges = edges
        self._step: list[tuple[list, list, list, float, float]] = []  # this process, current optimizer step
        self._pooled: list[tuple[list, list, list, float, float]] = []  # every process, since the last log

    def add(self, stats: dict, mask: torch.Tensor, advantages: torch.Tensor) -> None:
        """One micro-batch: the loss's stats, mask [B, T], sequence advantages [B]."""
        m = mask.bool()
        ntok = float(m.sum())
        self._step.append((m.sum(1).tolist(), sequence_clip_weight(stats["clipped"], m).tolist(),
                           advantages.detach().float().cpu().tolist(), float(stats["clip_frac"]) * ntok, ntok))

    def close_step(self, gather_object) -> None:
        """Gather this optimizer step's rows from every process (`gather_object` concatenates lists)."""
        self._pooled.extend(gather_object(self._step))
        self._step = []

    def metrics(self) -> dict[str, float]:
        if not self._pooled:
            return {}
        lengths = torch.tensor([x for p in self._pooled for x in p[0]], dtype=torch.long)  # [N]
        clip = torch.tensor([x for p in self._pooled for x in p[1]], dtype=torch.float64)  # [N]
        adv = torch.tensor([x for p in self._pooled for x in p[2]], dtype=torch.float32)  # [N]
        frac_num, tok = sum(p[3] for p in self._pooled), sum(p[4] for p in self._pooled)
        self._pooled = []
        out = clip_rate_metrics(lengths, clip, adv, edges=self.edges)
        out["clip_frac"] = frac_num / max(tok, 1.0)  # token-weighted
        out["clip/sequences"] = float(lengths.numel())
        return out
