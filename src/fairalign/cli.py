"""The `fairalign` command line.

    fairalign train [CONFIG.yaml | PRESET] [KEY=VALUE ...] [--resume RUN_DIR] [--num-processes N]
    fairalign demo [KEY=VALUE ...]
    fairalign config [CONFIG | PRESET] [KEY=VALUE ...] [--keys]
    fairalign eval RUN_DIR_OR_MODEL [KEY=VALUE ...] [--checkpoint N] [--out DIR]
    fairalign eval-dialogue RUN_DIR_OR_MODEL [KEY=VALUE ...]
    fairalign simulate-clipping [--out DIR] ...

Bad input (an unknown key, a bad value, an unknown name, unreadable data) prints one line
`fairalign: error: ...` and exits with code 2, without a traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def _split_source(args: list[str]) -> tuple[str | None, list[str]]:
    """First positional is a YAML file or a preset name unless it is KEY=VALUE."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def resolve_config(source: str | None, overrides: list[str]):
    from fairalign.config import build_config, load_yaml
    from fairalign.config.presets import PRESETS, get_preset
    from fairalign.errors import ConfigError

    base: dict = {}
    if source is not None:
        if source.endswith((".yaml", ".yml")) or Path(source).is_file():
            base = load_yaml(source)
        elif source in PRESETS:
            base = get_preset(source)
            base.setdefault("output_dir", f"runs/{source}")
        else:
            raise ConfigError(f"'{source}' is neither a YAML file nor a preset; presets: {', '.join(sorted(PRESETS))}")
    return build_config(base, overrides)


# checkpoints do not depend on the process count or strategy, so dist_strategy may change on resume
# where and how fast it runs may change too (device, threads), and the reward time limit
RESUMABLE_OVERRIDES = ("steps", "save_every", "keep_last", "log.", "dist_strategy", "device", "threads",
                       "reward_timeout_s")


def resume_config(run_dir: str, overrides: list[str]):
    from fairalign.config import build_config, load_yaml, parse_override, to_dict
    from fairalign.errors import ConfigError

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"--resume: '{run_dir}' is not a run directory (no config.yaml)")
    saved = load_yaml(path)
    cfg = build_config(saved, overrides)
    flat_saved = to_dict(build_config(saved))
    for ov in overrides:
        key, _ = parse_override(ov)
        if key.startswith(RESUMABLE_OVERRIDES):
            continue
        node_new, node_old = to_dict(cfg), flat_saved
        for part in key.split("."):
            node_new, node_old = node_new[part], node_old[part]
        if node_new != node_old:
            raise ConfigError(f"--resume: '{key}' differs from the checkpoint's config ({node_old!r}); only "
                              f"steps, save_every, keep_last, dist_strategy, device, threads, reward_timeout_s and "
                              f"log.* may change on resume")
    cfg.output_dir = str(run_dir)
    return cfg


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


def cmd_train(ns, rest: list[str]) -> int:
    if ns.num_processes and ns.num_processes > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # torchrun-style launch (what `accelerate launch --multi_gpu` runs underneath); works on CPU (gloo)
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(ns.num_processes), "-m", "fairalign", "train", *rest]
        if ns.resume:
            argv += ["--resume", ns.resume]
        return _run_forwarding_signals(argv)
    from fairalign.train.trainer import Trainer

    source, overrides = _split_source(rest)
    if ns.resume:
        if source is not None:
            overrides = [source, *overrides] if "=" in source else overrides
        cfg = resume_config(ns.resume, overrides)
    else:
        cfg = resolve_config(source, overrides)
    trainer = Trainer(cfg, resume=bool(ns.resume))
    rows = trainer.train()
    if trainer.dist.is_main:
        from fairalign.report.run_plots import make_plots

        make_plots(trainer.run_dir)
        from fairalign.report import write_report

        write_report(trainer.run_dir)
        last = rows[-1] if rows else {}
        print(f"done: {trainer.step} steps in {trainer.run_dir} "
              f"(last reward/mean {last.get('reward/mean', float('nan')):.3f})")
    trainer.dist.close()
    return 0


