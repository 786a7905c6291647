"""The RLPA CPU study (issue 21), whole and resumable: greedy `fairalign compare`, sampled decoding, the oracle,
one records file, the summary.

    python docs/evidence/rlpa_cpu/study.py SPEC [KEY=VALUE ...] [--samples 4]
        [--only greedy|sampled|oracle|records|summary] [--out docs/evidence/rlpa_cpu/results/records.jsonl]

Phases, in this order (`--only` runs one); each reuses what is on disk with the same settings, so a killed
study is finished by the same command:
  greedy   `fairalign compare SPEC [KEY=VALUE ...]`, in this process (`fairalign.compare.run_study`): every
           arm x seed run trained, resumed or reused, evaluated greedy into OUT/ARM/seed-S/eval.json, and each
           seed's untrained starting policy into OUT/untrained/seed-S/eval.json (OUT = the spec's output_dir).
  sampled  each of those policies (a run's final/, a seed's untrained model) evaluated again by the task's own
           evaluation (`evaluate_policy` -> `Task.evaluate`: the same test profiles, turns, batch size and
           policy context as the greedy one) at the run's training temperature (`rollout.temperature`, with
           `rollout.top_p`), one candidate per turn (`eval.generations=1`), `--samples` times. Sample s is the
           evaluation with seed s: `Task.evaluate(seed=s)`, which the RLPA evaluation turns into the
           generator seed of every turn's `engine.generate` (s * 7 + the batch's first profile index + the
           number of messages in the batch's first prompt, envs/rlpa/evaluate.py) and the simulated user's seed
           (s + the batch's first profile index). So sample s of every arm and training seed has the same user
           and generator seeds: the policies alone differ. The task itself is built with the training seed, as
           in the greedy evaluation, so its test profiles are those. Written to eval_sampled.json beside the
           greedy eval.json, after every sample; a file of other settings is started over.
  oracle   envs/rlpa/oracle.py's oracle (it reads what the simulated user has revealed, which no policy can)
           against the same test profiles, with the task's user and judge, through `run_dialogues` in the
           evaluation's batches, with the evaluation's user seeds for seed 0 and the oracle's rng seeded
           alike: deterministic, so one "greedy" sample. OUT/oracle/eval.json, in the evaluation's shape.
  records  RECORDS (--out): one JSON object per (arm, seed, decoding, sample, profile, turn), from the files
           above; beside it runs/ARM/seed-S/ gets each run's config.yaml, metrics.jsonl and sft_metrics.jsonl,
           comparison.json the greedy study's, timing.json the wall times (below).
  summary  summarize.py RECORDS --json summary.json --plot al.png --runs runs (beside RECORDS).

A record: arm (untrained | the spec's arms | oracle), seed (training seed; the untrained policy's: the seed
whose evaluation it is; oracle: null), decoding ("greedy" | "sampled"), sample (0 for greedy), profile (the
test profile's id), turn (1-based), al (the turn's alignment, 0-100, as AL(k) averages it: 50 x total, total =
profile F1 + the 0/1 response verdict; envs/rlpa/metrics.py), profile_f1 (0-1), response_pass (0/1),
repeated (the reply repeats an earlier reply or question of its dialogue: envs/rlpa/rewards.repeats_earlier
on the visible replies, as docs/evidence/rlpa/summarize.py counts it), truncated (the reply hit max_new_tokens).

timing.json: per arm and seed the warm-up's seconds (sum of sft/step_s), the RL steps' (sum of step_s), the
greedy evaluation's and each sampled evaluation's (eval_s); the oracle's; per seed their sum, with the warm-up
counted once (`fairalign compare` starts the rl run from the warmup run's step-0 checkpoint, and the copied
sft_metrics.jsonl repeats the warm-up's steps). Model loading
and checkpoint writes are not in it (as in `fairalign compare`'s time/* metrics).

Simplifications: one process, runs and evaluations one after the other; the oracle is played once, on the
test profiles of the first seed's task, and every seed must have the same ones (the built-in split does not
depend on the seed; a `profiles` file's split does, and is refused here); the records phase takes whatever
evaluations exist and names the missing ones.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RECORDS = HERE / "results" / "records.jsonl"
SAMPLED_FILE = "eval_sampled.json"
ORACLE = "oracle"
PHASES = ("greedy", "sampled", "oracle", "records", "summary")
RUN_FILES = ("config.yaml", "metrics.jsonl", "sft_metrics.jsonl")
# keys that cannot change an evaluation's result, left out of the settings a sampled evaluation is reused by
NOT_EVALUATION = ("log", "threads", "device", "save_every", "keep_last")


# ---------------------------------------------------------------------------------------------
# sampled decoding

def _targets(study):
    """(arm, seed, folder, run config, weights folder or None) of every policy, seed-major as compare runs
    them: the seed's untrained policy, then each arm's final/."""
    from fairalign.compare.spec import UNTRAINED

    for seed in study.seeds:
        yield UNTRAINED, seed, study.untrained_dir(seed), study.configs[study.arms[0]][seed], None
        for arm in study.arms:
            yield arm, seed, study.run_dir(arm, seed), study.configs[arm][seed], study.run_dir(arm, seed) / "final"


SAMPLED_PROFILES = 0  # test profiles of a sampled evaluation (0 = the greedy one's); --sampled-profiles


def sampled_config(study, cfg, sample: int | None = None):
    """The run's greedy evaluation config with eval.temperature = rollout.temperature, one candidate per turn,
    the first SAMPLED_PROFILES test profiles (when set), and (for a sample) seed = the sample's index."""
    from fairalign.config import build_config, to_dict

    extra = [f"eval.temperature={cfg.rollout.temperature}", "eval.generations=1"]
    extra += [f"eval.examples={SAMPLED_PROFILES}"] if SAMPLED_PROFILES else []
    return build_config(to_dict(cfg), [*study.eval_overrides, *extra, *([f"seed={sample}"] if sample is not None
                                                                      else [])])


