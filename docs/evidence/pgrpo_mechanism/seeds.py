"""Seed count of the P-GRPO mechanism study from its pilot: the paired sd of the primary difference.

    python docs/evidence/pgrpo_mechanism/seeds.py runs/study-pgrpo-mechanism [--delta 0.10]

Primary metric (pre-registered, README.md): each run's minority held-out reward — the mean of
heldout/group/<g> over the minority personas (default: casual, detailed_list, formal, gardener), read from
the runs' eval.json — as the paired difference `--arm` (pgrpo) − `--baseline` (batch_joint) per seed.
With the pilot's sd of those differences, the study needs the smallest n with
    mde80(n) = (t_{0.975, n−1} + t_{0.80, n−1}) · sd / √n  <=  delta,
the smallest true difference a paired t-test of n seeds detects with 80% power (two-sided 5%). Prints the
pilot's values, n, and the command that extends the study to n seeds (finished runs are reused).
Simplification: the sd is the pilot's point estimate (with 3 seeds it is itself uncertain; --sd-factor
inflates it, e.g. 1.2, for a margin).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fairalign.compare.stats import t_quantile

MINORITIES = ("casual", "detailed_list", "formal", "gardener")


def minority_reward(run_dir: Path, groups) -> float | None:
    """Mean of the run's held-out reward over `groups` (None: not evaluated, or a group missing)."""
    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    by_group = json.loads(path.read_text()).get("by_group", {})
    if any(g not in by_group for g in groups):
        return None
    return sum(by_group[g] for g in groups) / len(groups)


def paired(study_dir: Path, arm: str, baseline: str, groups) -> dict[int, float]:
    """seed -> primary difference, for every seed evaluated in both arms."""
    out = {}
    for seed_dir in sorted((study_dir / arm).glob("seed-*")):
        seed = int(seed_dir.name.split("-", 1)[1])
        a, b = minority_reward(seed_dir, groups), minority_reward(study_dir / baseline / seed_dir.name, groups)
        if a is not None and b is not None:
            out[seed] = a - b
    return out


def mde80(sd: float, n: int) -> float:
    return (t_quantile(0.975, n - 1) + t_quantile(0.80, n - 1)) * sd / math.sqrt(n)


def seeds_needed(sd: float, delta: float, max_n: int = 200) -> int | None:
    """Smallest n >= 2 with mde80(n) <= delta (None: more than max_n)."""
    for n in range(2, max_n + 1):
        if mde80(sd, n) <= delta:
            return n
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study_dir", type=Path)
    p.add_argument("--delta", type=float, default=0.10, help="difference to detect with 80%% power")
    p.add_argument("--arm", default="pgrpo")
    p.add_argument("--baseline", default="batch_joint")
    p.add_argument("--groups", nargs="+", default=list(MINORITIES))
    p.add_argument("--sd-factor", type=float, default=1.0)
    p.add_argument("--spec", default="docs/evidence/pgrpo_mechanism/spec.yaml")
    args = p.parse_args(argv)
    diffs = paired(args.study_dir, args.arm, args.baseline, args.groups)
    if len(diffs) < 2:
        print(f"seeds.py: need >= 2 seeds evaluated in both '{args.arm}' and '{args.baseline}' under "
              f"{args.study_dir}, found {len(diffs)}", file=sys.stderr)
        return 2
    vals = list(diffs.values())
    n0 = len(vals)
    mean = sum(vals) / n0
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n0 - 1)) * args.sd_factor
    n = seeds_needed(sd, args.delta)
    # the differences themselves are not printed: the decision rests on their spread alone
    print(f"pilot: {n0} seeds {sorted(diffs)}; {args.arm} − {args.baseline} minority held-out reward: paired sd "
          f"{sd:.4f}{f' (x{args.sd_factor})' if args.sd_factor != 1 else ''}; mde80 at {n0} seeds {mde80(sd, n0):.3f}")
    if n is None:
        print(f"more than 200 seeds needed for mde80 <= {args.delta}")
        return 1
    print(f"seeds for mde80 <= {args.delta}: {n} (mde80 {mde80(sd, n):.3f})")
    print(f"fairalign compare {args.spec} seeds={max(n, n0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
