"""The `fairalign` command line.

    fairalign train [CONFIG.yaml | PRESET] [KEY=VALUE ...] [--resume RUN_DIR] [--overwrite] [--num-processes N]
    fairalign demo [KEY=VALUE ...]
    fairalign config [CONFIG.yaml | PRESET] [KEY=VALUE ...] [--keys]
    fairalign eval RUN_DIR_OR_MODEL [KEY=VALUE ...] [--checkpoint N] [--out DIR]
    fairalign eval-dialogue RUN_DIR_OR_MODEL [KEY=VALUE ...] [--flags]
    fairalign compare SPEC.yaml [KEY=VALUE ...]
    fairalign report RUN_DIR_OR_STUDY_DIR
    fairalign simulate-clipping [--out DIR] ...

Every command's `--help` shows its arguments and an example. Bad input (an unknown key, a bad value, an
unknown name, unreadable data, a run directory that does not fit the command) prints one line
`fairalign: error: ...` and exits with code 2, without a traceback. Output cut short by a closed pipe
(`fairalign config --keys | head`) ends quietly with 141, as a shell command killed by SIGPIPE does.

Simplification: the top-level parser only lists the commands; each command parses its own arguments
(KEY=VALUE and flags may be mixed in any order).
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# What may change when a run is resumed: how long it runs, how it is saved, logged and evaluated, and where
# and how fast it runs (checkpoints do not depend on the process count or strategy). Anything else would
# make the resumed run a different run. Prefixes: "log." covers every log.* key.
RESUMABLE_KEYS = ("steps", "save_every", "keep_last", "log.", "eval.", "dist_strategy", "device", "threads",
                  "cpu_allocator", "reward_timeout_s", "task_options.eval_turns")


def resumable_keys() -> str:
    return ", ".join(k + "*" if k.endswith(".") else k for k in RESUMABLE_KEYS)


def _split_source(args: list[str]) -> tuple[str | None, list[str]]:
    """First positional is a YAML file or a preset name unless it is KEY=VALUE."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def resolve_config(source: str | None, overrides: list[str]):
    """The config of CONFIG.yaml or PRESET (or the defaults) with the KEY=VALUE overrides."""
    from fairalign.config import build_config, load_yaml
    from fairalign.config.presets import PRESETS, get_preset
    from fairalign.errors import ConfigError

    base: dict = {}
    if source is None:
        return build_config(base, overrides)
    if source.endswith((".yaml", ".yml")) or Path(source).is_file():
        return build_config(load_yaml(source), overrides, source=source)
    if source in PRESETS:
        base = get_preset(source)
        base.setdefault("output_dir", f"runs/{source}")
        return build_config(base, overrides)
    close = difflib.get_close_matches(source, list(PRESETS), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(f"'{source}' is neither a config file nor a preset; {hint}presets: {', '.join(sorted(PRESETS))}")


def _flat(node, prefix: str = "") -> dict:
    """Nested config dict -> {dotted key: leaf value} (an empty mapping is a leaf)."""
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def resume_config(run_dir: str, source: str | None, overrides: list[str]):
    """The config of a resumed run, under one rule whatever gave the changes: the run's saved config
    (RUN_DIR/config.yaml) is compared with CONFIG.yaml / PRESET + KEY=VALUE (or, without a file, with the
    saved config + KEY=VALUE); the keys in RESUMABLE_KEYS may differ and take the new value, any other
    difference is a ConfigError naming the key. output_dir is always RUN_DIR."""
    from fairalign.config import build_config, load_yaml, to_dict
    from fairalign.config.paths import absolute_paths
    from fairalign.errors import ConfigError

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: '{run_dir}' is not a run directory (no config.yaml)")
    saved = build_config(load_yaml(path), source=path)
    cfg = build_config(to_dict(saved), overrides) if source is None else resolve_config(source, overrides)
    cfg = absolute_paths(cfg)
    cfg.output_dir = saved.output_dir = str(run_dir)
    old, new = _flat(to_dict(saved)), _flat(to_dict(cfg))
    given = f"in {source}" if source is not None else "on the command line"
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_KEYS):
            raise ConfigError(f"--resume: '{key}' differs from the checkpoint's config ({old.get(key)!r} in {path}, "
                              f"{new.get(key)!r} {given}); a resumed run may change only {resumable_keys()} "
                              f"(docs/training.md); for a different run choose a new output_dir")
    return cfg


