"""Run a paired seed study: every arm x seed as an ordinary run directory, trained in this process,
evaluated on the held-out set, each seed's untrained starting policy evaluated once, then compared with
paired intervals (results.py, table.py; docs/compare.md).

    output_dir/ARM/seed-S/      a run directory (config.yaml, metrics.jsonl, checkpoints/, final/) + eval.json
    output_dir/untrained/seed-S/eval.json   the starting policy's evaluation for seed S
    output_dir/primary.json     the primary metrics and how many runs had trained when they were declared
    output_dir/comparison.json  per-run metrics, per-arm means, paired differences vs the first arm

Resumable and idempotent: a run with final/ and an eval.json of the same evaluation settings is reused
untouched (an untrained evaluation likewise); a run with checkpoints and no final/ is resumed; a fresh run
that only trains longer than an earlier arm's run of its seed starts from that run's last checkpoint
(`start_from_shorter_run`: a `warmup: {steps: 0}` arm's warm-up is not redone by the RL arm); a rerun of
a finished study only re-aggregates. Once every arm of a seed is done, the checkpoints/ of the seed's runs are
deleted (`prune_checkpoints`; final/ stays) unless the spec says `keep_checkpoints: true`: a finished run needs
them only to train further, and a SmolLM2 run's last checkpoint is 1.6 GB. Simplifications: one process (no data parallelism inside a study);
runs go one after the other, seed-major (the seed's untrained evaluation, then every arm of seed 0, then
of seed 1, ...), so a partial study is already paired; a run's wall time is the sum of its logged step
times (model loading and evaluation are apart).
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

from fairalign.compare.results import (
    EVAL_FILE,
    PRIMARY_FILE,
    aggregate,
    eval_settings,
    read_eval,
    starting_policy,
)
from fairalign.compare.spec import UNTRAINED, Study, load_study, training_differences
from fairalign.compare.table import format_table
from fairalign.config import Config, build_config, load_yaml, to_dict
from fairalign.config.paths import absolute_paths
from fairalign.errors import ConfigError, EnvironmentFault, TrainingError
from fairalign.train.logging import format_duration
from fairalign.train.trainer import TrainerCallback

PARTIAL_EVAL_FILE = "eval.partial.jsonl"  # the finished parts of an evaluation a fault stopped (eval/partial.py)
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
        ev = read_eval(run_dir)
        evaluated = ev is not None and "metrics" in ev and ev.get("eval_settings") == eval_settings(study, cfg)
        return ("done" if evaluated else "evaluate"), cfg.steps
    ckpts = list_checkpoints(run_dir)
    return ("resume", ckpts[-1][0]) if ckpts else ("fresh", 0)


def _get(cfg: Config, dotted: str):
    node = to_dict(cfg)
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def untrained_done(study: Study, seed: int) -> bool:
    """Whether seed's untrained evaluation exists for the current starting policy and evaluation settings."""
    ev = read_eval(study.untrained_dir(seed))
    cfg = study.configs[study.arms[0]][seed]
    return ev is not None and "metrics" in ev and ev.get("starting_policy") == starting_policy(study, cfg)


def declare_primary(study: Study, runs_trained: int, runs_evaluated: int) -> dict:
    """output_dir/primary.json: the primary metrics (and derived definitions) with the number of runs that
    had trained (their training metrics visible) and that had been evaluated (their held-out metrics
    visible) when they were first declared in this form; a changed declaration is recorded anew, the
    earlier ones kept under "previous"."""
    path = study.output_dir / PRIMARY_FILE
    now = {"primary": list(study.primary), "default": study.primary_default, "derived": dict(study.derived)}
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and {k: old.get(k) for k in now} == now:
        return old
    previous = []
    if isinstance(old, dict):
        previous = [{k: old.get(k) for k in (*now, "runs_trained_before", "runs_evaluated_before")},
                    *old.get("previous", [])]
    record = {**now, "runs_trained_before": runs_trained, "runs_evaluated_before": runs_evaluated,
              "runs": len(study.arms) * len(study.seeds), "previous": previous}
    _write_json(path, record)
    return record


# ---------------------------------------------------------------------------------------------
# progress: one plain line per finished step, with the whole study's ETA

