"""Tests for fairalign.algos.aggregate: hand-computed values, a loop reference, global
normalizers (split batches add up), padding and validation."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import AGG_MODES, aggregate

F64 = torch.float64
SETTINGS = settings(max_examples=50, deadline=None)

LOSS = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0]], dtype=F64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize("agg, expected", [
    ("token-mean", (1 + 2 + 3 + 10 + 20) / 5),
    ("seq-mean-token-mean", ((1 + 2 + 3) / 3 + (10 + 20) / 2) / 2),
    ("seq-mean-token-sum", ((1 + 2 + 3) + (10 + 20)) / 2),
    ("seq-mean-token-sum-norm", ((1 + 2 + 3) / 4 + (10 + 20) / 4) / 2),
])
def test_hand_computed(agg, expected):
    assert aggregate(LOSS, MASK, agg).item() == pytest.approx(expected)


def test_horizon_and_global_counts_hand_computed():
    assert aggregate(LOSS, MASK, "seq-mean-token-sum-norm", horizon=10).item() == \
        pytest.approx((6 / 10 + 30 / 10) / 2)
    assert aggregate(LOSS, MASK, "token-mean", global_tokens=12).item() == pytest.approx(36 / 12)
    assert aggregate(LOSS, MASK, "seq-mean-token-sum", global_seqs=6).item() == pytest.approx(6.0)
    # a tensor normalizer (e.g. from an all_reduce) is accepted as is
    assert aggregate(LOSS, MASK, "seq-mean-token-mean",
                     global_seqs=torch.tensor(4.0)).item() == pytest.approx((2 + 15) / 4)


def test_masked_positions_are_ignored_even_if_nan():
    loss = LOSS.clone()
    loss[~MASK] = float("nan")
    for agg in AGG_MODES:
        assert aggregate(loss, MASK, agg).item() == pytest.approx(aggregate(LOSS, MASK, agg).item())


def test_empty_rows_contribute_nothing_and_are_not_counted():
    loss = torch.cat([LOSS, torch.full((1, 4), 99.0, dtype=F64)])
    mask = torch.cat([MASK, torch.zeros(1, 4, dtype=torch.bool)])
    for agg in AGG_MODES:
        assert aggregate(loss, mask, agg).item() == pytest.approx(aggregate(LOSS, MASK, agg).item())
        assert aggregate(loss, torch.zeros_like(mask), agg).item() == 0.0


def ref_aggregate(loss, mask, agg, horizon=None):
    B, T = mask.shape
    rows = [[loss[i, t].item() for t in range(T) if mask[i, t]] for i in range(B)]
    rows = [r for r in rows if r]
    if not rows:
        return 0.0
    if agg == "token-mean":
        return sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    H = T if horizon is None else horizon
    per = {"seq-mean-token-mean": lambda r: sum(r) / len(r),
           "seq-mean-token-sum": sum,
           "seq-mean-token-sum-norm": lambda r: sum(r) / H}[agg]
    return sum(per(r) for r in rows) / len(rows)


@SETTINGS
@given(seed=st.integers(0, 10_000), B=st.integers(1, 6), T=st.integers(1, 7),
       agg=st.sampled_from(AGG_MODES))
def test_matches_loop_reference(seed, B, T, agg):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(B, T, generator=g, dtype=F64)
    mask = torch.rand(B, T, generator=g) < 0.6
    assert aggregate(loss, mask, agg).item() == pytest.approx(ref_aggregate(loss, mask, agg),
                                                              abs=1e-12)


@SETTINGS
@given(seed=st.integers(0, 10_000), B=st.integers(2, 8), agg=st.sampled_from(AGG_MODES),
       data=st.data())
def test_split_with_global_normalizers_adds_up(seed, B, agg, data):
    g = torch.Generator().manual_seed(seed)
    T = 5
    loss = torch.randn(B, T, generator=g, dtype=F64, requires_grad=True)
    mask = torch.rand(B, T, generator=g) < 0.7
    cut = data.draw(st.integers(1, B - 1))
    full = aggregate(loss, mask, agg)
    tokens = mask.sum()
    seqs = (mask.sum(1) > 0).sum()
    a = aggregate(loss[:cut], mask[:cut], agg, global_tokens=tokens, global_seqs=seqs)
    b = aggregate(loss[cut:], mask[cut:], agg, global_tokens=int(tokens), global_seqs=int(seqs))
    assert torch.allclose(a + b, full, atol=1e-12)
    (g_full,) = torch.autograd.grad(full, loss)
    (g_split,) = torch.autograd.grad(a + b, loss)
    assert torch.allclose(g_full, g_split, atol=1e-12)


def test_validation():
    with pytest.raises(ValueError, match="unknown agg 'sum'.*seq-mean-token-sum-norm"):
        aggregate(LOSS, MASK, "sum")
    with pytest.raises(ValueError, match="mask shape"):
        aggregate(LOSS, MASK[:, :2], "token-mean")
    with pytest.raises(ValueError, match="loss_mat"):
        aggregate(LOSS[0], MASK[0], "token-mean")
    with pytest.raises(ValueError, match="horizon"):
        aggregate(LOSS, MASK, "seq-mean-token-sum-norm", horizon=0)
    with pytest.raises(ValueError, match="global_tokens"):
        aggregate(LOSS, MASK, "token-mean", global_tokens=-3)
    with pytest.raises(ValueError, match="global_seqs"):
        aggregate(LOSS, MASK, "seq-mean-token-mean", global_seqs="4")


def test_seq_mean_token_sum_norm_is_verl_divided_by_the_sequence_count():
    """Documented difference (docs/algorithms.md): verl's seq-mean-token-sum-norm is Σ_i Σ_t loss·m / T,
    fairalign's divides that by N as well."""
    g = torch.Generator().manual_seed(3)
    loss = torch.randn(5, 7, generator=g)
    mask = torch.rand(5, 7, generator=g) < 0.7
    mask[:, 0] = True
    verl = float((loss * mask).sum() / 7)  # written from verl's formula, T = the padded width
    ours = float(aggregate(loss, mask, "seq-mean-token-sum-norm"))
    assert ours * 5 == pytest.approx(verl, rel=1e-6)
