"""Tables for docs/evidence/length_fairness/README.md from a finished study.

    .venv/bin/python docs/evidence/length_fairness/summarize.py runs/study-length-fairness [--json OUT]
    .venv/bin/python docs/evidence/length_fairness/summarize.py docs/evidence/length_fairness   # the committed copy

Per arm, from every run's metrics.jsonl: the clip rate per length bin pooled over every seed and step
(sequence units; counts in brackets), the overall pooled clip rate (what calibrate.py aimed at 0.15)
and the LRE of the pooled counts. Per arm, from comparison.json, with the 95% t interval over seeds:
the per-seed pooled LRE, the per-seed **length slope** (clip rate of the shortest bin minus that of
the longest: > 0 = short responses clipped more, < 0 = long ones), and the held-out reward; then the
paired differences of these against the first arm. The slope is computed here from the per-seed
`clip_rate/len/<bin>` of comparison.json, so it is paired and has an interval like every metric.
"""
import argparse
import json
from pathlib import Path

from fairalign.compare.stats import mean_interval
from fairalign.diagnostics import lre_from_pooled_counts


def metrics_file(root: Path, arm: str, seed) -> Path:
    """The run's metrics.jsonl in a study folder, or its copy in the committed evidence (metrics/)."""
    run = root / arm / f"seed-{seed}" / "metrics.jsonl"
    return run if run.exists() else root / "metrics" / f"{arm}-seed-{seed}.jsonl"


def pooled(files):
    counts, clipped = {}, {}
    for f in files:
        for line in f.read_text().splitlines():
            row = json.loads(line)
            for k, v in row.items():
                if k.startswith("clip_count/len/") and v is not None:
                    counts[k[15:]] = counts.get(k[15:], 0.0) + v
                elif k.startswith("clip_clipped/len/") and v is not None:
                    clipped[k[17:]] = clipped.get(k[17:], 0.0) + v
    return counts, clipped


def bin_order(b):
    return int(b.split("-")[0])


def slope(run: dict):
    bins = sorted((k[len("clip_rate/len/"):] for k in run if k.startswith("clip_rate/len/")), key=bin_order)
    if len(bins) < 2:
        return None
    return run[f"clip_rate/len/{bins[0]}"] - run[f"clip_rate/len/{bins[-1]}"]


def fmt(s, signed=False):
    if s is None:
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    if s.get("ci95") is None:
        return f.format(s["mean"])
    lo, hi = s["ci95"]
    p = f", p={s['p']:.2f}" if signed and s.get("p") is not None else ""
    return f"{f.format(s['mean'])} [{f.format(lo)}, {f.format(hi)}]{p}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--json", help="also write the derived numbers here")
    args = ap.parse_args(argv)
    root = Path(args.study)
    comp = json.loads((root / "comparison.json").read_text())
    arms, seeds, runs = comp["arms"], comp["seeds"], comp["runs"]
    base = comp["baseline"]
    out = {"arms": {}, "differences": {}}
    print(f"{len(seeds)} paired seeds; 95% t intervals over seeds\n")
    print("| arm | clip rate per bin (pooled over seeds and steps; n sequence-updates) | overall | "
          "LRE of pooled counts | per-seed LRE | length slope (short − long) | held-out reward |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        c, k = pooled([metrics_file(root, arm, s) for s in seeds])
        bins = sorted(c, key=bin_order)
        rates = ", ".join(f"{b}: {k.get(b, 0) / c[b]:.3f} ({int(c[b])})" for b in bins)
        overall = sum(k.values()) / sum(c.values())
        per_seed = {s: runs[arm][str(s)] for s in seeds}
        sl = [slope(r) for r in per_seed.values() if slope(r) is not None]
        summ = comp["arms_summary"][arm]
        row = {"pooled_rate": {b: k.get(b, 0) / c[b] for b in bins}, "pooled_n": {b: c[b] for b in bins},
               "overall": overall, "lre_pooled_counts": lre_from_pooled_counts(c, k),
               "lre_per_seed": summ.get("lre/pooled"), "slope": mean_interval(sl) if sl else None,
               "heldout": summ.get("heldout/reward")}
        out["arms"][arm] = row
        print(f"| {arm} | {rates} | {overall:.3f} | {row['lre_pooled_counts']:.3f} | {fmt(row['lre_per_seed'])} | "
              f"{fmt(row['slope'], signed=True)} | {fmt(row['heldout'])} |")
    print(f"\nPaired differences against {base} (mean [95% CI], p; n = {len(seeds)} seeds):\n")
    print("| arm | Δ per-seed LRE | Δ length slope | Δ held-out reward | Δ clip rate per bin |")
    print("|---|---|---|---|---|")
    for arm in arms[1:]:
        d = comp["differences"][arm]
        ds = [slope(runs[arm][str(s)]) - slope(runs[base][str(s)]) for s in seeds
              if slope(runs[arm][str(s)]) is not None and slope(runs[base][str(s)]) is not None]
        dslope = mean_interval(ds) if ds else None
        per_bin = "; ".join(f"{m.split('/')[-1]}: {fmt(d[m], True)}"
                            for m in sorted((m for m in d if m.startswith("clip_rate/len/")),
                                            key=lambda m: bin_order(m.split("/")[-1])))
        out["differences"][arm] = {"lre": d.get("lre/pooled"), "slope": dslope, "heldout": d.get("heldout/reward")}
        print(f"| {arm} | {fmt(d.get('lre/pooled'), True)} | {fmt(dslope, True)} | "
              f"{fmt(d.get('heldout/reward'), True)} | {per_bin} |")
    print(f"\nstudy wall time: {comp.get('wall_s', float('nan')) / 60:.1f} min")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
