"""`fairalign eval-dialogue RUN_DIR_OR_MODEL [KEY=VALUE ...] [--flags]`: the paper's RLPA evaluation.

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

This module sits above the task layer: it loads the model and builds a generation engine.
Simplifications: the test profiles are the task's test split in order (the first N); a LoRA run's
final adapter is not loaded (evaluate a merged model folder instead).
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
                                epilog=__doc__[__doc__.index("Settings come"):__doc__.index("This module")])
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


def resolve(target: str, overrides: list[str], remote: dict | None = None, checkpoint: int | None = None):
    """(config, model path, default output folder) for a run directory or a model name; `remote`
    (OpenAIChat options) is merged into task_options.user_options and judge_options; `checkpoint`
    picks the run's checkpoints/step-N model instead of final/."""
    from fairalign.train.config import ConfigError, build_config, load_yaml

    run = Path(target)
    if remote:  # merged key by key, so e.g. --api-key-env alone keeps the config's base_url
        cfg = resolve(target, overrides, checkpoint=checkpoint)[0]
        merged = {k: {**(cfg.task_options.get(k) or {}), **remote} for k in ("user_options", "judge_options")}
        overrides = [*overrides, *(f"task_options.{k}={json.dumps(v)}" for k, v in merged.items())]
    if checkpoint is not None and not (run / "config.yaml").is_file():
        raise ConfigError(f"eval-dialogue: --checkpoint needs a run directory; '{target}' has no config.yaml")
    if (run / "config.yaml").is_file():
        cfg = build_config(load_yaml(run / "config.yaml"), overrides)
        if checkpoint is not None:
            model_path, out_dir = _checkpoint_model(run, checkpoint, cfg), run / f"eval-step-{checkpoint}"
        elif not (run / "final").is_dir():
            raise ConfigError(f"eval-dialogue: run '{target}' has no final model (is it finished?)")
        else:
            model_path, out_dir = str(run / "final"), run
    else:
        cfg = build_config({"task": "rlpa", "model": target}, overrides)
        model_path, out_dir = cfg.model, Path("runs/eval-dialogue")
    if cfg.task != "rlpa":
        raise ConfigError(f"eval-dialogue evaluates the rlpa task; '{target}' has task '{cfg.task}' "
                          f"(use `fairalign eval`)")
    return cfg, model_path, out_dir


def _checkpoint_model(run: Path, step: int, cfg) -> str:
    """The model folder of the run's complete checkpoint step-`step`, or a ConfigError naming what exists."""
    from fairalign.train.checkpoint import list_checkpoints
    from fairalign.train.config import ConfigError

    found = dict(list_checkpoints(run))
    if step not in found:
        have = ", ".join(str(s) for s in sorted(found)) or "none"
        raise ConfigError(f"eval-dialogue: --checkpoint {step}: run '{run}' has no complete checkpoint step-{step} "
                          f"(complete checkpoints: {have}; keep_last prunes older ones)")
    if cfg.lora.enabled:
        raise ConfigError("eval-dialogue: --checkpoint on a LoRA run is not handled (its checkpoint holds an adapter); "
                          "evaluate a merged model folder")
    return str(found[step] / "model")


def per_dialogue(run, truncated: list[list[bool]], generations: int, first: int = 0) -> list[dict]:
    """One entry per dialogue of a `DialogueRun` (in order; `first` = index of its first dialogue overall):
    profile_id, group and a record per turn (total, profile, response, reply, user_reply, ...) with
    `truncated` = whether the chosen reply hit max_new_tokens; `truncated[t]` holds the engine's flags of
    turn t+1, [n_dialogues * generations], one dialogue's candidates adjacent."""
    out: dict[int, dict] = {}
    for r in run.records:
        i = r["dialogue"]
        d = out.setdefault(i, {"dialogue": first + i, "profile_id": r["profile_id"], "group": r["group"], "turns": []})
        rec = {k: v for k, v in r.items() if k not in ("dialogue", "profile_id", "group")}
        rec["truncated"] = bool(truncated[r["turn"] - 1][i * generations + (r["chosen"] or 0)])
        d["turns"].append(rec)
    return [out[i] for i in sorted(out)]