def sampled_settings(study, cfg, weights: Path | None) -> dict:
    """What a sampled evaluation depends on: its config (training seed kept) and the weights' files."""
    from fairalign.eval.partial import evaluation_settings

    s = evaluation_settings(sampled_config(study, cfg), None if weights is None else str(weights))
    s["config"] = {k: v for k, v in s["config"].items() if k not in NOT_EVALUATION}
    return json.loads(json.dumps(s))


def run_sampled(study, samples: int, stream=sys.stdout) -> dict:
    """Every policy's `samples` sampled evaluations into its folder's eval_sampled.json; returns
    {(arm, seed): the file's content}."""
    from fairalign.compare.study import load_final
    from fairalign.config import build_config, to_dict
    from fairalign.config.task import task_from_config
    from fairalign.eval.run import evaluate_policy, load_policy_for_eval

    out = {}
    for arm, seed, folder, cfg, weights in _targets(study):
        if weights is not None and not weights.is_dir():
            raise SystemExit(f"study.py: run '{folder}' has no final/ model: run the greedy phase first "
                             f"(study.py {study.path} --only greedy)")
        settings = sampled_settings(study, cfg, weights)
        path = folder / SAMPLED_FILE
        kept = _read_json(path)
        done = kept["samples"] if kept and kept.get("settings") == settings else []
        done = [r for r in done if r["sample"] < samples]
        todo = [s for s in range(samples) if s not in {r["sample"] for r in done}]
        if todo:
            ecfg = build_config(to_dict(cfg), study.eval_overrides)
            task = task_from_config(ecfg)  # the training seed's task: the greedy evaluation's test profiles
            if weights is None:
                model, tok = load_policy_for_eval(ecfg, None)
            else:
                model, tok = load_final(cfg, folder)
            for s in todo:
                res = evaluate_policy(model, tok, task, sampled_config(study, cfg, s))
                res.update(sample=s, eval_seed=s)
                res.pop("example_transcript", None)
                done = sorted([*done, res], key=lambda r: r["sample"])
                _write_json(path, {"settings": settings, "samples": done})
                print(f"[{arm} seed {seed}] sampled {s + 1}/{samples} (T={cfg.rollout.temperature}): AVG "
                      f"{res.get('avg', math.nan):.2f}  N-IR {res.get('n_ir', math.nan):+.3f}  "
                      f"({res['eval_s']:.1f}s)", file=stream, flush=True)
            del model, tok
        else:
            print(f"[{arm} seed {seed}] sampled: {samples} sample(s) reused", file=stream, flush=True)
        out[(arm, seed)] = {"settings": settings, "samples": done}
    return out


