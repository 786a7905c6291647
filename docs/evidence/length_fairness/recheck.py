"""Study 1 recheck: the numbers the reading in README.md rests on, recomputed from the committed files.

    PYTHONPATH=src .venv/bin/python docs/evidence/length_fairness/recheck.py [--json OUT]

Reads comparison.json (per-seed metrics of every run) and metrics/<arm>-seed-<s>.jsonl (per-step clip
counts per length bin) in this folder; seconds on a CPU. Prints:
1. per arm: the realized overall clip rate of the off-policy sequence-updates (the calibration aimed
   at 0.15); the per-seed LRE beside the LRE that perfectly flat clipping gives from sampling noise
   alone (`fairalign.diagnostics.lre_noise_floor` at each seed's own bin counts and overall rate,
   exact); the LRE of the counts pooled over seeds beside its floor (seeded simulation); the ratio of
   the clip rates of the longest and the shortest bin with a 95% Wald interval
   (`extreme_bin_log_ratio`; unlike the LRE it does not shrink with the overall rate);
2. FSPO's paired per-seed LRE differences against every other arm (95% t interval over seeds);
3. Fisher's exact test (two-sided, hypergeometric, computed here) of FSPO's shortest against its
   longest bin;
4. Holm's correction over the study's 21 tests: the one-sample test of each arm's length slope (5)
   and, for each of the 4 arms against GSPO, the paired tests of the per-seed LRE, the length slope,
   the clip rate of the shortest bin and the held-out reward (16);
5. how far training moved the policy: each arm's median `approx_kl` over its steps, and the held-out
   reward's paired differences against GSPO with mde80 (`fairalign.compare.stats.mde80`: the smallest
   true difference 3 seeds detect with 80% power at the observed paired sd).
Simplifications: a sequence is updated once or twice off-policy, so the pooled sequence-updates are
not independent; Fisher's test and the Wald interval treat them as if they were (their p and width
are, if anything, too small). Token PPO counts a sequence by its share of clipped tokens; its
fractional counts are used as counts.
"""
import argparse
import json
import math
from pathlib import Path

import statistics

from fairalign.compare.stats import holm, mde80, mean_interval
from fairalign.diagnostics import (extreme_bin_log_ratio, lre_floor_from_pooled_counts, lre_from_pooled_counts,
                                   pooled_clip_counts)

from summarize import metrics_file, slope  # the study's own slope and file lookup (same folder)

HERE = Path(__file__).resolve().parent


def counts_of(arm: str, seeds) -> tuple[dict, dict]:
    """({bin: sequence-updates}, {bin: clipped weight}) pooled over the given seeds' steps."""
    rows = []
    for s in seeds:
        rows += [json.loads(line) for line in metrics_file(HERE, arm, s).read_text().splitlines()]
    return pooled_clip_counts(rows)


def log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_two_sided(k1: int, n1: int, k2: int, n2: int) -> float:
    """Fisher's exact test of k1/n1 vs k2/n2: the total probability, given the margins, of every table
    at most as likely as the observed one (the usual two-sided p)."""
    total = k1 + k2

    def prob(x: int) -> float:  # P(x of the `total` clipped fall in the first group)
        return math.exp(log_choose(n1, x) + log_choose(n2, total - x) - log_choose(n1 + n2, total))

    observed = prob(k1)
    return sum(p for x in range(max(0, total - n2), min(total, n1) + 1)
               if (p := prob(x)) <= observed * (1 + 1e-7))


