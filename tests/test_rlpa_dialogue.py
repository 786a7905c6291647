"""Batched RLPA dialogues: an oracle policy (restates exactly what the rules user revealed) earns
rising profile F1 and response reward 1; garbage earns 0; the API's bookkeeping."""

import json
import time

import pytest

from fairalign.envs.rlpa import POLICY_SYSTEM_PROMPT, SLOTS, DialogueBatch, get_profiles, profile_group, run_dialogues
from fairalign.envs.rlpa.metrics import dialogue_metrics

QUESTIONS = {"Age": "How old are you?", "Gender": "What gender do you identify as?",
             "Interests": "What do you enjoy in your free time?", "Education": "What did you study?",
             "Personality Traits": "How would you describe your personality?",
             "Occupation": "What do you do for work?", "Marital Status": "Are you married?",
             "Family Background": "What is your family like?", "Location": "Where do you live?",
             "Other": "Anything else I should know?"}


def _turn(profile: dict, reply: str) -> str:
    return f"<profile>{json.dumps(profile)}</profile>\n<response>{reply}</response>"


def _oracle(batch: DialogueBatch) -> list[str]:
    """Restate exactly the revealed items and ask about the next slot not revealed yet."""
    out = []
    for i in batch.active:
        known = batch.user.revealed_profile(batch.states[i])
        missing = [s for s in SLOTS if s not in known]
        if missing:
            reply = f"Thanks for sharing. {QUESTIONS[missing[batch.turn % len(missing)]]}"
        else:
            reply = f"Good to know you like {known['Interests'][0]}."
        out.append(_turn(known, reply))
    return out


def test_oracle_policy_rising_f1_and_full_response_reward():
    profiles = get_profiles("test")[:8]
    batch = DialogueBatch(profiles, max_turns=10, seed=0)
    revealed_before = []
    while not batch.done:
        revealed_before.append([len(batch.user.revealed(s)) for s in batch.states])
        batch.step([[t] for t in _oracle(batch)])
    assert batch.turn == 10 and batch.active == [] and len(batch.records) == 80
    for i, p in enumerate(profiles):
        recs = sorted((r for r in batch.records if r["dialogue"] == i), key=lambda r: r["turn"])
        f1 = [r["profile"] for r in recs]
        n = len(p.items())
        # precision is 1, recall = revealed / n  ->  F1 = 2r / (r + n)
        assert f1 == pytest.approx([2 * revealed_before[k][i] / (revealed_before[k][i] + n) for k in range(10)])
        assert all(a <= b for a, b in zip(f1, f1[1:])) and f1[0] == 0.0 and f1[-1] > 0.8
        assert [r["response"] for r in recs] == [1.0] * 10 and all(r["format_ok"] for r in recs)
    al = [sum(r["total"] for r in batch.records if r["turn"] == k) / len(profiles) / 2 * 100 for k in range(1, 11)]
    m = dialogue_metrics(al)
    assert m["n_ir"] > 0.05 and m["n_r2"] > 0.7


def test_garbage_policy_scores_zero():
    res = run_dialogues(lambda prompts, n: [["I am a language model."] * n for _ in prompts],
                        get_profiles("test")[:3], max_turns=4, G=2)
    assert len(res.records) == 12 and all(r["total"] == 0.0 and not r["format_ok"] for r in res.records)
    assert res.al_by_turn == [0.0] * 4 and res.metrics == {"avg": 0.0, "n_ir": 0.0, "n_r2": 0.0}
    # the garbage text (no tags) is what the user saw
    assert res.transcripts[0][1] == {"role": "assistant", "content": "I am a language model."}


