"""parse_turn: the <profile>{JSON}</profile><response>..</response> contract; never raises."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.envs.rlpa import parse_turn, strip_tags


def test_well_formed_turns():
    t = parse_turn('<profile>{"Age": 34, "interests": ["hiking"]}</profile>\n<response> Hi there! </response>')
    assert t.ok and t.reason is None
    assert t.profile == {"Age": ["34"], "Interests": ["hiking"]}
    assert t.reply == "Hi there!"
    assert t.raw_profile == {"Age": 34, "interests": ["hiking"]}
    # surrounding whitespace, an end-of-turn marker, a ```json fence and an empty profile are fine
    t = parse_turn('  <profile>```json\n{}\n```</profile><response>Hello?</response><|im_end|>\n')
    assert t.ok and t.profile == {} and t.reply == "Hello?"
    assert parse_turn("<profile>{}</profile><response></response>").ok  # empty reply: judge's job


def test_malformed_turns_have_reasons():
    bad = {
        "Hello there": "exactly one <profile>",
        "<profile>{}</profile>": "exactly one <response>",
        "<response>x</response><profile>{}</profile>": "then <response>",
        "Sure! <profile>{}</profile><response>x</response>": "nothing else",
        "<profile>{}</profile><response>x</response> extra": "nothing else",
        "<profile>{}</profile><profile>{}</profile><response>x</response>": "exactly one <profile>, found 2",
        "<profile>{'Age': 3}</profile><response>x</response>": "not valid JSON",
        "<profile>[1, 2]</profile><response>x</response>": "must be an object, got list",
        "<profile>{}</profile><response>a <response> b</response>": "exactly one <response>",
        "<profile>" + "[" * 100000 + "</profile><response>x</response>": "not valid JSON",
    }
    for text, reason in bad.items():
        t = parse_turn(text)
        assert not t.ok and t.profile is None and t.reply is None, text[:40]
        assert reason in t.reason, (text[:40], t.reason)
    assert parse_turn(None).reason.startswith("turn is not a string")
    assert parse_turn(b"<profile>{}</profile>").ok is False


_pieces = st.sampled_from(["<profile>", "</profile>", "<response>", "</response>", "{", "}", "[", "]",
                           '"Age"', ":", ",", "34", "null", "```", "<|im_end|>", "\n", " ", "\\", '"'])


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.lists(st.one_of(_pieces, st.text(max_size=5)), max_size=30).map("".join)))
def test_never_raises_on_arbitrary_text(text):
    t = parse_turn(text)
    assert isinstance(t.ok, bool)
    if t.ok:
        assert isinstance(t.profile, dict) and isinstance(t.reply, str)
        assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in t.profile.values())
    else:
        assert isinstance(t.reason, str) and t.reason
    assert isinstance(strip_tags(text), str)


def _no_lt(n):
    return st.text(alphabet=st.characters(exclude_characters="<"), max_size=n)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_no_lt(12), st.one_of(st.none(), st.integers(), _no_lt(10), st.lists(_no_lt(8), max_size=3))),
       _no_lt(60))
def test_round_trips_any_json_object(obj, reply):
    t = parse_turn(f"<profile>{json.dumps(obj)}</profile><response>{reply}</response>")
    assert t.ok and t.raw_profile == obj and t.reply == reply.strip()


def test_strip_tags():
    assert strip_tags('<profile>{"Age": 3}</profile><response>Hi!') == "Hi!"
    assert strip_tags('<profile>{"Age": 3}</profile> Hi <b>x') == "Hi <b>x"
    assert strip_tags("plain words") == "plain words"
