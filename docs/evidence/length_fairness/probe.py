"""A probe loss for calibrating clip bands (study 1, issue 14): the *unclipped* token-level importance
weighted policy gradient, which also writes every off-policy sequence it sees to a JSON-lines file so
that `calibrate.py` can find, for each clip rule, the band that clips a chosen share of sequences.

    algo.loss=docs/evidence/length_fairness/probe.py:probe  algo.loss_args.out=runs/probe.jsonl

    loss[i,t] = −A_i · exp(ℓ[i,t]),  ℓ = logp − sg(old_logp)      (no clip: every band's input is seen)
    one line per call: {"call": k, "seqs": [{"A": A_i, "ell": [ℓ[i,t] for valid t]}, ...]}

Simplifications: on-policy calls (every |ℓ| < 1e-6: the first minibatch of a rollout) are not written,
because no band clips them; the trainer's micro-batches each write their own line (calibrate.py pools
them, and recomputes FSPO's drift centre per line, i.e. per micro-batch, which equals the minibatch's
when micro_batch_size is unset, as in the study).
"""
import json

import torch

from fairalign.algos import aggregate

_CALLS = {"n": 0}


def probe(logp, old_logp, advantages, mask, *, agg, global_tokens, global_seqs, horizon, out):
    m = mask.bool()  # [B, T]
    ell = torch.where(m, logp.detach() - old_logp, torch.zeros_like(logp))  # [B, T]
    adv = advantages.detach().float().unsqueeze(1)  # [B, 1]
    ratio = torch.exp((logp - old_logp).clamp(max=20.0))  # [B, T]
    loss_mat = torch.where(m, -adv * ratio, torch.zeros_like(ratio))  # [B, T]
    loss = aggregate(loss_mat, m, agg, horizon=horizon, global_tokens=global_tokens, global_seqs=global_seqs)
    _CALLS["n"] += 1
    if float(ell.abs().max()) >= 1e-6:
        seqs = [{"A": float(adv[i, 0]), "ell": [float(x) for x in ell[i][m[i]]]}
                for i in range(len(m)) if bool(m[i].any())]
        with open(out, "a") as f:
            f.write(json.dumps({"call": _CALLS["n"], "seqs": seqs}) + "\n")
    tokens = m.sum().clamp(min=1)
    stats = {"clipped": torch.zeros(len(m), dtype=torch.bool), "clip_frac": 0.0,
             "approx_kl": float(-ell.sum() / tokens)}
    return loss, stats
