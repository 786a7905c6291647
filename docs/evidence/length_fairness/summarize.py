"""Tables for docs/evidence/length_fairness/README.md from a finished study.

    .venv/bin/python docs/evidence/length_fairness/summarize.py runs/study-length-fairness

Per arm: clip rate per length bin pooled over every seed and step (sequences; counts in brackets),
the LRE of those pooled counts, and from comparison.json the per-seed pooled LRE and held-out reward
(mean with the 95% t interval over seeds) and their paired differences against the first arm.
"""
import json
import sys
from pathlib import Path

from fairalign.diagnostics import lre_from_pooled_counts


def pooled(run_dirs):
    counts, clipped = {}, {}
    for d in run_dirs:
        for line in (d / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            for k, v in row.items():
                if k.startswith("clip_count/len/") and v is not None:
                    counts[k[15:]] = counts.get(k[15:], 0.0) + v
                elif k.startswith("clip_clipped/len/") and v is not None:
                    clipped[k[17:]] = clipped.get(k[17:], 0.0) + v
    return counts, clipped


def fmt(s):
    if s is None:
        return "—"
    if s.get("ci95") is None:
        return f"{s['mean']:.3f}"
    lo, hi = s["ci95"]
    return f"{s['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def main(study: str) -> None:
    root = Path(study)
    comp = json.loads((root / "comparison.json").read_text())
    arms, seeds = comp["arms"], comp["seeds"]
    bins = None
    print("| arm | " + " | ".join(["clip rate per bin (pooled, n sequences)", "LRE of pooled counts",
                                     "pooled LRE per seed", "held-out reward"]) + " |")
    print("|---|---|---|---|---|")
    for arm in arms:
        c, k = pooled([root / arm / f"seed-{s}" for s in seeds])
        bins = sorted(c, key=lambda b: int(b.split("-")[0]))
        rates = ", ".join(f"{b}: {k.get(b, 0) / c[b]:.2f} ({int(c[b])})" for b in bins)
        summ = comp["arms_summary"][arm]
        print(f"| {arm} | {rates} | {lre_from_pooled_counts(c, k):.3f} | {fmt(summ.get('lre/pooled'))} | "
              f"{fmt(summ.get('heldout/reward'))} |")
    print()
    base = comp["baseline"]
    print(f"Paired differences against {base} (mean [95% CI], p, n seeds):")
    print()
    print("| arm | Δ pooled LRE | Δ held-out reward | Δ clip rate per bin |")
    print("|---|---|---|---|")
    for arm in arms[1:]:
        d = comp["differences"][arm]

        def cell(m):
            s = d.get(m)
            return "—" if s is None else f"{fmt(s)}, p={s['p']:.3f}" if s.get("p") is not None else fmt(s)
        per_bin = "; ".join(f"{m.split('/')[-1]}: {fmt(d[m])}" for m in sorted(d) if m.startswith("clip_rate/len/"))
        print(f"| {arm} | {cell('lre/pooled')} | {cell('heldout/reward')} | {per_bin} |")
    print()
    print(f"study wall time: {comp.get('wall_s', float('nan')) / 60:.1f} min")


if __name__ == "__main__":
    main(sys.argv[1])