def _newest_checkpoint_step(run_dir: Path) -> int | None:
    from fairalign.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return found[-1][0] if found else None


def _finished_message(run_dir: Path, cfg) -> str | None:
    """The line to print instead of training when the resumed run is already finished (its final model
    exists and its newest checkpoint is at `steps`); a ConfigError when steps is below that checkpoint."""
    from fairalign.train.build import check_resume_steps

    step = _newest_checkpoint_step(run_dir)
    if step is None:
        return None
    check_resume_steps(step, cfg.steps)
    if step == cfg.steps and (run_dir / "final").is_dir():
        return (f"{run_dir} is already finished ({step} of {cfg.steps} steps; final model in {run_dir / 'final'}); "
                f"to train on, raise the total: fairalign train --resume {run_dir} steps={step * 2}")
    return None


def _run_forwarding_signals(argv: list[str]) -> int:
    """Run the launcher and pass SIGTERM / SIGINT on to it (it forwards them to every rank, which stop
    together after the current step); returns its exit code."""
    import signal
    import subprocess

    child = subprocess.Popen(argv)

    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _train_config(ns, args: list[str]):
    source, overrides = _split_source(args)
    if ns.resume:
        return resume_config(ns.resume, source, overrides)
    return resolve_config(source, overrides)


def cmd_train(ns) -> int:
    from fairalign.errors import ConfigError
    from fairalign.train.build import check_run_dir

    args = _positionals(ns)
    if not args and not ns.resume:
        command_parser("train").print_help(sys.stderr)
        return EXIT_USAGE
    if ns.resume and ns.overwrite:
        raise ConfigError("--resume continues the run in RUN_DIR and --overwrite deletes it: give one of them")
    cfg = _train_config(ns, args)
    run_dir = Path(cfg.output_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a rank of a launched run: rank 0 checks the directory
        return _train(cfg, ns)
    if ns.resume:
        done = _finished_message(run_dir, cfg)
        if done:
            print(done)
            return 0
    check_run_dir(run_dir, resume=bool(ns.resume), overwrite=ns.overwrite)
    if ns.num_processes and ns.num_processes > 1:
        # torchrun (what `accelerate launch --multi_gpu` runs underneath); works on CPU (gloo)
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(ns.num_processes), "-m", "fairalign", "train", *args]
        argv += ["--resume", ns.resume] if ns.resume else []
        argv += ["--overwrite"] if ns.overwrite else []
        return _run_forwarding_signals(argv)
    return _train(cfg, ns)


def _train(cfg, ns) -> int:
    from fairalign.errors import StopRequested
    from fairalign.train.trainer import Trainer

    trainer = Trainer(cfg, resume=bool(ns.resume), overwrite=ns.overwrite)
    if trainer.dist.is_main:
        print(trainer.header(), flush=True)
    try:
        rows = trainer.train()
    except StopRequested:  # every rank stopped at the same step (train() agrees on it) and saved it
        trainer.dist.close()
        raise
    if trainer.dist.is_main:
        from fairalign.report.run_plots import make_plots

        make_plots(trainer.run_dir)
        from fairalign.report import write_report

        write_report(trainer.run_dir)
        last = f" (last reward/mean {rows[-1]['reward/mean']:.3f})" if rows and "reward/mean" in rows[-1] else ""
        print(f"done: {trainer.step} steps in {trainer.run_dir}{last}")
    trainer.dist.close()
    return 0


def cmd_demo(ns) -> int:
    from fairalign.demo import run_demo

    run_demo(ns.overrides)
    return 0


def cmd_config(ns) -> int:
    from fairalign.config import dump_yaml, field_docs
    from fairalign.errors import ConfigError

    args = _positionals(ns)
    if ns.keys:
        if args:
            raise ConfigError("config --keys lists every key; it takes no CONFIG, PRESET or KEY=VALUE")
        for k, doc in field_docs().items():
            print(f"{k:32s} {doc}")
        return 0
    source, overrides = _split_source(args)
    print(dump_yaml(resolve_config(source, overrides), defaults_as_comments=True), end="")
    return 0


def cmd_eval(rest: list[str]) -> int:
    from fairalign.eval.cli import main as eval_main

    return eval_main(rest)


