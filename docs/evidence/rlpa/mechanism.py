"""Cheap checks behind study 3's reading: why RL on the rules judge did not unlearn repeated questions.

    .venv/bin/python docs/evidence/rlpa/mechanism.py [--profiles 100]

No policy is run (pure Python plus the SmolLM2 tokenizer for token counts):
1. The repeat gate, before and after the repeated-question rule: over every oracle question x pairs of
   acknowledgements (the warm-up's own phrasings), how often "ack2 + the same question" after
   "ack1 + question" passes the whole-reply Jaccard gate (the rule before) and `repeats_earlier` (now).
2. What the rules user and judge do with the greedy loop of the saved evaluations
   (docs/figures/rlpa_cpu/*.json, one example transcript each): per turn, exact repeat or not, and
   the user's answer.
3. Token length of an oracle (contract-following, complete-profile) turn per turn, against the
   max_new_tokens=80 of the documented preset and evaluation command.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from fairalign.envs.rlpa import get_profiles
from fairalign.envs.rlpa.oracle import ACKS_INTEREST, ACKS_ITEM, ACKS_PLAIN, QUESTIONS, oracle_demonstrations
from fairalign.envs.rlpa.rewards import _word_set, repeats_earlier

ITEMS = ("nurse", "Oslo", "married", "hiking", "master's degree", "42", "calm", "grew up in a large family")
FIGURES = Path(__file__).resolve().parents[2] / "figures" / "rlpa_cpu"


def whole_reply_repeat(reply: str, earlier: list[str], threshold: float = 0.8) -> bool:
    """The repeat gate before the repeated-question rule: whole-reply word-set Jaccard only."""
    words = _word_set(reply)
    for prev in earlier:
        union = words | _word_set(prev)
        if union and len(words & _word_set(prev)) / len(union) >= threshold:
            return True
    return False


def gate_pass_rates() -> None:
    acks = [a.format(item=i) for a in ACKS_ITEM + ACKS_INTEREST for i in ITEMS] + list(ACKS_PLAIN)
    n = before = now = 0
    for q in (q for qs in QUESTIONS.values() for q in qs):
        for a1, a2 in itertools.combinations(acks, 2):
            n += 1
            before += not whole_reply_repeat(f"{a2} {q}", [f"{a1} {q}"])
            now += not repeats_earlier(f"{a2} {q}", [f"{a1} {q}"])
    print(f"1. same question behind a different acknowledgement ({n} pairs): passes the repeat gate "
          f"{100 * before / n:.1f}% before, {100 * now / n:.1f}% now")


def replay_saved() -> None:
    print("2. the saved evaluations' example transcripts (greedy, rules user):")
    for name in ("sft_only", "sft_rl"):
        path = FIGURES / f"{name}.json"
        if not path.is_file():
            continue
        h = json.loads(path.read_text())["example_transcript"]
        said = [m["content"] for m in h if m["role"] == "assistant"]
        heard = [m["content"] for m in h if m["role"] == "user"][1:] + [""]
        marks = []
        for k, (r, u) in enumerate(zip(said, heard), 1):
            exact = r in said[:k - 1]
            marks.append(f"t{k}:{'EXACT-REPEAT' if exact else 'new'}" + (" -> user repeats-reply" if
                                                                          u.startswith(("You already", "You said")) else ""))
        print(f"   {name}: " + "; ".join(marks))


def token_lengths(n_profiles: int) -> None:
    from fairalign.models import load_policy

    _, tok = load_policy("smollm2-135m")
    profiles = get_profiles("train")[:n_profiles]
    demos = oracle_demonstrations(profiles, max_turns=10, seed=0, completion_prefix="<profile>")
    print(f"3. oracle turn length in SmolLM2 tokens (+ EOS), {n_profiles} training profiles:")
    for k in range(1, 11):
        lens = [len(tok(d["completion"], add_special_tokens=False)["input_ids"]) + 1 for d in demos if d["turn"] == k]
        print(f"   turn {k:2d}: mean {statistics.mean(lens):5.1f}  max {max(lens):3d}  "
              f"over 80: {100 * sum(x > 80 for x in lens) / len(lens):3.0f}%")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profiles", type=int, default=100)
    args = p.parse_args()
    gate_pass_rates()
    replay_saved()
    token_lengths(args.profiles)


if __name__ == "__main__":
    main()