def interval(d: dict) -> str:
    lo, hi = d["ci95"]
    return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p={d['p']:.3f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    comp = json.loads((HERE / "comparison.json").read_text())
    arms, seeds, runs, base = comp["arms"], comp["seeds"], comp["runs"], comp["baseline"]
    out: dict = {"arms": {}, "fspo_lre_differences": {}, "holm": []}

    print("1. Per arm (sequence-updates pooled over 3 seeds x 4 steps x 3 off-policy updates)\n")
    print("| arm | overall clip rate | per-seed LRE | its flat-clipping floor (mean over seeds) | "
          "pooled LRE | its floor, mean (q95) | rate longest / shortest bin [95% CI] |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        per_seed, floors = [], []
        for s in seeds:
            c, k = counts_of(arm, [s])
            per_seed.append(lre_from_pooled_counts(c, k))
            floors.append(lre_floor_from_pooled_counts(c, k)["mean"])
        c, k = counts_of(arm, seeds)
        pooled_floor = lre_floor_from_pooled_counts(c, k)
        ratio = extreme_bin_log_ratio(c, k)
        row = {"overall_rate": sum(k.values()) / sum(c.values()), "lre_per_seed": per_seed,
               "floor_per_seed": floors, "lre_pooled": lre_from_pooled_counts(c, k), "floor_pooled": pooled_floor,
               "long_over_short": {"ratio": math.exp(ratio["log_ratio"]),
                                   "ci95": [math.exp(v) for v in ratio["ci95"]]},
               "extreme_bins": {b: [k.get(b, 0.0), c[b]] for b in (ratio["short"], ratio["long"])}}
        assert all(abs(a - runs[arm][str(s)]["lre/pooled"]) < 1e-9 for a, s in zip(per_seed, seeds))  # as compare
        out["arms"][arm] = row
        lo, hi = row["long_over_short"]["ci95"]
        print(f"| {arm} | {row['overall_rate']:.3f} | {sum(per_seed) / len(per_seed):.3f} | "
              f"{sum(floors) / len(floors):.3f} | {row['lre_pooled']:.3f} | "
              f"{pooled_floor['mean']:.3f} ({pooled_floor['q95']:.3f}) | "
              f"{row['long_over_short']['ratio']:.2f} [{lo:.2f}, {hi:.2f}] |")

    print("\n2. FSPO's per-seed LRE, paired differences (95% t interval over 3 seeds, p of the paired t-test)\n")
    for a, b in [("fspo", "gspo"), ("fspo", "ppo"), ("fspo", "fixed_seq"), ("fspo_kl", "fspo")]:
        d = mean_interval([runs[a][str(s)]["lre/pooled"] - runs[b][str(s)]["lre/pooled"] for s in seeds])
        out["fspo_lre_differences"][f"{a} - {b}"] = d
        print(f"  {a} - {b}: {interval(d)}")

    short, long_ = out["arms"]["fspo"]["extreme_bins"].values()
    k1, n1, k2, n2 = (int(round(v)) for v in (*short, *long_))
    p = fisher_two_sided(k1, n1, k2, n2)
    out["fspo_fisher"] = {"short": [k1, n1], "long": [k2, n2], "p": p}
    print(f"\n3. FSPO (drift none), shortest vs longest bin: {k1}/{n1} vs {k2}/{n2} clipped "
          f"({k1 / n1:.3f} vs {k2 / n2:.3f}), Fisher exact two-sided p = {p:.3f}")

    tests = [(f"length slope, {arm}", mean_interval([slope(runs[arm][str(s)]) for s in seeds])["p"]) for arm in arms]
    for arm in arms[1:]:
        d = comp["differences"][arm]
        dslope = mean_interval([slope(runs[arm][str(s)]) - slope(runs[base][str(s)]) for s in seeds])
        tests += [(f"{arm} - {base}, per-seed LRE", d["lre/pooled"]["p"]),
                  (f"{arm} - {base}, length slope", dslope["p"]),
                  (f"{arm} - {base}, clip rate 1-24", d["clip_rate/len/1-24"]["p"]),
                  (f"{arm} - {base}, held-out reward", d["heldout/reward"]["p"])]
    adjusted = holm([t[1] for t in tests])
    survive = [name for (name, _), a in zip(tests, adjusted) if a < 0.05]
    out["holm"] = [{"test": n, "p": p_, "p_holm": a} for (n, p_), a in zip(tests, adjusted)]
    print(f"\n4. Holm over the study's {len(tests)} tests: {len(survive)} with p_holm < 0.05\n")
    for (name, p_), a in zip(tests, adjusted):
        print(f"  {name:36s} p={p_:.4f}  p_holm={a:.3f}")

    print("\n5. Median approx_kl over every step, and held-out reward minus GSPO's [95% CI] (mde80)\n")
    out["heldout"] = {}
    for arm in arms:
        rows = [json.loads(line) for s in seeds for line in metrics_file(HERE, arm, s).read_text().splitlines()]
        kl = statistics.median(r["approx_kl"] for r in rows)
        d = comp["differences"][arm]["heldout/reward"] if arm != base else None
        out["heldout"][arm] = {"median_approx_kl": kl, "difference": d and {**d, "mde80": mde80(d["sd"], d["n"])}}
        diff = "" if d is None else f"; {interval(d)} (mde80 {mde80(d['sd'], d['n']):.3f})"
        print(f"  {arm}: median approx_kl {kl:.4f}{diff}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
