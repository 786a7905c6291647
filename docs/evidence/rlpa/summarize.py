"""Paired summary of study 3 (RLPA over 10 turns): warm-up only vs warm-up + RL, same test profiles.

    .venv/bin/python docs/evidence/rlpa/summarize.py WARMUP/dialogue_eval.json RL/dialogue_eval.json \\
        [--train-run RUN_DIR] [--json OUT.json] [--resamples 10000] [--seed 0]

Reads two `fairalign eval-dialogue` results that hold per-dialogue records (`dialogues`) for the same
test profiles in the same order (checked), and prints per turn: AL(k) of each arm and the paired
difference (RL − warm-up) with a 95% interval, and each arm's repetition rate; then AVG, N-IR and
N-R² per arm and their differences with 95% intervals, and mean profile F1 / judge pass / cut share.

Intervals (fairalign's choice, stated in the output): a paired percentile bootstrap over test
profiles — each resample draws profiles with replacement and recomputes both arms' AL(k) curves
from the same profiles, then AVG / N-IR / N-R² from those curves — plus, for AVG, the paired t
interval over per-profile AVG differences (`fairalign.compare.stats.mean_interval`). Both are
conditional on the one training run: they say how sure we are about *this* trained policy on the
test-profile population, not about seed-to-seed variation of the method.

Repetition rate at turn k: the share of dialogues whose turn-k reply repeats an earlier reply of the
same dialogue or asks one of its earlier questions again (`fairalign.envs.rlpa.rewards.repeats_earlier`,
the rules judge's repeat gate).

`--train-run RUN_DIR` adds the RL run's training signal per turn from its `samples.jsonl` (every
sample logged: set `log.samples_per_step` to prompts_per_step x max_turns x generations): the share of
prompt groups whose G rewards are all equal (GRPO advantage 0: no gradient), the share of candidates
that repeat, and the share of training histories that already contain a repeat (the user said "You
already asked me that."), i.e. how often RL sees the state the greedy policy gets stuck in.
Pure Python (no numpy).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from fairalign.compare.stats import mean_interval
from fairalign.envs.rlpa.parser import parse_turn, strip_tags
from fairalign.envs.rlpa.rewards import repeats_earlier
from fairalign.envs.rlpa.user import REPEAT_REPLIES
from fairalign.envs.rlpa.metrics import dialogue_metrics

METHOD = ("95% intervals: paired percentile bootstrap over test profiles ({n} resamples, seed {seed}; both arms "
          "resampled with the same profiles, AVG / N-IR / N-R² recomputed from the resampled AL(k) curves); "
          "AVG also with the paired t interval over per-profile AVG. Conditional on one training run.")


def load(path: str) -> dict:
    res = json.loads(Path(path).read_text())
    if "dialogues" not in res:
        raise SystemExit(f"{path}: no per-dialogue records ('dialogues'); re-run `fairalign eval-dialogue` "
                         f"with a fairalign that writes them")
    return res


def al_matrix(res: dict) -> list[list[float]]:
    """[profiles][turns] AL of each dialogue's turn: 100 * total / 2."""
    return [[50.0 * t["total"] for t in d["turns"]] for d in res["dialogues"]]


def repeat_matrix(res: dict) -> list[list[float]]:
    """[profiles][turns] 1.0 where the turn's reply repeats an earlier reply / question of its dialogue."""
    out = []
    for d in res["dialogues"]:
        said = [t["reply"] or "" for t in d["turns"]]
        out.append([float(repeats_earlier(r, said[:k])) for k, r in enumerate(said)])
    return out


def column_means(rows: list[list[float]], pick: list[int] | None = None) -> list[float]:
    pick = list(range(len(rows))) if pick is None else pick
    return [sum(rows[i][k] for i in pick) / len(pick) for k in range(len(rows[0]))]


