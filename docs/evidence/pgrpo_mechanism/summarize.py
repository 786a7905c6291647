"""The tables of README.md's "Result" from the study's committed comparison.json (study 5, issue 22 §2).

    PYTHONPATH=src .venv/bin/python docs/evidence/pgrpo_mechanism/summarize.py docs/evidence/pgrpo_mechanism/results/comparison.json

Prints (1) each arm's mean over seeds, the untrained starting policy first, for the primary metric (the four
minority personas' held-out reward), the overall and majority held-out reward, each minority persona and the
mean training reward; (2) the paired differences against batch_joint that `fairalign compare` computed (95% t
interval over seeds, mde80, p, and Holm's p_adj for the primary metric); (3) pgrpo − grpo, which compare does
not print (its differences are against the first arm), from the same per-run values with the same statistics
(`fairalign.compare.stats.paired_differences`). Nothing here is fitted or tuned: it only reads the file.
"""
import json
import sys

from fairalign.compare.stats import paired_differences

PRIMARY = "heldout/minorities"
ROWS = (PRIMARY, "heldout/reward", "heldout/group/concise", "heldout/group/casual", "heldout/group/detailed_list",
        "heldout/group/formal", "heldout/group/gardener", "train/reward_mean")


def interval(d: dict, adj: bool = False) -> str:
    lo, hi = d["ci95"]
    text = f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]  mde80 {d['mde80']:.3f}  p {d['p']:.3f}"
    return text + (f"  p_adj {d['p_adj']:.3f}" if adj and d.get("p_adj") is not None else "")


def main(path: str) -> None:
    c = json.load(open(path))
    base = c["baseline"]
    seeds = [str(s) for s in c["seeds"]]
    print(f"{len(seeds)} seeds {', '.join(seeds)}; baseline arm {base}; primary {c['primary']}; "
          f"{c.get('primary_status', '')}")
    untrained = c["untrained"]["runs"]  # seed -> metrics (the starting policy, evaluated once per seed)
    arms = {"untrained": untrained, **c["runs"]}
    print("\n| metric | " + " | ".join(arms) + " |")
    print("|---|" + "---|" * len(arms))
    for m in ROWS:
        cells = []
        for runs in arms.values():
            vals = [runs[s][m] for s in seeds if s in runs and runs[s].get(m) is not None]
            cells.append(f"{sum(vals) / len(vals):.3f}" if vals else "—")
        print(f"| {m} | " + " | ".join(cells) + " |")
    for arm, diffs in c["differences"].items():
        print(f"\n{arm} − {base} (paired over seeds):")
        for m in ROWS:
            if m in diffs:
                print(f"  {m:28s} {interval(diffs[m], adj=m in c['primary'])}")
    if {"pgrpo", "grpo"} <= set(c["runs"]):
        d = paired_differences(c["runs"]["pgrpo"], c["runs"]["grpo"])
        print("\npgrpo − grpo (paired over seeds; secondary, not in compare's output):")
        for m in ROWS:
            if m in d:
                print(f"  {m:28s} {interval(d[m])}")
    print("\nper seed, primary metric (heldout/minorities):")
    print("| seed | " + " | ".join(arms) + " | pgrpo − batch_joint |")
    print("|---|" + "---|" * (len(arms) + 1))
    for s in seeds:
        vals = [arms[a].get(s, {}).get(PRIMARY) for a in arms]
        diff = c["runs"]["pgrpo"][s][PRIMARY] - c["runs"][base][s][PRIMARY]
        print(f"| {s} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in vals) + f" | {diff:+.3f} |")
    wall = sum(r.get("time/wall_s", 0.0) for runs in c["runs"].values() for r in runs.values())
    print(f"\ntraining + evaluation wall time of the {sum(len(r) for r in c['runs'].values())} runs: "
          f"{wall / 3600:.2f} h (time/wall_s summed; the untrained evaluations apart)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/evidence/pgrpo_mechanism/results/comparison.json")