class StudyProgress:
    def __init__(self, study: Study, done: dict, evals_left: int, stream=None, arms: list[str] | None = None):
        """`arms`: the arms whose steps count (default every arm of the study)."""
        arms = list(study.arms if arms is None else arms)
        self.stream = stream or sys.stdout
        self.total = {a: sum(study.configs[a][s].steps for s in study.seeds) for a in arms}
        self.done = {a: sum(done[(a, s)] for s in study.seeds) for a in arms}  # done: (arm, seed) -> steps
        self.step_s: dict[str, list[float]] = {a: [] for a in arms}
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
    again = study.rerun_command
    try:
        trainer.train()
    except StopRequested as e:  # a signal: the run wrote a checkpoint; the study resumes it when rerun
        raise StopRequested(f"{str(e).split('; resume with')[0]}; rerun `{again}` to continue the study",
                            e.exit_code - 128) from None
    except TrainingError as e:  # a remote service kept failing: checkpointed; the rerun resumes the run
        if not isinstance(e.__cause__, EnvironmentFault):
            raise
        raise TrainingError(f"[{arm} seed {seed}] {str(e).splitlines()[0]}\nits last completed step is "
                            f"checkpointed; once it works again, rerun `{again}` to continue the study") from e
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


def _evaluate_into(study: Study, cfg: Config, model, tokenizer, out_dir: Path, weights: str, **extra) -> dict:
    """`evaluate_policy` (-> `Task.evaluate`) of `model` with the study's eval settings, written to
    out_dir/eval.json with `extra`; the finished batches are kept while it runs, so a remote fault stops the
    study with a rerun hint and the rerun evaluates only the rest."""
    from fairalign.config.task import task_from_config
    from fairalign.eval.partial import PartialResults, evaluation_settings
    from fairalign.eval.run import evaluate_policy

    ecfg = build_config(to_dict(cfg), study.eval_overrides)
    parts = PartialResults(out_dir / PARTIAL_EVAL_FILE, evaluation_settings(ecfg, weights))
    try:
        res = evaluate_policy(model, tokenizer, task_from_config(ecfg), ecfg, parts=parts)
    except EnvironmentFault as e:
        raise parts.stopped(e, f"rerun `{study.rerun_command}` to continue the study") from e
    res["eval_settings"] = eval_settings(study, cfg)
    res.update(extra)
    _write_json(out_dir / EVAL_FILE, res)
    parts.finish()
    return res


def evaluate_run(study: Study, arm: str, seed: int, model, tokenizer) -> dict:
    """The task's evaluation of a trained run (`Task.evaluate`: held-out reward, or a dialogue task's own
    metrics), written to ARM/seed-S/eval.json with its settings."""
    run_dir = study.run_dir(arm, seed)
    return _evaluate_into(study, study.configs[arm][seed], model, tokenizer, run_dir, str(run_dir / "final"))


def evaluate_untrained(study: Study, seed: int) -> dict:
    """The baseline arm's starting policy (its model before any training step) evaluated as the runs of this
    seed are, written to untrained/seed-S/eval.json."""
    from fairalign.eval.run import load_policy_for_eval

    cfg = study.configs[study.arms[0]][seed]
    model, tok = load_policy_for_eval(build_config(to_dict(cfg), study.eval_overrides), None)
    res = _evaluate_into(study, cfg, model, tok, study.untrained_dir(seed), cfg.model,
                         starting_policy=starting_policy(study, cfg))
    del model, tok
    _free_memory()
    return res


def start_from_shorter_run(study: Study, arm: str, seed: int, out) -> bool:
    """A fresh run whose config differs from an earlier arm's run of the same seed only in `steps` (it has
    more) starts where that run ended: its last checkpoint (after a warm-up, `step-0`), the saved KL
    reference and the logs are copied into the new run's directory, which then resumes. Resuming is exact
    (tested), so this computes what training from scratch computes, without repeating the shared steps
    (e.g. an `rl` arm after a `warmup: {steps: 0}` arm does not redo the supervised warm-up). False when no
    such run has its checkpoint on disk."""
    import shutil

    from fairalign.train.checkpoint import list_checkpoints

    cfg = study.configs[arm][seed]
    for other in study.arms[:study.arms.index(arm)]:
        ocfg = study.configs[other][seed]
        if ocfg.steps >= cfg.steps or training_differences(ocfg, cfg) != ["steps"]:
            continue
        found = dict(list_checkpoints(study.run_dir(other, seed))).get(ocfg.steps)
        if found is None:
            continue
        src, dst = study.run_dir(other, seed), study.run_dir(arm, seed)
        tmp = dst.with_name(dst.name + ".starting")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "checkpoints").mkdir(parents=True)
        shutil.copytree(found, tmp / "checkpoints" / found.name)
        for name in ("reference",):
            if (src / name).is_dir():
                shutil.copytree(src / name, tmp / name)
        for name in STALE_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        shutil.rmtree(dst, ignore_errors=True)  # a fresh run's directory holds no checkpoint: nothing is lost
        os.replace(tmp, dst)
        print(f"[{arm} seed {seed}] starts from [{other} seed {seed}]'s step {ocfg.steps} (the configs differ only "
              f"in steps)", file=out, flush=True)
        return True
    return False