def curve_stats(curve: list[float]) -> dict:
    return dialogue_metrics(curve) if len(curve) >= 2 else {"avg": curve[0], "n_ir": 0.0, "n_r2": 0.0}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def paired_bootstrap(a: list[list[float]], b: list[list[float]], resamples: int, seed: int) -> dict:
    """Per turn and for AVG / N-IR / N-R²: {"a": [lo, hi], "b": [lo, hi], "diff": [lo, hi]} (b − a)."""
    n, K = len(a), len(a[0])
    rng = random.Random(seed)
    draws: dict[str, list[tuple[float, float]]] = {f"al{k}": [] for k in range(K)}
    draws.update({m: [] for m in ("avg", "n_ir", "n_r2")})
    for _ in range(resamples):
        pick = [rng.randrange(n) for _ in range(n)]
        ca, cb = column_means(a, pick), column_means(b, pick)
        for k in range(K):
            draws[f"al{k}"].append((ca[k], cb[k]))
        sa, sb = curve_stats(ca), curve_stats(cb)
        for m in ("avg", "n_ir", "n_r2"):
            draws[m].append((sa[m], sb[m]))
    out = {}
    for key, pairs in draws.items():
        ci = {}
        for name, vals in (("a", [x for x, _ in pairs]), ("b", [y for _, y in pairs]),
                           ("diff", [y - x for x, y in pairs])):
            ci[name] = [percentile(vals, 0.025), percentile(vals, 0.975)]
        out[key] = ci
    return out


def check_paired(a: dict, b: dict, names: tuple[str, str]) -> None:
    ids_a = [d["profile_id"] for d in a["dialogues"]]
    ids_b = [d["profile_id"] for d in b["dialogues"]]
    if ids_a != ids_b:
        raise SystemExit(f"not paired: {names[0]} and {names[1]} evaluated different test profiles "
                         f"({ids_a[:3]}... vs {ids_b[:3]}...)")
    if a["max_turns"] != b["max_turns"]:
        raise SystemExit(f"not paired: {a['max_turns']} vs {b['max_turns']} turns")
    sa = {k: v for k, v in a["settings"].items() if k != "model"}
    sb = {k: v for k, v in b["settings"].items() if k != "model"}
    if sa != sb:
        diff = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
        print(f"note: the evaluation settings differ in {', '.join(diff)}", file=sys.stderr)


def training_signal(run_dir: Path) -> list[dict]:
    """Per turn of the RL run's logged samples: groups, tied share, candidate repeat share, stuck histories."""
    from fairalign.config import build_config, load_yaml

    cfg = build_config(load_yaml(run_dir / "config.yaml"))
    G = cfg.rollout.generations
    B = cfg.rollout.prompts_per_step * cfg.task_options.get("max_turns", 10) * G
    prefix = cfg.task_options.get("completion_prefix", "<profile>")
    by_step: dict[int, list[dict]] = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step.setdefault(row["step"], []).append(row)
    if any(len(rows) != B for rows in by_step.values()):
        raise SystemExit(f"{run_dir}/samples.jsonl: expected all {B} samples per step "
                         f"(set log.samples_per_step={B})")
    per_turn: dict[int, dict] = {}
    for rows in by_step.values():
        for g in range(0, B, G):  # batch order: turn by turn, one prompt's G candidates adjacent
            group = rows[g:g + G]
            prompt = group[0]["prompt"]
            said = [m["content"] for m in prompt if m["role"] == "assistant"]
            heard = [m["content"] for m in prompt if m["role"] == "user"]
            t = per_turn.setdefault(len(said) + 1, {"groups": 0, "tied": 0, "cands": 0, "repeat": 0, "stuck": 0})
            t["groups"] += 1
            t["tied"] += int(max(s["reward"] for s in group) - min(s["reward"] for s in group) < 1e-9)
            t["stuck"] += int(any(h in REPEAT_REPLIES for h in heard))
            for s in group:
                parsed = parse_turn(prefix + s["completion"])
                reply = parsed.reply if parsed.ok else strip_tags(prefix + s["completion"])
                t["cands"] += 1
                t["repeat"] += int(repeats_earlier(reply or "", said))
    return [{"turn": k, "groups": v["groups"], "tied_share": v["tied"] / v["groups"],
             "candidate_repeat_share": v["repeat"] / v["cands"], "stuck_history_share": v["stuck"] / v["groups"]}
            for k, v in sorted(per_turn.items())]


