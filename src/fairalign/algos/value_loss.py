"""The critic's clipped value loss and the explained variance of its predictions (pure torch).

    V_clip[i,t] = V_old + clamp(V_new − V_old, −value_clip, +value_clip)
    loss[i,t]   = ½ · max((V_new − G)², (V_clip − G)²)         (value_clip None: ½·(V_new − G)²)
    clipped[i,t] = (V_clip − G)² > (V_new − G)²                 (the clipped branch is taken)
then aggregated over the response tokens with the policy loss's `agg` (aggregation.py, including the
global token / sequence normalizers), so the pieces of a split batch add up to the whole-batch loss.
G = the GAE returns (gae.py), V_old = the critic's values when the batch was sampled. This is PPO's
value clipping as in verl, OpenRLHF and TRL (the ½ included).

    explained variance = 1 − Var[G − V] / Var[G]     over valid tokens (NaN when Var[G] = 0)

Simplification: the loss is computed in float32 (float64 inputs stay float64); padded positions are 0
and cannot leak NaN.
"""
from __future__ import annotations

from typing import Any

import torch

from ._validate import as_bool_mask, check_number, compute_dtype
from .aggregation import aggregate_masked, check_agg_args
from .gae import masked_moments, mean_var


def compute_value_loss(values_new: torch.Tensor, returns: torch.Tensor, values_old: torch.Tensor,
                       mask: torch.Tensor, value_clip: float | None = 0.5, agg: str = "token-mean", *,
                       horizon: float | None = None, global_tokens: Any = None, global_seqs: Any = None):
    """(scalar loss, stats) of the clipped value loss; values_new [B, T] carries the gradient,
    returns / values_old [B, T] are detached; stats: `clipped` [B, T] bool, `value_clip_frac` (float,
    share of valid tokens on the clipped branch)."""
    check_agg_args(agg, horizon, global_tokens, global_seqs)
    check_number(value_clip, "value_clip", low=0.0, low_open=True, allow_none=True)
    for name, t in (("values_new", values_new), ("returns", returns), ("values_old", values_old), ("mask", mask)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape != values_new.shape:
            raise ValueError(f"{name} must be a tensor with the shape of values_new "
                             f"{tuple(getattr(values_new, 'shape', ()))}, got {tuple(getattr(t, 'shape', ()))}")
    m = as_bool_mask(mask)
    dtype = compute_dtype(values_new)
    zero = torch.zeros((), dtype=dtype, device=values_new.device)
    v = torch.where(m, values_new.to(dtype), zero)  # [B, T], with grad
    g = torch.where(m, returns.detach().to(dtype), zero)
    v_old = torch.where(m, values_old.detach().to(dtype), zero)
    if not bool(torch.isfinite(g).all() & torch.isfinite(v_old).all()):
        raise ValueError("returns/values_old contain NaN or inf at valid (mask=1) positions")
    unclipped = (v - g) ** 2  # [B, T]
    if value_clip is None:
        loss_mat, clipped = 0.5 * unclipped, torch.zeros_like(m)
    else:
        v_clip = v_old + (v - v_old).clamp(-value_clip, value_clip)  # [B, T]
        clipped_sq = (v_clip - g) ** 2
        loss_mat = 0.5 * torch.maximum(unclipped, clipped_sq)
        clipped = (clipped_sq > unclipped) & m
    loss = aggregate_masked(torch.where(m, loss_mat, zero), m, agg, horizon=horizon,
                            global_tokens=global_tokens, global_seqs=global_seqs)
    frac = float(clipped.sum()) / max(float(m.sum()), 1.0)
    return loss, {"clipped": clipped, "value_clip_frac": frac}


def explained_variance_from_moments(residual_moments, returns_moments) -> float:
    """1 − Var[G − V]/Var[G] from the (n, Σx, Σx²) moments of G − V and of G (masked_moments), e.g.
    summed over ranks; NaN when Var[G] = 0."""
    var_res = mean_var(residual_moments)[1]
    var_ret = mean_var(returns_moments)[1]
    return 1.0 - var_res / var_ret if var_ret > 0 else float("nan")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[G − V]/Var[G] over the valid tokens (unbiased variances; NaN when Var[G] = 0)."""
    return explained_variance_from_moments(masked_moments(returns.double() - values.double(), mask),
                                           masked_moments(returns, mask))
