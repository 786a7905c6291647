"""The FSPO cosine study in one command (issue 22, section 3): calibration probe -> bands at one overall clip
rate -> `fairalign compare` with the gradient-cosine diagnostic -> summary.

    python docs/evidence/fspo_cosine/run.py [--out runs/study-fspo-cosine] [--target 0.15] [--probe-steps N] [KEY=VALUE ...]

1. Probe: the template's base config with the unclipped probe loss of study 1
   (docs/evidence/length_fairness/probe.py), seed 99 (not a study seed), 3 steps (`--probe-steps`): it
   records the per-token log ratios of every off-policy minibatch in OUT/probe/probe.jsonl. Skipped when
   OUT/probe/final exists (and refused when it was trained for another `--probe-steps`).
2. Bands: for every arm (the rules of docs/evidence/length_fairness/calibrate.py, same names), the band
   scaled in log space until the rule clips `--target` of the probe's sequence-updates; written with each
   rule's expected per-bin clip rates and counts on the probe to OUT/bands.json (kept when it exists and
   was made for the same target and bins, so the bands of a study stay fixed while it runs).
3. Study: spec_template.yaml with the calibrated bands -> OUT/spec.yaml; `fairalign compare` on it (resumes a
   stopped study; finished runs are reused).
4. Summary: summarize.py on OUT (the pre-registered reading, README.md) -> OUT/summary.json.

KEY=VALUE pairs override the config of the probe and of every study run (e.g. model=tiny steps=1 for a dry
run); `seeds=` and `output_dir=` are the study's (use --out for the folder).
Simplifications: the probe runs at the study's settings with an unclipped loss, so the clipped runs drift a
little less than the probe did. Its default 3 steps are what the committed study used; the clip rate falls
over the steps (step 1 clips several times what later steps do: README, "Result"), so a 3-step probe
calibrates the first steps, and a 12-step study clipped 0.047-0.099 against a 0.15 target. To calibrate a
study's overall rate, give `--probe-steps` the study's own number of steps. The realized overall clip rates
are in the summary next to the target.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import yaml

from fairalign.config import build_config, parse_override
from fairalign.config.presets import merge

HERE = Path(__file__).resolve().parent
LENGTH = HERE.parent / "length_fairness"
PROBE_SEED, PROBE_STEPS = 99, 3


def bad_input(message: str):
    """One line naming this script, exit 2 (bad input, as `fairalign` reports it)."""
    print(f"run.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(config overrides of every run, the study's own seeds=)."""
    config, study = [], []
    for item in items:
        key, _ = parse_override(item)
        if key == "output_dir":
            bad_input("give the study folder with --out, not output_dir=")
        (study if key == "seeds" else config).append(item)
    return config, study


def probe(template: dict, out: Path, overrides: list[str], steps: int | None = None) -> Path:
    """Train the calibration probe (unless OUT/probe/final exists); the path of its probe.jsonl. `steps`:
    its training steps, after every override (None: PROBE_STEPS, which a `steps=` override changes)."""
    from fairalign.train.trainer import Trainer

    run, record = out / "probe", out / "probe" / "probe.jsonl"
    if (run / "final").is_dir() and record.is_file():
        trained = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("steps")
        if steps is not None and trained != steps:
            bad_input(f"{run} was trained for {trained} steps, not --probe-steps {steps}; its "
                      f"bands calibrate that probe (use another --out for a new calibration)")
        print(f"probe: {run} done, reused")
        return record
    shutil.rmtree(run, ignore_errors=True)  # the probe appends to its record: a stopped probe starts over
    base = merge(copy.deepcopy(template["base"]), {
        "seed": PROBE_SEED, "steps": PROBE_STEPS, "output_dir": str(run), "save_every": 1000, "keep_last": 1,
        "algo": {"loss": f"{LENGTH / 'probe.py'}:probe", "loss_args": {"out": str(record)}},
        "log": {"grad_cosine": False, "progress": False}})
    cfg = build_config(base, overrides + ([] if steps is None else [f"steps={steps}"]))
    print(f"probe: training {cfg.steps} steps (seed {cfg.seed}) in {run}", flush=True)
    Trainer(cfg).train()
    return record


