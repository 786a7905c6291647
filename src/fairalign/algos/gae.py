"""Generalized Advantage Estimation over response tokens (Schulman et al. 2016, arXiv 1506.02438).

    token reward  r[i,t] = R_i on the last valid token of response i, 0 elsewhere   (last_token_rewards)
    next(t)       = the next valid token after t in the same row (none at the end)
    δ[i,t] = r[i,t] + γ·V[i,next(t)] − V[i,t]                  (V[i,none] = 0)
    A[i,t] = δ[i,t] + γλ·A[i,next(t)]                          (A[i,none] = 0)
    returns[i,t] = A[i,t] + V[i,t]                             (before whitening: the critic's target)

Masked positions (m = 0: padding on either side, or tokens inside a row that are not the policy's)
neither take nor pass on value: they get A = returns = 0, their reward and value are ignored, and the
recursion goes straight from the valid token after them to the valid token before them (as verl's and
OpenRLHF's loops do with `nextvalues = V·m + (1 − m)·nextvalues`).

Whitening (`whiten=True`, fairalign's choice, matching verl / OpenRLHF / TRL's `masked_whiten`):
    μ = Σ A·m / n,   σ² = Σ (A − μ)²·m / (n − 1)   (unbiased; n = Σ m over the batch, σ² = 0 if n < 2)
    A ← (A − μ) / sqrt(σ² + 1e-8)                  on valid tokens, 0 elsewhere
The mean is NOT added back (shift_mean=True in TRL's terms). `returns` are never whitened. For a batch
split over micro-batches or ranks, whiten with the moments of the whole batch: `masked_moments` gives
(n, Σx, Σx²) per piece; add them up and pass the sum to `whiten_with_moments`.

Simplifications: values and rewards are read as float64 for the recursion and the results are returned
in the dtype of `values`; one reward per response, on its last valid token (no per-token KL in the
reward: fairalign's KL is a loss term, `algo.beta`).
"""
from __future__ import annotations

import torch

from ._validate import as_bool_mask, check_number

WHITEN_EPS = 1e-8


def _check_2d(name: str, t, shape=None) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError(f"{name} must be a tensor [B, T], got {getattr(t, 'shape', type(t).__name__)}")
    if shape is not None and t.shape != shape:
        raise ValueError(f"{name} shape {tuple(t.shape)} != values shape {tuple(shape)}")


def last_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] token rewards: `rewards[i]` on the last valid token of row i, 0 elsewhere (and 0 for a row
    with no valid token). rewards [B], mask [B, T]."""
    _check_2d("mask", mask)
    if not isinstance(rewards, torch.Tensor) or rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards must have shape [B]={tuple(mask.shape[:1])}, "
                         f"got {tuple(getattr(rewards, 'shape', ()))}")
    m = as_bool_mask(mask)
    T = m.shape[1]
    pos = torch.arange(T, device=m.device).expand_as(m)  # [B, T]
    last = torch.where(m, pos, torch.full_like(pos, -1)).max(dim=1).values  # [B]; -1 = no valid token
    out = torch.zeros(m.shape, dtype=rewards.dtype, device=rewards.device)  # [B, T]
    rows = torch.nonzero(last >= 0).flatten()
    out[rows, last[rows]] = rewards[rows]
    return out


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[3] float64: (n, Σ x, Σ x²) over the valid positions of x [B, T]. Moments of the pieces of a
    split batch add up to the moments of the whole batch."""
    m = as_bool_mask(mask)
    v = torch.where(m, x.detach().double(), torch.zeros((), dtype=torch.float64, device=x.device))
    return torch.stack([m.sum().double(), v.sum(), (v * v).sum()])


def mean_var(moments) -> tuple[float, float]:
    """(mean, unbiased variance) from (n, Σx, Σx²); (0, 0) for n = 0 and variance 0 for n < 2."""
    n, s, ss = (float(v) for v in moments)
    if n <= 0:
        return 0.0, 0.0
    mean = s / n
    var = max(ss - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
    return mean, var


def whiten_with_moments(x: torch.Tensor, mask: torch.Tensor, moments) -> torch.Tensor:
    """(x − μ)/sqrt(σ² + 1e-8) on valid positions, 0 elsewhere; μ, σ² from `moments` (n, Σx, Σx²),
    e.g. those of the whole global batch."""
    m = as_bool_mask(mask)
    mean, var = mean_var(moments)
    out = (x.double() - mean) / (var + WHITEN_EPS) ** 0.5  # [B, T]
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device)).to(x.dtype)


def compute_gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float = 1.0, lam: float = 0.95, whiten: bool = True):
    """(advantages [B, T], returns [B, T]) by GAE over the valid tokens of each row (module docstring).

    token_rewards [B, T] (e.g. `last_token_rewards`), values [B, T] (the critic's V(s_t) of the state
    before token t), mask [B, T] bool or 0/1. `whiten` whitens the advantages over this batch's valid
    tokens; `returns` = unwhitened advantages + values."""
    check_number(gamma, "gamma", low=0.0)
    check_number(lam, "lam", low=0.0)
    if gamma > 1 or lam > 1:
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma!r}, lam={lam!r}")
    _check_2d("values", values)
    _check_2d("token_rewards", token_rewards, values.shape)
    _check_2d("mask", mask, values.shape)
    m = as_bool_mask(mask)
    zero = torch.zeros((), dtype=torch.float64, device=values.device)
    r = torch.where(m, token_rewards.detach().double(), zero)  # [B, T]; masked rewards are ignored
    v = torch.where(m, values.detach().double(), zero)  # [B, T]
    if not bool(torch.isfinite(r).all() & torch.isfinite(v).all()):
        raise ValueError("token_rewards/values contain NaN or inf at valid (mask=1) positions")
    B, T = v.shape
    adv = torch.zeros_like(v)  # [B, T]
    next_v = torch.zeros(B, dtype=torch.float64, device=v.device)  # V of the next valid token
    next_a = torch.zeros_like(next_v)  # A of the next valid token
    for t in range(T - 1, -1, -1):
        a_t = r[:, t] + gamma * next_v - v[:, t] + gamma * lam * next_a  # [B]
        valid = m[:, t]
        adv[:, t] = torch.where(valid, a_t, zero)
        next_v = torch.where(valid, v[:, t], next_v)  # masked tokens pass the later value through
        next_a = torch.where(valid, a_t, next_a)
    returns = torch.where(m, adv + v, zero).to(values.dtype)  # [B, T]
    if whiten:
        return whiten_with_moments(adv, m, masked_moments(adv, m)).to(values.dtype), returns
    return adv.to(values.dtype), returns
