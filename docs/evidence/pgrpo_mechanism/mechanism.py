"""The mechanism check of the P-GRPO study (issue 22), run before training: on each seed's step-1 batch
(the batch every arm of the study trains on first: same policy, prompts and sampling seed), the share of
minority samples that get a positive advantage under each arm's estimator, plus P-GRPO with the std floor.

    python docs/evidence/pgrpo_mechanism/mechanism.py docs/evidence/pgrpo_mechanism/spec.yaml \
        [--history-prompts 4] [--floor 0.1] [--out FILE] [KEY=VALUE ...]
        [--during ARM [--block 5] [--from-step 1] [--train]]

KEY=VALUE pairs are config overrides of every run, as for `fairalign compare` (`seeds=[0,1]` picks seeds).
Minorities: every preference group but the largest share of the task's training mix (personas: all but
`concise`). For each seed and estimator it reports the share of minority samples with A > 0, with A = 0
(silent: no gradient) and per minority group, and the batch's reward mean/std and per-group means.

P-GRPO is read twice, because at step 1 its history is empty:
- `<arm>@step1`: the estimator exactly as the run builds it, on the step-1 batch (cold start: every
  sample gets its prompt group's GRPO statistics, so it equals `grpo`);
- `<arm>`: the same estimator after a history of each preference group's rewards on its first
  `--history-prompts` training prompts (not in the step-1 batch) x G generations, sampled from the same
  starting policy: what P-GRPO normalizes by once `min_count` is reached while the policy is still close
  to where it started. `pgrpo_floor` is that arm with zero_std=floor and min_std=--floor (added unless an
  arm already uses the floor).

`--during ARM` reads the check along a training run instead (no sampling): each seed's finished run of
ARM (normally the control, `grpo`) logged every sample of every step (the spec's `log.samples_per_step`
>= prompts_per_step x generations), and every estimator is applied to each logged step batch in order,
P-GRPO folding each step into its history as a run does. So the shares are those on the batches the
control trained on, step by step, with the P-GRPO history that trajectory builds: whether the mechanism
becomes first-order as training separates the personas (the majority learns first). `--train` first
trains the seeds' runs of ARM that are missing, exactly as `fairalign compare` would (it reuses them). It writes
<output_dir>/mechanism_during_ARM.json (per seed and step: rewards, groups, prompt index and every
estimator's advantages) and prints the shares per block of steps (--block).

Simplifications: the history is sampled once per seed with its own generation seed (not a study step's),
so it is a sample of the starting policy's reward distribution per group, not the exact history a run
builds; a group with no sample in the step-1 batch has no share (null).
Writes the whole result (the step-1 rewards, groups and prompt index included, so every share can be
recomputed) to --out (default: <study output_dir>/mechanism.json) and prints one table.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

from fairalign.algos import LOCAL, build_estimator
from fairalign.compare.spec import load_study
from fairalign.config.methods import estimator_hparams, resolve_estimator
from fairalign.train.trainer import Trainer

HISTORY_SEED = 999_983  # the history's generation seed offset (no study step uses it)


def minority_groups(task) -> list[str]:
    """Every preference group of the training mix but the one with the largest share."""
    shares = task.info.get("shares") or task.group_counts("train")
    if len(shares) < 2:
        raise ValueError(f"task {task.name!r} has one preference group: no minority to check")
    top = max(shares, key=lambda g: shares[g])
    return [str(g) for g in shares if g != top and shares[g] > 0]


def shares(adv: torch.Tensor, groups: list[str], minorities: list[str]) -> dict:
    """Share of samples with A > 0 (and A == 0) among the minorities, the majority and each minority."""
    def part(sel: list[int]) -> dict | None:
        if not sel:
            return None
        a = adv[sel]
        return {"n": len(sel), "pos": float((a > 0).double().mean()), "zero": float((a == 0).double().mean())}

    mino = [i for i, g in enumerate(groups) if g in minorities]
    return {"minority": part(mino), "majority": part([i for i, g in enumerate(groups) if g not in minorities]),
            "by_group": {g: part([i for i, x in enumerate(groups) if x == g]) for g in minorities}}


def history_examples(trainer, per_group: int, exclude: set) -> list[dict]:
    """The first `per_group` training examples of every preference group whose prompt is not in `exclude`."""
    out, count = [], {}
    for ex in trainer.train_examples:
        g = str(ex.get("group", "all"))
        if count.get(g, 0) < per_group and json.dumps(ex["prompt"]) not in exclude:
            out.append(ex)
            count[g] = count.get(g, 0) + 1
    return out


def check_seed(study, seed: int, history_prompts: int, floor: float) -> dict:
    """The step-1 batch of `seed` and every estimator's advantages on it."""
    arms = study.arms
    cfg = copy.deepcopy(study.configs[arms[0]][seed])
    cfg.log.tensorboard, cfg.log.progress = False, False
    with tempfile.TemporaryDirectory(prefix="mechanism-") as tmp:  # the study's folders stay untouched
        cfg.output_dir = tmp
        tr = Trainer(cfg, run_dir=tmp)
        with torch.no_grad(), tr.policy.autocast():
            pool = tr.rollout_stage.sample(1)  # the step-1 batch, as train_step draws it
            seen = {json.dumps(p) for p in pool.prompts}
            hist_ex = history_examples(tr, history_prompts, seen)
            hist = tr.task.rollout(tr.engine, hist_ex, cfg.rollout.generations,
                                   cfg.seed * 1_000_003 + HISTORY_SEED, on_reward_error=cfg.on_reward_error)
        minorities = minority_groups(tr.task)
        if tr.logger is not None:
            tr.logger.close()
    rewards, index = pool.rewards.float().cpu(), pool.index.cpu()
    groups = [str(g) for g in pool.groups]
    h_rewards, h_index, h_groups = hist.rewards.float().cpu(), hist.index.cpu(), [str(g) for g in hist.groups]

    has_floor = any(study.configs[a][seed].algo.pgrpo_zero_std == "floor" for a in arms)
    estimators = {}
    for arm in arms:
        arm_cfg = study.configs[arm][seed]
        if resolve_estimator(arm_cfg).scope != "preference_history":
            estimators[arm] = resolve_estimator(arm_cfg)(rewards, index, groups, LOCAL)
            continue
        estimators[f"{arm}@step1"] = resolve_estimator(arm_cfg)(rewards, index, groups, LOCAL)  # no history
        readings = {arm: resolve_estimator(arm_cfg)}
        if not has_floor:
            hp = {**estimator_hparams(arm_cfg.algo), "zero_std": "floor", "min_std": floor}
            readings[f"{arm}_floor"] = build_estimator(arm_cfg.algo.advantage, **hp)
        for name, est in readings.items():
            est(h_rewards, h_index, h_groups, LOCAL)  # folds the history in
            estimators[name] = est(rewards, index, groups, LOCAL)

    by_group = {}
    for g in sorted(set(groups) | set(h_groups)):
        r = rewards[[i for i, x in enumerate(groups) if x == g]]
        h = h_rewards[[i for i, x in enumerate(h_groups) if x == g]]
        by_group[g] = {"n": len(r), "mean": float(r.mean()) if len(r) else None,
                       "history_n": len(h), "history_mean": float(h.mean()) if len(h) else None,
                       "history_std": float(h.std(unbiased=False)) if len(h) else None}
    return {
        "seed": seed, "minorities": minorities, "n": len(groups),
        "reward_mean": float(rewards.double().mean()), "reward_std": float(rewards.double().std()),
        "by_group": by_group,
        "estimators": {name: shares(adv.double(), groups, minorities) for name, adv in estimators.items()},
        "batch": {"rewards": rewards.tolist(), "groups": groups, "index": index.tolist(),
                  "advantages": {name: adv.tolist() for name, adv in estimators.items()}},
    }


