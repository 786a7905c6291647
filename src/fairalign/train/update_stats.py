"""The small accumulator behind a step's update metrics: token-weighted loss statistics and the
per-sequence clip flags of every update that *can* clip.

Simplifications (fairalign's rules, docs/length_fairness.md):
- The exactly on-policy first update of a step (before any optimizer step on this rollout batch,
  ratio ≡ 1) cannot clip; it is left out of the clip metrics (`clip_frac`, `clip_rate/*`, `lre`)
  so they are not diluted. `clip/off_policy_updates` says how many updates were counted; with one
  update per batch it is 0 and no clip metric is logged.
- The clip unit is the sequence for every loss: a token-level loss's [B, T] flags count a sequence
  by its share of clipped tokens. A user loss that reports no `clipped` contributes nothing.
- With token advantages [B, T] (gae), a sequence's advantage for the upper / lower clip split is the
  mean of its tokens' advantages (`sequence_advantages`).
- Sums are local; `finish` reduces them over ranks with the generic collectives only.
- `grad_cosine` (log.grad_cosine): the mean over the step's off-policy optimizer steps of the cosine
  between the clipped and the unclipped loss's gradients, with `grad_cosine/min` and
  `grad_cosine/updates` (how many), so a run's or a study's mean over every update can be pooled.
"""
from __future__ import annotations

import torch

from fairalign.diagnostics import clip_rate_metrics, sequence_clip_weight


def sequence_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B]: sequence advantages as they are, or the token-mean of token advantages [B, T] over `mask`."""
    if adv.dim() == 1:
        return adv
    m = mask.bool().to(adv.device)
    return (adv * m).sum(1) / m.sum(1).clamp(min=1)  # [B]


class UpdateStats:
    def __init__(self):
        self.sums = {"tok": 0.0, "clip_tok": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "entropy": 0.0, "kl": 0.0,
                     "mm_sum": 0.0, "mm_tok": 0.0}
        self.mm_max = 0.0
        self.loss, self.updates, self.off_policy_updates, self.skipped = 0.0, 0, 0, 0
        self.grad_norms: list[float] = []
        self.cosines: list[float] = []  # log.grad_cosine: one per optimizer step that could clip
        self._lengths, self._clip, self._adv = [], [], []

    def add(self, stats: dict, mask: torch.Tensor, ent: torch.Tensor, adv: torch.Tensor, *, off_policy: bool,
            kl: torch.Tensor | None = None) -> None:
        """One micro-batch: stats from the loss, mask [B, T], entropy [B, T], advantages [B] or [B, T]."""
        m = mask.bool()
        ntok = float(m.sum())
        self.sums["tok"] += ntok
        self.sums["approx_kl"] += float(stats.get("approx_kl", 0.0)) * ntok
        self.sums["entropy"] += float((ent.detach().float() * m).sum())
        if kl is not None:
            self.sums["kl"] += float((kl.detach() * m).sum())
        if off_policy and "clipped" in stats:
            self.sums["clip_tok"] += ntok
            self.sums["clip_frac"] += float(stats.get("clip_frac", 0.0)) * ntok
            rows = m.any(1).cpu()  # a row without loss weight (all-zero mask) is no sequence of the update
            self._lengths.append(m.sum(1).cpu()[rows])
            self._clip.append(sequence_clip_weight(stats["clipped"], m)[rows])
            self._adv.append(sequence_advantages(adv.detach(), m).float().cpu()[rows])

    def add_mismatch(self, gap: torch.Tensor) -> None:
        """|engine − training| log-prob gaps of response tokens (1-D)."""
        self.sums["mm_sum"] += float(gap.sum())
        self.sums["mm_tok"] += gap.numel()
        self.mm_max = max(self.mm_max, float(gap.max()) if gap.numel() else 0.0)

    def finish(self, dist, edges, *, with_kl: bool, with_mismatch: bool) -> dict:
        """Metrics of the step's updates, reduced over ranks."""
        s = {k: dist.sum_metric(v) for k, v in self.sums.items()}
        tok = max(s["tok"], 1.0)
        out = {"loss": self.loss / max(self.updates, 1), "approx_kl": s["approx_kl"] / tok,
               "entropy": s["entropy"] / tok,
               "grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else float("nan"),
               "skipped_updates": dist.sum_metric(float(self.skipped)),
               "clip/off_policy_updates": self.off_policy_updates}
        if with_kl:
            out["kl"] = s["kl"] / tok
        if with_mismatch:
            out["rollout/logprob_mismatch"] = s["mm_sum"] / max(s["mm_tok"], 1.0)
            out["rollout/logprob_mismatch_max"] = dist.max_metric(self.mm_max)
        if self.cosines:  # the same value on every rank (computed from the global gradients)
            out["grad_cosine"] = sum(self.cosines) / len(self.cosines)
            out["grad_cosine/min"] = min(self.cosines)
            out["grad_cosine/updates"] = float(len(self.cosines))  # pooled mean: Σ grad_cosine·updates / Σ updates
        local = ([torch.cat(x).tolist() if x else [] for x in (self._lengths, self._clip, self._adv)])
        parts = dist.all_gather_objects(local) if dist.world > 1 else [local]
        lengths = torch.tensor([v for p in parts for v in p[0]], dtype=torch.long)
        if lengths.numel():
            clip = torch.tensor([v for p in parts for v in p[1]], dtype=torch.float64)
            adv = torch.tensor([v for p in parts for v in p[2]], dtype=torch.float32)
            out["clip_frac"] = s["clip_frac"] / max(s["clip_tok"], 1.0)  # token-weighted variant
            out.update(clip_rate_metrics(lengths, clip, adv, edges=edges))
        return out
