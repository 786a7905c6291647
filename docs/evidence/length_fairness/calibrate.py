"""Calibrate each clip rule of study 1 to the same overall clip rate (issue 14), from a probe run.

    .venv/bin/python docs/evidence/length_fairness/calibrate.py runs/probe.jsonl --target 0.15

The probe (probe.py) records the per-token log ratios ℓ of every off-policy minibatch of an unclipped
run. For each rule, this script scales the rule's default band by one factor k (keeping its low:high
shape in log space) and finds by bisection the k at which the share of clipped sequence-updates, pooled over the
probe, equals the target. The clip decision is fairalign's own: the registered losses (and the study's
fixed_band.py) are called on the recorded ℓ, so the band formulas are not written twice. A token-level
rule (ppo) counts a sequence by its share of clipped tokens, as the trainer's per-bin metrics do.
It also prints each rule's clip rate per length bin at the calibrated band: what the study should
show if the probe's ratios are typical of the clipped runs (they come from an unclipped update, so the
runs drift a little less).
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

from fairalign.algos import compute_policy_loss

sys.path.insert(0, str(Path(__file__).parent))
from fixed_band import fixed_sequence_band  # noqa: E402

# rule: (loss, default band). The study's arms scale these by k.
RULES = {
    "gspo": ("gspo", {"clip_low": 3e-4, "clip_high": 4e-4}),
    "ppo": ("ppo", {"clip_low": 0.2, "clip_high": 0.2}),
    "fspo": ("fspo", {"c_low": 0.02, "c_high": 0.03, "drift": "none"}),
    "fspo_kl": ("fspo", {"c_low": 0.02, "c_high": 0.03, "drift": "kl"}),
    "fixed_seq": ("fixed", {"eps_low": 0.2, "eps_high": 0.2}),
}
SCALED = {"clip_low", "clip_high", "c_low", "c_high", "eps_low", "eps_high"}


def load(path):
    """[(ell [B,T], adv [B], mask [B,T], lengths [B])] per recorded call."""
    calls = []
    for line in Path(path).read_text().splitlines():
        seqs = json.loads(line)["seqs"]
        T = max(len(s["ell"]) for s in seqs)
        ell = torch.zeros(len(seqs), T, dtype=torch.float64)
        mask = torch.zeros(len(seqs), T, dtype=torch.bool)
        for i, s in enumerate(seqs):
            ell[i, :len(s["ell"])] = torch.tensor(s["ell"], dtype=torch.float64)
            mask[i, :len(s["ell"])] = True
        adv = torch.tensor([s["A"] for s in seqs], dtype=torch.float64)
        calls.append((ell, adv, mask, mask.sum(1)))
    return calls


def band(rule, k):
    """The rule's band with its *log-space* bounds scaled by k: FSPO's c_low/c_high are log-space
    coefficients already; a ratio band [1 − lo, 1 + hi] becomes [(1 − lo)^k, (1 + hi)^k], so its
    low:high shape in log space is kept and the bounds never cross 0."""
    loss, hp = RULES[rule]
    out = dict(hp)
    for low, high in (("clip_low", "clip_high"), ("eps_low", "eps_high")):
        if low in hp:
            out[low] = min(-math.expm1(k * math.log1p(-hp[low])), 1.0 - 1e-12)  # the lower bound stays > 0
            out[high] = math.expm1(min(k * math.log1p(hp[high]), 700.0))  # no float overflow
    for key in ("c_low", "c_high"):
        if key in hp:
            out[key] = hp[key] * k
    return loss, out


def clipped_share(rule, k, ell, adv, mask):
    """[B] clipped share per sequence (1/0 for sequence rules, the clipped-token share for ppo)."""
    loss, hp = band(rule, k)
    zeros = torch.zeros_like(ell)
    if loss == "fixed":
        _, stats = fixed_sequence_band(ell, zeros, adv, mask, agg="token-mean", global_tokens=None,
                                       global_seqs=None, horizon=None, **hp)
    else:
        _, stats = compute_policy_loss(loss, ell, zeros, adv, mask, "token-mean", **hp)
    c = stats["clipped"]
    if c.dim() == 2:  # token-level: the share of the sequence's tokens
        return (c & mask).sum(1).double() / mask.sum(1).clamp(min=1)
    return c.double()


def rates(rule, k, calls, bins):
    """(overall rate, {bin: (rate, n)}) pooled over every recorded sequence-update."""
    tot, n = 0.0, 0
    per = {b: [0.0, 0] for b in zip(bins[:-1], bins[1:])}
    for ell, adv, mask, L in calls:
        share = clipped_share(rule, k, ell, adv, mask)
        tot += float(share.sum())
        n += len(share)
        for (lo, hi), acc in per.items():
            sel = (L >= lo) & (L < hi)
            acc[0] += float(share[sel].sum())
            acc[1] += int(sel.sum())
    return tot / max(n, 1), {f"{lo}-{hi}": (a / c if c else float("nan"), c) for (lo, hi), (a, c) in per.items()}


def calibrate(rule, calls, bins, target, iters=40):
    lo, hi = math.log(1e-3), math.log(1e4)  # log k; the clip rate falls as k grows
    for _ in range(iters):
        mid = (lo + hi) / 2
        if rates(rule, math.exp(mid), calls, bins)[0] > target:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)  # the side whose clip rate is at most the target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe")
    p.add_argument("--target", type=float, default=0.15)
    p.add_argument("--bins", type=int, nargs="+", default=[1, 16, 32, 49])
    args = p.parse_args(argv)
    calls = load(args.probe)
    n = sum(len(c[1]) for c in calls)
    print(f"{len(calls)} off-policy calls, {n} sequence-updates; target clip rate {args.target}")
    out = {}
    for rule in RULES:
        k = calibrate(rule, calls, args.bins, args.target)
        overall, per = rates(rule, k, calls, args.bins)
        _, hp = band(rule, k)
        out[rule] = {key: v for key, v in hp.items() if key in SCALED}
        bins = ", ".join(f"{b}: {r:.2f} ({c})" for b, (r, c) in per.items())
        print(f"{rule:10s} k={k:.4g} band={ {key: float(f'{v:.4g}') for key, v in out[rule].items()} } "
              f"overall={overall:.3f}  per bin: {bins}")
    print(json.dumps(out))  # full precision: a lower ratio bound near 0 must not round to eps_low = 1


if __name__ == "__main__":
    main()