def prune_checkpoints(study: Study, seed: int, out) -> None:
    """Delete the checkpoints/ folder of each finished, evaluated run of `seed` (final/ and the logs stay).
    Called once every arm of the seed is done, so no later arm of the seed can start from them. The folder is
    renamed before it is deleted: a kill part-way leaves no half checkpoint that --resume would look at."""
    import shutil

    freed, runs = 0, []
    for arm in study.arms:
        run_dir = study.run_dir(arm, seed)
        if not ((run_dir / "final").is_dir() and read_eval(run_dir) is not None):
            continue
        doomed = run_dir / "checkpoints.deleting"  # a deletion a kill interrupted
        if (run_dir / "checkpoints").is_dir():
            shutil.rmtree(doomed, ignore_errors=True)
            os.replace(run_dir / "checkpoints", doomed)
            runs.append(arm)
        if doomed.exists():
            freed += sum(f.stat().st_size for f in doomed.rglob("*") if f.is_file())
            shutil.rmtree(doomed)
    if runs:
        print(f"[seed {seed}] deleted the checkpoints of {', '.join(runs)} ({freed / 2**30:.2f} GiB; final/ and the "
              f"logs stay; `keep_checkpoints: true` in the spec keeps them)", file=out, flush=True)


# ---------------------------------------------------------------------------------------------
# the study

def run_study(spec_path: str | Path, overrides: list[str] | None = None, *, stream=None, rerun: str = "") -> dict:
    """Validate the spec, evaluate each seed's untrained policy, train / resume / reuse every run, evaluate,
    aggregate; returns comparison.json's content (also written to output_dir/comparison.json) and prints
    the reading. `rerun`: the command a stop message tells the user to run again (a script that drives the
    study; default `fairalign compare SPEC KEY=VALUE...`)."""
    out = stream or sys.stdout
    t_start = time.perf_counter()
    study = load_study(spec_path, overrides)
    study.rerun = rerun
    plan = [(arm, seed) for seed in study.seeds for arm in study.arms]  # seed-major: pairs finish together
    states = {key: run_state(study, *key) for key in plan}  # every existing run checked before training any
    untrained_todo = [s for s in study.seeds if not untrained_done(study, s)]
    progress = StudyProgress(study, {k: v[1] for k, v in states.items()},
                             sum(1 for v in states.values() if v[0] != "done") + len(untrained_todo), stream=out)
    todo = [v[0] for v in states.values()]
    print(f"compare: {len(study.arms)} arms x {len(study.seeds)} seeds = {len(plan)} runs in {study.output_dir} "
          f"({todo.count('done')} done, {todo.count('evaluate')} to evaluate, {todo.count('resume')} to resume, "
          f"{todo.count('fresh')} to train), and the untrained policy of each seed ({len(untrained_todo)} to "
          f"evaluate)", file=out, flush=True)
    study.output_dir.mkdir(parents=True, exist_ok=True)
    declare_primary(study, sum(1 for v in states.values() if v[1] > 0), todo.count("done"))
    counts = {"trained": 0, "evaluated": 0, "reused": 0}
    touched: set[int] = set()  # seeds with a run trained or evaluated here (a rerun of a finished study deletes nothing)
    for arm, seed in plan:
        if arm == study.arms[0] and seed in untrained_todo:  # before the seed's first run
            res = evaluate_untrained(study, seed)
            progress.evaluated(res["eval_s"])
            print(f"[{UNTRAINED} seed {seed}] evaluated: {_headline(res)}", file=out, flush=True)
        state = states[(arm, seed)][0]
        if state == "done":
            counts["reused"] += 1
            _seed_finished(study, arm, seed, touched, out)
            continue
        if state == "fresh" and start_from_shorter_run(study, arm, seed, out):
            state = "resume"
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
        touched.add(seed)
        _seed_finished(study, arm, seed, touched, out)
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
          f"{counts['reused']} reused) and {len(study.seeds)} untrained evaluations ({len(untrained_todo)} made) in "
          f"{format_duration(time.perf_counter() - t_start)}; aggregation {comparison['aggregate_s']:.2f}s, report "
          f"{report_s:.2f}s; wrote {study.output_dir / 'comparison.json'}", file=out, flush=True)
    return comparison


def _seed_finished(study: Study, arm: str, seed: int, touched: set[int], out) -> None:
    """After the seed's last arm: its checkpoints go, unless the spec keeps them or nothing of the seed ran here."""
    if arm == study.arms[-1] and seed in touched and not study.keep_checkpoints:
        prune_checkpoints(study, seed, out)


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
