"""Why the calibration to one clip rate did not hold: each rule's clip rate per training step, on the probe
(at the calibrated band) and in the study's runs (added after the runs; the README's "Result" says so).

    PYTHONPATH=src .venv/bin/python docs/evidence/fspo_cosine/clip_rate_by_step.py docs/evidence/fspo_cosine/results

The probe (3 steps) and the runs (12 steps) start from the same policy with the same settings. If the
clip rate falls over the steps, a band calibrated to the probe's pooled rate clips less than that over a
longer run: the probe weights step 1 by a third, a 12-step run by a twelfth. This script prints both.
Simplifications: the probe's lines are split into steps by counting sequence-updates (its settings give
the same number of off-policy sequence-updates every step: prompts × generations × (epochs × minibatches
− 1) / minibatches); the probe's clip decision is calibrate.py's own (fairalign's registered losses).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "length_fairness"))
import calibrate  # noqa: E402

from fairalign.report import data as D  # noqa: E402


def band_scale(rule: str, band: dict) -> float:
    """The k calibrate.py found for the rule, recovered from the written band (its upper bound)."""
    _, default = calibrate.RULES[rule]
    key = next(k for k in ("c_high", "clip_high", "eps_high") if k in default)
    if key == "c_high":
        return band[key] / default[key]
    return math.log1p(band[key]) / math.log1p(default[key])


def probe_steps(probe: Path, per_step: int) -> list[list]:
    """The probe's recorded calls grouped into training steps of `per_step` sequence-updates each."""
    steps, current, n = [], [], 0
    for call in calibrate.load(probe):
        current.append(call)
        n += len(call[1])
        if n >= per_step:
            steps.append(current)
            current, n = [], 0
    if current:
        steps.append(current)
    return steps


def run_step_rates(run: Path) -> list[float]:
    """Share of each step's off-policy sequence-updates clipped, from the run's metrics.jsonl."""
    by_step = {r["step"]: r for r in D.load_rows(run) if isinstance(r.get("step"), int)}
    rates = []
    for s in sorted(by_step):
        counts, clipped = D.pooled_clip_counts([by_step[s]])
        if sum(counts.values()) > 0:
            rates.append(sum(clipped.values()) / sum(counts.values()))
    return rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="a folder with bands.json, probe/ and ARM/seed-S/ (run.py's or results/)")
    args = p.parse_args(argv)
    bands = json.loads((args.study / "bands.json").read_text())
    cfg = D.read_yaml(args.study / "probe" / "config.yaml")
    r, a = cfg["rollout"], cfg["algo"]
    updates = a["ppo_epochs"] * a["minibatches"]
    per_step = r["prompts_per_step"] * r["generations"] * a["ppo_epochs"] * (updates - 1) // updates
    steps = probe_steps(args.study / "probe" / "probe.jsonl", per_step)
    bins = bands["bins"]
    print(f"clip rate per step (share of off-policy sequence-updates clipped); probe: {len(steps)} steps of "
          f"{per_step} at the calibrated band (target {bands['target']})")
    for rule, band in bands["bands"].items():
        k = band_scale(rule, band)
        probe_rates = [calibrate.rates(rule, k, calls, bins)[0] for calls in steps]
        runs = [run_step_rates(d) for d in sorted((args.study / rule).glob("seed-*"))]
        n_steps = max((len(x) for x in runs), default=0)
        mean_by_step = [sum(x[i] for x in runs if len(x) > i) / sum(1 for x in runs if len(x) > i)
                        for i in range(n_steps)]
        print(f"  {rule:10s} probe " + " ".join(f"{x:.3f}" for x in probe_rates)
              + f" (pooled {sum(probe_rates) / len(probe_rates):.3f})")
        print(f"  {'':10s} runs  " + " ".join(f"{x:.3f}" for x in mean_by_step)
              + f" (mean over {len(runs)} seeds; steps 1-3 {sum(mean_by_step[:3]) / 3:.3f}, "
                f"steps 4-{n_steps} {sum(mean_by_step[3:]) / max(n_steps - 3, 1):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