def calibrate_bands(record: Path, out: Path, target: float, bins: list[int]) -> dict:
    """{rule: band hyperparameters} at `target`, plus what each clips per bin on the probe (OUT/bands.json)."""
    path = out / "bands.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("target") == target and saved.get("bins") == bins:
            print(f"bands: {path} (target {target}), reused")
            return saved
    cal = _module(LENGTH / "calibrate.py", "length_fairness_calibrate")
    calls = cal.load(record)
    bands, expected = {}, {}
    for rule in cal.RULES:
        k = cal.calibrate(rule, calls, bins, target)
        overall, per_bin = cal.rates(rule, k, calls, bins)
        _, hp = cal.band(rule, k)
        bands[rule] = {key: v for key, v in hp.items() if key in cal.SCALED}
        expected[rule] = {"overall": overall, "k": k,
                          "per_bin": {b: {"rate": r if n else None, "sequences": n} for b, (r, n) in per_bin.items()}}
        print(f"bands: {rule:10s} k={k:.4g} overall {overall:.3f} on the probe; per bin "
              + ", ".join(f"{b}: {r:.2f} of {n}" if n else f"{b}: empty" for b, (r, n) in per_bin.items()))
    saved = {"target": target, "bins": bins, "probe": str(record),
             "sequence_updates": sum(len(c[1]) for c in calls), "bands": bands, "expected": expected}
    path.write_text(json.dumps(saved, indent=1))
    return saved


def band_keys(hp: dict) -> dict:
    """Config keys of a calibrated band: a built-in loss's algo.<key>, the fixed band's algo.loss_args.<key>."""
    return {(f"algo.loss_args.{k}" if k.startswith("eps_") else f"algo.{k}"): v for k, v in hp.items()}


def write_spec(template: dict, bands: dict, out: Path) -> Path:
    spec = copy.deepcopy(template)
    spec["output_dir"] = str(out)
    for arm, change in spec["arms"].items():
        if arm not in bands["bands"]:
            bad_input(f"arm '{arm}' of the template has no calibrated band (rules: "
                      f"{', '.join(bands['bands'])})")
        change.update(band_keys(bands["bands"][arm]))
    path = out / "spec.yaml"
    path.write_text(f"# written by docs/evidence/fspo_cosine/run.py: spec_template.yaml + bands.json "
                    f"(target clip rate {bands['target']})\n" + yaml.safe_dump(spec, sort_keys=False))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides of the probe and every run; seeds=...")
    p.add_argument("--out", type=Path, default=None, help="study folder (default: the template's output_dir)")
    p.add_argument("--target", type=float, default=0.15, help="overall clip rate every band is calibrated to")
    p.add_argument("--template", type=Path, default=HERE / "spec_template.yaml")
    p.add_argument("--probe-steps", type=int, default=None,
                   help=f"the calibration probe's training steps (default {PROBE_STEPS}, as the committed study; "
                        "give the study's steps to calibrate its overall clip rate)")
    args = p.parse_args(argv)
    if args.probe_steps is not None and args.probe_steps < 1:
        p.error(f"--probe-steps must be at least 1, got {args.probe_steps}")
    template = yaml.safe_load(args.template.read_text())
    out = args.out or Path(template["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    config_overrides, study_overrides = split_overrides(args.overrides)
    bins = build_config(copy.deepcopy(template["base"]), config_overrides).log.length_bins
    record = probe(template, out, config_overrides, args.probe_steps)
    bands = calibrate_bands(record, out, args.target, bins)
    spec = write_spec(template, bands, out)

    from fairalign.compare import run_study
    from fairalign.errors import ConfigError, StopRequested, TrainingError

    again = " ".join([".venv/bin/python", "docs/evidence/fspo_cosine/run.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        run_study(spec, config_overrides + study_overrides, rerun=again)  # its stop messages name this script
    except ConfigError as e:  # bad input, as `fairalign compare` reports it
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:  # a signal: the run wrote a checkpoint; the same command goes on
        print(f"run.py: {e}", file=sys.stderr)
        return e.exit_code
    except TrainingError as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 1
    summarize = _module(HERE / "summarize.py", "fspo_cosine_summarize")
    return summarize.main([str(out)])


if __name__ == "__main__":
    sys.exit(main())