def cmd_eval_dialogue(rest: list[str]) -> int:
    from fairalign.eval.dialogue_cli import main as eval_dialogue_main

    return eval_dialogue_main(rest)


def cmd_report(ns) -> int:
    from fairalign.report import write_report

    print(f"wrote {write_report(ns.target)}")
    return 0


def cmd_simulate(ns) -> int:
    from fairalign.simulate import run

    return run(ns)


def cmd_compare(ns) -> int:
    from fairalign.compare import run_study
    from fairalign.errors import ConfigError

    if "=" in ns.spec:
        raise ConfigError("compare needs SPEC.yaml first: fairalign compare SPEC.yaml [KEY=VALUE ...]")
    run_study(ns.spec, ns.overrides)
    return 0


# ------------------------------------------------------------------------------------------ the parsers

def _presets() -> str:
    from fairalign.config.presets import preset_names

    return ", ".join(preset_names())


KEY_VALUE_HELP = "dotted config overrides, e.g. steps=5 optim.lr=3e-5 (every key: fairalign config --keys)"

# command -> (one-line summary, usage after the command name, examples); eval and eval-dialogue parse their
# own arguments (fairalign.eval), the others are built below
COMMANDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "train": ("train a policy from a preset, a config file and/or KEY=VALUE",
              "[CONFIG.yaml | PRESET] [KEY=VALUE ...] [--resume RUN_DIR] [--overwrite] [--num-processes N]",
              ("fairalign train pgrpo-fspo model=tiny steps=5",
               "fairalign train my_run.yaml steps=40 --resume runs/my_run")),
    "demo": ("P-GRPO + FSPO on 'personas' with SmolLM2-135M on a CPU, evaluated before and after (runs/demo)",
             "[KEY=VALUE ...]", ("fairalign demo", "fairalign demo model=tiny steps=2 eval.examples=8")),
    "config": ("print the fully resolved config (a file to edit and train from)",
               "[CONFIG.yaml | PRESET] [KEY=VALUE ...] [--keys]",
               ("fairalign config pgrpo-fspo output_dir=runs/my_run > my_run.yaml", "fairalign config --keys")),
    "eval": ("evaluate a run or model on its task (held-out reward per group; RLPA: AL(k), AVG, N-IR)",
             "RUN_DIR_OR_MODEL [KEY=VALUE ...] [--checkpoint N] [--out DIR]", ("fairalign eval runs/demo",)),
    "eval-dialogue": ("RLPA dialogue evaluation (AL(k), AVG, N-IR, N-R²) with a table per turn and a plot",
                      "RUN_DIR_OR_MODEL [KEY=VALUE ...] [--flags]", ("fairalign eval-dialogue runs/my_rlpa_run",)),
    "compare": ("paired seeds x arms study, 95% intervals on the differences (docs/compare.md)",
                "SPEC.yaml [KEY=VALUE ...]", ("fairalign compare docs/evidence/pgrpo/spec.yaml",)),
    "report": ("write one self-contained report.html for a run or a study", "RUN_DIR_OR_STUDY_DIR",
               ("fairalign report runs/demo",)),
    "simulate-clipping": ("length-fairness simulation of the fixed, GSPO and FSPO clip bands", "[--out DIR] [options]",
                          ("fairalign simulate-clipping --out runs/simulate",)),
}
OWN_PARSERS = {"eval": cmd_eval, "eval-dialogue": cmd_eval_dialogue}


class _Parser(argparse.ArgumentParser):
    """A command's parser: a usage mistake (an unknown option, a missing argument) is a ConfigError, so it is
    one line `fairalign: error: ...` and exit code 2 like any other bad input."""

    def error(self, message: str):
        from fairalign.errors import ConfigError

        raise ConfigError(f"{self.prog.removeprefix('fairalign ')}: {message} (usage: {self.prog} --help)")


