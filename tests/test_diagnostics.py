"""Tests for fairalign.diagnostics: hand-computed clip rates / LRE, edge cases, and hypothesis
properties against a plain-Python reference written from docs/length_fairness.md."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.diagnostics import (
    clip_rate_metrics,
    clip_rates_by_length,
    default_edges,
    length_reweighting_error,
)


def t_long(xs):
    return torch.tensor(xs, dtype=torch.long)


def t_bool(xs):
    return torch.tensor(xs, dtype=torch.bool)


def ref_lre(lengths, clipped, edges):
    """LRE from the formula with Python loops: a_k = 1 - rate_k on non-empty bins,
    ā = count-weighted mean, max |a_k/ā - 1|; 0 if no samples or ā == 0."""
    counts, clips = [], []
    for lo, hi in zip(edges, edges[1:]):
        members = [c for n, c in zip(lengths, clipped) if lo <= n < hi]
        if members:
            counts.append(len(members))
            clips.append(sum(members))
    if not counts:
        return 0.0
    acc = [1 - c / n for c, n in zip(clips, counts)]
    mean = sum(a * n for a, n in zip(acc, counts)) / sum(counts)
    if mean == 0:
        return 0.0
    return max(abs(a / mean - 1) for a in acc)


# ---------- hand-computed cases ----------

def test_rows_hand_computed():
    # default edges: min 16 -> 16, max 100 -> 128: [16, 32, 64, 128]
    L = t_long([16, 16, 40, 40, 40, 100])
    c = t_bool([1, 0, 1, 1, 0, 0])
    rows = clip_rates_by_length(L, c)
    assert [(r["lo"], r["hi"], r["count"]) for r in rows] == [(16, 32, 2), (32, 64, 3), (64, 128, 1)]
    assert [r["clip_rate"] for r in rows] == pytest.approx([0.5, 2 / 3, 0.0])
    # acceptances 0.5, 1/3, 1; ā = (1 + 1 + 1)/6 = 0.5; ratios 1, 2/3, 2 -> LRE = 1
    assert length_reweighting_error(L, c) == pytest.approx(1.0)


def test_zero_length_bin_and_lre_two():
    L = t_long([1, 2, 3, 5, 8, 0])
    c = t_bool([1, 0, 1, 0, 1, 1])
    assert default_edges(L) == [0, 1, 2, 4, 8, 16]
    rows = clip_rates_by_length(L, c)
    assert [r["count"] for r in rows] == [1, 1, 2, 1, 1]
    assert [r["clip_rate"] for r in rows] == [1.0, 1.0, 0.5, 0.0, 1.0]
    # acceptances 0, 0, .5, 1, 0 with counts 1, 1, 2, 1, 1: ā = 2/6 = 1/3; a/ā = 0, 0, 1.5, 3, 0
    assert length_reweighting_error(L, c) == pytest.approx(2.0)


def test_explicit_edges_ignore_outside_and_empty_bins():
    L = t_long([5, 10, 15, 20, 25, 99])
    c = t_bool([1, 0, 0, 1, 1, 1])
    rows = clip_rates_by_length(L, c, edges=[10, 20, 30, 40])
    # 5 and 99 lie outside [10, 40): ignored; bin [30, 40) empty
    assert rows == [
        {"lo": 10, "hi": 20, "count": 2, "clip_rate": 0.0},
        {"lo": 20, "hi": 30, "count": 2, "clip_rate": 1.0},
        {"lo": 30, "hi": 40, "count": 0, "clip_rate": 0.0},
    ]
    # acceptances 1 and 0 (empty bin skipped), ā = 0.5 -> LRE 1
    assert length_reweighting_error(L, c, edges=torch.tensor([10, 20, 30, 40])) == pytest.approx(1.0)


def test_edge_cases_empty_all_clipped_none_clipped():
    empty_l, empty_c = t_long([]), t_bool([])
    assert clip_rates_by_length(empty_l, empty_c) == []
    assert length_reweighting_error(empty_l, empty_c) == 0.0
    L = t_long([3, 17, 300, 4000])
    assert length_reweighting_error(L, t_bool([1, 1, 1, 1])) == 0.0  # ā = 0 -> all bins equal
    assert length_reweighting_error(L, t_bool([0, 0, 0, 0])) == 0.0
    # every sample outside the explicit edges -> no non-empty bin
    assert length_reweighting_error(L, t_bool([1, 0, 1, 0]), edges=[5000, 6000]) == 0.0


def test_default_edges_cover_data():
    assert default_edges(t_long([16])) == [16, 32]
    assert default_edges(t_long([0])) == [0, 1]
    assert default_edges(t_long([3, 8])) == [2, 4, 8, 16]
    assert default_edges(t_long([])) == []


def test_metrics_keys_and_values():
    L = t_long([16, 16, 40, 40, 40, 100])
    c = t_bool([1, 0, 1, 1, 0, 0])
    A = torch.tensor([1.0, -1.0, -0.5, 2.0, 0.0, -1.0])
    m = clip_rate_metrics(L, c, A)
    counts = {k: v for k, v in m.items() if k.startswith(("clip_count/", "clip_clipped/"))}
    assert counts == {"clip_count/len/16-32": 2.0, "clip_clipped/len/16-32": 1.0,
                      "clip_count/len/32-64": 3.0, "clip_clipped/len/32-64": 2.0,
                      "clip_count/len/64-128": 1.0, "clip_clipped/len/64-128": 0.0}
    m = {k: v for k, v in m.items() if k not in counts}
    assert m == pytest.approx({
        "clip_rate/len/16-32": 0.5,
        "clip_rate/len/32-64": 2 / 3,
        "clip_rate/len/64-128": 0.0,
        "lre": 1.0,
        "clip_rate/upper": 1.0,  # A>0: samples 0 and 3, both clipped
        "clip_rate/lower": 1 / 3,  # A<0: samples 1, 2, 5; only 2 clipped
    })
    assert all(isinstance(v, float) for v in m.values())
    # empty bins are left out of the metrics; no A<0 sample -> lower rate 0.0
    m2 = clip_rate_metrics(L, c, torch.ones(6), edges=[16, 32, 64, 128, 256])
    assert "clip_rate/len/128-256" not in m2 and m2["clip_rate/lower"] == 0.0
    assert m2["clip_rate/upper"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: clip_rates_by_length(torch.tensor([1.0, 2.0]), t_bool([1, 0])), "lengths"),
        (lambda: clip_rates_by_length(t_long([[1, 2]]), t_bool([[1, 0]])), "lengths"),
        (lambda: clip_rates_by_length(t_long([1, 2]), t_bool([1])), "clipped"),
        (lambda: clip_rates_by_length(t_long([1, -2]), t_bool([1, 0])), "lengths"),
        (lambda: clip_rates_by_length(t_long([1, 2]), t_bool([1, 0]), edges=[4, 2]), "edges"),
        (lambda: clip_rates_by_length(t_long([1, 2]), t_bool([1, 0]), edges=[4]), "edges"),
        (lambda: clip_rates_by_length(t_long([1, 2]), t_bool([1, 0]), edges=[1, 2.5]), "edges"),
        (lambda: length_reweighting_error(t_long([1, 2]), t_bool([1])), "clipped"),
        (lambda: clip_rate_metrics(t_long([1, 2]), t_bool([1, 0]), torch.ones(3)), "advantages"),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------- hypothesis properties ----------

samples = st.lists(
    st.tuples(st.integers(0, 5000), st.booleans()), min_size=0, max_size=200
)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_rows_rates_in_unit_interval_counts_sum_to_n(data):
    L = t_long([d[0] for d in data])
    c = t_bool([d[1] for d in data])
    rows = clip_rates_by_length(L, c)
    assert sum(r["count"] for r in rows) == len(data)
    assert all(0.0 <= r["clip_rate"] <= 1.0 for r in rows)
    assert all(r["lo"] < r["hi"] for r in rows)
    # per-bin clip counts add up to the total number clipped
    assert sum(round(r["clip_rate"] * r["count"]) for r in rows) == sum(d[1] for d in data)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_lre_matches_reference_and_is_nonnegative(data):
    lengths = [d[0] for d in data]
    clipped = [d[1] for d in data]
    L, c = t_long(lengths), t_bool(clipped)
    got = length_reweighting_error(L, c)
    edges = default_edges(L)
    assert got >= 0.0
    assert got == pytest.approx(ref_lre(lengths, clipped, edges), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(samples, st.randoms(use_true_random=False))
def test_lre_invariant_to_permutation(data, rnd):
    perm = list(data)
    rnd.shuffle(perm)
    a = length_reweighting_error(t_long([d[0] for d in data]), t_bool([d[1] for d in data]))
    b = length_reweighting_error(t_long([d[0] for d in perm]), t_bool([d[1] for d in perm]))
    assert a == pytest.approx(b, rel=1e-12, abs=1e-12)
    rows_a = clip_rates_by_length(t_long([d[0] for d in data]), t_bool([d[1] for d in data]))
    rows_b = clip_rates_by_length(t_long([d[0] for d in perm]), t_bool([d[1] for d in perm]))
    assert rows_a == rows_b


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 4000), st.integers(1, 6)), min_size=1, max_size=8),
    st.integers(1, 6),
    st.integers(0, 6),
)
def test_lre_zero_when_all_bins_clip_at_same_rate(bins, q, c):
    # every bin holds m*q samples of which m*c' are clipped, c' = min(c, q): rate c'/q in all bins
    c = min(c, q)
    lengths, clipped = [], []
    for length, m in bins:
        lengths += [length] * (m * q)
        clipped += ([True] * c + [False] * (q - c)) * m
    lre = length_reweighting_error(t_long(lengths), t_bool(clipped))
    assert lre == pytest.approx(0.0, abs=1e-12)
    assert math.isfinite(lre)


@settings(max_examples=40, deadline=None)
@given(samples, st.lists(st.floats(-3, 3), min_size=200, max_size=200))
def test_metrics_consistent_with_rows(data, adv):
    L = t_long([d[0] for d in data])
    c = t_bool([d[1] for d in data])
    A = torch.tensor(adv[: len(data)], dtype=torch.float64)
    m = clip_rate_metrics(L, c, A)
    rows = [r for r in clip_rates_by_length(L, c) if r["count"] > 0]
    assert {k for k in m if k.startswith("clip_rate/len/")} == {
        f"clip_rate/len/{r['lo']}-{r['hi']}" for r in rows
    }
    for r in rows:
        assert m[f"clip_rate/len/{r['lo']}-{r['hi']}"] == r["clip_rate"]
    assert m["lre"] == length_reweighting_error(L, c)
    up = [d[1] for d, a in zip(data, adv) if a > 0]
    assert m["clip_rate/upper"] == pytest.approx(sum(up) / len(up) if up else 0.0)


def test_pooled_clip_counts_sums_steps_and_skips_missing_values():
    """One pooling for the report and the studies: per-bin sequences and clipped weight summed over steps."""
    from fairalign.diagnostics import lre_from_pooled_counts, pooled_clip_counts

    rows = [{"step": 1, "clip_count/len/4-8": 10.0, "clip_clipped/len/4-8": 2.5, "clip_count/len/8-16": 4.0},
            {"step": 2, "clip_count/len/4-8": 6.0, "clip_clipped/len/4-8": 0.5, "clip_count/len/8-16": float("nan")},
            {"step": 3, "clip_count/len/8-16": 5.0, "clip_clipped/len/8-16": 1.0, "reward/mean": 0.3}]
    counts, clipped = pooled_clip_counts(rows)
    assert counts == {"4-8": 16.0, "8-16": 9.0} and clipped == {"4-8": 3.0, "8-16": 1.0}
    # acceptances 13/16 and 8/9, mean 21/25: LRE = max |a_k / ā − 1|
    assert lre_from_pooled_counts(counts, clipped) == pytest.approx(max(abs((13 / 16) / (21 / 25) - 1),
                                                                       abs((8 / 9) / (21 / 25) - 1)))
