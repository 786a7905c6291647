"""The FSPO cosine study's reading, from its runs' metrics.jsonl (pre-registered in README.md).

    python docs/evidence/fspo_cosine/summarize.py runs/study-fspo-cosine

Per arm (every seed's counts pooled): the overall clip rate, the pooled LRE with its flat-clipping noise
floor (mean, 95th percentile), the extreme bins' log clip-rate ratio and the logistic slope of "clipped"
on log length (95% Wald intervals), the clipped events per length bin (and against study 1's, which the
design asked to exceed 5x), and the gradient cosine between
the clipped and the unclipped loss (mean over every off-policy update, and the seeds' means with a t
interval). Primary, paired by seed: cosine(fspo) − cosine(other arm) for each other arm, 95% t interval,
Holm-adjusted p over those comparisons and the mde80 (the smallest true difference the seeds detect with
80% power), next to the same differences of the per-seed pooled LRE. The
question "does the lower-LRE rule give the higher cosine?" is read from these pairs, and across arms as
Spearman's rank correlation of the pooled LRE and the pooled cosine (5 arms: descriptive).
Added after the runs, not pre-registered (README, "Result"): the calibration to equal overall clip rates did
not hold in the study (a step that clips nothing has cosine 1, so an arm that clips less has the higher
cosine whatever its rule), so each run also gets k = Σ(1 − cosine) / Σ clip rate over its steps, the
direction lost per unit of clip rate (a line through the origin of the per-step points), paired by seed
like the cosine; `--plot FILE` draws the per-step points and each arm's line. Also added after the runs: the
first step's cosine alone (every rule clips most there, at the most similar rates), and k over the steps
after the first (the per-step points bend at step 1), both paired by seed.
Writes OUT/summary.json and prints the tables. The arms are OUT's sub-folders with seed-S runs (in the order
of OUT/spec.yaml when there is one).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from fairalign.compare.stats import mean_interval, t_quantile
from fairalign.diagnostics import (extreme_bin_log_ratio, logistic_length_slope, lre_floor_from_pooled_counts,
                                   lre_from_pooled_counts)
from fairalign.report import data as D

PRIMARY = "fspo"  # the rule whose cosine is compared with every other arm's
STUDY1 = Path(__file__).resolve().parents[1] / "length_fairness" / "summary.json"  # its clipped events per bin


def run_rows(run: Path) -> list[dict]:
    """The run's metric rows, one per step (a resumed step's last line wins)."""
    by_step = {}
    for r in D.load_rows(run):
        if isinstance(r.get("step"), int):
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def merged_counts(runs: list[list[dict]]) -> tuple[dict, dict]:
    counts, clipped = {}, {}
    for rows in runs:
        c, k = D.pooled_clip_counts(rows)
        for b, v in c.items():
            counts[b] = counts.get(b, 0.0) + v
            clipped[b] = clipped.get(b, 0.0) + k.get(b, 0.0)
    return counts, clipped


def length_measures(counts: dict, clipped: dict) -> dict:
    if not counts or sum(counts.values()) == 0:
        return {}
    return {"clip_rate": sum(clipped.values()) / sum(counts.values()),
            "lre": lre_from_pooled_counts(counts, clipped),
            "lre_floor": lre_floor_from_pooled_counts(counts, clipped),
            "log_ratio": extreme_bin_log_ratio(counts, clipped),
            "slope": logistic_length_slope(counts, clipped),
            "bins": {b: {"sequences": counts[b], "clipped": clipped.get(b, 0.0)}
                     for b in sorted(counts, key=lambda x: int(x.split("-")[0]))}}


def step_points(rows: list[dict]) -> list[tuple[float, float, int]]:
    """Per step with off-policy updates: (the share of its off-policy sequence-updates clipped, the mean
    gradient cosine of its updates, the number of updates)."""
    points = []
    for r in rows:
        counts, clipped = D.pooled_clip_counts([r])
        cos = D.pooled_grad_cosine([r])
        n = sum(counts.values())
        if n > 0 and cos is not None:
            points.append((sum(clipped.values()) / n, cos[0], cos[1]))
    return points


def direction_loss_per_clip_rate(points: list[tuple[float, float, int]]) -> float | None:
    """k = Σ u·(1 − cos) / Σ u·rate over the steps (u: updates): the slope of 1 − cosine on the clip rate
    through the origin (a step that clips nothing has cosine 1). None when no step clipped."""
    den = sum(u * rate for rate, _, u in points)
    return sum(u * (1 - cos) for _, cos, u in points) / den if den > 0 else None


def events_against(arms: dict, earlier: dict) -> dict:
    """Per arm and length bin: clipped events here, in an earlier study (its summary.json's `pooled_rate` ×
    `pooled_n`, as study 1 writes them) and their ratio; only arms and bins both studies have."""
    out = {}
    for arm, a in arms.items():
        e = earlier.get(arm) or {}
        rate, n = e.get("pooled_rate") or {}, e.get("pooled_n") or {}
        rows = {}
        for b, v in (a.get("bins") or {}).items():
            if b in rate and b in n:
                before = rate[b] * n[b]
                rows[b] = {"here": v["clipped"], "earlier": before,
                           "ratio": v["clipped"] / before if before > 0 else None}
        if rows:
            out[arm] = rows
    return out


def mde80(diff: dict | None) -> float | None:
    """(t_{0.975, n−1} + t_{0.80, n−1})·sd/√n: the smallest true difference n seeds detect with 80% power."""
    if not diff or diff.get("sd") is None or diff["n"] < 2:
        return None
    n = diff["n"]
    return (t_quantile(0.975, n - 1) + t_quantile(0.80, n - 1)) * diff["sd"] / math.sqrt(n)


def holm(ps: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values that are not None."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * ps[i]))
        out[i] = running
    return out


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 points or with no spread."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    if len(xs) < 3:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def summarize(study: Path, earlier: dict | None = None) -> dict:
    arms = [p.name for p in study.iterdir() if p.is_dir() and any(p.glob("seed-*/metrics.jsonl"))]
    spec = D.read_yaml(study / "spec.yaml") or {}
    order = list(spec.get("arms") or {})  # the spec's order when run.py wrote one, else alphabetical
    arms.sort(key=lambda a: (order.index(a) if a in order else len(order), a))
    per_arm, per_seed = {}, {}
    for arm in arms:
        runs = {int(p.name.split("-", 1)[1]): run_rows(p) for p in sorted((study / arm).glob("seed-*"))
                if (p / "metrics.jsonl").is_file()}
        per_seed[arm] = {}
        for seed, rows in runs.items():
            cos = D.pooled_grad_cosine(rows)
            points = step_points(rows)
            per_seed[arm][seed] = {"cosine": None if cos is None else cos[0],
                                   "cosine_updates": 0 if cos is None else cos[1],
                                   "k": direction_loss_per_clip_rate(points),
                                   "k_after_step1": direction_loss_per_clip_rate(points[1:]),
                                   "clip_rate_step1": points[0][0] if points else None,
                                   "cosine_step1": points[0][1] if points else None,
                                   **length_measures(*D.pooled_clip_counts(rows))}
        all_rows = [r for rows in runs.values() for r in rows]
        cos = D.pooled_grad_cosine(all_rows)
        seed_cos = [v["cosine"] for v in per_seed[arm].values() if v["cosine"] is not None]
        points = [pt for rows in runs.values() for pt in step_points(rows)]
        per_arm[arm] = {"seeds": sorted(runs), "cosine": None if cos is None else cos[0],
                        "cosine_updates": 0 if cos is None else cos[1], "step_points": points,
                        "k": direction_loss_per_clip_rate(points),
                        "cosine_over_seeds": mean_interval(seed_cos) if seed_cos else None,
                        **length_measures(*merged_counts(list(runs.values())))}
    pairs = {}
    if PRIMARY in per_seed:
        for arm in arms:
            if arm == PRIMARY:
                continue
            out = {}
            for metric in ("cosine", "lre", "k", "cosine_step1", "k_after_step1"):
                diffs = [per_seed[PRIMARY][s][metric] - per_seed[arm][s][metric] for s in per_seed[PRIMARY]
                         if s in per_seed[arm] and per_seed[PRIMARY][s].get(metric) is not None
                         and per_seed[arm][s].get(metric) is not None]
                out[metric] = mean_interval(diffs) if diffs else None
                if out[metric]:
                    out[metric]["mde80"] = mde80(out[metric])
            pairs[arm] = out
        adj = holm([p["cosine"]["p"] if p["cosine"] else None for p in pairs.values()])
        for p, a in zip(pairs.values(), adj):
            p["cosine_p_holm"] = a
    both = [a for a in arms if per_arm[a].get("lre") is not None and per_arm[a]["cosine"] is not None]
    rho = spearman([per_arm[a]["lre"] for a in both], [per_arm[a]["cosine"] for a in both])
    return {"study": str(study), "arms": per_arm, "per_seed": per_seed, "primary": PRIMARY,
            "paired_vs_primary": pairs, "spearman_lre_cosine": rho, "arms_in_spearman": both,
            "events_against_study1": events_against(per_arm, earlier) if earlier else None}


def _f(x, d=3) -> str:
    return "—" if x is None else f"{x:.{d}f}"


def _ci(m: dict | None, d=3) -> str:
    if not m:
        return "—"
    ci = m.get("ci95")
    return f"{m['mean']:+.{d}f}" + (f" [{ci[0]:+.{d}f}, {ci[1]:+.{d}f}]" if ci else "")


def print_summary(s: dict, out=sys.stdout) -> None:
    print(f"arm        clip rate  LRE    floor (mean, q95)  log(long/short rate) [95%]   slope on log L [95%]"
          f"      cosine (updates)  cosine over seeds", file=out)
    for arm, a in s["arms"].items():
        fl, lr, sl = a.get("lre_floor"), a.get("log_ratio"), a.get("slope")
        lr_s = "—" if not lr else f"{lr['log_ratio']:+.2f} [{lr['ci95'][0]:+.2f}, {lr['ci95'][1]:+.2f}]"
        sl_s = "—" if not sl else f"{sl['slope']:+.2f} [{sl['ci95'][0]:+.2f}, {sl['ci95'][1]:+.2f}]"
        print(f"{arm:10s} {_f(a.get('clip_rate'))}      {_f(a.get('lre'))}  "
              f"{_f(fl and fl['mean'])}, {_f(fl and fl['q95'])}"
              f"       {lr_s:28s} {sl_s:24s}  {_f(a['cosine'])} ({a['cosine_updates']})   "
              f"{_ci(a['cosine_over_seeds'])}", file=out)
    print("clipped events / sequence-updates per length bin, all seeds:", file=out)
    for arm, a in s["arms"].items():
        bins = a.get("bins", {})
        print(f"  {arm:10s} " + ", ".join(f"{b}: {v['clipped']:.1f}/{v['sequences']:.0f}" for b, v in bins.items()),
              file=out)
    if s.get("events_against_study1"):
        print("clipped events per length bin: this study / study 1 (ratio; the design asked for >= 5x):", file=out)
        for arm, rows in s["events_against_study1"].items():
            print(f"  {arm:10s} " + ", ".join(f"{b}: {v['here']:.1f}/{v['earlier']:.1f} ({_f(v['ratio'], 1)}x)"
                                              for b, v in rows.items()), file=out)
    if s["paired_vs_primary"]:
        print(f"paired by seed, {s['primary']} − arm: cosine [95%] (Holm p, mde80) | LRE [95%] (mde80)", file=out)
        for arm, p in s["paired_vs_primary"].items():
            c, lr = p["cosine"] or {}, p["lre"] or {}
            print(f"  {s['primary']} − {arm:10s} cosine {_ci(p['cosine'])} (p_holm {_f(p['cosine_p_holm'])}, "
                  f"mde80 {_f(c.get('mde80'))}) | LRE {_ci(p['lre'])} (mde80 {_f(lr.get('mde80'))})", file=out)
    print(f"Spearman rank correlation of pooled LRE and cosine over {len(s['arms_in_spearman'])} arms: "
          f"{_f(s['spearman_lre_cosine'], 2)} (negative: the lower-LRE rule has the higher cosine)", file=out)
    print("added after the runs: k = Σ(1 − cosine) / Σ clip rate over the steps (direction lost per unit of "
          "clip rate; lower is better)", file=out)
    for arm, a in s["arms"].items():
        print(f"  {arm:10s} k {_f(a.get('k'))}", file=out)
    for arm, p in s["paired_vs_primary"].items():
        k = p.get("k") or {}
        print(f"  {s['primary']} − {arm:10s} k {_ci(p.get('k'))} (p {_f(k.get('p'))}, mde80 {_f(k.get('mde80'))})",
              file=out)
    print("added after the runs: the first step alone (the step where every rule clips most, at the most similar "
          "rates); per seed (clip rate, cosine):", file=out)
    for arm, seeds in s["per_seed"].items():
        print(f"  {arm:10s} " + ", ".join(f"seed {seed}: ({_f(v.get('clip_rate_step1'))}, {_f(v.get('cosine_step1'))})"
                                          for seed, v in seeds.items()), file=out)
    for arm, p in s["paired_vs_primary"].items():
        c1 = p.get("cosine_step1") or {}
        print(f"  {s['primary']} − {arm:10s} step-1 cosine {_ci(p.get('cosine_step1'))} (p {_f(c1.get('p'))}, "
              f"mde80 {_f(c1.get('mde80'))})", file=out)
    print("added after the runs: k over steps 2 on (step 1 left out, where the points bend), per seed:", file=out)
    for arm, seeds in s["per_seed"].items():
        print(f"  {arm:10s} " + ", ".join(f"seed {seed}: {_f(v.get('k_after_step1'), 2)}" for seed, v in seeds.items()),
              file=out)
    for arm, p in s["paired_vs_primary"].items():
        k1 = p.get("k_after_step1") or {}
        print(f"  {s['primary']} − {arm:10s} k after step 1 {_ci(p.get('k_after_step1'))} (p {_f(k1.get('p'))}, "
              f"mde80 {_f(k1.get('mde80'))})", file=out)


def plot(s: dict, path: Path) -> None:
    """Per step: 1 − cosine against the clip rate, one colour per arm, with each arm's line k·rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    top = max((r for a in s["arms"].values() for r, _, _ in a["step_points"]), default=0.0) or 1.0
    for arm, a in s["arms"].items():
        pts = a["step_points"]
        line = ax.plot([r for r, _, _ in pts], [1 - c for _, c, _ in pts], "o", ms=4, alpha=0.7,
                       label=f"{arm} (k {_f(a.get('k'), 2)})")[0]
        if a.get("k") is not None:
            ax.plot([0, top], [0, a["k"] * top], "-", color=line.get_color(), lw=1)
    ax.set_xlabel("share of the step's off-policy sequence-updates clipped")
    ax.set_ylabel("1 − cosine(clipped, unclipped gradient)")
    ax.set_title("Gradient direction lost against clip rate, per step (all seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path)
    p.add_argument("--plot", type=Path, default=None, help="write the per-step cosine against clip rate here (PNG)")
    p.add_argument("--study1", type=Path, default=STUDY1,
                   help="study 1's summary.json, for the clipped events per bin against it (default: %(default)s)")
    args = p.parse_args(argv)
    earlier = None
    if args.study1.is_file():
        earlier = json.loads(args.study1.read_text()).get("arms")
    else:
        print(f"summarize.py: {args.study1} not found; the events against study 1 are left out", file=sys.stderr)
    s = summarize(args.study, earlier)
    if not s["arms"]:
        print(f"summarize.py: no runs with metrics.jsonl under {args.study}", file=sys.stderr)
        return 2
    (args.study / "summary.json").write_text(json.dumps(s, indent=1))
    print_summary(s)
    print(f"written: {args.study / 'summary.json'}")
    if args.plot:
        plot(s, args.plot)
        print(f"written: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
