"""Tests for fairalign.algos.PreferenceGroupNormalizer (P-GRPO): hand-computed steps, a loop
reference of the running Welford statistics, GRPO cold start, exact merge, state round trip."""

import json
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import PreferenceGroupNormalizer, compute_advantages

SETTINGS = settings(max_examples=40, deadline=None)
EPS = 1e-6
MIN_STD = 1e-3


def test_hand_computed_two_steps():
    norm = PreferenceGroupNormalizer(min_count=2)
    r1 = torch.tensor([1.0, 2.0, 3.0, 4.0])
    idx = torch.tensor([0, 0, 1, 1])
    adv1 = norm(r1, ["a", "b", "a", "b"], idx)
    # cold start: plain GRPO over the prompt groups (1, 2) and (3, 4)
    assert torch.allclose(adv1, compute_advantages("grpo", r1, idx))
    assert norm.stats() == {"a": (2, 2.0, 1.0), "b": (2, 3.0, 1.0)}
    assert norm.group_count == 2
    adv2 = norm(torch.tensor([1.0, 2.0, 3.0, 4.0]), ["a", "b", "a", "c"], idx)
    # a: mean 2 std 1; b: mean 3 std 1; c unseen -> GRPO over prompt group (3, 4)
    assert adv2.tolist() == pytest.approx([-1 / (1 + EPS), -1 / (1 + EPS), 1 / (1 + EPS),
                                           0.5 / (math.sqrt(0.5) + EPS)], rel=1e-6)
    assert norm.last_history_frac == 0.75
    st_ = norm.stats()
    assert st_["a"] == pytest.approx((4, 2.0, statistics.pstdev([1, 3, 1, 3])))
    assert st_["b"] == pytest.approx((3, statistics.fmean([2, 4, 2]), statistics.pstdev([2, 4, 2])))
    assert st_["c"] == (1, 4.0, 0.0)


def test_zero_variance_history_fallback_and_floor_hand_computed():
    """A group whose 8 rewards were all 0.2 (std 0 <= min_std), then a prompt group (0.3, 0.25) of it.
    fallback: GRPO over the prompt group, ±0.025/std(0.3, 0.25) = ±1/√2 — the history is ignored;
    floor (min_std 0.1): (r − 0.2)/0.1 = 1.0 and 0.5 — both beat the history's mean, as they should."""
    idx = torch.tensor([0, 0])
    r = torch.tensor([0.3, 0.25], dtype=torch.float64)
    history = torch.full((8,), 0.2, dtype=torch.float64)
    grpo = compute_advantages("grpo", r, idx)
    assert grpo.tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], rel=1e-4)
    fallback = PreferenceGroupNormalizer(min_count=8, min_std=0.1)
    fallback.update(history, ["g"] * 8)
    assert fallback(r, ["g", "g"], idx).tolist() == pytest.approx(grpo.tolist(), rel=1e-9)
    assert fallback.last_history_frac == 0.0  # the guard fired: GRPO statistics
    floor = PreferenceGroupNormalizer(min_count=8, min_std=0.1, zero_std="floor")
    floor.update(history, ["g"] * 8)
    assert floor(r, ["g", "g"], idx).tolist() == pytest.approx([0.1 / (0.1 + EPS), 0.05 / (0.1 + EPS)], rel=1e-9)
    assert floor.last_history_frac == 1.0  # the history was used
    # a never-solved binary group: eight 0s, then a prompt group with one success
    for rule, want in (("fallback", [0.5 / (math.sqrt(0.5) + EPS), -0.5 / (math.sqrt(0.5) + EPS)]),
                       ("floor", [1 / (0.1 + EPS), 0.0])):
        norm = PreferenceGroupNormalizer(min_count=8, min_std=0.1, zero_std=rule)
        norm.update(torch.zeros(8), ["m"] * 8)
        assert norm(torch.tensor([1.0, 0.0]), ["m", "m"], idx).tolist() == pytest.approx(want, rel=1e-6, abs=1e-9)
    # a history with spread: both rules use it alike
    for rule in ("fallback", "floor"):
        norm = PreferenceGroupNormalizer(min_count=2, min_std=0.1, zero_std=rule)
        norm.update(torch.tensor([0.0, 1.0]), ["s", "s"])  # mean 0.5, population std 0.5
        assert norm(r, ["s", "s"], idx).tolist() == pytest.approx([-0.2 / (0.5 + EPS), -0.25 / (0.5 + EPS)])
    with pytest.raises(ValueError, match="zero_std must be one of fallback, floor"):
        PreferenceGroupNormalizer(zero_std="clip")
    with pytest.raises(ValueError, match="min_std must be > 0 with zero_std='floor'"):
        PreferenceGroupNormalizer(zero_std="floor", min_std=0.0)


