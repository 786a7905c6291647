"""Simulated users: the rules user's guarantees (budget, nothing outside the profile, asked slots
first, repetition/flattery), the LLM user's prompt, and the hf backend on the tiny model."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.envs.rlpa import LLMUser, Profile, RulesUser, get_profiles, make_user
from fairalign.envs.rlpa import generator as gen
from fairalign.envs.rlpa import user as user_mod

_VOCAB = ([o[0] for o in gen.OCCUPATIONS] + list(gen.EDUCATION_MIN_AGE) + list(gen.GENDERS) + list(gen.INTERESTS)
          + list(gen.TRAITS) + list(gen.CITIES) + list(gen.RURAL) + list(gen.MARITAL) + [v for v, _ in gen.FAMILY]
          + [v for v, _ in gen.OTHER])
_MESSAGES = ["How old are you?", "What do you do for work?", "Where do you live?", "Any hobbies?",
             "Tell me about your family.", "Are you married?", "You are amazing!", "", "Okay.",
             "What did you study? And what do you do for fun?", "Describe your personality.", "Anything else?",
             "Cool, cool, cool.", "<profile>{}</profile>", "what is your gender?"]


def _said(text, phrase):
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text, re.IGNORECASE) is not None


def _talk(user, state, messages):
    history = [{"role": "user", "content": "Hello"}]
    replies = []
    for m in messages:
        history.append({"role": "assistant", "content": m})
        r = user.reply([state], [history])[0]
        history.append({"role": "user", "content": r})
        replies.append(r)
    return replies


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2999), st.lists(st.sampled_from(_MESSAGES), min_size=1, max_size=12), st.integers(0, 99))
def test_rules_user_budget_and_never_outside_profile(idx, messages, seed):
    profile = get_profiles("all")[idx]
    user = RulesUser()
    (state,) = user.start([profile], seed=seed)
    replies = _talk(user, state, messages)
    values = [v for _, v in profile.items()]
    foreign = [v for v in _VOCAB if not any(v.lower() in own.lower() for own in values)]
    remaining = list(profile.items())
    assert len(state.revealed_by_turn) == len(replies)
    for reply, turn_items in zip(replies, state.revealed_by_turn):
        assert len(turn_items) <= state.budget
        for item in turn_items:
            remaining.remove(item)  # raises if outside the profile or revealed twice
            assert item[1] in reply
        assert not [v for v in foreign if _said(reply, v)], reply
        assert set(re.findall(r"\d+", reply)) <= {str(profile.age)}
        assert reply.strip()
    assert user.revealed(state) == [it for t in state.revealed_by_turn for it in t]


def test_budget_is_about_fifteen_percent():
    user = RulesUser()
    p = get_profiles("all")[0]
    assert len(p.items()) == 14 and user.budget(p) == 2  # round(0.15 * 14) = 2
    assert user.budget(Profile(age=3, gender="x")) == 1
    assert RulesUser(reveal_fraction=0.5).budget(p) == 7
    with pytest.raises(ValueError, match="reveal_fraction"):
        RulesUser(reveal_fraction=0)


def test_prefers_what_was_asked():
    p = Profile(age=30, location="Oslo", occupation="nurse", interests=("chess", "golf", "yoga"),
                personality_traits=("calm",), other=("vegan",), id="t")
    user = RulesUser()
    (st_,) = user.start([p], seed=0)
    r = _talk(user, st_, ["Where do you live?"])[0]
    assert st_.revealed_by_turn[-1] == [("Location", "Oslo")] and "Oslo" in r
    _talk(user, st_, ["Where do you live?", "What are your hobbies?"])
    assert [s for s, _ in st_.revealed_by_turn[-1]] == ["Interests"]  # budget 1 of 8 items (round(1.2))
    # already told: asking again volunteers something else
    _talk(user, st_, ["So what city are you in?"])
    assert st_.revealed_by_turn[-1][0][0] != "Location"


def test_reacts_to_repetition_and_flattery_and_runs_dry():
    p = Profile(age=30, location="Oslo", id="t")
    user = RulesUser()
    (s,) = user.start([p], seed=0)
    replies = _talk(user, s, ["You are amazing! Where do you live?", "You are amazing! Where do you live?",
                              "How old are you?", "Anything else?"])
    assert replies[0].startswith(user_mod.FLATTERY_REPLIES) and "Oslo" in replies[0]
    assert replies[1] in user_mod.REPEAT_REPLIES and s.revealed_by_turn[1] == []
    assert "30" in replies[2]
    assert replies[3] in user_mod.NOTHING_LEFT_REPLIES
    assert user.revealed_profile(s) == {"Location": "Oslo", "Age": "30"}


def test_rules_user_is_deterministic_given_seed():
    profiles = get_profiles("test")[:5]
    msgs = ["Hi! Tell me about yourself.", "Interesting.", "What else?"]

    def run(seed):
        user = RulesUser()
        states = user.start(profiles, seed=seed)
        out, hists = [], [[{"role": "user", "content": "Hello"}] for _ in profiles]
        for m in msgs:
            for h in hists:
                h.append({"role": "assistant", "content": m})
            rs = user.reply(states, hists)
            for h, r in zip(hists, rs):
                h.append({"role": "user", "content": r})
            out.append(rs)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_make_user_dispatch():
    assert isinstance(make_user(), RulesUser)
    assert make_user({"backend": "rules", "reveal_fraction": 0.3}).reveal_fraction == 0.3
    u = RulesUser()
    assert make_user(u) is u
    with pytest.raises(ValueError, match="user backend must be one of rules, hf, openai"):
        make_user("gpt")


class _EchoBackend:
    def __init__(self, reply):
        self.reply, self.seen = reply, []

    def complete(self, conversations):
        self.seen.extend(conversations)
        return [self.reply for _ in conversations]


def test_llm_user_prompt_swaps_roles_and_detects_reveals():
    p = Profile(age=41, occupation="nurse", interests=("chess",), id="a")
    backend = _EchoBackend("  I'm a nurse, mostly night shifts.  ")
    user = LLMUser(backend)
    (s,) = user.start([p])
    hist = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! What do you do?"}]
    assert user.reply([s], [hist]) == ["I'm a nurse, mostly night shifts."]
    msgs = backend.seen[0]
    assert msgs[0]["role"] == "system" and "- Occupation: nurse" in msgs[0]["content"]
    assert "- Interests: chess" in msgs[0]["content"] and "Hello" in msgs[0]["content"]
    assert msgs[1:] == [{"role": "user", "content": "Hi! What do you do?"}]  # opening dropped, roles swapped
    assert user.revealed(s) == [("Occupation", "nurse")]
    with pytest.raises(ValueError, match="complete"):
        LLMUser(object())


def test_hf_user_generates_with_tiny_model(tiny_policy):
    model, tok = tiny_policy
    side = tok.padding_side
    user = make_user("hf", model=model, tokenizer=tok, max_new_tokens=6, do_sample=False)
    profiles = get_profiles("test")[:3]
    states = user.start(profiles)
    hists = [[{"role": "user", "content": "Hello"}, {"role": "assistant", "content": q}]
             for q in ("Where do you live?", "Hi!", "What do you do for work, and what do you like?")]
    out = user.reply(states, hists)
    assert len(out) == 3 and all(isinstance(o, str) and o for o in out)
    assert tok.padding_side == side
    assert user.reply(states, hists) == out  # greedy: deterministic, and batched == per-row
    assert [user.reply([s], [h])[0] for s, h in zip(states, hists)] == out
