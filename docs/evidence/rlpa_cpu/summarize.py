"""The RLPA CPU study's numbers (issue 21), from its records.jsonl alone.

    python docs/evidence/rlpa_cpu/summarize.py RECORDS [--json summary.json] [--plot al.png] [--runs DIR]

RECORDS (study.py writes it) holds one object per (arm, seed, decoding, sample, profile, turn) with `al` (0-100),
`profile_f1`, `response_pass`, `repeated`, `truncated`; every number printed here is computed from it, so anyone
can re-derive them from the committed file. Printed, per decoding (greedy; sampled):
- per arm: AL(k) for every turn, AVG, N-IR, N-R² (fairalign.envs.rlpa.metrics: AL(k) = the mean `al` over the
  dialogues at turn k; AVG its mean over k; N-IR / N-R² the slope and R² of the min-max normalized curve on k),
  each with a 95% interval;
- the paired differences rl − warmup (the primary one: AVG, greedy), rl − untrained and warmup − untrained:
  AVG, N-IR, N-R² and AL(k) per turn, with 95% interval, mde80 and p;
- the issue's target as one line: the primary interval's lower bound > 0, the rl arm's N-IR > 0 and N-R² >= 0.5;
- profile F1 (x100), the judge's pass rate, the repeat rate and the share of replies cut, per turn, per arm;
- with `--runs DIR` (DIR/ARM/seed-S/metrics.jsonl, e.g. the study's output_dir or results/runs), per RL step, per
  seed and their mean: the training reward (`reward/mean`), the share of turn groups whose candidates tied
  (`reward/frac_zero_std`: no advantage, no gradient), the policy's entropy and the update's approx_kl.
`--plot`: AL(k) of every arm with its 95% band, greedy solid, sampled dashed (matplotlib).

Statistics. A sampled arm first averages its samples within each (seed, profile, turn), so a profile counts
once per seed however many samples it has. A point estimate is the mean over seeds of each seed's value (its
AL(k) curve over the profiles, and the curve's AVG / N-IR / N-R²), as `fairalign compare` averages its runs; a
difference is the mean of the per-seed differences over the seeds both arms have. Intervals are
`fairalign compare`'s two-level paired bootstrap (`fairalign.compare.bootstrap.dialogue_bootstrap`: 4000
resamples, generator seed 0; seeds, then profiles with one draw shared by every seed when they evaluated the
same profiles; both arms recomputed from the same draws): its input shape fits once the records are grouped
per seed into one dialogue per profile with total = al / 50 at each turn. The arm and the baseline must hold
the same profiles for every shared seed, else the difference gets no interval. The oracle has no training
seed (seed null): its interval is over profiles only, and it is in no difference.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from fairalign.compare.bootstrap import RESAMPLES, curve_metrics, dialogue_bootstrap

KEYS = ("arm", "seed", "decoding", "sample", "profile", "turn", "al", "profile_f1", "response_pass", "repeated",
        "truncated")
ARM_ORDER = ("untrained", "warmup", "rl", "oracle")
DECODINGS = ("greedy", "sampled")
PAIRS = (("rl", "warmup"), ("rl", "untrained"), ("warmup", "untrained"))  # first: the primary comparison
RATES = (("profile_f1", "profile F1 x100"), ("response_pass", "judge pass %"), ("repeated", "repeat %"),
         ("truncated", "cut at max_new_tokens %"))
TARGET_N_R2 = 0.5
METHOD = ("point: mean over seeds of each seed's value (sampled: samples averaged within each profile first); 95% "
          f"interval, se, mde80 and p: fairalign compare's two-level paired bootstrap over seeds x profiles "
          f"({RESAMPLES} resamples, generator seed 0)")


def load(path: str | Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        lacking = [k for k in KEYS if k not in row]
        if lacking:
            raise SystemExit(f"{path}: line {n} has no {', '.join(lacking)}")
        rows.append(row)
    if not rows:
        raise SystemExit(f"{path}: no records")
    return rows


class Cell:
    """One arm x decoding: {seed: (profile ids, {field: [profiles, turns] means over the samples})}."""

    def __init__(self, rows: list[dict], order: dict):
        grouped: dict = {}
        for r in rows:
            grouped.setdefault(r["seed"], {}).setdefault(r["profile"], {}).setdefault(int(r["turn"]), []).append(r)
        self.seeds: dict = {}
        self.samples = len({(r["seed"], r["sample"]) for r in rows}) // max(1, len({r["seed"] for r in rows}))
        turns = sorted({int(r["turn"]) for r in rows})
        self.K = len(turns)
        if turns != list(range(1, self.K + 1)):
            raise SystemExit(f"{rows[0]['arm']}/{rows[0]['decoding']}: turns {turns} are not 1..K")
        for seed, by_profile in grouped.items():
            ids = sorted(by_profile, key=lambda p: order[p])
            fields = {}
            for key in ("al", "profile_f1", "response_pass", "repeated", "truncated"):
                m = np.zeros((len(ids), self.K))                                      # [profiles, turns]
                for i, p in enumerate(ids):
                    if sorted(by_profile[p]) != turns:
                        raise SystemExit(f"{rows[0]['arm']}/{rows[0]['decoding']} seed {seed} profile {p}: turns "
                                         f"{sorted(by_profile[p])}, expected 1..{self.K}")
                    for k in turns:
                        m[i, k - 1] = np.mean([float(r[key]) for r in by_profile[p][k]])  # over the samples
                fields[key] = m
            self.seeds[seed] = (ids, fields)

    def dialogues(self, seeds=None) -> dict:
        """dialogue_bootstrap's input: {seed: [{"profile_id", "turns": [{"turn", "total"}]}]}."""
        return {s: [{"profile_id": p, "turns": [{"turn": k + 1, "total": v / 50.0} for k, v in enumerate(row)]}
                    for p, row in zip(self.seeds[s][0], self.seeds[s][1]["al"])]
                for s in (self.seeds if seeds is None else seeds)}

    def curves(self, key: str = "al", seeds=None) -> np.ndarray:
        """[seeds, turns]: each seed's mean over its profiles."""
        return np.stack([self.seeds[s][1][key].mean(0) for s in (self.seeds if seeds is None else seeds)])


