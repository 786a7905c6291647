"""`fairalign eval-dialogue RUN_DIR_OR_MODEL [KEY=VALUE ...]`: the paper's RLPA evaluation.

Runs `profiles` test profiles x `max_turns` turns with the chosen simulated user and judge, the
policy answering greedily (or sampling G candidates, the best continuing), and reports AL(k) per
turn (x100), AVG, N-IR, N-R² and profile F1 per turn; writes dialogue_eval.json and
dialogue_al.png into the run directory (or --out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fairalign eval-dialogue", description=__doc__.split("\n")[0])
    p.add_argument("target", help="a run directory (uses its final model) or a model name / folder")
    p.add_argument("--profiles", type=int, default=32, help="test profiles to talk to (default 32)")
    p.add_argument("--max-turns", type=int, default=10, help="turns per dialogue (default 10)")
    p.add_argument("--generations", type=int, default=1, help="candidates per turn; the best continues")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--user", default="rules", choices=["rules", "openai"])
    p.add_argument("--judge", default="rules", choices=["rules", "openai"])
    p.add_argument("--openai-base-url", default=None, help="OpenAI-compatible endpoint for user/judge")
    p.add_argument("--openai-model", default=None)
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--completion-prefix", default="<profile>")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="dialogues generated together")
    p.add_argument("--out", default=None, help="folder for the JSON and PNG (default: the run dir or runs/eval-dialogue)")
    return p


def evaluate_dialogues(model, tokenizer, *, profiles: int = 32, max_turns: int = 10, generations: int = 1,
                       temperature: float = 0.0, max_new_tokens: int = 96, user="rules", judge="rules",
                       completion_prefix: str = "<profile>", seed: int = 0, batch_size: int = 16) -> dict:
    from fairalign.envs.rlpa import get_profiles, run_dialogues
    from fairalign.eval import dialogue_metrics
    from fairalign.rollout import HFGenerationEngine

    engine = HFGenerationEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                                completion_prefix=completion_prefix)
    test = get_profiles("test")[:profiles]
    runs = []
    for s in range(0, len(test), batch_size):
        def policy(prompts, G, _s=s):
            b = engine.generate(prompts, generations=G, generator_seed=seed * 7 + _s + len(prompts[0]))
            return [b.completions[i * G:(i + 1) * G] for i in range(len(prompts))]
        runs.append(run_dialogues(policy, test[s:s + batch_size], user=user, judge=judge, max_turns=max_turns,
                                  G=generations, seed=seed + s, completion_prefix=completion_prefix))
    n = [len(test[s:s + batch_size]) for s in range(0, len(test), batch_size)]

    def pooled(attr):
        return [sum(getattr(r, attr)[k] * w for r, w in zip(runs, n)) / sum(n) for k in range(max_turns)]

    al, f1, resp = pooled("al_by_turn"), pooled("profile_f1_by_turn"), pooled("response_by_turn")
    out = {"profiles": len(test), "max_turns": max_turns, "al_by_turn": al, "profile_f1_by_turn": f1,
           "response_pass_by_turn": resp}
    out.update(dialogue_metrics(al) if max_turns >= 2 else {})
    out["example_transcript"] = runs[0].transcripts[0] if runs else []
    return out


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
    from fairalign.models import load_policy

    args = _parser().parse_args(argv)
    target = Path(args.target)
    if (target / "config.yaml").is_file():
        if not (target / "final").is_dir():
            raise ValueError(f"eval-dialogue: run '{target}' has no final model (is it finished?)")
        model_name, out_dir = str(target / "final"), Path(args.out or target)
    else:
        model_name, out_dir = args.target, Path(args.out or "runs/eval-dialogue")
    remote = {}
    if "openai" in (args.user, args.judge):
        if not args.openai_base_url or not args.openai_model:
            raise ValueError("--user/--judge openai needs --openai-base-url and --openai-model")
        remote = {"backend": "openai", "base_url": args.openai_base_url, "model": args.openai_model,
                  "api_key_env": args.api_key_env}
    import torch

    model, tok = load_policy(model_name, device="cuda" if torch.cuda.is_available() else "cpu")
    res = evaluate_dialogues(model, tok, profiles=args.profiles, max_turns=args.max_turns,
                             generations=args.generations, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens,
                             user=remote if args.user == "openai" else "rules",
                             judge=remote if args.judge == "openai" else "rules",
                             completion_prefix=args.completion_prefix, seed=args.seed, batch_size=args.batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dialogue_eval.json").write_text(json.dumps(res, indent=2))
    plot_al(res, out_dir / "dialogue_al.png")
    print("turn  AL(k)  profile-F1  response-pass")
    for k, (a, f, r) in enumerate(zip(res["al_by_turn"], res["profile_f1_by_turn"], res["response_pass_by_turn"]), 1):
        print(f"{k:4d}  {a:5.2f}  {f:10.2f}  {r:13.2f}")
    if "avg" in res:
        print(f"AVG {res['avg']:.2f}  N-IR {res['n_ir']:.3f}  N-R² {res['n_r2']:.3f}")
    print(f"wrote {out_dir / 'dialogue_eval.json'} and {out_dir / 'dialogue_al.png'}")
    return 0
