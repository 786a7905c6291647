"""A study's results: each run's metrics (from its metrics.jsonl and eval.json), the untrained policy's
evaluation per seed, and their aggregation into comparison.json (per-arm means, paired differences vs the
baseline and vs the untrained policy, mde80, Holm-adjusted p of the primary metrics, and for dialogue
metrics the two-level bootstrap over seeds x profiles). Reads files only; docs/compare.md.

Simplifications: a derived metric is the plain mean of its parts in each run (no weighting by how many
held-out examples each part rests on); the untrained row is the baseline arm's starting policy, and an arm
whose starting policy or evaluation differs from the baseline's (another model, task, generation length
or evaluation) gets no difference to it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from fairalign.compare.bootstrap import dialogue_bootstrap
from fairalign.compare.spec import Study
from fairalign.compare.stats import METHOD, holm, paired_differences, summarize
from fairalign.compare.table import declared, reading
from fairalign.config import Config, build_config, to_dict
from fairalign.train.logging import read_jsonl

EVAL_FILE = "eval.json"
PRIMARY_FILE = "primary.json"
BOOTSTRAP_METHOD = ("dialogue metrics (dialogue/*, and derived metrics made of them): 95% interval, mde80 and p "
                    "from a two-level paired bootstrap: resample seeds, then profiles (one draw shared by every "
                    "seed when all seeds evaluated the same profiles, else one per seed), recompute AL(k), AVG, "
                    "N-IR, N-R² of both arms from the same dialogues, average the differences over the drawn "
                    "seeds; percentile interval, mde80 = (z_0.975 + z_0.80) · bootstrap se, p = 2 · (1 + the smaller "
                    "count of draws on either side of 0) / (resamples + 1).")


def read_eval(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return None


def eval_settings(study: Study, cfg: Config) -> dict:
    """What an evaluation depends on beyond the trained model (a different one re-evaluates)."""
    ecfg = build_config(to_dict(cfg), study.eval_overrides)
    return {"eval": to_dict(ecfg)["eval"], "eval_turns": ecfg.task_options.get("eval_turns"),
            "overrides": list(study.eval_overrides)}


def starting_policy(study: Study, cfg: Config) -> dict:
    """What the untrained policy's evaluation of a run's seed depends on: the starting model, the task, the
    evaluation's generation settings and the evaluation settings (a different one re-evaluates)."""
    d = to_dict(build_config(to_dict(cfg), study.eval_overrides))
    keys = ("model", "trust_remote_code", "seed", "task", "task_options", "task_reward", "task_reward_weights",
            "group_column", "on_reward_error")
    return {**{k: d.get(k) for k in keys},
            "rollout": {k: d["rollout"].get(k) for k in ("max_new_tokens", "top_p", "chat_template")},
            "eval_settings": eval_settings(study, cfg)}


def comparable_arms(study: Study) -> list[str]:
    """The arms that start from the baseline's starting policy and evaluate as it does (so arm − untrained
    is a paired difference)."""
    seed = study.seeds[0]
    ref = starting_policy(study, study.configs[study.arms[0]][seed])
    return [a for a in study.arms if starting_policy(study, study.configs[a][seed]) == ref]