def _metrics(curves: np.ndarray) -> dict[str, np.ndarray]:
    """curve_metrics with short names: al/k, avg, n_ir, n_r2, each [seeds]."""
    return {k.removeprefix("dialogue/"): v for k, v in curve_metrics(curves).items()}


def arm_summary(cell: Cell) -> dict:
    per_seed = _metrics(cell.curves())
    boot = dialogue_bootstrap(cell.dialogues()) or {}
    out = {"seeds": len(cell.seeds), "profiles": len(next(iter(cell.seeds.values()))[0]), "samples": cell.samples}
    for k, v in per_seed.items():
        b = boot.get(f"dialogue/{k}", {})
        out[k] = {"mean": float(v.mean()), "ci95": b.get("ci95"), "se": b.get("se")}
    pooled = _metrics(cell.curves().mean(0, keepdims=True))
    out["pooled_curve"] = {k: float(pooled[k][0]) for k in ("n_ir", "n_r2") if k in pooled}
    out["by_turn"] = {key: [float(x) for x in 100.0 * np.mean([cell.seeds[s][1][key].mean(0) for s in cell.seeds], 0)]
                      for key, _ in RATES}
    return out


def difference(a: Cell, b: Cell) -> dict | None:
    """a − b paired by seed and profile, or None when they share no seed."""
    seeds = [s for s in a.seeds if s in b.seeds]
    if not seeds:
        return None
    da, db = _metrics(a.curves(seeds=seeds)), _metrics(b.curves(seeds=seeds))
    paired = all(a.seeds[s][0] == b.seeds[s][0] for s in seeds)
    boot = (dialogue_bootstrap(a.dialogues(seeds), b.dialogues(seeds)) if paired else None) or {}
    out = {"seeds": len(seeds), "paired": paired}
    for k in da:
        bk = boot.get(f"dialogue/{k}", {})
        out[k] = {"mean": float((da[k] - db[k]).mean()), "ci95": bk.get("ci95"), "se": bk.get("se"),
                  "mde80": bk.get("mde80"), "p": bk.get("p")}
    return out


TRAINING = (("reward/mean", "training reward (reward/mean)"),
            ("reward/frac_zero_std", "share of turn groups whose G candidates tied (no advantage: reward/frac_zero_std)"),
            ("entropy", "policy entropy per token, nats (entropy)"),
            ("approx_kl", "approx_kl of the update to the behaviour policy"))


