"""The study spec of `fairalign compare SPEC.yaml [KEY=VALUE ...]`, validated whole before anything trains.

    output_dir: runs/cmp-pgrpo          # the study folder (default runs/<spec file name>)
    seeds: [0, 1, 2, 3, 4]              # or a count: 5 = [0, 1, 2, 3, 4]
    preset: rlpa-smollm2-cpu            # optional: base starts from this preset (its output_dir dropped)
    base: {model: smollm2-135m, task: personas, steps: 20}   # config keys, nested or dotted
    arms:                               # first arm = the baseline of the paired differences
      grpo:  {algo.advantage: grpo}     # {} = the base as it is (no two arms may train the same config)
      pgrpo: {algo.advantage: pgrpo}
    eval: {examples: 64}                # held-out evaluation (eval.* keys; rlpa: profiles, turns)
    save_every: 4                       # checkpoint interval of every run (default max(1, steps // 5))
    keep_checkpoints: false             # default: a seed's finished runs drop checkpoints/ (final/ stays)
    derived: {heldout/minorities: [heldout/group/casual, heldout/group/formal]}  # per-run means of metrics
    primary: [heldout/minorities, heldout/reward]   # fixed before the run; the reading leads with them

`primary:` names metrics the study will produce (checked here against the task's evaluation and the
training metrics, where the task's evaluation is known before it runs: the default held-out evaluation
and RLPA's); without it, the task's headline metric (heldout/reward, or dialogue/avg for RLPA) is the
primary one. `derived:` defines a metric as the mean of others in each run. "untrained" names the
starting policy's evaluation and cannot be an arm.

A run's config is `build_config(preset merged with base, merged with the arm, overrides + [seed=S,
output_dir=...])` (a preset's own output_dir is left out: the study sets it); the
KEY=VALUE pairs of the command line are config overrides applied to every run, except `output_dir=`
and `seeds=`, which replace the spec's. Every mistake is a ConfigError of one line that names the spec
file and the key.
"""
from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fairalign.config import (
    Config,
    build_config,
    load_yaml,
    nest,
    parse_override,
    to_dict,
)
from fairalign.config.presets import get_preset, merge
from fairalign.errors import ConfigError

SPEC_KEYS = ("output_dir", "seeds", "preset", "base", "arms", "eval", "save_every", "keep_checkpoints", "primary",
             "derived")
# spec `eval:` aliases (the flags of `fairalign eval-dialogue`); other keys are eval.* unless dotted
EVAL_ALIASES = {"profiles": "eval.examples", "turns": "task_options.eval_turns"}
EVAL_KEYS = ("eval.", "task_options.eval_turns")
# keys that do not change what a run computes: where it writes, how it runs (algo.micro_batch_size only splits a
# minibatch into forwards; the update is micro-batch invariant, tested), and evaluation-only settings
NON_TRAINING_KEYS = ("output_dir", "save_every", "keep_last", "log.", "eval.", "dist_strategy", "device", "threads",
                     "cpu_allocator", "reward_timeout_s", "task_options.eval_turns", "algo.micro_batch_size")
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
UNTRAINED = "untrained"  # the starting policy's evaluation: output_dir/untrained/seed-S/eval.json
# metrics every run has (from metrics.jsonl and eval.json), and those that exist when something could clip
RUN_METRICS = ("train/reward_final", "train/reward_mean", "time/train_s", "time/eval_s", "time/wall_s")
CLIP_METRICS = re.compile(r"^(lre/pooled|clip_rate/pooled|clip_rate/len/\d+-\d+)$")
METRIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./+-]*$")