def test_run_dialogues_prompts_history_and_best_of_g():
    profiles = get_profiles("test")[:2]
    seen = []

    def policy(prompts, n):
        seen.append(prompts)
        good = _turn({}, "Hi! Where do you live?" if len(seen) == 1 else f"Nice. Tell me about your family {len(seen)}?")
        return [["garbage", good, good + " junk"][:n] for _ in prompts]

    res = run_dialogues(policy, profiles, max_turns=3, G=3, seed=1)
    first = seen[0][0]
    assert first == [{"role": "system", "content": POLICY_SYSTEM_PROMPT}, {"role": "user", "content": "Hello"}]
    third = seen[2][1]  # system, Hello, A1, U1, A2, U2
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third[2]["content"] == "Hi! Where do you live?"  # only the reply, no <profile> block
    assert profiles[1].location in third[3]["content"]  # the rules user answered the question
    assert all("<profile>" not in m["content"] for m in third[1:])
    rec = res.records[0]
    assert rec["chosen"] == 1 and rec["candidate_totals"][0] == 0.0 and rec["candidate_totals"][2] == 0.0
    assert rec["group"] == profile_group(profiles[0]) and rec["profile_id"] == profiles[0].id
    assert [r["turn"] for r in res.records] == [1, 1, 2, 2, 3, 3]
    assert res.records[-1]["user_reply"] is None and res.records[0]["user_reply"]
    assert len(res.transcripts[0]) == 1 + 2 + 2 + 1  # Hello, (A, U) x 2, final A
    assert res.profile_f1_by_turn[0] == 0.0 and res.response_by_turn == [100.0, 100.0, 100.0]
    with pytest.raises(ValueError, match="must return 3 candidate"):
        run_dialogues(lambda p, n: [["x"] for _ in p], profiles, max_turns=2, G=3)


def test_dialogue_batch_api_and_errors():
    profiles = get_profiles("train")[:3]
    b = DialogueBatch(profiles, max_turns=2, group_by="cluster")
    assert len(b) == 3 and b.active == [0, 1, 2] and not b.done
    assert b.groups() == [profile_group(p, "cluster") for p in profiles]
    scores = b.score([[_turn({}, "Where do you live?"), "x"]] * 3)
    assert [len(r) for r in scores] == [2, 2, 2] and b.best(scores) == [0, 0, 0]
    assert scores[1][0]["dialogue"] == 1 and scores[1][0]["turn"] == 1 and scores[1][1]["candidate"] == 1
    with pytest.raises(ValueError, match="one list per active dialogue"):
        b.score([["x"]])
    with pytest.raises(ValueError, match="list of lists"):
        b.score(["x", "y", "z"])
    # a chosen text that was never scored is scored on the spot
    answers = b.advance([_turn({}, "What do you do for work?")] * 3)
    assert len(answers) == 3 and all(answers) and b.records[0]["response"] == 1.0
    assert b.records[0]["candidate_totals"] is None
    b.advance(["plain text"] * 3)
    assert b.done and b.policy_prompts() == [] and b.groups() == []
    with pytest.raises(ValueError, match="all dialogues are finished"):
        b.advance(["x"] * 3)
    with pytest.raises(ValueError, match="max_turns"):
        DialogueBatch(profiles, max_turns=0)
    with pytest.raises(ValueError, match="profiles must be a non-empty"):
        DialogueBatch([])


def test_rules_user_is_cheap():
    profiles = get_profiles("train")[:64]
    b = DialogueBatch(profiles, max_turns=10)
    text = [_turn({}, "Where do you live and what do you do for work?")]
    t0 = time.perf_counter()
    while not b.done:
        b.advance(text * len(profiles))
    per_turn = (time.perf_counter() - t0) / (64 * 10)
    assert per_turn < 0.01  # well under a millisecond in practice; a policy generation takes seconds


def test_completion_prefix_is_prepended_before_parsing():
    profiles = get_profiles("test")[:2]
    b = DialogueBatch(profiles, max_turns=2, completion_prefix="<profile>{")
    scores = b.score([['"Age": 30}</profile><response>Where do you live?</response>', "<profile>{}</profile>"]] * 2)
    assert [s["format_ok"] for s in scores[0]] == [True, False]
    assert scores[0][0]["profile_pred"] == {"Age": ["30"]}
    b.advance(['"Age": 30}</profile><response>Where do you live?</response>'] * 2)
    assert b.histories[0][1] == {"role": "assistant", "content": "Where do you live?"}
    assert b.records[0]["response"] == 1.0
