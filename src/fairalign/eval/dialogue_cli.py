"""`fairalign eval-dialogue RUN_DIR_OR_MODEL [KEY=VALUE ...] [--flags]`: the paper's RLPA evaluation, as
`fairalign eval` runs it for an rlpa run (`RLPATask.evaluate`), with flags for its settings, a table per
turn and a plot.

Plays `eval.examples` test profiles x `task_options.eval_turns` turns with the task's simulated
user and judge, the policy answering greedily (or sampling `eval.generations` candidates, the best
continuing), and reports AL(k) per turn (x100), AVG, N-IR, N-R² and profile F1 per turn; writes
dialogue_eval.json (with one record per dialogue and turn, for paired comparisons over profiles)
and dialogue_al.png into the run directory (or --out). `--checkpoint N` evaluates the run's
checkpoints/step-N model instead of final/ (step 0: right after the sft.* warm-up). Replies cut at
max_new_tokens fail the turn contract (score 0); their share per turn is reported and warned about.

Settings come from the run directory's `config.yaml` (or the defaults, for a model name), then the
KEY=VALUE overrides (the syntax of `fairalign train`), then the flags, which are aliases:

| flag | config key |
|---|---|
| --profiles N | eval.examples (0 = every test profile) |
| --max-turns K | task_options.eval_turns (default 10, whatever max_turns training used) |
| --generations G | eval.generations |
| --temperature T | eval.temperature (0 = greedy) |
| --max-new-tokens N | rollout.max_new_tokens |
| --batch-size N | eval.batch_size (dialogues generated together) |
| --user / --judge (rules or openai) | task_options.user / task_options.judge |
| --openai-base-url / --openai-model / --api-key-env | task_options.user_options and judge_options |
| --completion-prefix TEXT | task_options.completion_prefix |
| --seed S | seed |

While it runs, the finished batches of dialogues are kept in dialogue_eval.partial.jsonl in the output
folder: when a remote user or judge keeps failing, the command stops (exit 1) naming the role, the endpoint
and the fault, and the same command, rerun once the endpoint works, does not replay them.

Example:
    fairalign eval-dialogue runs/rlpa-smollm2-cpu --profiles 16 --max-new-tokens 160

Simplification: the test profiles are the task's test split in order (the first N).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# flag name -> config key it stands for
FLAG_KEYS = {
    "profiles": "eval.examples", "max_turns": "task_options.eval_turns", "generations": "eval.generations",
    "temperature": "eval.temperature", "max_new_tokens": "rollout.max_new_tokens",
    "batch_size": "eval.batch_size", "user": "task_options.user", "judge": "task_options.judge",
    "completion_prefix": "task_options.completion_prefix", "seed": "seed",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairalign eval-dialogue", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__[__doc__.index("Settings come"):__doc__.index("Simplification")])
    p.add_argument("target", help="a run directory (uses its final model and config.yaml) or a model name / folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, as for `fairalign train`")
    p.add_argument("--profiles", type=int, help="test profiles to talk to (eval.examples)")
    p.add_argument("--max-turns", type=int, help="turns per dialogue (task_options.eval_turns)")
    p.add_argument("--generations", type=int, help="candidates per turn; the best continues (eval.generations)")
    p.add_argument("--temperature", type=float, help="0 = greedy (eval.temperature)")
    p.add_argument("--max-new-tokens", type=int, help="rollout.max_new_tokens")
    p.add_argument("--user", choices=["rules", "openai"], help="task_options.user")
    p.add_argument("--judge", choices=["rules", "openai"], help="task_options.judge")
    p.add_argument("--openai-base-url", help="OpenAI-compatible endpoint for an openai user/judge")
    p.add_argument("--openai-model", help="model name at that endpoint")
    p.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    p.add_argument("--completion-prefix", help="task_options.completion_prefix")
    p.add_argument("--seed", type=int, help="seed")
    p.add_argument("--batch-size", type=int, help="dialogues generated together (eval.batch_size)")
    p.add_argument("--checkpoint", type=int, metavar="STEP",
                   help="evaluate the run's checkpoints/step-STEP model instead of final/ (0 = right after the "
                        "sft.* warm-up); the output defaults to RUN_DIR/eval-step-STEP")
    p.add_argument("--out", default=None, help="folder for the JSON and PNG (default: the run dir or runs/eval-dialogue)")
    return p


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The scalar flags that were given, as KEY=VALUE overrides (values JSON-quoted, which YAML reads back)."""
    return [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAG_KEYS.items()
            if getattr(args, flag) is not None]


