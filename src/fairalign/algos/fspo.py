"""FSPO — Fair Sequence Policy Optimization (arXiv 2509.09177), as defined in docs/algorithms.md.

    S_i  = Σ_t ℓ[i,t]·m[i,t]                (sequence log ratio, a SUM)
    L_i  = Σ_t m[i,t]
    μ    = 0 (drift="none") or sg(Σ ℓ·m / Σ m) over the batch (drift="kl")
    band = [μ·L_i − c_low·√L_i,  μ·L_i + c_high·√L_i]          (log space, detached)
    log r[i,t] = sg(S_i) + logp[i,t] − sg(logp[i,t])             (value e^{S_i}, per-token gradient)
    loss[i,t]  = max(−A·r, −A·clamp(r, e^lo, e^hi)),  optional dual clip where A < 0
    clipped_i  = (A_i > 0 and S_i > hi_i) or (A_i < 0 and S_i < lo_i)

`fspo_log_band` is the one definition of the band (the loss and the length-fairness simulation
both use it). With drift="kl", μ is the token-mean log ratio of the whole minibatch being optimized:
a trainer that splits it (micro-batches, ranks) passes the global value as `mu`; without one, μ is
the mean over the tensors given.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._clip import clipped_surrogate
from ._validate import check_number


def fspo_log_band(lengths: torch.Tensor, mu: Any, c_low: float, c_high: float):
    """Log-space clip band of FSPO: (μ·L − c_low·√L, μ·L + c_high·√L), each [B].

    lengths: [B] response lengths (int or float tensor, >= 0); mu: float or 0-dim tensor.
    """
    check_number(c_low, "c_low", low=0.0, low_open=True)
    check_number(c_high, "c_high", low=0.0, low_open=True)
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D tensor [B], got shape {tuple(lengths.shape)}")
    dtype = lengths.dtype if lengths.is_floating_point() else torch.get_default_dtype()
    L = lengths.to(dtype)  # [B]
    if bool((L < 0).any()):
        raise ValueError("lengths must be >= 0")
    root = L.sqrt()  # [B]
    center = mu * L  # [B]
    return center - c_low * root, center + c_high * root


def fspo_loss(logp: torch.Tensor, ell: torch.Tensor, adv: torch.Tensor, m: torch.Tensor,
              *, c_low: float, c_high: float, drift: str, dual_clip: float | None, mu: Any = None,
              clip: bool = True):
    """FSPO per-token loss [B, T] on sanitized inputs (see `prepare_loss_inputs`):
    logp [B,T] with grad, ell = logp − old_logp [B,T] detached (0 on padding). clip=False: no band
    and no dual clip, −A·exp(S_i) with the same per-token gradient form."""
    lengths = m.sum(dim=1)  # [B]
    S = ell.sum(dim=1)  # [B]
    if drift == "kl" and mu is not None:
        mu = torch.as_tensor(mu, dtype=ell.dtype, device=ell.device).detach()  # the minibatch's μ
    elif drift == "kl":
        mu = ell.sum() / lengths.sum().clamp(min=1)  # 0-dim, detached: these inputs are the batch
    else:
        mu = torch.zeros((), dtype=ell.dtype, device=ell.device)
    lo, hi = fspo_log_band(lengths.to(ell.dtype), mu, c_low, c_high)  # [B], [B]
    if not clip:  # an infinite band: nothing is clipped
        lo, hi = torch.full_like(lo, -math.inf), torch.full_like(hi, math.inf)
        dual_clip = None
    log_r = S.unsqueeze(1) + (logp - logp.detach())  # [B, T]: value S_i, gradient d logp
    loss, upper, lower, dual = clipped_surrogate(
        log_r, S.unsqueeze(1), adv, lo.unsqueeze(1), hi.unsqueeze(1), dual_clip)
    extra = {"log_ratio_sum": S, "band_low": lo, "band_high": hi, "drift_mu": mu}
    return loss, upper, lower, dual, extra