# ---------------------------------------------------------------------------------------------
# the oracle

def _watched_user(spec):
    """The task's simulated user (make_user(spec)), keeping the states of the dialogues it last started, so
    the oracle can read what each user has revealed."""
    from fairalign.envs.rlpa.user import SimulatedUser, make_user

    class Watched(SimulatedUser):
        def __init__(self, inner):
            self.inner, self.opening, self.states = inner, inner.opening, []

        def start(self, profiles, seed=0):
            self.states = self.inner.start(profiles, seed)
            return self.states

        def reply(self, states, histories):
            return self.inner.reply(states, histories)

        def revealed(self, state):
            return self.inner.revealed(state)

        def revealed_profile(self, state):
            return self.inner.revealed_profile(state)

    return Watched(make_user(spec))


def oracle_policy(user, completion_prefix: str, rng: random.Random):
    """A `run_dialogues` policy_fn: the oracle's turn for each dialogue (all of a batch run in lockstep, so
    prompt i is the dialogue of user.states[i]), without the completion prefix the engine would pre-fill."""
    from fairalign.envs.rlpa.oracle import oracle_turn
    from fairalign.envs.rlpa.parser import parse_turn
    from fairalign.envs.rlpa.rewards import questions

    asked: list[set[str]] = []  # questions each dialogue's oracle has asked

    def policy(prompts, G):
        if len(prompts) != len(user.states):
            raise ValueError(f"the oracle expects one prompt per dialogue ({len(user.states)}), got {len(prompts)}")
        while len(asked) < len(prompts):
            asked.append(set())
        out = []
        for i, state in enumerate(user.states):
            revealed = user.revealed(state)
            text = oracle_turn(user.revealed_profile(state), rng, tuple(revealed[-1]) if revealed else None, asked[i])
            asked[i].update(questions(parse_turn(text).reply))
            if not text.startswith(completion_prefix):
                raise ValueError(f"completion_prefix {completion_prefix!r} is not a prefix of the oracle's turns "
                                 f"(they start with {text[:12]!r})")
            out.append([text[len(completion_prefix):]] * G)
        return out

    return policy


def _study_task(study):
    """(evaluation config, task, test profiles evaluated) of the first seed's baseline arm; every seed must
    evaluate the same test profiles."""
    from fairalign.config import build_config, to_dict
    from fairalign.config.task import task_from_config

    picked = []
    for seed in study.seeds:
        ecfg = build_config(to_dict(study.configs[study.arms[0]][seed]), study.eval_overrides)
        task = task_from_config(ecfg)
        profiles = [ex["profile"] for ex in task.test_examples]
        picked.append((ecfg, task, profiles[:ecfg.eval.examples] if ecfg.eval.examples else profiles))
    ids = [[p.id for p in chosen] for _, _, chosen in picked]
    if any(i != ids[0] for i in ids):
        raise SystemExit("study.py: the seeds evaluate different test profiles (a profiles file's split depends on "
                         "the seed); the oracle is played once, on profiles every seed shares")
    return picked[0]


def _backend(spec):
    """A user or judge spec as the settings record it: its name, or its backend, endpoint and model."""
    return {k: spec.get(k) for k in ("backend", "base_url", "model")} if isinstance(spec, dict) else str(spec)


