"""Policy losses (docs/algorithms.md): ppo, gspo, fspo, cispo, their registry and `compute_policy_loss`.

Every loss is registered with `@register_policy_loss(name, **defaults)` (registry.py) and has one
signature:
    fn(logp [B,T], old_logp [B,T], advantages [B] | [B,T], mask [B,T], **hparams, clip=True)
        -> (loss_mat [B,T] (0 on padding), stats dict)
and `compute_policy_loss` adds hyperparameter defaults/checks, the minibatch statistics the loss
declares (`batch_stats`) and the aggregation. `clip=False` is the same importance-weighted loss with
no band and no dual clip (the loss's own ratio: per token for ppo/cispo, per sequence for gspo/fspo),
the reference of the gradient-cosine diagnostic (`log.grad_cosine`); every built-in loss has it
(registered with `unclipped=True`).

  ppo    r = exp(ℓ) per token, band [1−clip_low, 1+clip_high], optional dual clip (GRPO/DAPO)
  gspo   r = exp(mean_t ℓ) per sequence, token gradient via sg(s_i)+logp−sg(logp) (GSPO-token)
  fspo   r = exp(Σ_t ℓ), log band μL ± c√L (see fspo.py)
  cispo  loss = −sg(clamp(r, 1−clip_low, 1+clip_high))·A·logp per token (MiniMax-M1)

Simplifications: all log ratios are clamped at +20 before exp (ratios above e^20 are frozen);
with [B,T] advantages the sequence-level losses decide the clip per token (GSPO-token form) and
report a sequence as clipped if any of its tokens is.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._clip import clipped_surrogate, log_bounds
from ._validate import (LOG_RATIO_MAX, as_bool_mask, check_dual_clip, check_hparams, check_name,
                        check_number, prepare_loss_inputs)
from .aggregation import aggregate_masked, check_agg_args
from .fspo import fspo_loss
from .registry import POLICY_LOSS_REGISTRY, register_policy_loss

FSPO_DRIFTS = ("none", "kl")
NO_BAND = (-math.inf, math.inf)  # the log-space band of clip=False: nothing is ever clipped


def _check_clip(clip_low: Any, clip_high: Any, dual_clip: Any) -> None:
    check_number(clip_low, "clip_low", low=0.0)
    if clip_low >= 1:
        raise ValueError(f"clip_low must be < 1 (the ratio's lower bound 1 − clip_low > 0), got {clip_low!r}")
    check_number(clip_high, "clip_high", low=0.0)
    check_dual_clip(dual_clip)


def _check_cispo(clip_low: Any, clip_high: Any, dual_clip: Any) -> None:
    if clip_low is not None:
        _check_clip(clip_low, clip_high, dual_clip)
    check_number(clip_high, "clip_high", low=0.0)
    check_dual_clip(dual_clip)


def _check_fspo(c_low: Any, c_high: Any, drift: Any, dual_clip: Any) -> None:
    check_number(c_low, "c_low", low=0.0, low_open=True)
    check_number(c_high, "c_high", low=0.0, low_open=True)
    if drift not in FSPO_DRIFTS:
        raise ValueError(f"drift has unknown value {drift!r}; allowed: {', '.join(FSPO_DRIFTS)}")
    check_dual_clip(dual_clip)


def _stats(m: torch.Tensor, ell: torch.Tensor, upper, lower, dual, *, seq_level: bool,
           extra: dict | None = None) -> dict:
    """Clip masks and fractions (one device sync). Flags are [B,1] (per sequence) or [B,T] and
    already False on padding (padded ℓ = 0 lies inside every token band; padded A = 0)."""
    lengths = m.sum(dim=1)  # [B]
    tokens = lengths.sum().clamp(min=1)

    def count(flag):  # response tokens where `flag` holds
        if flag is None:
            return torch.zeros((), dtype=lengths.dtype, device=m.device)
        return (flag[:, 0] * lengths).sum() if flag.shape[1] == 1 else flag.sum()

    def per_row(flag):  # the `clipped` tensor: [B] for sequence-level losses, [B, T] otherwise
        if seq_level:
            return flag[:, 0] & (lengths > 0) if flag.shape[1] == 1 else flag.any(dim=1)
        return flag.expand(m.shape)

    n_up, n_low = count(upper), count(lower)
    counts = torch.stack([n_up + n_low, n_up, n_low, count(dual)]).double() / tokens
    approx_kl = -ell.sum() / tokens  # masked mean of old_logp - logp
    frac, high, low, dual_frac, kl = torch.cat([counts, approx_kl.double().reshape(1)]).tolist()
    stats = {
        "clipped": per_row(upper | lower),
        "clipped_high": per_row(upper),
        "clipped_low": per_row(lower),
        "clip_frac": frac,
        "clip_frac_high": high,
        "clip_frac_low": low,
        "dual_clip_frac": dual_frac,
        "approx_kl": kl,
    }
    for key, value in (extra or {}).items():
        stats[key] = value.item() if value.dim() == 0 else value
    return stats


def _finish(loss, m):
    return torch.where(m, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))


# DAPO: clip_high 0.28
@register_policy_loss("ppo", clip_low=0.2, clip_high=0.2, dual_clip=None, check=_check_clip, unclipped=True)
def ppo(logp, old_logp, advantages, mask, *, clip_low=0.2, clip_high=0.2, dual_clip=None, clip=True):
    """PPO/GRPO token-level clipped loss. Returns (loss_mat [B,T], stats)."""
    _check_clip(clip_low, clip_high, dual_clip)
    logp, old, ell, adv, m = prepare_loss_inputs(logp, old_logp, advantages, mask)
    lo, hi = log_bounds(clip_low, clip_high) if clip else NO_BAND
    loss, up, low, dual = clipped_surrogate(logp - old, ell, adv, lo, hi, dual_clip if clip else None)
    return _finish(loss, m), _stats(m, ell, up, low, dual, seq_level=False)


@register_policy_loss("gspo", clip_low=3e-4, clip_high=4e-4, dual_clip=None, check=_check_clip, unclipped=True)
def gspo(logp, old_logp, advantages, mask, *, clip_low=3e-4, clip_high=4e-4, dual_clip=None, clip=True):
    """GSPO sequence-level loss, s_i = exp(mean_t ℓ), GSPO-token gradient form."""
    _check_clip(clip_low, clip_high, dual_clip)
    logp, old, ell, adv, m = prepare_loss_inputs(logp, old_logp, advantages, mask)
    lengths = m.sum(dim=1, keepdim=True)  # [B, 1]
    seq_mean = ell.sum(dim=1, keepdim=True) / lengths.clamp(min=1)  # [B, 1]
    log_r = seq_mean + (logp - logp.detach())  # [B, T]: value mean ℓ_i, gradient d logp
    lo, hi = log_bounds(clip_low, clip_high) if clip else NO_BAND
    loss, up, low, dual = clipped_surrogate(log_r, seq_mean, adv, lo, hi, dual_clip if clip else None)
    stats = _stats(m, ell, up, low, dual, seq_level=True, extra={"seq_log_ratio": seq_mean[:, 0]})
    return _finish(loss, m), stats


@register_policy_loss("fspo", c_low=0.02, c_high=0.03, drift="none", dual_clip=None, check=_check_fspo, unclipped=True,
                      batch_stats=lambda hp: ("mean_log_ratio",) if hp["drift"] == "kl" else ())
def fspo(logp, old_logp, advantages, mask, *, c_low=0.02, c_high=0.03, drift="none",
         dual_clip=None, mean_log_ratio=None, clip=True):
    """FSPO sequence-level loss with the √L log band (see fspo.py).

    drift="kl" centres the band on `mean_log_ratio`, the token-mean log ratio of the whole minibatch
    being optimized (a trainer passes it for every micro-batch); None = the mean over these inputs."""
    _check_fspo(c_low, c_high, drift, dual_clip)
    logp, _, ell, adv, m = prepare_loss_inputs(logp, old_logp, advantages, mask)
    loss, up, low, dual, extra = fspo_loss(logp, ell, adv, m, c_low=c_low, c_high=c_high,
                                           drift=drift, dual_clip=dual_clip, mu=mean_log_ratio, clip=clip)
    stats = _stats(m, ell, up, low, dual, seq_level=True, extra=extra)
    return _finish(loss, m), stats


# clip_low None = no lower truncation (MiniMax-M1); clip_high 3.0 = weights capped at 4.
@register_policy_loss("cispo", clip_low=None, clip_high=3.0, dual_clip=None, check=_check_cispo, unclipped=True)
def cispo(logp, old_logp, advantages, mask, *, clip_low=None, clip_high=3.0, dual_clip=None, clip=True):
    """CISPO: loss = −sg(w)·A·logp with w = clamp(r, 1−clip_low, 1+clip_high) per token.

    The clip never removes a token's gradient, it only bounds its weight; `clipped` marks tokens
    whose weight was truncated (either side, any sign of A). dual_clip c caps w at c where A < 0.
    """
    _check_cispo(clip_low, clip_high, dual_clip)
    logp, _, ell, adv, m = prepare_loss_inputs(logp, old_logp, advantages, mask)
    lo, hi = log_bounds(clip_low if clip_low is not None else 1.0, clip_high) if clip else NO_BAND
    if not clip:
        dual_clip = None
    upper = ell > hi  # [B, T]; padded ℓ = 0 <= hi
    lower = ell < lo  # padded ℓ = 0 >= lo
    weight = torch.exp(ell.clamp(min=lo, max=min(hi, LOG_RATIO_MAX)))  # [B, T], detached
    dual = None
    if dual_clip is not None:
        dual = (adv < 0) & (weight > dual_clip)  # padded weight = 1 < c
        weight = torch.where(dual, torch.full((), dual_clip, dtype=weight.dtype,
                                              device=weight.device), weight)
    loss = -(weight * adv) * logp  # [B, T]; padded logp = 0
    stats = _stats(m, ell, upper, lower, dual, seq_level=False)
    return loss, stats


def loss_batch_stats(name: str, **hparams) -> tuple[str, ...]:
    """Names of the whole-minibatch statistics (registry.BATCH_STATISTICS) loss `name` needs with
    these hyperparameters (defaults filled in)."""
    check_name(name, POLICY_LOSS_REGISTRY, "policy loss")
    spec = POLICY_LOSS_REGISTRY[name]
    return tuple(spec.batch_stats(check_hparams(name, hparams, spec.hparams)))


def compute_policy_loss(name: str, logp: torch.Tensor, old_logp: torch.Tensor,
                        advantages: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean",
                        *, horizon: float | None = None, global_tokens: Any = None,
                        global_seqs: Any = None, batch_stats: dict | None = None, clip: bool = True, **hparams):
    """Scalar policy loss (to minimize) and a stats dict; see the module docstring and
    docs/algorithms.md. `horizon`, `global_tokens`, `global_seqs` go to `aggregate`;
    `batch_stats` holds whole-minibatch statistics the loss declared (e.g. FSPO drift="kl":
    {"mean_log_ratio": μ}); a missing one is computed over these inputs alone. `clip=False`: the
    loss's unclipped importance-weighted variant (a loss registered with `unclipped=True`)."""
    check_name(name, POLICY_LOSS_REGISTRY, "policy loss")
    check_agg_args(agg, horizon, global_tokens, global_seqs)
    spec = POLICY_LOSS_REGISTRY[name]
    hp = check_hparams(name, hparams, spec.hparams)
    for key in spec.batch_stats(hp):
        if batch_stats and batch_stats.get(key) is not None:
            hp[key] = batch_stats[key]
    if not clip:
        if not spec.unclipped:
            raise ValueError(f"policy loss {name!r} has no unclipped variant (register it with unclipped=True "
                             f"and accept clip=False)")
        hp["clip"] = False
    loss_mat, stats = spec.fn(logp, old_logp, advantages, mask, **hp)
    loss = aggregate_masked(loss_mat, as_bool_mask(mask), agg, horizon=horizon,
                            global_tokens=global_tokens, global_seqs=global_seqs)
    return loss, stats