def logged_batches(run_dir: Path, per_step: int) -> list[dict]:
    """Every step's logged batch of a run: {"step", "rewards", "index", "groups"} in step order; each step
    must hold `per_step` samples (all of it), else the check would read a part of the batch as the whole."""
    path = run_dir / "samples.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no samples.jsonl (train the run first)")
    steps: dict[int, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps.setdefault(int(row["step"]), []).append(row)
    out = []
    for step in sorted(steps):
        rows = steps[step]
        if len(rows) != per_step:
            raise ValueError(f"{path}: step {step} logs {len(rows)} of the batch's {per_step} samples: train the run "
                             f"with log.samples_per_step >= {per_step}")
        if any("index" not in r for r in rows):
            raise ValueError(f"{path}: step {step}'s samples have no prompt index (logged by an older fairalign): "
                             f"train the run again")
        out.append({"step": step, "rewards": [float(r["reward"]) for r in rows],
                    "index": [int(r["index"]) for r in rows], "groups": [str(r["group"]) for r in rows]})
    return out


def train_control(study, control: str) -> None:
    """Train (or resume) each seed's run of `control` that is not trained yet, exactly as `fairalign compare`
    trains it (its own `train_run`, the study's folders), so the study later reuses these runs."""
    from fairalign.compare.study import StudyProgress, run_state, train_run

    states = {s: run_state(study, control, s) for s in study.seeds}
    todo = [s for s, (state, _) in states.items() if state in ("fresh", "resume")]
    progress = StudyProgress(study, {(control, s): states[s][1] for s in study.seeds}, 0, arms=[control])
    for seed in todo:
        print(f"training {control} seed {seed} ({states[seed][0]}) in {study.run_dir(control, seed)}")
        train_run(study, control, seed, states[seed][0] == "resume", progress)  # its model is dropped here


def replay_seed(study, seed: int, control: str, floor: float) -> dict:
    """Every arm's estimator (and P-GRPO with the std floor) on each logged step batch of `control`'s run of
    `seed`, in step order; history estimators carry their state from step to step as in a run."""
    from fairalign.envs.registry import get_task

    cfg = study.configs[control][seed]
    batches = logged_batches(study.output_dir / control / f"seed-{seed}",
                             cfg.rollout.prompts_per_step * cfg.rollout.generations)
    minorities = minority_groups(get_task(cfg.task, seed=cfg.seed, **cfg.task_options))
    estimators = {}
    for arm in study.arms:
        arm_cfg = study.configs[arm][seed]
        estimators[arm] = est = resolve_estimator(arm_cfg)
        if est.scope == "preference_history" and arm_cfg.algo.pgrpo_zero_std != "floor":
            hp = {**estimator_hparams(arm_cfg.algo), "zero_std": "floor", "min_std": floor}
            estimators[f"{arm}_floor"] = build_estimator(arm_cfg.algo.advantage, **hp)
    steps = []
    for b in batches:
        r, idx, groups = torch.tensor(b["rewards"]), torch.tensor(b["index"]), b["groups"]  # [N]
        adv = {name: est(r, idx, groups, LOCAL).double() for name, est in estimators.items()}  # name -> [N]
        by_group = {g: float(r[[i for i, x in enumerate(groups) if x == g]].double().mean())
                    for g in sorted(set(groups))}
        steps.append({**b, "reward_mean": float(r.double().mean()), "group_means": by_group,
                      "estimators": {name: shares(a, groups, minorities) for name, a in adv.items()},
                      "advantages": {name: a.tolist() for name, a in adv.items()}})
    return {"seed": seed, "control": control, "minorities": minorities, "steps": steps}


def block_shares(results: list[dict], block: int, first: int = 1) -> list[dict]:
    """Per block of `block` steps from step `first` on, pooled over seeds: minority samples, and per estimator
    the share with A > 0 and with A = 0, and the minorities' mean reward against the majority's."""
    names = list(results[0]["steps"][0]["estimators"])
    last = max(s["step"] for res in results for s in res["steps"])
    rows = []
    for lo in range(first, last + 1, block):
        hi = min(lo + block - 1, last)
        picked = [(res, s) for res in results for s in res["steps"] if lo <= s["step"] <= hi]
        mino_r, majo_r, cells = [], [], {n: [0, 0, 0] for n in names}  # name -> [n, pos, zero]
        for res, s in picked:
            sel = [i for i, g in enumerate(s["groups"]) if g in res["minorities"]]
            mino_r += [s["rewards"][i] for i in sel]
            majo_r += [r for i, r in enumerate(s["rewards"]) if i not in sel]
            for n in names:
                a = [s["advantages"][n][i] for i in sel]
                cells[n][0] += len(a)
                cells[n][1] += sum(x > 0 for x in a)
                cells[n][2] += sum(x == 0 for x in a)
        rows.append({"steps": [lo, hi], "minority_n": len(mino_r),
                     "minority_reward": sum(mino_r) / len(mino_r) if mino_r else None,
                     "majority_reward": sum(majo_r) / len(majo_r) if majo_r else None,
                     "estimators": {n: {"pos": c[1] / c[0] if c[0] else None, "zero": c[2] / c[0] if c[0] else None}
                                    for n, c in cells.items()}})
    return rows


def print_blocks(rows: list[dict], control: str, seeds: list[int], out=sys.stdout) -> None:
    names = list(rows[0]["estimators"])
    print(f"share of minority samples with A > 0 (A = 0 in brackets) on the batches {control} trained on, "
          f"seeds {', '.join(map(str, seeds))} pooled", file=out)
    print(f"{'steps':>7} {'n':>4} {'minority r':>10} {'majority r':>10}  "
          + "  ".join(f"{n[:18]:>18s}" for n in names), file=out)
    for row in rows:
        cells = [f"{fmt(e['pos'])} ({fmt(e['zero'])})" for e in row["estimators"].values()]
        print(f"{row['steps'][0]:>3}-{row['steps'][1]:<3} {row['minority_n']:>4} {fmt(row['minority_reward']):>10} "
              f"{fmt(row['majority_reward']):>10}  " + "  ".join(f"{c:>18s}" for c in cells), file=out)


def fmt(x) -> str:
    return "   -" if x is None else f"{x:.2f}"


def print_table(results: list[dict], out=sys.stdout) -> None:
    names = list(results[0]["estimators"])
    minorities = results[0]["minorities"]
    print("share of minority samples with A > 0 (A = 0 in brackets) on each seed's step-1 batch", file=out)
    print(f"{'seed':>4}  {'estimator':18s} {'minorities':>12s}  " + "  ".join(f"{g[:13]:>13s}" for g in minorities),
          file=out)
    for res in results:
        for name in names:
            e = res["estimators"][name]
            m = e["minority"]
            cells = [f"{fmt(e['by_group'][g] and e['by_group'][g]['pos'])}" for g in minorities]
            print(f"{res['seed']:>4}  {name:18s} {fmt(m and m['pos'])} ({fmt(m and m['zero'])})  "
                  + "  ".join(f"{c:>13s}" for c in cells), file=out)
    for name in names:
        vals = [r["estimators"][name]["minority"]["pos"] for r in results if r["estimators"][name]["minority"]]
        if vals:
            print(f"mean over {len(vals)} seed(s)  {name:18s} {sum(vals) / len(vals):.3f}", file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (seeds=..., as for fairalign compare)")
    p.add_argument("--history-prompts", type=int, default=4,
                   help="training prompts per preference group in the history")
    p.add_argument("--floor", type=float, default=0.1, help="min_std of the added pgrpo_floor reading")
    p.add_argument("--out", default=None, help="JSON output (default: <study output_dir>/mechanism.json)")
    p.add_argument("--during", metavar="ARM", default=None,
                   help="read the check along each seed's finished run of ARM (its logged batches), not at step 1")
    p.add_argument("--block", type=int, default=5, help="steps per row of the --during table")
    p.add_argument("--from-step", type=int, default=1, help="the --during table's first step")
    p.add_argument("--train", action="store_true",
                   help="with --during: first train each seed's run of ARM that is missing (as compare does)")
    args = p.parse_args(argv)
    study = load_study(args.spec, args.overrides)
    if args.during is not None:
        if args.during not in study.arms:
            print(f"mechanism.py: error: --during {args.during!r} is not an arm of {args.spec} "
                  f"(arms: {', '.join(study.arms)})", file=sys.stderr)
            return 2
        if args.train:
            train_control(study, args.during)
        try:
            results = [replay_seed(study, s, args.during, args.floor) for s in study.seeds]
        except (FileNotFoundError, ValueError) as e:
            print(f"mechanism.py: error: {e}", file=sys.stderr)
            return 2
        rows = block_shares(results, args.block, args.from_step)
        out = Path(args.out) if args.out else study.output_dir / f"mechanism_during_{args.during}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"spec": str(args.spec), "overrides": args.overrides, "during": args.during,
                                   "floor": args.floor, "blocks": rows, "seeds": results}, indent=1))
        print_blocks(rows, args.during, study.seeds)
        print(f"written: {out}")
        return 0
    results = [check_seed(study, s, args.history_prompts, args.floor) for s in study.seeds]
    out = Path(args.out) if args.out else study.output_dir / "mechanism.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"spec": str(args.spec), "overrides": args.overrides,
                               "history_prompts": args.history_prompts, "floor": args.floor,
                               "seeds": results}, indent=1))
    print_table(results)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
