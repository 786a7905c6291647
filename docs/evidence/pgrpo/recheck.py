"""Studies 2 and 2b recheck: the numbers the readings in README.md rest on, recomputed from the committed files.

    PYTHONPATH=src .venv/bin/python docs/evidence/pgrpo/recheck.py [--json OUT]

Reads, for study 2 (docs/evidence/pgrpo) and 2b (docs/evidence/pgrpo_binary): spec.yaml, comparison.json
and every run's metrics/<arm>-seed-<s>.jsonl; seconds on a CPU. Prints per study:
1. P-GRPO − GRPO on the held-out reward (all prompts, the four minorities together, each persona):
   the paired mean with its 95% t interval over seeds and mde80 (`fairalign.compare.stats.mde80`, the
   smallest true difference these seeds detect with 80% power at the observed paired sd);
2. the run times: Σ `time/wall_s` (train + evaluation per run) against the study's wall `wall_s`, and
   Σ `time/eval_s`;
3. GRPO's share of tied prompt groups (advantage 0), from its logged `advantage/std`: with one process
   and groups of G, a non-tied group's G advantages have sum of squares G − 1 and the batch's advantages
   have mean 0, so the batch's unbiased variance is (G − 1)·(non-tied groups)/(N − 1);
4. where P-GRPO used the persona's history: per persona, the step-presences (a step whose batch holds
   the persona: `reward/group/<persona>` logged) at which its samples were normalized by history rather
   than by the GRPO fallback, and the training batches in which the persona scored above 0 (both arms).
How 4 is reconstructed (the per-persona count is not logged): a persona's samples use its history when
it has ≥ `pgrpo_min_count` earlier samples and the history's std is above the guard's `min_std`
(`fairalign.algos.pgrpo`, rule `fallback`). The logged `pgrpo/<persona>/std` is the state after a step,
so the state before step t is the one logged at step t − 1. Every prompt brings G samples and the spec has
G ≥ pgrpo_min_count (checked), so one earlier presence gives enough samples. The reconstruction is
checked against the logged `pgrpo/history_frac` of every step: it must be 0 when no present persona
used its history, 1 when all did, and between the two bounds the prompt counts allow otherwise.
"""
import argparse
import json
from pathlib import Path

import yaml

from fairalign.compare.stats import mde80, mean_interval

from summarize import MINORITIES, derived  # the minority average as in the study's tables (same folder)

EVIDENCE = Path(__file__).resolve().parent.parent
MIN_STD = 1e-3  # the zero-variance guard's default, which both studies ran with


def rows_of(folder: Path, arm: str, seed) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics" / f"{arm}-seed-{seed}.jsonl").read_text().splitlines()]


def present(row: dict) -> list[str]:
    return [k[len("reward/group/"):] for k in row if k.startswith("reward/group/")]


def history_use(folder: Path, seeds, prompts_per_step: int) -> dict:
    """{persona: [step-presences normalized by history, step-presences, first appearances (cold start),
    guard presences where the persona's batch mean reward differs from its history's mean]}; the rest of
    the presences had a history without spread (the zero-variance guard). The last count is where the
    guard's rule mattered: at the others every sample equals the history's mean (exact for 0/1 rewards,
    where a history without spread is all 0s or all 1s), so `fallback` (a tied prompt group) and `floor`
    ((r − mean)/min_std) both give 0. Checked against history_frac."""
    out: dict = {}
    for seed in seeds:
        before: dict = {}  # the P-GRPO state logged at the previous step
        for row in rows_of(folder, "pgrpo", seed):
            here = present(row)
            used = [p for p in here if before.get(f"pgrpo/{p}/std", 0.0) > MIN_STD]
            for p in here:
                out.setdefault(p, [0, 0, 0, 0])
                out[p][0] += p in used
                out[p][1] += 1
                out[p][2] += f"pgrpo/{p}/std" not in before
                guard = f"pgrpo/{p}/std" in before and p not in used
                out[p][3] += guard and abs(row[f"reward/group/{p}"] - before[f"pgrpo/{p}/mean"]) > 1e-9
            prompts_using = row["pgrpo/history_frac"] * prompts_per_step  # each prompt: G samples
            lo, hi = len(used), prompts_per_step - (len(here) - len(used))
            consistent = (prompts_using < 1e-9) if not used else (lo - 1e-9 <= prompts_using <= hi + 1e-9)
            if not consistent:
                raise SystemExit(f"{folder.name} seed {seed} step {row['step']}: history_frac "
                                 f"{row['pgrpo/history_frac']} does not fit the reconstruction {used} of {here}")
            before = row
    return out


def interval(d: dict) -> str:
    if d["ci95"] is None or d["sd"] == 0:
        return f"{d['mean']:+.3f} (every seed equal)"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] p={d['p']:.2f}, mde80 ±{mde80(d['sd'], d['n']):.2f}"