@dataclass
class Study:
    """A validated spec: the configs of every (arm, seed) run, built and checked."""
    path: Path
    output_dir: Path
    seeds: list[int]
    arms: list[str]
    configs: dict[str, dict[int, Config]]          # arm -> seed -> run config
    eval_overrides: list[str] = field(default_factory=list)  # applied to a run's config for its evaluation
    spec: dict = field(default_factory=dict)       # the spec as read, for the record
    overrides: list[str] = field(default_factory=list)
    command_line: list[str] = field(default_factory=list)  # the KEY=VALUE pairs as given
    primary: list[str] = field(default_factory=list)       # metric names fixed before the run
    primary_default: bool = False                          # True: no primary: in the spec, the task's headline
    derived: dict[str, list[str]] = field(default_factory=dict)  # name -> metrics it is the per-run mean of
    keep_checkpoints: bool = False  # False: once every arm of a seed is done, its runs' checkpoints/ are deleted
    rerun: str = ""  # the command that continues the study, for its stop messages ("" = fairalign compare ...)

    @property
    def rerun_command(self) -> str:
        """What a user runs to continue the study after a stop: `rerun`, else `fairalign compare SPEC KEY=VALUE..`."""
        return self.rerun or " ".join(["fairalign compare", str(self.path), *self.command_line])

    def run_dir(self, arm: str, seed: int) -> Path:
        return self.output_dir / arm / f"seed-{seed}"

    def untrained_dir(self, seed: int) -> Path:
        return self.output_dir / UNTRAINED / f"seed-{seed}"


def undot(data: dict) -> dict:
    """A mapping whose keys may be dotted ("algo.advantage") or nested, as one nested mapping."""
    out: dict = {}
    for k, v in data.items():
        if isinstance(v, dict):
            v = undot(v)
        out = merge(out, nest(str(k), v))
    return out


def flatten(data: dict, prefix: str = "") -> dict:
    """Nested mapping -> {dotted key: leaf value}."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def training_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs, leaving out those that do not change training."""
    fa, fb = flatten(to_dict(a)), flatten(to_dict(b))
    return [k for k in sorted(set(fa) | set(fb)) if not k.startswith(NON_TRAINING_KEYS) and fa.get(k) != fb.get(k)]


