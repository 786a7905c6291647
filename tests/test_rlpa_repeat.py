"""A repeated question is a repeat (issue 14, RLPA over 10 turns): the rules judge fails a reply that
asks again a question of an earlier assistant turn, even behind a new acknowledgement, and the rules
user answers it with "You already asked me that." and reveals nothing. Before this, only a
near-identical *whole* reply counted, so 93.6% of (acknowledgement, same question) pairs passed and
RL at temperature 0.8 learned to vary the wrapper, not the question (docs/evidence/rlpa/README.md)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.envs.rlpa import Profile, RulesJudge, RulesUser
from fairalign.envs.rlpa import user as user_mod
from fairalign.envs.rlpa.oracle import QUESTIONS
from fairalign.envs.rlpa.rewards import questions, repeats_earlier


def _hist(*assistant_replies):
    h = [{"role": "user", "content": "Hello"}]
    for r in assistant_replies:
        h += [{"role": "assistant", "content": r}, {"role": "user", "content": "ok"}]
    return h


def test_questions_are_the_sentences_ending_in_a_question_mark():
    assert questions("Got it: nurse. Where do you live?? And what do you do for fun?") == [
        "Where do you live?", "And what do you do for fun?"]
    assert questions("No question here. None!") == []
    assert questions("") == [] and questions("?") == []


def test_repeats_earlier_hand_computed_jaccard():
    # {so, where, do, you, live} vs {where, do, you, live}: 4/5 = 0.8 >= 0.8 -> a repeat
    assert repeats_earlier("Thanks. So, where do you live?", ["Noted, Oslo. Where do you live?"], 0.8)
    # {what, do, you, for, work} vs {what, do, you, for, living} ("a" is an article): 4/6 < 0.8
    assert not repeats_earlier("Got it. What do you do for work?", ["Nice. What do you do for a living?"], 0.8)
    # the whole reply still counts (no question in it)
    assert repeats_earlier("Oslo is lovely.", ["Oslo is lovely!"], 0.8)
    assert not repeats_earlier("Where do you live?", [], 0.8)


def test_judge_fails_a_repeated_question_behind_a_new_acknowledgement():
    j = RulesJudge()
    prev = "Nice, podcasts sounds fun. What do you like to do on weekends?"
    new = "Got it: married. What do you like to do on weekends?"  # whole-reply Jaccard 5/12 < 0.8
    assert j.checks(new, {"Marital Status": "married"}, _hist(prev))["not_repeat"] is False
    assert j([new], [{"Marital Status": "married"}], [_hist(prev)]) == [0.0]
    # a different question behind the same acknowledgement passes
    ok = "Got it: married. Where do you live?"
    assert j([ok], [{"Marital Status": "married"}], [_hist(prev)]) == [1.0]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted({q for qs in QUESTIONS.values() for q in qs})),
       st.sampled_from(["Nice to meet you!", "Thanks for sharing.", "Got it: nurse.", "Noted, Oslo.",
                        "Oh, chess is a great pastime."]),
       st.sampled_from(["Hello there!", "Thanks, good to know: 42.", "Nice, hiking sounds fun."]))
def test_every_oracle_question_asked_again_is_a_repeat(q, ack1, ack2):
    assert repeats_earlier(f"{ack2} {q}", [f"{ack1} {q}"], 0.8)
    assert RulesJudge().checks(f"{ack2} {q}", {}, _hist(f"{ack1} {q}"))["not_repeat"] is False


def test_user_says_already_asked_to_a_repeated_question():
    p = Profile(age=30, location="Oslo", occupation="nurse", interests=("chess", "golf", "yoga"), id="t")
    user = RulesUser()
    (s,) = user.start([p], seed=0)
    h = [{"role": "user", "content": "Hello"}]
    for msg in ("Thanks for sharing. Do you have any hobbies?", "Nice, chess sounds fun. Do you have any hobbies?"):
        h.append({"role": "assistant", "content": msg})
        h.append({"role": "user", "content": user.reply([s], [h])[0]})
    assert h[-1]["content"] in user_mod.REPEAT_REPLIES
    assert s.revealed_by_turn[-1] == []