def remote_options(args: argparse.Namespace) -> dict:
    """The --openai-* / --api-key-env flags that were given, as OpenAIChat options."""
    return {k: v for k, v in (("base_url", args.openai_base_url), ("model", args.openai_model),
                              ("api_key_env", args.api_key_env)) if v is not None}


def resolve(target: str, overrides: list[str], remote: dict | None = None) -> list[str]:
    """The overrides of an eval-dialogue call: task=rlpa for a model name (a run keeps its own task), then
    the KEY=VALUE pairs, then `remote` (the --openai-* flags) merged key by key into user_options and
    judge_options (so --api-key-env alone keeps the config's base_url)."""
    from fairalign.config import build_config, load_yaml

    run_cfg = Path(target) / "config.yaml"
    overrides = list(overrides) if run_cfg.is_file() else ["task=rlpa", *overrides]
    if remote:
        cfg = build_config(load_yaml(run_cfg) if run_cfg.is_file() else {}, overrides)
        for key in ("user_options", "judge_options"):
            overrides += [f"task_options.{key}.{k}={json.dumps(v)}"
                          for k, v in {**(cfg.task_options.get(key) or {}), **remote}.items()]
    return overrides


def main(argv: list[str] | None = None) -> int:
    from fairalign.envs.rlpa.evaluate import truncation_warning
    from fairalign.errors import ConfigError
    from fairalign.eval.cli import evaluate_target
    from fairalign.eval.run import resolve_target

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_intermixed_args(argv)
    overrides = resolve(args.target, list(args.overrides) + flag_overrides(args), remote_options(args))
    cfg = resolve_target(args.target, overrides, args.checkpoint, command="eval-dialogue")[0]
    if cfg.task != "rlpa":  # this command is the rlpa task's evaluation with its own flags
        raise ConfigError(f"eval-dialogue evaluates the rlpa task; '{args.target}' has task '{cfg.task}' "
                          f"(use `fairalign eval`)")
    res, cfg, out_dir, store = evaluate_target(args.target, overrides, checkpoint=args.checkpoint,
                                               command="eval-dialogue", out=args.out,
                                               default_out=Path("runs/eval-dialogue"),
                                               partial="dialogue_eval.partial.jsonl", argv=argv)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dialogue_eval.json").write_text(json.dumps(res, indent=2))
    store.finish()
    plot_al(res, out_dir / "dialogue_al.png")
    print("turn  AL(k)  profile-F1  response-pass  cut-at-max%")
    for k, (a, f, r, c) in enumerate(zip(res["al_by_turn"], res["profile_f1_by_turn"], res["response_pass_by_turn"],
                                         res["truncated_by_turn"]), 1):
        print(f"{k:4d}  {a:5.2f}  {f:10.2f}  {r:13.2f}  {c:11.1f}")
    if "avg" in res:
        print(f"AVG {res['avg']:.2f}  N-IR {res['n_ir']:.3f}  N-R² {res['n_r2']:.3f}")
    warning = truncation_warning(res)
    if warning:
        print(warning, file=sys.stderr)
    print(f"wrote {out_dir / 'dialogue_eval.json'} and {out_dir / 'dialogue_al.png'}")
    return 0


def plot_al(result: dict, path: Path, label: str = "policy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = list(range(1, len(result["al_by_turn"]) + 1))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(k, result["al_by_turn"], marker="o", label=f"AL(k) {label}")
    ax.plot(k, result["profile_f1_by_turn"], marker=".", ls="--", label="profile F1 ×100")
    ax.set(xlabel="turn k", ylabel="score (×100)",
           title=f"RLPA evaluation: AVG {result.get('avg', float('nan')):.2f}, N-IR {result.get('n_ir', float('nan')):.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
