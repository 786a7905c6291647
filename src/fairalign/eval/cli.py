"""`fairalign eval RUN_DIR_OR_MODEL [KEY=VALUE ...] [--checkpoint N] [--out DIR]`: evaluate a policy on its
task through `Task.evaluate`, for every task (held-out reward per preference group; an RLPA run's AL(k),
AVG, N-IR, N-R²; a task of your own with its own rollout or `evaluate`).

Settings come from the run directory's `config.yaml` (or the defaults, for a model name or folder), then
the KEY=VALUE overrides, e.g. `eval.examples=32 eval.temperature=0.8 task_options.eval_turns=4`. Prints
the summary as JSON and writes eval.json into the run directory (RUN/eval-step-N/ with --checkpoint, or
--out DIR). The bulky per-dialogue records stay in the file.

While it runs, the finished parts (`eval.batch_size` examples each) are kept in eval.partial.jsonl in that
folder: when a remote simulated user or judge keeps failing, the command stops (exit 1) naming the fault,
and the same command, rerun once the endpoint works, does not redo them. The file is removed once
eval.json is written.

Examples:
    fairalign eval runs/demo
    fairalign eval runs/my_rlpa_run eval.examples=16 --checkpoint 0
    fairalign eval smollm2-135m task=personas eval.examples=20
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from fairalign.errors import EnvironmentFault, TrainingError
from fairalign.eval.partial import PartialResults, evaluation_settings
from fairalign.eval.run import evaluate_policy, load_policy_for_eval, resolve_target

BULKY = ("dialogues", "example_transcript")  # kept in the file, left out of the printed summary


def parser(prog: str = "fairalign eval", doc: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc[doc.index("Settings come"):])
    p.add_argument("target", metavar="RUN_DIR_OR_MODEL",
                   help="a run directory (its final model and config.yaml) or a model name / folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for `fairalign train`")
    p.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="evaluate the run's checkpoints/step-STEP model instead of final/ (0 = right after the "
                        "sft.* warm-up); the output goes to RUN_DIR/eval-step-STEP")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the output (default: the run directory)")
    return p


def evaluate_target(target: str, overrides: list[str], *, checkpoint: int | None = None, command: str = "eval",
                    out: str | None = None, default_out: Path | None = None, partial: str | None = None,
                    argv: list[str] | None = None):
    """(result, config, output folder or None, partial store or None) of evaluating what TARGET names. The
    finished parts are kept in OUTPUT/`partial` while it runs (a rerun with the same settings skips them;
    the caller calls `finish()` on the store once the result is written). A remote service that keeps
    failing stops it with a TrainingError: the fault, what is kept, and the command to rerun (`argv`)."""
    from fairalign.config.task import task_from_config

    cfg, weights, run = resolve_target(target, overrides, checkpoint, command=command)
    folder = output_dir(run, checkpoint, out) or default_out
    task = task_from_config(cfg)
    store = None
    if folder is not None and partial is not None:
        store = PartialResults(folder / partial, evaluation_settings(cfg, weights))
    model, tok = load_policy_for_eval(cfg, weights)
    try:
        res = evaluate_policy(model, tok, task, cfg, parts=store)
    except EnvironmentFault as e:
        rerun = f"rerun the same command: {shlex.join(['fairalign', command, *(argv or [target])])}"
        if store is None:
            raise TrainingError(f"evaluation stopped: {e}\nnothing is kept (no output folder: --out DIR keeps the "
                                f"finished parts); once it works again, {rerun}") from e
        raise store.stopped(e, rerun) from e
    res.setdefault("settings", {})["model"] = weights or cfg.model
    return res, cfg, folder, store


def output_dir(run: Path | None, checkpoint: int | None, out: str | None) -> Path | None:
    if out:
        return Path(out)
    if run is None:
        return None
    return run / f"eval-step-{checkpoint}" if checkpoint is not None else run


def main(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    res, _cfg, out, store = evaluate_target(args.target, list(args.overrides), checkpoint=args.checkpoint,
                                            out=args.out, partial="eval.partial.jsonl", argv=argv)
    print(json.dumps({k: v for k, v in res.items() if k not in BULKY}, indent=2))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(res, indent=2))
        store.finish()
        print(f"wrote {out / 'eval.json'}", file=sys.stderr)
    return 0
