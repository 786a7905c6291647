"""Run a paired seed study: every arm x seed as an ordinary run directory, trained in this process,
evaluated on the held-out set, then compared with paired t intervals (docs/compare.md).

    output_dir/ARM/seed-S/      a run directory (config.yaml, metrics.jsonl, checkpoints/, final/) + eval.json
    output_dir/comparison.json  per-run metrics, per-arm means, paired differences vs the first arm

Resumable and idempotent: a run with final/ and an eval.json of the same evaluation settings is reused
untouched; a run with checkpoints and no final/ is resumed; a rerun of a finished study only
re-aggregates. Simplifications: one process (no data parallelism inside a study); runs go one after
the other, seed-major (every arm of seed 0, then of seed 1, ...), so a partial study is already paired;
a run's wall time is the sum of its logged step times (model loading and evaluation are apart).
"""
from __future__ import annotations

import gc
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from fairalign.compare.spec import Study, load_study, training_differences
from fairalign.compare.stats import METHOD, paired_differences, summarize
from fairalign.config import Config, build_config, load_yaml, to_dict
from fairalign.config.paths import absolute_paths
from fairalign.errors import ConfigError
from fairalign.train.logging import format_duration, read_jsonl
from fairalign.train.trainer import TrainerCallback

EVAL_FILE = "eval.json"
STALE_FILES = ("metrics.jsonl", "samples.jsonl", "sft_metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# the state of one run directory

def run_state(study: Study, arm: str, seed: int) -> tuple[str, int]:
    """("done" | "evaluate" | "resume" | "fresh", steps already trained). Raises ConfigError when the
    directory holds a run of another config."""
    from fairalign.train.checkpoint import list_checkpoints

    run_dir, cfg = study.run_dir(arm, seed), study.configs[arm][seed]
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return "fresh", 0
    try:
        old = build_config(load_yaml(saved))
    except ConfigError as e:
        raise ConfigError(f"run '{run_dir}': its config.yaml cannot be used ({e}); delete the run or choose another "
                          f"output_dir") from None
    diff = training_differences(old, absolute_paths(cfg))  # config.yaml holds absolute file paths
    if diff:
        k = diff[0]
        raise ConfigError(f"run '{run_dir}' was trained with another config: '{k}' is {_get(old, k)!r} there, "
                          f"{_get(cfg, k)!r} in the spec; delete the run or choose another output_dir")
    if (run_dir / "final").is_dir():
        ev = _read_eval(run_dir)
        evaluated = ev is not None and "metrics" in ev and ev.get("eval_settings") == eval_settings(study, cfg)
        return ("done" if evaluated else "evaluate"), cfg.steps
    ckpts = list_checkpoints(run_dir)
    return ("resume", ckpts[-1][0]) if ckpts else ("fresh", 0)


def _get(cfg: Config, dotted: str):
    node = to_dict(cfg)
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _read_eval(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return None


def eval_settings(study: Study, cfg: Config) -> dict:
    """What an evaluation depends on beyond the trained model (a different one re-evaluates)."""
    ecfg = build_config(to_dict(cfg), study.eval_overrides)
    return {"eval": to_dict(ecfg)["eval"], "eval_turns": ecfg.task_options.get("eval_turns"),
            "overrides": list(study.eval_overrides)}


# ---------------------------------------------------------------------------------------------
# progress: one plain line per finished step, with the whole study's ETA

class StudyProgress:
    def __init__(self, study: Study, done: dict, evals_left: int, stream=None):
        self.stream = stream or sys.stdout
        self.total = {a: sum(study.configs[a][s].steps for s in study.seeds) for a in study.arms}
        self.done = {a: sum(done[(a, s)] for s in study.seeds) for a in study.arms}  # done: (arm, seed) -> steps
        self.step_s: dict[str, list[float]] = {a: [] for a in study.arms}
        self.evals_left = evals_left
        self.eval_s: list[float] = []

    def step(self, arm: str, seed: int, step: int, steps: int, reward, seconds: float) -> None:
        self.done[arm] += 1
        self.step_s[arm].append(seconds)
        r = f"{reward:.3f}" if isinstance(reward, (int, float)) and math.isfinite(reward) else "nan"
        print(f"[{arm} seed {seed}] step {step}/{steps}  reward {r}  study {sum(self.done.values())}/"
              f"{sum(self.total.values())} steps, eta {format_duration(self.eta())}", file=self.stream, flush=True)

    def evaluated(self, seconds: float) -> None:
        self.evals_left = max(0, self.evals_left - 1)
        self.eval_s.append(seconds)

    def eta(self) -> float:
        measured = [t for ts in self.step_s.values() for t in ts]
        if not measured:
            return float("nan")
        overall = sum(measured) / len(measured)
        left = 0.0
        for a, ts in self.step_s.items():
            left += (self.total[a] - self.done[a]) * (sum(ts) / len(ts) if ts else overall)
        if self.eval_s:
            left += self.evals_left * sum(self.eval_s) / len(self.eval_s)
        return left


# ---------------------------------------------------------------------------------------------
# training and evaluating one run

def train_run(study: Study, arm: str, seed: int, resume: bool, progress: StudyProgress):
    """Train (or resume) one run in this process; returns (model, tokenizer) for its evaluation."""
    from fairalign.errors import StopRequested
    from fairalign.train.trainer import Trainer

    cfg, run_dir = study.configs[arm][seed], study.run_dir(arm, seed)
    if not resume:  # a run killed before its first checkpoint starts over: drop its partial logs
        for name in STALE_FILES:
            (run_dir / name).unlink(missing_ok=True)
    callback = _ProgressCallback(progress, arm, seed)
    trainer = Trainer(cfg, resume=resume, callbacks=[callback])
    callback.last = time.perf_counter()
    again = " ".join(["fairalign compare", str(study.path), *study.command_line])
    try:
        trainer.train()
    except StopRequested as e:  # a signal: the run wrote a checkpoint; the study resumes it when rerun
        raise StopRequested(f"{str(e).split('; resume with')[0]}; rerun `{again}` to continue the study",
                            e.exit_code - 128) from None
    trainer.dist.close()
    if trainer.stopped_by is not None:  # the signal came in the run's last step
        name = signal.Signals(trainer.stopped_by).name
        raise StopRequested(f"stopped by {name} after [{arm} seed {seed}] finished its last step (not evaluated "
                            f"yet); rerun `{again}` to continue the study", trainer.stopped_by)
    return trainer.dist.unwrap(trainer.model), trainer.tokenizer


class _ProgressCallback(TrainerCallback):
    """Reports each finished step of one run to the study's progress (the time between finished steps,
    checkpoint writes included)."""

    def __init__(self, progress: StudyProgress, arm: str, seed: int):
        self.progress, self.arm, self.seed = progress, arm, seed
        self.last = time.perf_counter()

    def on_step_end(self, trainer, metrics: dict) -> None:
        now = time.perf_counter()
        self.progress.step(self.arm, self.seed, trainer.step, trainer.cfg.steps, metrics.get("reward/mean"),
                           now - self.last)
        self.last = now


def load_final(cfg: Config, run_dir: Path):
    """(model, tokenizer) of a finished run's final/ folder, on the run's device."""
    from fairalign.eval.run import load_policy_for_eval

    return load_policy_for_eval(cfg, str(run_dir / "final"))


def evaluate_run(study: Study, arm: str, seed: int, model, tokenizer) -> dict:
    """The task's evaluation of a trained run (`Task.evaluate`: held-out reward, or a dialogue task's own
    metrics), written to ARM/seed-S/eval.json with its settings."""
    from fairalign.config.task import task_from_config
    from fairalign.eval.run import evaluate_policy

    cfg = study.configs[arm][seed]
    ecfg = build_config(to_dict(cfg), study.eval_overrides)
    res = evaluate_policy(model, tokenizer, task_from_config(ecfg), ecfg)
    res["eval_settings"] = eval_settings(study, cfg)
    _write_json(study.run_dir(arm, seed) / EVAL_FILE, res)
    return res


# ---------------------------------------------------------------------------------------------
# metrics of one run, from its metrics.jsonl and eval.json

def run_metrics(run_dir: Path, cfg: Config) -> dict:
    from fairalign.diagnostics import lre_from_pooled_counts

    by_step = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if isinstance(row.get("step"), int) and 0 < row["step"] <= cfg.steps:
            by_step[row["step"]] = row  # a resumed step's last line wins
    rows = [by_step[s] for s in sorted(by_step)]
    ev = _read_eval(run_dir) or {}
    m: dict[str, float] = dict(ev.get("metrics", {}))  # the task's own evaluation metrics (Task.evaluate)
    last = [r["reward/mean"] for r in rows[-max(1, cfg.steps // 5):] if _num(r.get("reward/mean"))]
    if last:
        m["train/reward_final"] = sum(last) / len(last)
    counts: dict[str, float] = {}
    clipped: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("clip_count/len/") and _num(v):
                b = k[len("clip_count/len/"):]
                counts[b] = counts.get(b, 0.0) + v
                c = r.get(f"clip_clipped/len/{b}")
                clipped[b] = clipped.get(b, 0.0) + (c if _num(c) else 0.0)
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


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# the study

def run_study(spec_path: str | Path, overrides: list[str] | None = None, *, stream=None) -> dict:
    """Validate the spec, train / resume / reuse every run, evaluate, aggregate; returns comparison.json's
    content (also written to output_dir/comparison.json) and prints the table."""
    out = stream or sys.stdout
    t_start = time.perf_counter()
    study = load_study(spec_path, overrides)
    plan = [(arm, seed) for seed in study.seeds for arm in study.arms]  # seed-major: pairs finish together
    states = {key: run_state(study, *key) for key in plan}  # every existing run checked before training any
    progress = StudyProgress(study, {k: v[1] for k, v in states.items()},
                             sum(1 for v in states.values() if v[0] != "done"), stream=out)
    todo = [v[0] for v in states.values()]
    print(f"compare: {len(study.arms)} arms x {len(study.seeds)} seeds = {len(plan)} runs in {study.output_dir} "
          f"({todo.count('done')} done, {todo.count('evaluate')} to evaluate, {todo.count('resume')} to resume, "
          f"{todo.count('fresh')} to train)", file=out, flush=True)
    counts = {"trained": 0, "evaluated": 0, "reused": 0}
    for arm, seed in plan:
        state = states[(arm, seed)][0]
        if state == "done":
            counts["reused"] += 1
            continue
        if state in ("fresh", "resume"):
            model, tok = train_run(study, arm, seed, state == "resume", progress)
            counts["trained"] += 1
        else:
            model, tok = load_final(study.configs[arm][seed], study.run_dir(arm, seed))
        res = evaluate_run(study, arm, seed, model, tok)
        progress.evaluated(res["eval_s"])
        counts["evaluated"] += 1
        print(f"[{arm} seed {seed}] evaluated: {_headline(res)}", file=out, flush=True)
        del model, tok
        _free_memory()
    t_agg = time.perf_counter()
    comparison = aggregate(study)
    comparison["wall_s"] = time.perf_counter() - t_start
    comparison["aggregate_s"] = time.perf_counter() - t_agg
    _write_json(study.output_dir / "comparison.json", comparison)
    print(format_table(comparison), file=out, flush=True)
    t_report = time.perf_counter()
    try:
        from fairalign.report import write_report
    except ImportError:  # the report module is optional here
        write_report = None
    if write_report is not None:
        write_report(study.output_dir)
    report_s = time.perf_counter() - t_report
    print(f"compare: {len(plan)} runs ({counts['trained']} trained, {counts['evaluated']} evaluated, "
          f"{counts['reused']} reused) in {format_duration(time.perf_counter() - t_start)}; aggregation "
          f"{comparison['aggregate_s']:.2f}s, report {report_s:.2f}s; wrote {study.output_dir / 'comparison.json'}",
          file=out, flush=True)
    return comparison


def aggregate(study: Study) -> dict:
    runs = {arm: {seed: run_metrics(study.run_dir(arm, seed), study.configs[arm][seed]) for seed in study.seeds}
            for arm in study.arms}
    baseline = study.arms[0]
    summary = {arm: {m: {k: v for k, v in s.items() if k != "p"} for m, s in summarize(runs[arm]).items()}
               for arm in study.arms}
    diffs = {arm: paired_differences(runs[arm], runs[baseline]) for arm in study.arms[1:]}
    return {
        "arms": list(study.arms), "seeds": list(study.seeds), "baseline": baseline,
        "runs": {arm: {str(seed): runs[arm][seed] for seed in study.seeds} for arm in study.arms},
        "arms_summary": summary, "differences": diffs, "method": METHOD,
        "spec": str(study.path), "overrides": list(study.overrides), "eval_overrides": list(study.eval_overrides),
    }


def _metric_order(name: str):
    prefixes = ("heldout/reward", "heldout/group/", "dialogue/avg", "dialogue/n_", "dialogue/al/", "heldout/",
                "train/", "lre/", "clip_rate/", "time/")
    rank = next((i for i, p in enumerate(prefixes) if name.startswith(p)), len(prefixes))
    tail = name.rsplit("/", 1)[-1]
    lead = tail.split("-")[0]
    return rank, int(lead) if lead.isdigit() else 0, name


def format_table(comparison: dict) -> str:
    """Metric rows; per arm: mean ± half-width of its 95% interval; per non-baseline arm: the paired
    difference vs the baseline with its interval and p."""
    arms, base = comparison["arms"], comparison["baseline"]
    summary, diffs = comparison["arms_summary"], comparison["differences"]
    metrics = sorted({m for a in arms for m in summary[a]}, key=_metric_order)
    header = ["metric", *arms, *(f"{a} - {base} [95% CI] p" for a in arms[1:])]
    lines = []
    for m in metrics:
        row = [m]
        for a in arms:
            s = summary[a].get(m)
            row.append("" if s is None else _pm(s))
        for a in arms[1:]:
            d = diffs[a].get(m)
            if d is None:
                row.append("")
            elif d["ci95"] is None:
                row.append(f"{d['mean']:+.3f} (n=1)")
            else:
                row.append(f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] p={d['p']:.3g}")
        lines.append(row)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    n = len(comparison["seeds"])
    title = f"paired comparison over {n} seed{'s' if n != 1 else ''} (baseline: {base}); mean ± 95% t half-width"
    return "\n".join([title, fmt(header), *(fmt(r) for r in lines)])


def _pm(s: dict) -> str:
    if s["ci95"] is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ± {(s['ci95'][1] - s['ci95'][0]) / 2:.3f}"


def _headline(res: dict) -> str:
    if res.get("kind") == "dialogue":
        nan = float("nan")
        return f"AVG {res.get('avg', nan):.2f}  N-IR {res.get('n_ir', nan):.3f}  ({res['eval_s']:.1f}s)"
    groups = "  ".join(f"{g} {v:.3f}" for g, v in res.get("by_group", {}).items())
    return f"held-out reward {res['mean']:.3f}  ({groups})  ({res['eval_s']:.1f}s)"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite_or_null(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite_or_null(v):
    """JSON has no NaN / inf: write null for them (as metrics.jsonl does)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_null(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_null(x) for x in v]
    return v


def _free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