def training_curves(runs: Path, key: str = "reward/mean") -> dict:
    """{arm: {seed: [`key` of step 1, 2, ...]}} from runs/ARM/seed-S/metrics.jsonl (RL steps only)."""
    out: dict = {}
    for path in sorted(runs.glob("*/seed-*/metrics.jsonl")):
        by_step = {}
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            step, value = row.get("step"), row.get(key)
            if isinstance(step, int) and step >= 1 and isinstance(value, (int, float)):
                by_step[step] = float(value)  # a resumed step's last line wins
        if by_step:
            seed = path.parent.name.removeprefix("seed-")
            out.setdefault(path.parent.parent.name, {})[seed] = [by_step[k] for k in sorted(by_step)]
    return out


def summarize(rows: list[dict]) -> dict:
    order: dict = {}
    for r in rows:
        order.setdefault(r["profile"], len(order))
    arms = sorted({r["arm"] for r in rows}, key=lambda a: (ARM_ORDER.index(a) if a in ARM_ORDER else len(ARM_ORDER), a))
    cells = {}
    for arm in arms:
        for dec in DECODINGS:
            sub = [r for r in rows if r["arm"] == arm and r["decoding"] == dec]
            if sub:
                cells[(arm, dec)] = Cell(sub, order)
    out = {"records": len(rows), "method": METHOD, "arms": arms, "arms_summary": {}, "differences": {}}
    for (arm, dec), cell in cells.items():
        out["arms_summary"].setdefault(dec, {})[arm] = arm_summary(cell)
    for dec in DECODINGS:
        for a, b in PAIRS:
            if (a, dec) in cells and (b, dec) in cells:
                d = difference(cells[(a, dec)], cells[(b, dec)])
                if d is not None:
                    out["differences"].setdefault(dec, {})[f"{a} − {b}"] = d
    primary = out["differences"].get("greedy", {}).get("rl − warmup")
    rl = out["arms_summary"].get("greedy", {}).get("rl")
    target = {}
    if primary is not None and "avg" in primary:
        ci = primary["avg"]["ci95"]
        target["primary_lower_bound_above_0"] = None if ci is None else bool(ci[0] > 0)
    if rl is not None and "n_ir" in rl:
        target["rl_n_ir_above_0"] = bool(rl["n_ir"]["mean"] > 0)
        target["rl_n_r2_at_least_0.5"] = bool(rl["n_r2"]["mean"] >= TARGET_N_R2)
    out["target"] = target
    return out


# ---------------------------------------------------------------------------------------------
# printing

def _value(entry: dict, digits: int, signed: bool = False) -> str:
    """"mean [lo, hi]" (signed: a difference)."""
    f = f"{'+' if signed else ''}.{digits}f"
    ci = entry.get("ci95")
    return f"{entry['mean']:{f}} " + (f"[{ci[0]:{f}}, {ci[1]:{f}}]" if ci else "[no interval]")


METRICS = (("avg", "AVG", 2), ("n_ir", "N-IR", 3), ("n_r2", "N-R²", 3))


