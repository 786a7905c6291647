"""A fixed clip band on the *sequence* ratio exp(S_i), S_i = Σ_t ℓ[i,t] — the baseline FSPO's paper
argues against: its band does not grow with length, so long responses (whose S has a larger spread)
are clipped more often. Written as a user loss (`algo.loss=docs/evidence/length_fairness/fixed_band.py:fixed_sequence_band`)
with the same per-token gradient form as fairalign's fspo (value exp(S_i), gradient per token).

    loss[i,t] = max(−A_i·r, −A_i·clamp(r, 1−eps_low, 1+eps_high)),  log r[i,t] = sg(S_i) + logp − sg(logp)
    clipped_i = (A_i > 0 and S_i > log(1+eps_high)) or (A_i < 0 and S_i < log(1−eps_low))
clip=False (declared by `fixed_sequence_band.unclipped = True`) is the same loss with no band, −A_i·exp(S_i):
the reference of the gradient-cosine diagnostic (`log.grad_cosine`, docs/evidence/fspo_cosine).
"""
import math

import torch

from fairalign.algos import aggregate


def fixed_sequence_band(logp, old_logp, advantages, mask, *, agg, global_tokens, global_seqs, horizon,
                        eps_low=0.2, eps_high=0.2, clip=True):
    m = mask.bool()
    ell = torch.where(m, logp.detach() - old_logp, torch.zeros_like(logp))  # [B, T]
    S = ell.sum(1, keepdim=True)  # [B, 1]
    log_r = S + (logp - logp.detach())  # [B, T]: value S_i, gradient d logp
    ratio = torch.exp(log_r.clamp(max=20.0))
    lo, hi = (math.log1p(-eps_low), math.log1p(eps_high)) if clip else (-math.inf, math.inf)
    adv = advantages.detach().float().unsqueeze(1)  # [B, 1]
    upper = (adv > 0) & (S > hi)  # [B, 1]
    lower = (adv < 0) & (S < lo)
    r_eff = torch.where(upper | lower, ratio.detach().clamp(min=math.exp(lo), max=math.exp(hi)), ratio)
    loss_mat = torch.where(m, -adv * r_eff, torch.zeros_like(r_eff))  # [B, T]
    loss = aggregate(loss_mat, m, agg, horizon=horizon, global_tokens=global_tokens, global_seqs=global_seqs)
    clipped = (upper | lower)[:, 0] & m.any(1)  # [B] per sequence
    tokens = m.sum().clamp(min=1)
    stats = {"clipped": clipped, "clip_frac": float((clipped.float() * m.sum(1)).sum() / tokens),
             "approx_kl": float(-ell.sum() / tokens)}
    return loss, stats


fixed_sequence_band.unclipped = True  # it takes clip=False