def run_oracle(study, stream=sys.stdout) -> dict:
    """The oracle's evaluation (OUT/oracle/eval.json), made unless one of the same settings exists."""
    from fairalign.envs.rlpa.dialogue import run_dialogues
    from fairalign.envs.rlpa.evaluate import per_dialogue
    from fairalign.envs.rlpa.metrics import alignment_by_turn, dialogue_metrics

    ecfg, task, profiles = _study_task(study)
    K, batch = task.eval_turns, ecfg.eval.batch_size
    settings = {"profiles": [p.id for p in profiles], "turns": K, "batch_size": batch, "seed": 0,
                "user": _backend(task.user), "judge": _backend(task.judge),
                "completion_prefix": task.completion_prefix}
    path = study.output_dir / ORACLE / "eval.json"
    kept = _read_json(path)
    if kept and kept.get("settings") == settings:
        print(f"[{ORACLE}] reused: AVG {kept.get('avg', math.nan):.2f}", file=stream, flush=True)
        return kept
    t0 = time.perf_counter()
    dialogues, records = [], []
    for s in range(0, len(profiles), batch):
        user = _watched_user(task.user)
        run = run_dialogues(oracle_policy(user, task.completion_prefix, random.Random(s)), profiles[s:s + batch],
                            user=user, judge=task.judge, max_turns=K, G=1, seed=s,
                            completion_prefix=task.completion_prefix)
        dialogues += per_dialogue(run, [[False] * len(run.transcripts)] * K, 1, first=s)
        records += run.records
    al = alignment_by_turn(records, "total")
    res = {"kind": "dialogue", "policy": ORACLE, "profiles": len(profiles), "max_turns": K, "al_by_turn": al,
           "profile_f1_by_turn": alignment_by_turn(records, "profile"),
           "response_pass_by_turn": alignment_by_turn(records, "response"),
           **(dialogue_metrics(al) if K >= 2 else {}), "settings": settings, "dialogues": dialogues}
    res["eval_s"] = time.perf_counter() - t0
    _write_json(path, res)
    print(f"[{ORACLE}] evaluated: AVG {res.get('avg', math.nan):.2f}  N-IR {res.get('n_ir', math.nan):+.3f}  "
          f"({res['eval_s']:.1f}s)", file=stream, flush=True)
    return res


# ---------------------------------------------------------------------------------------------
# records

def dialogue_records(dialogues: list[dict], arm: str, seed, decoding: str, sample: int) -> list[dict]:
    """One record per turn of each dialogue (an evaluation's `dialogues`)."""
    from fairalign.envs.rlpa.rewards import repeats_earlier

    out = []
    for d in dialogues:
        turns = sorted(d["turns"], key=lambda t: t["turn"])
        said = [t.get("reply") or "" for t in turns]
        for k, t in enumerate(turns):
            out.append({"arm": arm, "seed": seed, "decoding": decoding, "sample": sample, "profile": d["profile_id"],
                        "turn": int(t["turn"]), "al": 50.0 * float(t["total"]), "profile_f1": float(t["profile"]),
                        "response_pass": int(round(float(t["response"]))),
                        "repeated": bool(repeats_earlier(said[k], said[:k])), "truncated": bool(t.get("truncated"))})
    return out


def _sum(path: Path, key: str) -> float:
    from fairalign.train.logging import read_jsonl

    return float(sum(r[key] for r in read_jsonl(path) if isinstance(r.get(key), (int, float))))