def ref_pgrpo(batches, min_count, zero_std="fallback"):
    """Loop reference: per-group reward history; population std; stats from before the batch; a history
    with std <= MIN_STD (the zero-variance guard) falls back to GRPO like a cold start ("fallback"), or
    keeps its mean with the std floored at MIN_STD ("floor")."""
    history, outs = {}, []
    for rewards, groups, index in batches:
        grpo = compute_advantages("grpo", torch.tensor(rewards, dtype=torch.float64),
                                  torch.tensor(index)).tolist()
        out = []
        for i, (r, g) in enumerate(zip(rewards, groups)):
            h = history.get(g, [])
            if len(h) >= min_count and zero_std == "floor":
                out.append((r - statistics.fmean(h)) / (max(statistics.pstdev(h), MIN_STD) + EPS))
            elif len(h) >= min_count and statistics.pstdev(h) > MIN_STD:
                out.append((r - statistics.fmean(h)) / (statistics.pstdev(h) + EPS))
            else:
                out.append(grpo[i])
        outs.append(out)
        for r, g in zip(rewards, groups):
            history.setdefault(g, []).append(r)
    return outs, history


batch_strategy = st.lists(
    st.tuples(st.floats(-5, 5, allow_nan=False, width=32), st.integers(0, 3), st.integers(0, 2)),
    min_size=1, max_size=12)


@SETTINGS
@given(batches=st.lists(batch_strategy, min_size=1, max_size=5), min_count=st.integers(1, 6),
       as_tensor=st.booleans(), zero_std=st.sampled_from(["fallback", "floor"]))
def test_matches_loop_reference(batches, min_count, as_tensor, zero_std):
    data = [([b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch])
            for batch in batches]
    expected, history = ref_pgrpo(data, min_count, zero_std)
    norm = PreferenceGroupNormalizer(min_count=min_count, zero_std=zero_std)
    for (rewards, groups, index), want in zip(data, expected):
        g = torch.tensor(groups) if as_tensor else groups
        adv = norm(torch.tensor(rewards, dtype=torch.float64), g, torch.tensor(index))
        assert adv.tolist() == pytest.approx(want, rel=1e-6, abs=1e-6)
    stats = norm.stats()
    assert set(stats) == set(history)
    for key, h in history.items():
        n, mean, std = stats[key]
        assert n == len(h)
        assert mean == pytest.approx(statistics.fmean(h), abs=1e-9)
        assert std == pytest.approx(statistics.pstdev(h), abs=1e-7)


@SETTINGS
@given(batches=st.lists(batch_strategy, min_size=1, max_size=4))
def test_min_count_never_reached_equals_grpo(batches):
    norm = PreferenceGroupNormalizer(min_count=10_000)
    for batch in batches:
        r = torch.tensor([b[0] for b in batch])
        idx = torch.tensor([b[2] for b in batch])
        adv = norm(r, [b[1] for b in batch], idx)
        assert torch.equal(adv, compute_advantages("grpo", r, idx))
    assert norm.last_history_frac == 0.0


@SETTINGS
@given(a=st.lists(batch_strategy, min_size=0, max_size=3),
       b=st.lists(batch_strategy, min_size=0, max_size=3))