def study(name: str) -> dict:
    folder = EVIDENCE / name
    spec = yaml.safe_load((folder / "spec.yaml").read_text())
    comp = json.loads((folder / "comparison.json").read_text())
    arms, seeds = comp["arms"], [str(s) for s in comp["seeds"]]
    rollout = spec["base"]["rollout"]
    g, prompts = rollout["generations"], rollout["prompts_per_step"]
    min_count = spec["arms"]["pgrpo"]["algo.pgrpo_min_count"]
    assert g >= min_count, "the reconstruction needs G >= pgrpo_min_count"
    runs = {a: {s: derived(comp["runs"][a][s]) for s in seeds} for a in arms}
    out: dict = {"differences": {}}
    print(f"## {name}: {len(seeds)} paired seeds, arms {', '.join(arms)}\n")

    print("1. pgrpo − grpo, held-out reward (95% t interval over seeds)")
    for m in ["heldout/reward", "heldout/minorities", "heldout/majority"] + [f"heldout/group/{p}" for p in MINORITIES]:
        d = mean_interval([runs["pgrpo"][s][m] - runs["grpo"][s][m] for s in seeds])
        d["mde80"] = mde80(d["sd"], d["n"])
        out["differences"][m] = d
        print(f"   {m:28s} {interval(d)}")

    wall = {(a, s): comp["runs"][a][s]["time/wall_s"] for a in arms for s in seeds}
    ev = {(a, s): comp["runs"][a][s]["time/eval_s"] for a in arms for s in seeds}
    out["time"] = {"sum_wall_s": sum(wall.values()), "study_wall_s": comp["wall_s"], "sum_eval_s": sum(ev.values()),
                   "run_wall_s": [min(wall.values()), max(wall.values())],
                   "run_eval_s": [min(ev.values()), max(ev.values())]}
    print(f"\n2. Σ time/wall_s over the {len(wall)} runs {sum(wall.values()):.0f} s (runs {min(wall.values()):.0f}–"
          f"{max(wall.values()):.0f} s); study wall_s {comp['wall_s']:.0f} s; Σ time/eval_s {sum(ev.values()):.0f} s "
          f"(runs {min(ev.values()):.1f}–{max(ev.values()):.1f} s)")
    for (a, s), w in sorted(wall.items()):
        print(f"   {a} seed {s}: wall {w:.0f} s, eval {ev[(a, s)]:.1f} s")

    tied = [1 - r["advantage/std"] ** 2 * (g * prompts - 1) / ((g - 1) * prompts)
            for s in seeds for r in rows_of(folder, "grpo", s)]
    out["grpo_tied_share"] = sum(tied) / len(tied)
    print(f"\n3. GRPO's tied prompt groups: {100 * out['grpo_tied_share']:.0f}% over {len(tied)} steps "
          f"({100 * min(tied):.0f}–{100 * max(tied):.0f}% per step)")

    use = history_use(folder, seeds, prompts)
    out["history_use"] = use
    minority = [sum(use.get(p, [0, 0, 0, 0])[i] for p in MINORITIES) for i in (0, 1, 2, 3)]
    print(f"\n4. P-GRPO step-presences normalized by the persona's history (checked against pgrpo/history_frac);"
          f" the others: first appearances (cold start) + histories without spread (the guard); of the guard's,"
          f" those where a sample differed from the history's mean (only there would zero_std=floor have given"
          f" other advantages than fallback)")
    for p, (k, n, first, differs) in sorted(use.items()):
        print(f"   {p:14s} {k}/{n}  (first appearances {first}, guard {n - k - first}, of which a sample differed "
              f"{differs})")
    print(f"   four minorities {minority[0]}/{minority[1]}  (first appearances {minority[2]}, "
          f"guard {minority[1] - minority[0] - minority[2]}, of which a sample differed {minority[3]})")
    fracs = {}
    for s in seeds:
        for r in rows_of(folder, "pgrpo", s):
            fracs.setdefault(r["step"], []).append(r["pgrpo/history_frac"])
    out["history_frac_by_step"] = {k: [min(v), max(v)] for k, v in sorted(fracs.items())}
    steps = out["history_frac_by_step"].items()
    print("   pgrpo/history_frac per step, min–max over seeds: " +
          ", ".join(f"step {k} {100 * lo:.0f}–{100 * hi:.0f}%" for k, (lo, hi) in steps))
    scored = {}
    for a in ("grpo", "pgrpo"):
        for s in seeds:
            for r in rows_of(folder, a, s):
                for p in present(r):
                    scored.setdefault(a, {}).setdefault(p, [0, 0])
                    scored[a][p][0] += r[f"reward/group/{p}"] > 0
                    scored[a][p][1] += 1
    out["batches_scoring_above_0"] = scored
    for a, per in scored.items():
        print(f"   {a}: training batches in which the persona's mean reward was > 0: " +
              ", ".join(f"{p} {k}/{n}" for p, (k, n) in sorted(per.items())))
    print()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args(argv)
    out = {name: study(name) for name in ("pgrpo", "pgrpo_binary")}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
