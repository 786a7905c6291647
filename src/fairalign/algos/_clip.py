"""The PPO clipped surrogate shared by `ppo`, `gspo` and `fspo`, written in log-ratio space.

    loss = max(-A·r, -A·clip(r, e^lo, e^hi));   dual clip (c > 1): where A < 0, loss = min(loss, -A·c)

is computed as an explicit branch so that the "clip is active" masks are exact and returned:
    upper = A > 0 and log r > hi     (clipped branch, value -A·e^hi, no gradient)
    lower = A < 0 and log r < lo     (clipped branch, value -A·e^lo, no gradient)
    dual  = A < 0 and log r > log c  (value -A·c, no gradient)
which equals the max/min form everywhere (at ties both branches have the same value and gradient).
The ratio is exp(min(log r, 20)): the overflow guard freezes ratios above e^20.
"""

from __future__ import annotations

import math

import torch

from ._validate import LOG_RATIO_MAX


def log_bounds(clip_low: float, clip_high: float) -> tuple[float, float]:
    """Log-space bounds of the ratio band [1 - clip_low, 1 + clip_high] (clip_low >= 1: no lower)."""
    lo = math.log1p(-clip_low) if clip_low < 1 else -math.inf
    return lo, math.log1p(clip_high)


def clipped_surrogate(log_r: torch.Tensor, log_r_val: torch.Tensor, adv: torch.Tensor,
                      lo, hi, dual_clip: float | None):
    """Per-token clipped loss.

    log_r      [B, T]  log ratio carrying the gradient (its value may repeat a per-sequence value)
    log_r_val  [B, 1] or [B, T]  detached, unclamped log-ratio value deciding the clip
    adv        [B, 1] or [B, T]  advantages
    lo, hi     float or [B, 1]   log-space band
    Returns (loss [B, T], upper, lower, dual) with the masks broadcastable to [B, T] (dual: None
    when dual_clip is None).
    """
    ratio = torch.exp(log_r.clamp(max=LOG_RATIO_MAX))  # [B, T]
    upper = (adv > 0) & (log_r_val > hi)  # [B,1] or [B,T]
    lower = (adv < 0) & (log_r_val < lo)
    exp_lo = math.exp(lo) if isinstance(lo, float) else lo.exp()
    exp_hi = math.exp(min(hi, LOG_RATIO_MAX)) if isinstance(hi, float) else hi.exp()
    # clipped tokens: the ratio becomes the (constant) band edge; the clamp of the detached ratio
    # is exactly that edge where the clip is active
    r_eff = torch.where(upper | lower, ratio.detach().clamp(min=exp_lo, max=exp_hi), ratio)
    dual = None
    if dual_clip is not None:
        dual = (adv < 0) & (log_r_val > math.log(dual_clip))
        r_eff = torch.where(dual, torch.full((), dual_clip, dtype=ratio.dtype,
                                             device=ratio.device), r_eff)
    return -adv * r_eff, upper, lower, dual