def evaluate_dialogues(model, tokenizer, *, profiles=32, max_turns: int = 10, generations: int = 1,
                       temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 96, user="rules",
                       judge="rules", completion_prefix: str = "<profile>", seed: int = 0, batch_size: int = 16,
                       chat_template: str = "auto") -> dict:
    """RLPA evaluation of a model: `profiles` (a count of built-in test profiles, or a list of
    Profile) x `max_turns` turns. Returns AL(k), profile F1 and response pass rate per turn, plus
    AVG / N-IR / N-R² (for >= 2 turns), the settings and one example transcript."""
    from fairalign.envs.rlpa import get_profiles, run_dialogues
    from fairalign.eval import dialogue_metrics
    from fairalign.rollout import HFGenerationEngine

    engine = HFGenerationEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p if temperature > 0 else 1.0, chat_template=chat_template,
                                completion_prefix=completion_prefix)
    test = get_profiles("test")[:profiles] if isinstance(profiles, int) else list(profiles)
    if not test:
        raise ValueError("eval-dialogue: no test profiles to evaluate")
    runs, dialogues = [], []
    for s in range(0, len(test), batch_size):
        cut: list[list[bool]] = []  # per turn: the engine's truncated flags [n * G]

        def policy(prompts, G, _s=s, _cut=cut):
            b = engine.generate(prompts, generations=G, generator_seed=seed * 7 + _s + len(prompts[0]))
            _cut.append(b.truncated.tolist())
            return [b.completions[i * G:(i + 1) * G] for i in range(len(prompts))]
        runs.append(run_dialogues(policy, test[s:s + batch_size], user=user, judge=judge, max_turns=max_turns,
                                  G=generations, seed=seed + s, completion_prefix=completion_prefix))
        dialogues += per_dialogue(runs[-1], cut, generations, first=s)
    n = [len(test[s:s + batch_size]) for s in range(0, len(test), batch_size)]

    def pooled(attr):
        return [sum(getattr(r, attr)[k] * w for r, w in zip(runs, n)) / sum(n) for k in range(max_turns)]

    al, f1, resp = pooled("al_by_turn"), pooled("profile_f1_by_turn"), pooled("response_by_turn")
    cut_by_turn = [100.0 * sum(d["turns"][k]["truncated"] for d in dialogues) / len(dialogues) for k in range(max_turns)]
    out = {"profiles": len(test), "max_turns": max_turns, "al_by_turn": al, "profile_f1_by_turn": f1,
           "response_pass_by_turn": resp, "truncated_by_turn": cut_by_turn}
    out.update(dialogue_metrics(al) if max_turns >= 2 else {})
    out["settings"] = {"generations": generations, "temperature": temperature, "max_new_tokens": max_new_tokens,
                       "completion_prefix": completion_prefix, "seed": seed, "batch_size": batch_size,
                       "user": _public(user), "judge": _public(judge)}
    out["example_transcript"] = runs[0].transcripts[0] if runs else []
    out["dialogues"] = dialogues
    return out


def truncation_warning(result: dict) -> str | None:
    """One line naming the turns whose replies were cut at max_new_tokens, or None."""
    cut = [(k, v) for k, v in enumerate(result.get("truncated_by_turn", []), 1) if v > 0]
    if not cut:
        return None
    turns = ", ".join(f"turn {k} {v:.0f}%" for k, v in cut)
    return (f"eval-dialogue: warning: replies cut at max_new_tokens={result['settings']['max_new_tokens']} "
            f"({turns}); a cut turn fails the format and scores 0: raise --max-new-tokens")


def _public(spec):
    """A user/judge spec as written to the results (the backend and endpoint; never a key's value)."""
    if isinstance(spec, dict):
        return {k: v for k, v in spec.items() if k in ("backend", "base_url", "model", "api_key_env")}
    return spec if isinstance(spec, str) else type(spec).__name__


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


def main(argv: list[str] | None = None) -> int:
    import torch

    from fairalign.envs import get_task
    from fairalign.models import load_policy

    args = _parser().parse_intermixed_args(argv)
    cfg, model_path, out_dir = resolve(args.target, list(args.overrides) + flag_overrides(args), remote_options(args),
                                       checkpoint=args.checkpoint)
    out_dir = Path(args.out) if args.out else out_dir
    task = get_task("rlpa", seed=cfg.seed, **cfg.task_options)
    e = cfg.eval
    profiles = [ex["profile"] for ex in task.test_examples]
    profiles = profiles[:e.examples] if e.examples else profiles
    model, tok = load_policy(model_path, trust_remote_code=cfg.trust_remote_code, allow_download=cfg.allow_download,
                             device="cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    res = evaluate_dialogues(model, tok, profiles=profiles, max_turns=task.eval_turns, generations=e.generations,
                             temperature=e.temperature, top_p=cfg.rollout.top_p,
                             max_new_tokens=cfg.rollout.max_new_tokens, user=task.user, judge=task.judge,
                             completion_prefix=task.info["completion_prefix"], seed=cfg.seed,
                             batch_size=e.batch_size, chat_template=cfg.rollout.chat_template)
    res["settings"]["model"] = model_path
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dialogue_eval.json").write_text(json.dumps(res, indent=2))
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