def fmt_ci(ci: list[float], digits: int = 2) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("warmup", help="dialogue_eval.json of the warm-up only (e.g. RUN/eval-step-0)")
    p.add_argument("rl", help="dialogue_eval.json of warm-up + RL")
    p.add_argument("--train-run", help="the RL run directory (samples.jsonl with every sample)")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    a, b = load(args.warmup), load(args.rl)
    check_paired(a, b, (args.warmup, args.rl))
    A, Bm = al_matrix(a), al_matrix(b)
    ra, rb = column_means(repeat_matrix(a)), column_means(repeat_matrix(b))
    ca, cb = column_means(A), column_means(Bm)
    boot = paired_bootstrap(A, Bm, args.resamples, args.seed)
    n, K = len(A), len(A[0])
    print(f"{n} test profiles x {K} turns, paired. " + METHOD.format(n=args.resamples, seed=args.seed))
    print()
    print("| turn k | AL(k) warm-up | AL(k) warm-up + RL | difference [95% CI] | repeat % warm-up | repeat % RL |")
    print("|---|---|---|---|---|---|")
    for k in range(K):
        print(f"| {k + 1} | {ca[k]:.2f} | {cb[k]:.2f} | {cb[k] - ca[k]:+.2f} {fmt_ci(boot[f'al{k}']['diff'])} "
              f"| {100 * ra[k]:.0f} | {100 * rb[k]:.0f} |")
    sa, sb = curve_stats(ca), curve_stats(cb)
    t_avg = mean_interval([sum(y) / K - sum(x) / K for x, y in zip(A, Bm)])
    print()
    print("| metric | warm-up [95% CI] | warm-up + RL [95% CI] | difference [95% CI] |")
    print("|---|---|---|---|")
    for m, label, dg in (("avg", "AVG", 2), ("n_ir", "N-IR", 3), ("n_r2", "N-R²", 3)):
        print(f"| {label} | {sa[m]:.{dg}f} {fmt_ci(boot[m]['a'], dg)} | {sb[m]:.{dg}f} {fmt_ci(boot[m]['b'], dg)} "
              f"| {sb[m] - sa[m]:+.{dg}f} {fmt_ci(boot[m]['diff'], dg)} |")
    if t_avg["ci95"] is not None:
        print(f"| AVG, paired t over profiles | | | {t_avg['mean']:+.2f} {fmt_ci(t_avg['ci95'])}, p = {t_avg['p']:.3g} |")
    extra = {}
    for key, label in (("profile_f1_by_turn", "mean profile F1 x100"), ("response_pass_by_turn", "judge pass %"),
                       ("truncated_by_turn", "replies cut at max_new_tokens %")):
        va, vb = sum(a.get(key, [0.0])) / K, sum(b.get(key, [0.0])) / K
        extra[key] = [va, vb]
        print(f"| {label} | {va:.2f} | {vb:.2f} | {vb - va:+.2f} |")
    signal = None
    if args.train_run:
        signal = training_signal(Path(args.train_run))
        print()
        print("RL training signal per turn (all steps pooled):")
        print("| turn | groups | tied groups (advantage 0) | candidates repeating | histories already stuck |")
        print("|---|---|---|---|---|")
        for s in signal:
            print(f"| {s['turn']} | {s['groups']} | {100 * s['tied_share']:.0f}% | "
                  f"{100 * s['candidate_repeat_share']:.0f}% | {100 * s['stuck_history_share']:.0f}% |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "profiles": n, "turns": K, "method": METHOD.format(n=args.resamples, seed=args.seed),
            "al_by_turn": {"warmup": ca, "rl": cb}, "repeat_rate_by_turn": {"warmup": ra, "rl": rb},
            "metrics": {"warmup": sa, "rl": sb}, "bootstrap_ci95": boot, "avg_paired_t": t_avg,
            "means": extra, "training_signal": signal}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