def cmd_demo(ns, rest: list[str]) -> int:
    from fairalign.demo import run_demo

    run_demo(rest)
    return 0


def cmd_config(ns, rest: list[str]) -> int:
    from fairalign.config import dump_yaml, field_docs

    if ns.keys:
        for k, doc in field_docs().items():
            print(f"{k:32s} {doc}")
        return 0
    source, overrides = _split_source(rest)
    print(dump_yaml(resolve_config(source, overrides)), end="")
    return 0


def cmd_eval(ns, rest: list[str]) -> int:
    from fairalign.eval.cli import main as eval_main

    return eval_main(rest)


def cmd_eval_dialogue(ns, rest: list[str]) -> int:
    from fairalign.eval.dialogue_cli import main as eval_dialogue_main

    return eval_dialogue_main(rest)


def cmd_report(ns, rest: list[str]) -> int:
    from fairalign.errors import ConfigError
    from fairalign.report import write_report

    if len(rest) != 1:
        raise ConfigError("report needs one directory: fairalign report RUN_DIR_OR_STUDY_DIR")
    print(f"wrote {write_report(rest[0])}")
    return 0


def cmd_simulate(ns, rest: list[str]) -> int:
    from fairalign.simulate import main as simulate_main

    return simulate_main(rest)


def cmd_compare(ns, rest: list[str]) -> int:
    from fairalign.compare import run_study
    from fairalign.errors import ConfigError

    if not rest or "=" in rest[0]:
        raise ConfigError("compare needs SPEC.yaml: fairalign compare SPEC.yaml [KEY=VALUE ...]")
    run_study(rest[0], rest[1:])
    return 0


OWN_PARSERS = ("eval", "eval-dialogue", "simulate-clipping")  # commands that parse their own flags and --help

COMMANDS = {
    "train": (cmd_train, "train a policy: fairalign train [CONFIG.yaml|PRESET] [KEY=VALUE ...] [--resume RUN_DIR]"),
    "demo": (cmd_demo, "the main job: P-GRPO + FSPO on 'personas' with SmolLM2-135M, before/after evaluation"),
    "config": (cmd_config, "print the fully resolved config: fairalign config [CONFIG|PRESET] [KEY=VALUE ...]"),
    "eval": (cmd_eval, "evaluate a run or model on its task (held-out reward per group; RLPA: AL(k), AVG, N-IR): "
                       "fairalign eval RUN_DIR_OR_MODEL [KEY=VALUE ...] [--checkpoint N]"),
    "eval-dialogue": (cmd_eval_dialogue, "RLPA dialogue evaluation (AL(k), AVG, N-IR, N-R²)"),
    "report": (cmd_report, "one self-contained report.html for a run or a study: fairalign report RUN_DIR_OR_STUDY_DIR"),
    "simulate-clipping": (cmd_simulate, "length-fairness simulation of the fixed, GSPO and FSPO clip bands"),
    "compare": (cmd_compare, "paired seed study, differences with t intervals: fairalign compare SPEC.yaml [KEY=VALUE ...]"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairalign", description="RL alignment with FSPO, P-GRPO and RLPA.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_fn, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_, add_help=name not in OWN_PARSERS)
        if name == "train":
            sp.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
            sp.add_argument("--num-processes", type=int, default=0,
                            help="data-parallel processes (launches `accelerate launch` for you)")
        if name == "config":
            sp.add_argument("--keys", action="store_true", help="list every config key with its doc line")
    return p


def main(argv: list[str] | None = None) -> int:
    from fairalign.errors import ConfigError, StopRequested, TrainingError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns, rest = parser.parse_known_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_USAGE
    fn = COMMANDS[ns.command][0]
    if ns.command not in OWN_PARSERS:
        unknown = [a for a in rest if a.startswith("--")]
        if unknown:
            print(f"fairalign: error: unknown option {unknown[0]} for '{ns.command}'", file=sys.stderr)
            return EXIT_USAGE
    try:
        return fn(ns, rest)
    except ConfigError as e:
        if os.environ.get("FAIRALIGN_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"fairalign: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
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