def load_study(path: str | Path, cli: list[str] | None = None) -> Study:
    path = Path(path)
    spec = load_yaml(path)
    where = f"spec '{path}'"

    def fail(msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    overrides = []
    spec = copy.deepcopy(spec)
    for ov in cli or []:
        key, value = parse_override(ov)
        if key in ("output_dir", "seeds"):
            spec[key] = value
        else:
            overrides.append(ov)
    for k in spec:
        if k not in SPEC_KEYS:
            raise fail(f"unknown key '{k}'; a spec has {', '.join(SPEC_KEYS)} (config keys go under base: or an arm)")
    seeds = _seeds(spec.get("seeds"), fail)
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise fail(f"base must be a mapping of config keys, got {base!r}")
    arms = spec.get("arms")
    if not isinstance(arms, dict) or len(arms) < 2:
        raise fail("arms must map at least two arm names to their config changes (the first arm is the baseline), "
                   f"got {arms!r}")
    output_dir = Path(str(spec.get("output_dir") or f"runs/{path.stem}"))
    save_every = spec.get("save_every")
    if save_every is not None and (isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1):
        raise fail(f"save_every must be a positive integer, got {save_every!r}")
    keep_checkpoints = spec.get("keep_checkpoints", False)
    if not isinstance(keep_checkpoints, bool):
        raise fail(f"keep_checkpoints must be true or false, got {keep_checkpoints!r}")
    base = _nested(base, "base", fail)
    if spec.get("preset") is not None:  # the named recipe, under base:'s keys (the study sets seed and output_dir)
        base = merge(_preset(spec["preset"], fail), base)
    for reserved in ("seed", "output_dir"):
        if reserved in base or any(parse_override(o)[0] == reserved for o in overrides):
            raise fail(f"'{reserved}' is set by the study (seeds: / output_dir:), not in base: or on the command line")
    try:
        build_config(base, overrides)
    except ConfigError as e:
        raise fail(f"base{' + command line' if overrides else ''}: {e}") from None
    # the spec's eval: block, then the command line's evaluation keys (the command line wins)
    eval_overrides = _eval_overrides(spec.get("eval") or {}, fail)
    eval_overrides += [o for o in overrides if parse_override(o)[0].startswith(EVAL_KEYS)]

    configs: dict[str, dict[int, Config]] = {}
    for name, change in arms.items():
        name = str(name)
        if name == UNTRAINED:
            raise fail(f"arm name '{UNTRAINED}' is reserved: it names the starting policy's evaluation, which every "
                       f"study makes")
        if not ARM_NAME.match(name):
            raise fail(f"arm name '{name}' must be letters, digits, '_', '-', '.', '+' (it names a folder)")
        if change is None:
            raise fail(f"arm '{name}' names no change; give the keys it sets (the baseline too, e.g. "
                       f"{{algo.advantage: grpo}}), or {{}} for the base as it is")
        if not isinstance(change, dict):
            raise fail(f"arm '{name}' must be a mapping of config keys, got {change!r}")
        change = _nested(change, f"arm '{name}'", fail)
        for reserved in ("seed", "output_dir"):
            if reserved in change:
                raise fail(f"arm '{name}': '{reserved}' is set by the study (seeds: / output_dir:)")
        configs[name] = {}
        for seed in seeds:
            run_dir = output_dir / name / f"seed-{seed}"
            try:
                cfg = build_config(merge(base, change), [*overrides, f"seed={seed}", f"output_dir={run_dir}"])
                if cfg.save_every == 0:  # a study always checkpoints, so a killed study loses little
                    cfg.save_every = save_every or max(1, cfg.steps // 5)
                cfg.log.progress = False  # the study prints its own line per step
            except ConfigError as e:
                raise fail(f"arm '{name}': {e}") from None
            configs[name][seed] = cfg
    names = list(configs)
    try:  # the evaluation settings must be valid too
        build_config(to_dict(configs[names[0]][seeds[0]]), eval_overrides)
    except ConfigError as e:
        raise fail(f"eval: {e}") from None
    for i, a in enumerate(names):
        for b in names[:i]:
            if not training_differences(configs[a][seeds[0]], configs[b][seeds[0]]):
                raise fail(f"arms '{b}' and '{a}' train the same config (after the command-line overrides)")
    produced = {}  # arm -> the evaluation metrics it will produce (None: the task's own, unknown before it runs)
    for a in names:
        produced[a] = evaluation_metrics(build_config(to_dict(configs[a][seeds[0]]), eval_overrides))
    derived = _derived(spec.get("derived"), produced, fail)
    primary, default = _primary(spec.get("primary"), produced, derived, fail)
    return Study(path=path, output_dir=output_dir, seeds=seeds, arms=names, configs=configs,
                 eval_overrides=eval_overrides, spec=spec, overrides=overrides,
                 command_line=list(cli or []), primary=primary, primary_default=default, derived=derived,
                 keep_checkpoints=keep_checkpoints)


def evaluation_metrics(ecfg: Config) -> set[str] | None:
    """The metric names the task's evaluation will write for this (evaluation) config: the default
    held-out evaluation's (reward, response length, one per preference group evaluated; "heldout/group/*"
    when the task's own rollout names the groups) or RLPA's (AL(k) per turn; AVG, N-IR, N-R² from 2 turns
    on); None for a task with an evaluation of its own."""
    from fairalign.config.task import task_from_config
    from fairalign.envs import Task

    task = task_from_config(ecfg)
    if type(task).evaluate is Task.evaluate:
        if type(task).rollout is not Task.rollout:
            return {"heldout/reward", "heldout/response_length", "heldout/group/*"}
        try:
            chosen = task.evaluation_examples(ecfg.eval.examples)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        groups = sorted({str(ex.get("group", "all")) for ex in chosen})
        return {"heldout/reward", "heldout/response_length", *(f"heldout/group/{g}" for g in groups)}
    rlpa = sys.modules.get("fairalign.envs.rlpa.task")  # imported whenever the task is an RLPA task
    if rlpa is not None and isinstance(task, rlpa.RLPATask):
        turns = int(task.eval_turns)
        return {*(f"dialogue/al/{k}" for k in range(1, turns + 1)),
                *(("dialogue/avg", "dialogue/n_ir", "dialogue/n_r2") if turns >= 2 else ())}
    return None


def _known(name: str, produced: dict) -> bool:
    """Whether every arm will have `name` (a task with its own evaluation may produce anything)."""
    if name in RUN_METRICS or CLIP_METRICS.match(name):
        return True
    return all(p is None or name in p or any(e.endswith("*") and name.startswith(e[:-1]) for e in p)
               for p in produced.values())


def _unknown(name: str, produced: dict, extra=()) -> str:
    import difflib

    have = sorted(set.intersection(*[p for p in produced.values() if p is not None]) | set(RUN_METRICS) | set(extra))
    close = difflib.get_close_matches(name, have, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return (f"'{name}' is not a metric every arm of this study produces{hint} (they produce "
            f"{', '.join(have)}, and lre/pooled, clip_rate/pooled, clip_rate/len/<bin> when something clips)")


def _names(value, what: str, fail) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise fail(f"{what} must be a non-empty list of metric names, got {value!r}")
    if len(set(value)) != len(value):
        raise fail(f"{what} names a metric twice: {value!r}")
    return list(value)


def _derived(block, produced: dict, fail) -> dict[str, list[str]]:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise fail(f"derived must map new metric names to the metrics they are the mean of, got {block!r}")
    out = {}
    for name, parts in block.items():
        name = str(name)
        if not METRIC_NAME.match(name):
            raise fail(f"derived: '{name}' is not a metric name (letters, digits, '_', '.', '/', '+', '-')")
        taken = any(p is not None and _known(name, {0: p}) for p in produced.values())
        if taken or name in RUN_METRICS or CLIP_METRICS.match(name):
            raise fail(f"derived: '{name}' is already a metric of the study; choose another name")
        parts = _names(parts, f"derived: '{name}'", fail)
        for p in parts:
            if not _known(p, produced):
                raise fail(f"derived: '{name}': {_unknown(p, produced)}")
        out[name] = parts
    return out


def _primary(value, produced: dict, derived: dict, fail) -> tuple[list[str], bool]:
    if value is None:  # the task's headline metric, when its evaluation is known
        known = [p for p in produced.values() if p is not None]
        for headline in ("heldout/reward", "dialogue/avg"):
            if known and all(headline in p for p in known):
                return [headline], True
        return [], True
    names = _names(value, "primary", fail)
    for n in names:
        if n not in derived and not _known(n, produced):
            raise fail(f"primary: {_unknown(n, produced, extra=derived)}")
    return names, False


def _seeds(value, fail) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = list(range(value))
    if not isinstance(value, list) or not value:
        raise fail(f"seeds must be a non-empty list of integers (or a count), got {value!r}")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in value):
        raise fail(f"seeds must be integers, got {value!r}")
    if len(set(value)) != len(value):
        raise fail(f"seeds has a repeated seed: {value!r}")
    return list(value)


def _preset(name, fail) -> dict:
    """The preset's config keys without output_dir and seed (the study's)."""
    if not isinstance(name, str):
        raise fail(f"preset must be the name of a preset, got {name!r}")
    try:
        keys = get_preset(name)
    except ConfigError as e:
        raise fail(f"preset: {e}") from None
    return {k: v for k, v in keys.items() if k not in ("output_dir", "seed")}


def _nested(data: dict, what: str, fail) -> dict:
    try:
        return undot(data)
    except (TypeError, AttributeError):
        raise fail(f"{what}: keys must be config keys (nested or dotted), got {data!r}") from None


def _eval_overrides(block, fail) -> list[str]:
    import json

    if not isinstance(block, dict):
        raise fail(f"eval must be a mapping (e.g. {{examples: 64}}), got {block!r}")
    out = []
    for k, v in block.items():
        key = EVAL_ALIASES.get(str(k), str(k) if "." in str(k) else f"eval.{k}")
        out.append(f"{key}={json.dumps(v)}")
    return out
