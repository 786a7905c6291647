"""Tables for docs/evidence/pgrpo/README.md (studies 2 and 2b) from a finished study's comparison.json.

    .venv/bin/python docs/evidence/pgrpo/summarize.py docs/evidence/pgrpo/comparison.json

Adds what `fairalign compare` does not print: the held-out reward of the four minority personas together
(mean of their per-group rewards, per run) and of the majority, with paired differences against the first
arm (mean, 95% t interval over seeds, p). The interval's half-width is not the smallest difference the
study could detect: that is mde80 (`fairalign.compare.stats.mde80`, docs/compare.md).
"""
import json
import sys

from fairalign.compare.stats import mean_interval

MINORITIES = ("detailed_list", "formal", "gardener", "casual")


def derived(run: dict) -> dict:
    out = dict(run)
    vals = [run.get(f"heldout/group/{g}") for g in MINORITIES]
    if all(v is not None for v in vals):
        out["heldout/minorities"] = sum(vals) / len(vals)
    if "heldout/group/concise" in run:
        out["heldout/majority"] = run["heldout/group/concise"]
    return out


def fmt(iv):
    lo, hi = iv["ci95"]
    return f"{iv['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={iv['p']:.2f}"


def main(path: str) -> None:
    c = json.load(open(path))
    arms, seeds, base = c["arms"], [str(s) for s in c["seeds"]], c["arms"][0]
    runs = {a: {s: derived(c["runs"][a][s]) for s in seeds} for a in arms}
    metrics = ["heldout/reward", "heldout/majority", "heldout/minorities"] + [f"heldout/group/{g}" for g in
                                                                              ("concise",) + MINORITIES]
    print(f"{len(seeds)} paired seeds; mean over seeds, and arm − {base} (95% t interval, p)\n")
    print("| metric | " + " | ".join(arms) + " | " + " | ".join(f"{a} − {base}" for a in arms[1:]) + " |")
    print("|---" * (2 * len(arms)) + "|")
    for m in metrics:
        cells = [f"{mean_interval([runs[a][s][m] for s in seeds])['mean']:.3f}" for a in arms]
        diffs = [fmt(mean_interval([runs[a][s][m] - runs[base][s][m] for s in seeds])) for a in arms[1:]]
        print(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(diffs) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/evidence/pgrpo/comparison.json")