def report(s: dict, training: dict | None, stream) -> None:
    p = lambda *a: print(*a, file=stream)  # noqa: E731
    p(f"{s['records']} records; arms {', '.join(s['arms'])}. {s['method']}.")
    for dec, arms in s["arms_summary"].items():
        K = max(int(k.split("/")[1]) for a in arms.values() for k in a if k.startswith("al/"))
        p(f"\n## {dec}: AL(k) per arm, mean [95% interval]")
        names = list(arms)
        p("| turn | " + " | ".join(f"{a} ({arms[a]['seeds']} seed(s) x {arms[a]['profiles']} profiles"
                                   + (f" x {arms[a]['samples']} samples" if dec == "sampled" else "") + ")"
                                   for a in names) + " |")
        p("|---" * (len(names) + 1) + "|")
        for k in range(1, K + 1):
            p(f"| {k} | " + " | ".join(_value(arms[a][f"al/{k}"], 2) for a in names) + " |")
        for key, label, dg in METRICS:
            if all(key in arms[a] for a in names):
                p(f"| {label} | " + " | ".join(_value(arms[a][key], dg) for a in names) + " |")
        p("| N-IR, N-R² of the seeds' mean curve | " + " | ".join(
            f"{arms[a]['pooled_curve'].get('n_ir', math.nan):+.3f}, {arms[a]['pooled_curve'].get('n_r2', math.nan):.3f}"
            for a in names) + " |")
        for key, label in RATES:
            p(f"\n{dec}: {label} per turn (mean over seeds)")
            p("| arm | " + " | ".join(str(k) for k in range(1, K + 1)) + " |")
            p("|---" * (K + 1) + "|")
            for a in names:
                p(f"| {a} | " + " | ".join(f"{v:.1f}" for v in arms[a]["by_turn"][key]) + " |")
    for dec, diffs in s["differences"].items():
        p(f"\n## {dec}: paired differences, mean [95% interval] (mde80, p)")
        for name, d in diffs.items():
            p(f"{name} ({d['seeds']} seed(s)){'' if d['paired'] else ': not paired (different profiles): no interval'}")
            for key, label, dg in METRICS:
                if key in d:
                    e = d[key]
                    extra = f" (mde80 {e['mde80']:.{dg}f}, p {e['p']:.3g})" if e.get("mde80") is not None else ""
                    p(f"  {label:5s} {_value(e, dg, signed=True)}{extra}")
            K = sum(1 for k in d if k.startswith("al/"))
            p("  AL(k) " + "  ".join(f"{k}: {_value(d[f'al/{k}'], 2, signed=True)}" for k in range(1, K + 1)))
    primary = s["differences"].get("greedy", {}).get("rl − warmup")
    rl = s["arms_summary"].get("greedy", {}).get("rl")
    if primary is not None and rl is not None and "avg" in primary and "n_ir" in rl:
        t = s["target"]
        yes = lambda v: "n/a" if v is None else ("yes" if v else "no")  # noqa: E731
        p(f"\ntarget (greedy): rl − warmup AVG {_value(primary['avg'], 2, signed=True)}, lower bound > 0: "
          f"{yes(t['primary_lower_bound_above_0'])}; rl N-IR {rl['n_ir']['mean']:+.3f} > 0: "
          f"{yes(t['rl_n_ir_above_0'])}; "
          f"rl N-R² {rl['n_r2']['mean']:.3f} >= {TARGET_N_R2}: {yes(t['rl_n_r2_at_least_0.5'])} (N-IR, N-R²: mean "
          f"over seeds)")
    for key, title in TRAINING:
        for arm, seeds in (training or {}).get(key, {}).items():
            steps = max(len(v) for v in seeds.values())
            p(f"\n{title} per RL step, {arm}")
            p("| step | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
            p("|---" * (len(seeds) + 2) + "|")
            for i in range(steps):
                vals = [v[i] for v in seeds.values() if i < len(v)]
                p(f"| {i + 1} | " + " | ".join(f"{v[i]:.3f}" if i < len(v) else "" for v in seeds.values())
                  + f" | {sum(vals) / len(vals):.3f} |")


def plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"untrained": "tab:gray", "warmup": "tab:blue", "rl": "tab:red", "oracle": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dec, style in (("greedy", "-"), ("sampled", "--")):
        for arm, a in s["arms_summary"].get(dec, {}).items():
            K = sum(1 for k in a if k.startswith("al/"))
            x = np.arange(1, K + 1)
            y = [a[f"al/{k}"]["mean"] for k in x]
            c = colors.get(arm)
            line, = ax.plot(x, y, style, color=c, marker="o" if dec == "greedy" else None, label=f"{arm} ({dec})")
            cis = [a[f"al/{k}"]["ci95"] for k in x]
            if all(ci is not None for ci in cis):
                ax.fill_between(x, [ci[0] for ci in cis], [ci[1] for ci in cis], color=line.get_color(),
                                alpha=0.18 if dec == "greedy" else 0.08, linewidth=0)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("turn k")
    ax.set_ylabel("AL(k)")
    ax.set_title("AL(k) per arm, 95% bands (seeds x profiles bootstrap)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None, stream=None) -> int:
    stream = stream or sys.stdout
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("records", help="records.jsonl (study.py writes it)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--plot", type=Path, help="write the AL(k) plot here (PNG)")
    p.add_argument("--runs", type=Path, help="DIR/ARM/seed-S/metrics.jsonl: the training diagnostics per RL step")
    args = p.parse_args(argv)
    s = summarize(load(args.records))
    training = {key: training_curves(args.runs, key) for key, _ in TRAINING} if args.runs else None
    if training is not None:
        s["training_reward"] = training["reward/mean"]
        s["training"] = training
    report(s, training, stream)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(s, indent=1) + "\n")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(s, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