def test_merge_equals_feeding_both_streams(a, b):
    one, left, right = (PreferenceGroupNormalizer() for _ in range(3))
    for stream, part in ((a, left), (b, right)):
        for batch in stream:
            r = torch.tensor([x[0] for x in batch], dtype=torch.float64)
            groups = [x[1] for x in batch]
            part.update(r, groups)
            one.update(r, groups)
    left.merge(right)
    s_one, s_merged = one.stats(), left.stats()
    assert set(s_one) == set(s_merged)
    for key in s_one:
        assert s_merged[key][0] == s_one[key][0]
        assert s_merged[key][1:] == pytest.approx(s_one[key][1:], abs=1e-9)


def test_state_dict_round_trip_through_json_and_tuple_keys():
    norm = PreferenceGroupNormalizer(min_count=2)
    g = torch.Generator().manual_seed(0)
    groups = [("persona", i % 3) for i in range(12)]
    idx = torch.arange(12) // 4
    for _ in range(3):
        norm(torch.rand(12, generator=g), groups, idx)
    sd = json.loads(json.dumps(norm.state_dict()))  # plain JSON
    restored = PreferenceGroupNormalizer(min_count=2)
    restored.load_state_dict(sd)
    assert restored.stats() == norm.stats()
    r = torch.rand(12, generator=g)
    assert torch.equal(restored(r, groups, idx), norm(r, groups, idx))
    assert restored.state_dict() == norm.state_dict()


def test_update_false_leaves_state_and_update_method():
    norm = PreferenceGroupNormalizer(min_count=1)
    norm.update(torch.tensor([1.0, 3.0]), ["x", "x"])
    before = norm.state_dict()
    adv = norm(torch.tensor([4.0]), ["x"], torch.tensor([0]), update=False)
    assert adv.tolist() == pytest.approx([2 / (1 + EPS)])
    assert norm.state_dict() == before


def test_decay_matches_weighted_reference():
    d = 0.5
    norm = PreferenceGroupNormalizer(min_count=1, decay=d)
    batches = [[1.0, 2.0], [4.0], [0.0, 6.0, 3.0]]
    weights, values = [], []
    for b in batches:
        weights = [w * d for w in weights] + [1.0] * len(b)
        values = values + b
        norm.update(torch.tensor(b), ["g"] * len(b))
    W = sum(weights)
    mean = sum(w * v for w, v in zip(weights, values)) / W
    var = sum(w * (v - mean) ** 2 for w, v in zip(weights, values)) / W
    n, m, s = norm.stats()["g"]
    assert n == pytest.approx(W) and m == pytest.approx(mean) and s == pytest.approx(math.sqrt(var))


def test_large_offset_is_numerically_stable():
    norm = PreferenceGroupNormalizer(min_count=1)
    for _ in range(50):
        norm.update(torch.tensor([1e8 + 1.0, 1e8 - 1.0], dtype=torch.float64), [0, 0])
    n, mean, std = norm.stats()[0]
    assert n == 100 and mean == pytest.approx(1e8) and std == pytest.approx(1.0, rel=1e-9)


def test_validation():
    with pytest.raises(ValueError, match="min_count"):
        PreferenceGroupNormalizer(min_count=0)
    with pytest.raises(ValueError, match="eps"):
        PreferenceGroupNormalizer(eps=0.0)
    with pytest.raises(ValueError, match="decay"):
        PreferenceGroupNormalizer(decay=1.5)
    norm = PreferenceGroupNormalizer()
    r = torch.tensor([1.0, 2.0])
    idx = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="preference_groups has 3 entries"):
        norm(r, ["a", "b", "c"], idx)
    with pytest.raises(ValueError, match="hashable"):
        norm(r, [["a"], ["b"]], idx)
    with pytest.raises(ValueError, match="preference_groups tensor"):
        norm(r, torch.tensor([0.5, 1.5]), idx)
    with pytest.raises(ValueError, match="rewards contain NaN"):
        norm(torch.tensor([1.0, float("nan")]), ["a", "b"], idx)
    with pytest.raises(ValueError, match="format"):
        norm.load_state_dict({"groups": []})
    with pytest.raises(ValueError, match="merge"):
        norm.merge({"a": 1})
    assert norm.group_count == 0  # failed calls changed nothing
