"""TRL's vLLM importance-sampling correction seen per response length, and fairalign's optional √L
band for it (docs/length_fairness.md, "TRL's vLLM correction"; docs/integrations.md).

TRL 1.16 (`GRPOTrainer._generate_and_score_completions`, `use_vllm` with
`vllm_importance_sampling_correction`) takes, once per generation batch, the train-inference log
mismatch d_t = logp_train,t - logp_vLLM,t of every loss token and turns it into the loss weight
`importance_sampling_ratio`:
    sequence_* modes: D = sum_t d_t, w = exp(D), [B, 1];   token_* modes: w_t = exp(d_t), [B, T];
    *_mask: w = 0 outside [clip_min, clip_max] (TRL's default: sequence_mask, only above 3.0);
    *_truncate: w clamped into it.
A fixed band on the length-summed D is the regime of docs/length_fairness.md: D spreads as sigma*sqrt(L)
and drifts as mu*L, so the share of completions that lose their gradient depends on their length.

- `correction_weights`: per completion, the share of its loss tokens the correction masked (mask
  modes: w = 0) or truncated (truncate modes: w at a bound); 1/0 for sequence modes. The clip
  metrics count a sequence the same way.
- `sqrt_band_ratio`: the sequence weight with FSPO's band on D instead: w = exp(D) if
  -c_low*sqrt(L) <= D - mu*L <= c_high*sqrt(L), else 0 (c_low None: no lower edge, as TRL's
  clip_min=None). mu is the drift per token: 0 (`fair_is_band_drift="none"`) or the token-mean
  mismatch of the whole generation batch (`"kl"`, the default). Why the drift: vLLM's tokens are
  sampled from vLLM's distribution, so E[exp(D)] = 1 and D drifts as -sigma^2*L/2 (-mu is the per-token
  KL(vLLM || train)), plus any systematic numeric bias; a band centred at 0 then moves long completions
  towards its lower edge (FSPO with drift="none" has the same defect, docs/length_fairness.md).
- `LengthRatePool`: those per-completion weights pooled over TRL's logging interval and every
  process, reported as `<name>_rate/len/<lo>-<hi>`, `<name>_count/len/...`, `<name>_<verb>/len/...`,
  `<name>_lre` (fairalign's LRE of the pooled counts), `<name>_frac` and `<name>/sequences`.

Simplifications: completions with no loss token (e.g. masked by `mask_truncated_completions`) are
left out of the pools; the band replaces TRL's sequence_mask rule only.
"""
from __future__ import annotations

import torch

from fairalign.diagnostics import clip_rate_metrics

MASK_MODES = ("sequence_mask", "token_mask")
TRUNCATE_MODES = ("sequence_truncate", "token_truncate")


def correction_weights(ratio: torch.Tensor, mask: torch.Tensor, mode: str, clip_min: float | None,
                       clip_max: float | None) -> torch.Tensor:
    """[B] float64 in [0, 1]: the share of each completion's loss tokens (mask [B, T]) whose weight
    TRL's correction (ratio [B, 1] or [B, T]) masked or truncated."""
    if mode in MASK_MODES:
        hit = ratio == 0
    elif mode in TRUNCATE_MODES:
        hit = torch.zeros_like(ratio, dtype=torch.bool)
        if clip_max is not None:
            hit |= ratio >= clip_max
        if clip_min is not None:
            hit |= ratio <= clip_min
    else:
        raise ValueError(f"unknown vllm_importance_sampling_mode {mode!r}")
    m = mask.bool()  # [B, T]
    hit = hit.expand(m.shape) & m  # [B, T]
    return (hit.sum(1).double() / m.sum(1).clamp(min=1).double()).cpu()  # [B]


def summed_mismatch(old_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """D [B, 1]: the summed train - sampler log mismatch of each completion over its loss tokens
    (mask [B, T]); a NaN sampler log-prob counts as no mismatch, as in TRL."""
    return torch.nan_to_num((old_logps - sampling_logps) * mask.to(old_logps.dtype), nan=0.0).sum(1, keepdim=True)


def sqrt_band_ratio(d: torch.Tensor, lengths: torch.Tensor, c_low: float | None, c_high: float,
                    mu: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [B, 1], outside [B] bool) for summed mismatches d [B, 1] of completions with `lengths` [B]
    loss tokens: exp(d) if -c_low*sqrt(L) <= d - mu*L <= c_high*sqrt(L), else 0 (mu: the drift per token)."""
    length = lengths.to(d.dtype).unsqueeze(1)  # [B, 1]
    centred, root = d - mu * length, length.sqrt()  # [B, 1] each
    inside = centred <= c_high * root  # [B, 1]
    if c_low is not None:
        inside &= centred >= -c_low * root
    weight = torch.where(inside, torch.exp(torch.where(inside, d, torch.zeros_like(d))), torch.zeros_like(d))
    return weight, ~inside[:, 0]


class LengthRatePool:
    """Per-completion weights in [0, 1] by loss length, pooled until `metrics()` is called."""

    def __init__(self, name: str, verb: str, edges=None):
        self.name, self.verb, self.edges = name, verb, edges
        self._lengths: list[int] = []
        self._weights: list[float] = []

    def add(self, lengths: torch.Tensor, weights: torch.Tensor, gather_object) -> None:
        """One generation batch of this process: lengths [B] (loss tokens), weights [B]. A collective:
        `gather_object` concatenates every process's list, so call it at the same point everywhere."""
        lengths, weights = lengths.cpu(), weights.cpu()
        keep = lengths > 0
        rows = list(zip(lengths[keep].tolist(), weights[keep].tolist()))
        for length, weight in gather_object(rows):
            self._lengths.append(int(length))
            self._weights.append(float(weight))

    def metrics(self) -> dict[str, float]:
        if not self._lengths:
            return {}
        lengths = torch.tensor(self._lengths, dtype=torch.long)  # [N]
        weights = torch.tensor(self._weights, dtype=torch.float64)  # [N]
        self._lengths, self._weights = [], []
        base = clip_rate_metrics(lengths, weights, torch.zeros(len(lengths)), edges=self.edges)
        n, out = self.name, {}
        for key, value in base.items():
            if key.startswith("clip_rate/len/"):
                out[f"{n}_rate/len/{key[len('clip_rate/len/'):]}"] = value
            elif key.startswith("clip_count/len/"):
                out[f"{n}_count/len/{key[len('clip_count/len/'):]}"] = value
            elif key.startswith("clip_clipped/len/"):
                out[f"{n}_{self.verb}/len/{key[len('clip_clipped/len/'):]}"] = value
        out[f"{n}_lre"] = base["lre"]
        out[f"{n}_frac"] = float(weights.mean())
        out[f"{n}/sequences"] = float(len(lengths))
        return out