def run_metrics(run_dir: Path, cfg: Config) -> dict:
    from fairalign.diagnostics import lre_from_pooled_counts, pooled_clip_counts

    by_step = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if isinstance(row.get("step"), int) and 0 < row["step"] <= cfg.steps:
            by_step[row["step"]] = row  # a resumed step's last line wins
    rows = [by_step[s] for s in sorted(by_step)]
    ev = read_eval(run_dir) or {}
    m: dict[str, float] = dict(ev.get("metrics", {}))  # the task's own evaluation metrics (Task.evaluate)
    rewards = [r["reward/mean"] for r in rows if _num(r.get("reward/mean"))]
    if rewards:
        m["train/reward_mean"] = sum(rewards) / len(rewards)  # the whole run: the same prompts in every arm
    last = [r["reward/mean"] for r in rows[-max(1, cfg.steps // 5):] if _num(r.get("reward/mean"))]
    if last:
        m["train/reward_final"] = sum(last) / len(last)
    counts, clipped = pooled_clip_counts(rows)
    if any(v > 0 for v in counts.values()):
        m["lre/pooled"] = lre_from_pooled_counts(counts, clipped)
        m["clip_rate/pooled"] = sum(clipped.values()) / sum(counts.values())  # every bin, sequence units
        for b in sorted(counts, key=lambda x: int(x.split("-")[0])):
            if counts[b] > 0:
                m[f"clip_rate/len/{b}"] = clipped[b] / counts[b]
    train_s = sum(r["step_s"] for r in rows if _num(r.get("step_s")))
    m["time/train_s"] = train_s
    if _num(ev.get("eval_s")):
        m["time/eval_s"] = ev["eval_s"]
    m["time/wall_s"] = train_s + (ev.get("eval_s") or 0.0)
    return {k: float(v) for k, v in m.items() if _num(v)}


def with_derived(metrics: dict, derived: dict[str, list[str]]) -> dict:
    """`metrics` plus each derived metric whose parts are all present (their mean)."""
    out = dict(metrics)
    for name, parts in derived.items():
        if all(_num(metrics.get(p)) for p in parts):
            out[name] = sum(metrics[p] for p in parts) / len(parts)
    return out


def _dialogues(run_dir: Path) -> list | None:
    ev = read_eval(run_dir) or {}
    return ev.get("dialogues") if ev.get("kind") == "dialogue" and isinstance(ev.get("dialogues"), list) else None


def _bootstrap_into(target: dict, arm: dict, base: dict | None, derived: dict, *, difference: bool) -> None:
    """Replace the t interval of every dialogue metric in `target` ({metric: entry}) by the two-level
    bootstrap's, when every seed of the entry has per-dialogue records."""
    arm = {s: d for s, d in arm.items() if d}
    if base is not None:
        base = {s: d for s, d in base.items() if d}
    boot = dialogue_bootstrap(arm, base, derived) if arm else None
    for m, b in (boot or {}).items():
        entry = target.get(m)
        if entry is None or entry.get("n") != b["n"]:
            continue
        new = {"mean": entry["mean"], "ci95": b["ci95"], "n": b["n"], "sd": entry.get("sd"), "se": b["se"],
               "profiles": b["profiles"], "design": b["design"], "method": "bootstrap", "resamples": b["resamples"]}
        if difference:
            new.update(p=b["p"], mde80=b["mde80"])
        target[m] = new


def _summary(runs: dict) -> dict:
    return {m: {k: v for k, v in s.items() if k != "p"} for m, s in summarize(runs).items()}


def aggregate(study: Study) -> dict:
    """comparison.json's content from the run directories and untrained evaluations on disk."""
    arms, seeds, base, derived = study.arms, study.seeds, study.arms[0], study.derived
    runs = {a: {s: with_derived(run_metrics(study.run_dir(a, s), study.configs[a][s]), derived) for s in seeds}
            for a in arms}
    untrained = {}
    for s in seeds:
        ev = read_eval(study.untrained_dir(s))
        if ev is not None and isinstance(ev.get("metrics"), dict):
            untrained[s] = with_derived({k: float(v) for k, v in ev["metrics"].items() if _num(v)}, derived)
    summary = {a: _summary(runs[a]) for a in arms}
    diffs = {a: paired_differences(runs[a], runs[base]) for a in arms[1:]}
    comparable = comparable_arms(study) if untrained else []
    learned = {a: paired_differences(runs[a], untrained) for a in comparable}
    untrained_summary = _summary(untrained) if untrained else {}

    dialogues = {a: {s: _dialogues(study.run_dir(a, s)) for s in seeds} for a in arms}
    if any(d for per in dialogues.values() for d in per.values()):
        start = {s: _dialogues(study.untrained_dir(s)) for s in untrained}
        for a in arms:
            _bootstrap_into(summary[a], dialogues[a], None, derived, difference=False)
            if a != base:
                _bootstrap_into(diffs[a], dialogues[a], dialogues[base], derived, difference=True)
            if a in learned:
                _bootstrap_into(learned[a], dialogues[a], start, derived, difference=True)
        _bootstrap_into(untrained_summary, start, None, derived, difference=False)

    family = [(a, m) for a in arms[1:] for m in study.primary]
    if len(family) > 1:  # Holm over arms x primary metrics
        for (a, m), p in zip(family, holm([diffs[a].get(m, {}).get("p") for a, m in family])):
            if m in diffs[a]:
                diffs[a][m]["p_adj"] = p
    method = METHOD + (" " + BOOTSTRAP_METHOD if any(d.get("method") == "bootstrap" for x in diffs.values()
                                                    for d in x.values()) else "")
    out = {
        "arms": list(arms), "seeds": list(seeds), "baseline": base,
        "primary": list(study.primary), "primary_default": study.primary_default,
        "primary_declared": _read_json(study.output_dir / PRIMARY_FILE), "derived": derived,
        "runs": {a: {str(s): runs[a][s] for s in seeds} for a in arms},
        "arms_summary": summary, "differences": diffs,
        "untrained": {"policy_of": base, "arms": comparable, "runs": {str(s): untrained[s] for s in untrained},
                      "summary": untrained_summary, "differences": learned},
        "method": method, "spec": str(study.path), "overrides": list(study.overrides),
        "eval_overrides": list(study.eval_overrides),
    }
    out["primary_status"] = declared(out)
    out["reading"] = reading(out)  # one sentence per primary comparison (table.py)
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
