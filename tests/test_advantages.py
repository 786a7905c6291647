"""Tests for fairalign.algos advantage estimators: hand-computed values, loop references written
from the formulas, the group-of-one conventions and validation."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import compute_advantages, grpo

STATELESS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline", "batch_joint")  # estimators that are a function of one batch

SETTINGS = settings(max_examples=60, deadline=None)
EPS = 1e-6


def test_grpo_hand_computed():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 5.0])
    idx = torch.tensor([7, 7, 3, 3, 3, 42])  # non-contiguous ids; 42 is a group of one
    adv = compute_advantages("grpo", r, idx)
    s = math.sqrt(2.0)  # sample std of (1, 3)
    s2 = math.sqrt(((0 - 2 / 3) ** 2 * 2 + (2 - 2 / 3) ** 2) / 2)
    expected = [-1 / (s + EPS), 1 / (s + EPS), (-2 / 3) / (s2 + EPS), (-2 / 3) / (s2 + EPS),
                (4 / 3) / (s2 + EPS), 5 / (1 + EPS)]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_grpo_equal_rewards_give_zero():
    adv = compute_advantages("grpo", torch.ones(4), torch.zeros(4, dtype=torch.long))
    assert torch.all(adv == 0)


def test_dr_grpo_hand_computed():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 5.0])
    idx = torch.tensor([7, 7, 3, 3, 3, 42])
    adv = compute_advantages("dr_grpo", r, idx)
    assert adv.tolist() == pytest.approx([-1, 1, -2 / 3, -2 / 3, 4 / 3, 5])


def test_rloo_hand_computed_and_singleton_zero():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, 5.0])
    idx = torch.tensor([7, 7, 3, 3, 3, 42])
    adv = compute_advantages("rloo", r, idx)
    assert adv.tolist() == pytest.approx([1 - 3, 3 - 1, 0 - 1, 0 - 1, 2 - 0, 0.0])


def test_batch_joint_hand_computed():
    """One mean and sample std over the whole batch: a tied prompt group (0, 0) gets signal, and the
    issue's example — a minority reply at its persona's mean 0.3 in a batch of mean 0.675 — gets A < 0."""
    r = torch.tensor([1.0, 3.0, 0.0, 0.0])
    idx = torch.tensor([0, 0, 1, 1])
    sd = math.sqrt((0 + 4 + 1 + 1) / 3)  # mean 1; deviations 0, 2, -1, -1: sample std √2
    adv = compute_advantages("batch_joint", r, idx)
    assert adv.tolist() == pytest.approx([0.0, 2 / (sd + EPS), -1 / (sd + EPS), -1 / (sd + EPS)], rel=1e-6)
    assert compute_advantages("grpo", r, idx)[2:].tolist() == [0.0, 0.0]  # GRPO: the tied group is silent
    r = torch.tensor([0.9, 0.9, 0.6, 0.3])  # three majority replies and one minority reply at its mean
    sd = statistics.stdev([0.9, 0.9, 0.6, 0.3])
    adv = compute_advantages("batch_joint", r, torch.arange(4))
    assert float(adv[3]) == pytest.approx((0.3 - 0.675) / (sd + EPS), rel=1e-6) and float(adv[3]) < -1
    assert compute_advantages("batch_joint", torch.tensor([4.0]), torch.tensor([0])).tolist() == [0.0]


def test_reinforce_pp_baseline_hand_computed():
    r = torch.tensor([1.0, 3.0, 0.0, 2.0])
    idx = torch.tensor([0, 0, 1, 1])
    x = [-1.0, 1.0, -1.0, 1.0]  # r - group mean; batch mean 0, sample std sqrt(4/3)
    sd = statistics.stdev(x)
    adv = compute_advantages("reinforce_pp_baseline", r, idx)
    assert adv.tolist() == pytest.approx([v / (sd + EPS) for v in x], rel=1e-6)
    assert compute_advantages("reinforce_pp_baseline", torch.tensor([4.0]),
                              torch.tensor([0])).tolist() == [0.0]


def ref_estimator(name, rewards, index):
    """Loop reference from the formulas."""
    r = [float(v) for v in rewards]
    ids = [int(v) for v in index]
    groups = {}
    for i, g in enumerate(ids):
        groups.setdefault(g, []).append(r[i])
    if name == "batch_joint":  # one normalization over the whole batch, prompts ignored
        if len(r) < 2:
            return [0.0] * len(r)
        m, sd = statistics.fmean(r), statistics.stdev(r)
        return [(v - m) / (sd + EPS) for v in r]
    out = []
    for i, g in enumerate(ids):
        vals = groups[g]
        n = len(vals)
        mean = sum(vals) / n if n > 1 else 0.0
        if name == "grpo":
            std = statistics.stdev(vals) if n > 1 else 1.0
            out.append((r[i] - mean) / (std + EPS))
        elif name in ("dr_grpo", "reinforce_pp_baseline"):
            out.append(r[i] - mean)
        else:  # rloo
            out.append(r[i] - (sum(vals) - r[i]) / (n - 1) if n > 1 else 0.0)
    if name == "reinforce_pp_baseline":
        if len(out) < 2:
            return [0.0] * len(out)
        m, sd = statistics.fmean(out), statistics.stdev(out)
        out = [(v - m) / (sd + EPS) for v in out]
    return out


@SETTINGS
@given(name=st.sampled_from(sorted(STATELESS)),
       data=st.lists(st.tuples(st.floats(-10, 10, allow_nan=False, width=32), st.integers(-3, 5)),
                     min_size=1, max_size=25))
def test_estimators_match_loop_reference(name, data):
    rewards = torch.tensor([d[0] for d in data], dtype=torch.float64)
    index = torch.tensor([d[1] for d in data])
    adv = compute_advantages(name, rewards, index)
    assert adv.dtype == torch.float64 and adv.shape == rewards.shape
    assert adv.tolist() == pytest.approx(ref_estimator(name, rewards, index), rel=1e-7, abs=1e-7)


@SETTINGS
@given(seed=st.integers(0, 1000), name=st.sampled_from(sorted(STATELESS)))
def test_permutation_equivariance(seed, name):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(24, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 5, (24,), generator=g)
    perm = torch.randperm(24, generator=g)
    a = compute_advantages(name, r, idx)
    b = compute_advantages(name, r[perm], idx[perm])
    assert torch.allclose(a[perm], b, atol=1e-12)


def test_group_mean_is_zero_for_centered_estimators():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(40, generator=g)
    idx = torch.arange(40) // 8
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = compute_advantages(name, r, idx).double()
        sums = torch.zeros(5, dtype=torch.float64).index_add(0, idx, adv)
        assert torch.allclose(sums, torch.zeros(5, dtype=torch.float64), atol=1e-5)


def test_empty_input_and_dtype():
    for name in STATELESS:
        out = compute_advantages(name, torch.zeros(0), torch.zeros(0, dtype=torch.long))
        assert out.shape == (0,)
    adv = compute_advantages("grpo", torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
                             torch.tensor([0, 0]))
    assert adv.dtype == torch.bfloat16


def test_validation():
    r = torch.tensor([1.0, 2.0])
    idx = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*'grpo'.*'rloo'"):
        compute_advantages("ppo", r, idx)
    with pytest.raises(ValueError, match="rewards contain NaN"):
        compute_advantages("grpo", torch.tensor([1.0, float("nan")]), idx)
    with pytest.raises(ValueError, match="index shape"):
        compute_advantages("grpo", r, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="index must be an integer"):
        compute_advantages("rloo", r, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="rewards must be a 1-D"):
        compute_advantages("dr_grpo", r[None], idx[None])
    with pytest.raises(ValueError, match="rewards must be a floating"):
        compute_advantages("grpo", torch.tensor([1, 2]), idx)
    with pytest.raises(ValueError, match="unknown hyperparameter.*'rloo'"):
        compute_advantages("rloo", r, idx, eps=1e-3)
    with pytest.raises(ValueError, match="per-token inputs.*build_estimator"):
        compute_advantages("gae", r, idx)
    with pytest.raises(ValueError, match="eps"):
        grpo(r, idx, eps=0.0)
    assert grpo(r, idx, eps=1.0).tolist() == pytest.approx(
        [-0.5 / (math.sqrt(0.5) + 1), 0.5 / (math.sqrt(0.5) + 1)])


def test_compute_advantages_is_the_registered_estimator():
    """One API: compute_advantages builds the registered estimator; P-GRPO with no history is GRPO (cold start),
    and its hyperparameters are passed by keyword."""
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, 0.0])
    idx = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.equal(compute_advantages("pgrpo", r, idx, groups=list("aabbcc")), compute_advantages("grpo", r, idx))
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        compute_advantages("pgrpo", r, idx, nope=1)