def write_records(study, out: Path, stream=sys.stdout) -> dict:
    """RECORDS and, beside it, runs/, comparison.json and timing.json (see the module docstring)."""
    from fairalign.compare.results import read_eval
    from fairalign.compare.spec import UNTRAINED
    from fairalign.train.logging import format_duration

    records, missing = [], []
    timing: dict = {"runs": {}, "untrained": {}, "oracle_s": None, "per_seed_s": {}}
    warmups: dict[str, float] = {}
    for arm, seed, folder, cfg, weights in _targets(study):
        t = {}
        ev = read_eval(folder)
        if ev is not None and isinstance(ev.get("dialogues"), list):
            records += dialogue_records(ev["dialogues"], arm, seed, "greedy", 0)
            t["eval_greedy_s"] = ev.get("eval_s")
        else:
            missing.append(f"{folder}/eval.json")
        sampled = _read_json(folder / SAMPLED_FILE)
        if sampled is not None and sampled.get("settings") == sampled_settings(study, cfg, weights):
            for res in sampled["samples"]:
                records += dialogue_records(res["dialogues"], arm, seed, "sampled", res["sample"])
            t["eval_sampled_s"] = [res.get("eval_s") for res in sampled["samples"]]
        else:
            missing.append(f"{folder}/{SAMPLED_FILE}")
        if arm == UNTRAINED:
            timing["untrained"][str(seed)] = t
        else:
            t["warmup_s"] = _sum(folder / "sft_metrics.jsonl", "sft/step_s")
            t["train_s"] = _sum(folder / "metrics.jsonl", "step_s")
            timing["runs"].setdefault(arm, {})[str(seed)] = t
            copy = out.parent / "runs" / arm / f"seed-{seed}"
            for name in RUN_FILES:
                if (folder / name).is_file():
                    copy.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(folder / name, copy / name)
        timing["per_seed_s"][str(seed)] = timing["per_seed_s"].get(str(seed), 0.0) + sum(
            v for k, v in t.items() if k not in ("eval_sampled_s", "warmup_s") and isinstance(v, (int, float))) + sum(
            v for v in t.get("eval_sampled_s", []) if isinstance(v, (int, float)))
        warmups[str(seed)] = max(warmups.get(str(seed), 0.0), t.get("warmup_s") or 0.0)
    for seed, w in warmups.items():  # one warm-up per seed: the rl arm starts from the warmup arm's step 0
        timing["per_seed_s"][seed] += w
    oracle = _read_json(study.output_dir / ORACLE / "eval.json")
    if oracle is not None:
        records += dialogue_records(oracle["dialogues"], ORACLE, None, "greedy", 0)
        timing["oracle_s"] = oracle.get("eval_s")
    else:
        missing.append(f"{study.output_dir / ORACLE}/eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(out)
    _write_json(out.parent / "timing.json", timing)
    if (study.output_dir / "comparison.json").is_file():
        shutil.copyfile(study.output_dir / "comparison.json", out.parent / "comparison.json")
    print(f"records: {len(records)} records -> {out}" + (f"; missing: {', '.join(missing)}" if missing else ""),
          file=stream, flush=True)
    for seed, s in timing["per_seed_s"].items():
        print(f"  seed {seed}: {format_duration(s)} of warm-ups, RL steps and evaluations (model loading and "
              f"checkpoint writes excluded; timing.json)", file=stream, flush=True)
    return timing


# ---------------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def _summarize():
    spec = importlib.util.spec_from_file_location("rlpa_cpu_summarize", HERE / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None, stream=sys.stdout) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("spec", help="the study's compare spec (docs/evidence/rlpa_cpu/spec.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="as `fairalign compare SPEC KEY=VALUE`")
    p.add_argument("--samples", type=int, default=4, help="sampled evaluations per policy (sample s: seed s)")
    p.add_argument("--sampled-profiles", type=int, default=0,
                   help="sampled evaluations use the first N test profiles (default 0: the greedy evaluation's)")
    p.add_argument("--only", choices=PHASES, help="run one phase (default: all, in order)")
    p.add_argument("--out", type=Path, default=DEFAULT_RECORDS, help="the records file (default %(default)s)")
    args = p.parse_args(argv)
    global SAMPLED_PROFILES
    SAMPLED_PROFILES = args.sampled_profiles
    if args.samples < 1 or args.sampled_profiles < 0:
        p.error("--samples must be >= 1 and --sampled-profiles >= 0")
    from fairalign.compare import load_study, run_study
    from fairalign.errors import ConfigError, StopRequested, TrainingError

    phases = [args.only] if args.only else list(PHASES)
    try:
        study = load_study(args.spec, args.overrides)
        if "greedy" in phases:
            again = " ".join([".venv/bin/python", "docs/evidence/rlpa_cpu/study.py",
                              *(sys.argv[1:] if argv is None else argv)])
            run_study(args.spec, args.overrides, stream=stream, rerun=again)  # its stop messages name this script
        if "sampled" in phases:
            run_sampled(study, args.samples, stream)
        if "oracle" in phases:
            run_oracle(study, stream)
        if "records" in phases:
            write_records(study, args.out, stream)
    except ConfigError as e:  # bad input, as `fairalign compare` reports it
        print(f"study.py: error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:  # a signal: the run wrote a checkpoint; the same command goes on
        print(f"study.py: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingError as e:
        print(f"study.py: error: {e}", file=sys.stderr)
        return 1
    if "summary" in phases:
        folder = args.out.parent
        return _summarize().main([str(args.out), "--json", str(folder / "summary.json"), "--plot",
                                  str(folder / "al.png"), "--runs", str(folder / "runs")], stream=stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
