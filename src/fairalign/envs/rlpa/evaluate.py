"""RLPA's evaluation as in the paper: test profiles x K turns with the task's simulated user and judge,
the policy answering through a generation engine (greedy, or sampling G candidates with the best
continuing). Reports AL(k) per turn (x100), AVG, N-IR, N-R² (metrics.py), profile F1, the response pass
rate and the share of replies cut at the engine's max_new_tokens per turn, and one record per dialogue and
turn (for paired comparisons over profiles).

Simplifications: the profiles are evaluated `batch_size` dialogues at a time, in order; the generation seed
of a turn is `seed * 7 + first profile index + length of the first prompt` (as the training rollout, a
function of the history, so a rerun is identical, and a batch kept before a fault, read back from the
`parts` store, is what an uninterrupted evaluation computes).
"""
from __future__ import annotations

from typing import Any, Sequence

from fairalign.envs.rlpa.dialogue import run_dialogues
from fairalign.envs.rlpa.metrics import dialogue_metrics
from fairalign.envs.rlpa.profile import Profile
from fairalign.envs.task import evaluation_part


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


def evaluate_dialogues(engine, profiles: Sequence[Profile], *, max_turns: int = 10, generations: int = 1,
                       user: Any = "rules", judge: Any = "rules", seed: int = 0, batch_size: int = 16,
                       progress=None, parts=None, context: str = "full", context_turns: int = 2) -> dict:
    """RLPA evaluation of the policy behind `engine` on `profiles` x `max_turns` turns. Returns AL(k),
    profile F1, response pass rate and cut share per turn, AVG / N-IR / N-R² (for >= 2 turns), the
    settings, one example transcript, one record per dialogue (`dialogues`) and the flat `metrics`.
    `parts`: a store of the finished batches of dialogues (envs.task.evaluation_part), so a rerun after a
    remote user or judge failed skips them."""
    test = list(profiles)
    if not test:
        raise ValueError("RLPA evaluation: no test profiles to evaluate")
    batches = []
    for s in range(0, len(test), batch_size):
        def play(s=s) -> dict:
            cut: list[list[bool]] = []  # per turn: the engine's truncated flags [n * G]

            def policy(prompts, G):
                b = engine.generate(prompts, generations=G, generator_seed=seed * 7 + s + len(prompts[0]))
                cut.append(b.truncated.tolist())
                return [b.completions[i * G:(i + 1) * G] for i in range(len(prompts))]
            run = run_dialogues(policy, test[s:s + batch_size], user=user, judge=judge, max_turns=max_turns,
                                G=generations, seed=seed + s, completion_prefix=engine.completion_prefix,
                                context=context, context_turns=context_turns)
            return {"examples": len(test[s:s + batch_size]), "al_by_turn": run.al_by_turn,
                    "profile_f1_by_turn": run.profile_f1_by_turn, "response_by_turn": run.response_by_turn,
                    "transcript": run.transcripts[0], "dialogues": per_dialogue(run, cut, generations, first=s)}
        batches.append(evaluation_part(parts, s, play))
        if progress is not None:
            progress(min(s + batch_size, len(test)), len(test))
    dialogues = [d for b in batches for d in b["dialogues"]]

    def pooled(key):
        n = sum(b["examples"] for b in batches)
        return [sum(b[key][k] * b["examples"] for b in batches) / n for k in range(max_turns)]

    al, f1, resp = pooled("al_by_turn"), pooled("profile_f1_by_turn"), pooled("response_by_turn")
    cut_by_turn = [100.0 * sum(d["turns"][k]["truncated"] for d in dialogues) / len(dialogues) for k in range(max_turns)]
    out = {"kind": "dialogue", "profiles": len(test), "max_turns": max_turns, "al_by_turn": al,
           "profile_f1_by_turn": f1, "response_pass_by_turn": resp, "truncated_by_turn": cut_by_turn}
    out.update(dialogue_metrics(al) if max_turns >= 2 else {})
    out["settings"] = {"generations": generations, "temperature": engine.temperature,
                       "max_new_tokens": engine.max_new_tokens, "completion_prefix": engine.completion_prefix,
                       "seed": seed, "batch_size": batch_size, "user": _public(user), "judge": _public(judge),
                       "context": context, "context_turns": context_turns}
    out["example_transcript"] = batches[0]["transcript"]
    out["dialogues"] = dialogues
    out["metrics"] = {**{f"dialogue/{k}": out[k] for k in ("avg", "n_ir", "n_r2") if k in out},
                      **{f"dialogue/al/{k}": v for k, v in enumerate(al, 1)}}
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