def _parser(name: str, description: str = "") -> argparse.ArgumentParser:
    summary, usage, examples = COMMANDS[name]
    epilog = "example" + ("s" if len(examples) > 1 else "") + ":\n" + "\n".join(f"  {e}" for e in examples)
    return _Parser(prog=f"fairalign {name}", usage=f"fairalign {name} {usage}",
                   description=f"{summary}.{' ' + description if description else ''}",
                   epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command (not eval / eval-dialogue, which have their own)."""
    if name == "train":
        p = _parser(name, "A bare `fairalign train` prints this help; `fairalign train steps=20` trains "
                              "the defaults.")
        p.add_argument("source", nargs="?", metavar="CONFIG.yaml | PRESET",
                       help=f"a config file (write one with `fairalign config PRESET > my_run.yaml`) or a preset: "
                            f"{_presets()}")
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=KEY_VALUE_HELP)
        p.add_argument("--resume", metavar="RUN_DIR",
                       help="continue the run in RUN_DIR from its newest checkpoint; a config file or KEY=VALUE "
                            f"may change only {resumable_keys()} (docs/training.md)")
        p.add_argument("--overwrite", action="store_true",
                       help="output_dir holds another run: delete that run's files (config, logs, checkpoints, "
                            "final model, plots) and start this one there")
        p.add_argument("--num-processes", type=int, default=0, metavar="N",
                       help="data-parallel processes on this machine (runs torchrun for you; gloo on a CPU)")
    elif name == "demo":
        p = _parser(name, "Starts clean: a previous runs/demo is deleted.")
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="overrides of the demo's settings, e.g. steps=4 (model=tiny: a quick look)")
    elif name == "config":
        p = _parser(name, "A method hyperparameter left at null is followed by the value the chosen loss or "
                              "estimator uses, as a comment.")
        p.add_argument("source", nargs="?", metavar="CONFIG.yaml | PRESET", help=f"a config file or a preset: {_presets()}")
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=KEY_VALUE_HELP)
        p.add_argument("--keys", action="store_true", help="list every config key with its doc line")
    elif name == "compare":
        p = _parser(name)
        p.add_argument("spec", metavar="SPEC.yaml", help="the study: base config, arms, seeds (docs/compare.md)")
        p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="config overrides for every run of the study; output_dir= and seeds= replace the spec's")
    elif name == "report":
        p = _parser(name, "It takes no KEY=VALUE: it reads what the run or study wrote.")
        p.add_argument("target", metavar="RUN_DIR_OR_STUDY_DIR", help="a run directory or a `fairalign compare` "
                                                                       "study folder")
    elif name == "simulate-clipping":
        from fairalign.simulate import build_parser

        p = build_parser(_parser(name, "It takes no CONFIG or KEY=VALUE, only the options below."))
    else:
        raise KeyError(name)
    return p


def top_parser() -> argparse.ArgumentParser:
    usages = "\n".join(f"  fairalign {name} {usage}" for name, (_s, usage, _e) in COMMANDS.items())
    p = argparse.ArgumentParser(prog="fairalign", description="RL alignment with FSPO, P-GRPO and RLPA.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"usage of each command (`fairalign COMMAND --help`: its arguments and an "
                                       f"example):\n{usages}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, _usage, _examples) in COMMANDS.items():
        sub.add_parser(name, help=summary.replace("%", "%%"), add_help=False)
    return p


def _positionals(ns) -> list[str]:
    return ([ns.source] if getattr(ns, "source", None) is not None else []) + list(getattr(ns, "overrides", []))


RUNNERS = {"train": cmd_train, "demo": cmd_demo, "config": cmd_config, "report": cmd_report,
           "simulate-clipping": cmd_simulate, "compare": cmd_compare}


def _dispatch(argv: list[str]) -> int:
    if not argv:
        top_parser().print_help(sys.stderr)
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        top_parser().parse_args(argv)  # prints the help; SystemExit(0), as every --help here
    if name not in COMMANDS:
        from fairalign.errors import ConfigError

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown command '{name}'; {hint}commands: {', '.join(COMMANDS)}")
    if name in OWN_PARSERS:
        return OWN_PARSERS[name](rest)
    return RUNNERS[name](command_parser(name).parse_intermixed_args(rest))  # --help: SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    from fairalign.errors import ConfigError, StopRequested, TrainingError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except ConfigError as e:
        if os.environ.get("FAIRALIGN_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"fairalign: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more can be written; send what Python would flush at exit
        # to /dev/null instead of printing "Broken pipe"
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("fairalign: interrupted", file=sys.stderr)
        return 130
    except StopRequested as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except TrainingError as e:
        print(f"fairalign: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
