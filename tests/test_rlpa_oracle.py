"""The RLPA oracle policy and its demonstrations (the sft.* warm-up data): every turn follows the
contract, restates only revealed items (precision 1), passes the rules judge, and each question
targets the slot it is written for."""
import json
import random

import pytest

from fairalign.envs.rlpa import get_profiles, parse_turn, profile_prf
from fairalign.envs.rlpa.oracle import QUESTIONS, oracle_demonstrations, oracle_turn
from fairalign.envs.rlpa.profile import SLOTS, slots_mentioned


@pytest.mark.parametrize("slot", SLOTS)
def test_every_question_targets_its_slot(slot):
    for q in QUESTIONS[slot]:
        assert slot in slots_mentioned(q), q


def test_oracle_turn_restates_known_and_asks_about_a_missing_slot():
    known = {"Occupation": "nurse", "Interests": ["hiking"]}
    text = oracle_turn(known, random.Random(0), ("Interests", "hiking"))
    parsed = parse_turn(text)
    assert parsed.ok and parsed.profile == {"Occupation": ["nurse"], "Interests": ["hiking"]}
    assert "hiking" in parsed.reply and parsed.reply.endswith("?")
    asked = set(slots_mentioned(parsed.reply.split(".")[-1]))
    assert asked and not asked & {"Occupation"}  # never asks about a slot it already knows


def test_demonstrations_are_perfect_turns():
    profiles = get_profiles("train")[:6]
    demos = oracle_demonstrations(profiles, max_turns=5, seed=3, completion_prefix="<profile>")
    assert len(demos) == 30 and sorted({d["turn"] for d in demos}) == [1, 2, 3, 4, 5]
    for d in demos:
        assert not d["completion"].startswith("<profile>")
        parsed = parse_turn("<profile>" + d["completion"])
        assert parsed.ok
        assert d["prompt"][0]["role"] == "system" and d["prompt"][-1]["role"] == "user"
    # replaying the demonstrations as a policy: precision 1 and response reward 1 on every turn
    from fairalign.envs.rlpa import DialogueBatch

    batch = DialogueBatch(profiles, max_turns=5, seed=3, completion_prefix="<profile>")
    by_turn = {}
    for d in demos:
        by_turn.setdefault(d["turn"], []).append(d)
    for k in range(1, 6):
        assert [m["content"] for m in by_turn[k][0]["prompt"][1:]] == [m["content"] for m in batch.policy_prompts()[0][1:]]
        scores = batch.step([[d["completion"]] for d in by_turn[k]])
        for i, row in enumerate(scores):
            assert row[0]["format_ok"] and row[0]["response"] == 1.0
            pred = json.loads(by_turn[k][i]["completion"].split("</profile>")[0])
            p, r, f = profile_prf(pred, profiles[i])
            assert p == 1.0 or not pred


def test_deterministic_and_prefix_checked():
    profiles = get_profiles("train")[:3]
    a = oracle_demonstrations(profiles, max_turns=3, seed=1)
    b = oracle_demonstrations(profiles, max_turns=3, seed=1)
    assert a == b
    with pytest.raises(ValueError, match="completion_prefix"):
        oracle_demonstrations(profiles, max_turns=2, completion_prefix="<response>")


@pytest.mark.parametrize("n_profiles,turns", [(200, 10), (12, 16)])
def test_oracle_never_asks_a_question_twice_and_always_passes_the_judge(n_profiles, turns):
    """The warm-up must not teach repetition: over whole dialogues (16 turns: every slot gets known and
    the oracle runs out of slot questions) no question is asked twice and every turn passes the judge."""
    from fairalign.envs.rlpa import DialogueBatch
    from fairalign.envs.rlpa.rewards import repeats_earlier

    profiles = get_profiles("train")[:n_profiles]
    demos = oracle_demonstrations(profiles, max_turns=turns, seed=0, completion_prefix="<profile>")
    batch = DialogueBatch(profiles, max_turns=turns, seed=0, completion_prefix="<profile>")
    for k in range(1, turns + 1):
        scores = batch.step([[d["completion"]] for d in demos if d["turn"] == k])
        assert all(row[0]["response"] == 1.0 for row in scores), \
            [(row[0]["reply"], row[0]["reason"]) for row in scores if row[0]["response"] != 1.0][:3]
    for h in batch.transcripts():
        said = [m["content"] for m in h if m["role"] == "assistant"]
        assert not any(repeats_earlier(r, said[:k]) for k, r in enumerate(said)), said


def test_follow_ups_target_no_slot_and_differ():
    from fairalign.envs.rlpa.oracle import FOLLOW_UPS
    from fairalign.envs.rlpa.rewards import repeats_earlier

    assert all(slots_mentioned(q) == [] for q in FOLLOW_UPS)
    assert not any(repeats_earlier(a, [b]) for a in FOLLOW_UPS for b in FOLLOW_UPS if a != b)
