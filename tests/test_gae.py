"""GAE and the clipped value loss (fairalign.algos) against independent implementations written here from
the formulas: plain Python loops over each row's valid tokens (γ, λ, masks with left / right padding and
holes, whitening with `statistics`), one hand-computed case, hypothesis for random shapes; the `gae`
estimator as the trainer calls it (split over ranks = whole batch); explained variance."""
import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import (ESTIMATOR_REGISTRY, LOCAL, build_estimator, compute_gae, compute_value_loss,
                             explained_variance, last_token_rewards)
from two_ranks import TwoRanks


# ----------------------------------------------------------------------------- references (from the formulas)
def ref_gae(rewards, values, mask, gamma, lam, whiten):
    """Lists of lists in, lists of lists out. Each row: keep the valid tokens in order, run
    δ_k = r_k + γ·V_{k+1} − V_k (V after the last = 0), A_k = δ_k + γλ·A_{k+1}, put them back;
    masked positions get 0. Whitening: mean and sample variance of every valid A of the batch."""
    adv = [[0.0] * len(row) for row in mask]
    ret = [[0.0] * len(row) for row in mask]
    for i, row in enumerate(mask):
        pos = [t for t, on in enumerate(row) if on]
        a_next, v_next = 0.0, 0.0
        for t in reversed(pos):
            delta = rewards[i][t] + gamma * v_next - values[i][t]
            a = delta + gamma * lam * a_next
            adv[i][t], ret[i][t] = a, a + values[i][t]
            a_next, v_next = a, values[i][t]
    if whiten:
        flat = [adv[i][t] for i, row in enumerate(mask) for t, on in enumerate(row) if on]
        mu = statistics.fmean(flat) if flat else 0.0
        var = statistics.variance(flat) if len(flat) > 1 else 0.0
        adv = [[(a - mu) / math.sqrt(var + 1e-8) if on else 0.0 for a, on in zip(ar, mr)]
               for ar, mr in zip(adv, mask)]
    return adv, ret


def ref_value_loss(v_new, ret, v_old, mask, clip):
    """(token-mean loss, clipped fraction) from ½·max((v − G)², (v_old + clip(v − v_old) − G)²)."""
    total, n, n_clip = 0.0, 0, 0
    for vr, gr, orow, mr in zip(v_new, ret, v_old, mask):
        for v, g, o, on in zip(vr, gr, orow, mr):
            if not on:
                continue
            plain = (v - g) ** 2
            if clip is None:
                total += 0.5 * plain
            else:
                vc = o + min(max(v - o, -clip), clip)
                total += 0.5 * max(plain, (vc - g) ** 2)
                n_clip += (vc - g) ** 2 > plain
            n += 1
    return total / max(n, 1), n_clip / max(n, 1)


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------- GAE
def test_hand_computed_three_tokens():
    """V = (0.5, 0.2, 0.1), reward 1 on the last token, γ = 0.9, λ = 0.5:
    δ2 = 1 − 0.1 = 0.9; δ1 = 0.9·0.1 − 0.2 = −0.11; δ0 = 0.9·0.2 − 0.5 = −0.32
    A2 = 0.9; A1 = −0.11 + 0.45·0.9 = 0.295; A0 = −0.32 + 0.45·0.295 = −0.18725."""
    values = _t([[0.5, 0.2, 0.1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = compute_gae(last_token_rewards(_t([1.0]), mask), values, mask, gamma=0.9, lam=0.5, whiten=False)
    torch.testing.assert_close(adv, _t([[-0.18725, 0.295, 0.9]]))
    torch.testing.assert_close(ret, _t([[0.31275, 0.495, 1.0]]))


def test_padding_and_holes_neither_take_nor_pass_on_value():
    """A row padded on the left, one on the right and one with a hole equal the compact row."""
    v = [0.3, -0.2, 0.7, 0.1]
    compact, _ = compute_gae(_t([[0, 0, 0, 2.0]]), _t([v]), torch.ones(1, 4, dtype=torch.bool), 0.95, 0.9, False)
    layouts = {"left": [0, 0] + list(range(4)), "right": list(range(4)) + [0, 0], "hole": [0, 1, 0, 2, 0, 3]}
    masks = {"left": [0, 0, 1, 1, 1, 1], "right": [1, 1, 1, 1, 0, 0], "hole": [1, 1, 0, 1, 0, 1]}
    for name, where in layouts.items():
        m = torch.tensor([masks[name]], dtype=torch.bool)
        vals = _t([[v[k] if on else 99.0 for k, on in zip(where, masks[name])]])  # junk under the mask
        rew = last_token_rewards(_t([2.0]), m) + (~m) * 5.0  # rewards under the mask are ignored too
        adv, ret = compute_gae(rew, vals, m, 0.95, 0.9, whiten=False)
        torch.testing.assert_close(adv[m], compact[0], msg=name)
        assert adv[~m].abs().sum() == 0 and ret[~m].abs().sum() == 0, name


def test_lambda_and_gamma_limits():
    """λ = 0: A_t = δ_t (one-step TD); γ = λ = 1: A_t = R − V_t (Monte Carlo)."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    R = _t([1.0, -0.5, 2.0])
    r = last_token_rewards(R, mask)
    mc, _ = compute_gae(r, values, mask, 1.0, 1.0, whiten=False)
    torch.testing.assert_close(mc, torch.where(mask, R[:, None] - values, torch.zeros(())))
    td, _ = compute_gae(r, values, mask, 0.9, 0.0, whiten=False)
    nxt = torch.cat([values[:, 1:], torch.zeros(3, 1, dtype=torch.float64)], 1) * torch.cat(
        [mask[:, 1:], torch.zeros(3, 1, dtype=torch.bool)], 1)
    torch.testing.assert_close(td, torch.where(mask, r + 0.9 * nxt - values, torch.zeros(())))


@st.composite
def _batches(draw):
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    mask = [[draw(st.booleans()) for _ in range(T)] for _ in range(B)]
    num = st.floats(-3, 3, allow_nan=False, width=32)
    values = [[draw(num) for _ in range(T)] for _ in range(B)]
    rewards = [[draw(num) if draw(st.integers(0, 3)) == 0 else 0.0 for _ in range(T)] for _ in range(B)]
    return rewards, values, mask, draw(st.sampled_from([0.0, 0.5, 0.99, 1.0])), draw(st.sampled_from([0.0, 0.9, 1.0]))


@settings(max_examples=150, deadline=None)
@given(_batches(), st.booleans())
def test_gae_matches_the_reference(batch, whiten):
    rewards, values, mask, gamma, lam = batch
    adv, ret = compute_gae(_t(rewards), _t(values), torch.tensor(mask), gamma, lam, whiten=whiten)
    want_adv, want_ret = ref_gae(rewards, values, mask, gamma, lam, whiten)
    torch.testing.assert_close(adv, _t(want_adv), atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(ret, _t(want_ret), atol=1e-9, rtol=1e-9)


def test_last_token_rewards_and_input_errors():
    m = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 1]])
    torch.testing.assert_close(last_token_rewards(torch.tensor([1.0, 2.0, 3.0]), m),
                               torch.tensor([[0, 0, 1.0, 0], [0, 0, 0, 0], [0, 0, 0, 3.0]]))
    with pytest.raises(ValueError, match="gamma and lam must be in"):
        compute_gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.2)
    with pytest.raises(ValueError, match="token_rewards shape"):
        compute_gae(torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_gae(torch.zeros(1, 2), torch.tensor([[0.0, float("nan")]]), torch.ones(1, 2))


# ----------------------------------------------------------------------------- the estimator, as the trainer calls it
def test_gae_estimator_whitens_over_the_global_batch():
    spec = ESTIMATOR_REGISTRY["gae"]
    assert spec.requires == ("values", "mask") and spec.scope == "batch"
    assert spec.hparams == {"gamma": 1.0, "lam": 0.95, "whiten": True}
    g = torch.Generator().manual_seed(3)
    values = torch.randn(6, 5, generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    mask[:, 0] = True
    R = torch.randn(6, generator=g)
    est = build_estimator("gae", gamma=0.99, lam=0.9)
    adv, ret = est.advantages_and_targets(R, torch.arange(6), ["x"] * 6, LOCAL, values=values, mask=mask)
    want_adv, want_ret = ref_gae(last_token_rewards(R, mask).tolist(), values.tolist(), mask.tolist(), 0.99, 0.9, True)
    torch.testing.assert_close(adv, torch.tensor(want_adv), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ret, torch.tensor(want_ret), atol=1e-6, rtol=1e-6)
    # two ranks holding rows 0-2 and 3-5: each whitens with the moments of both
    from fairalign.algos import masked_moments
    halves = [slice(0, 3), slice(3, 6)]
    local = [est.advantages_and_targets(R[h], torch.arange(3), ["x"] * 3, LOCAL, values=values[h], mask=mask[h])
             for h in halves]
    raw = [compute_gae(last_token_rewards(R[h], mask[h]), values[h], mask[h], 0.99, 0.9, whiten=False)[0] for h in halves]
    for k, h in enumerate(halves):
        other = [float(x) for x in masked_moments(raw[1 - k], mask[halves[1 - k]])]
        a, r = est.advantages_and_targets(R[h], torch.arange(3), ["x"] * 3, TwoRanks(k, other), values=values[h],
                                          mask=mask[h])
        torch.testing.assert_close(a, adv[h], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r, ret[h])
        assert not torch.allclose(local[k][0], adv[h], atol=1e-3)  # rank-local whitening would differ
    with pytest.raises(ValueError, match=r"requires the inputs \['values', 'mask'\]; missing \['values'\]"):
        est(R, torch.arange(6), ["x"] * 6, LOCAL, mask=mask)
    with pytest.raises(ValueError, match="unexpected"):
        build_estimator("grpo")(R, torch.arange(6), ["x"] * 6, LOCAL, values=values)
    assert build_estimator("grpo").advantages_and_targets(R, torch.arange(6), ["x"] * 6)[1] is None


# ----------------------------------------------------------------------------- the value loss
@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.sampled_from([None, 0.05, 0.2, 1.0]), st.integers(0, 10**6))
def test_value_loss_matches_the_reference(B, T, clip, seed):
    g = torch.Generator().manual_seed(seed)
    v_old = torch.randn(B, T, generator=g, dtype=torch.float64)
    v_new = v_old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    ret = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) > 0.3
    loss, stats = compute_value_loss(v_new, ret, v_old, mask, clip, "token-mean")
    want, frac = ref_value_loss(v_new.tolist(), ret.tolist(), v_old.tolist(), mask.tolist(), clip)
    assert float(loss) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert stats["value_clip_frac"] == pytest.approx(frac)


def test_value_loss_gradient_is_zero_on_the_clipped_branch():
    """v moved towards G past the clip: the clipped (pessimistic) branch wins, v_old ± clip is fixed; v moved
    away from G past the clip: the unclipped branch is larger and keeps its gradient."""
    v_old = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    ret = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    v_new = torch.tensor([[0.5, 0.1, 0.05, -0.5]], requires_grad=True)
    loss, stats = compute_value_loss(v_new, ret, v_old, torch.ones(1, 4, dtype=torch.bool), 0.2)
    loss.backward()
    # token 0: max(½·0.5², ½·(0.2 − 1)²) = 0.32 (clipped); 1: ½(0.1 − 1)² = 0.405 (inside the clip);
    # token 2: ½(0.05 + 1)² = 0.55125; token 3: max(½·1.5², ½·1.2²) = 1.125 (unclipped, away from G)
    assert float(loss.detach()) == pytest.approx((0.32 + 0.405 + 0.55125 + 1.125) / 4)
    torch.testing.assert_close(v_new.grad, torch.tensor([[0.0, (0.1 - 1) / 4, (0.05 + 1) / 4, (-0.5 - 1) / 4]]))
    assert stats["clipped"].tolist() == [[True, False, False, False]]
    assert stats["value_clip_frac"] == 0.25


def test_value_loss_pieces_add_up_with_global_normalizers():
    g = torch.Generator().manual_seed(1)
    v_old, ret = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    v_new = v_old + torch.randn(4, 5, generator=g)
    mask = torch.rand(4, 5, generator=g) > 0.2
    for agg in ("token-mean", "seq-mean-token-mean"):
        whole, _ = compute_value_loss(v_new, ret, v_old, mask, 0.5, agg)
        norm = {"global_tokens": float(mask.sum()), "global_seqs": float((mask.sum(1) > 0).sum())}
        parts = sum(compute_value_loss(v_new[h], ret[h], v_old[h], mask[h], 0.5, agg, **norm)[0]
                    for h in (slice(0, 1), slice(1, 4)))
        assert float(parts) == pytest.approx(float(whole), rel=1e-6)


def test_explained_variance():
    ret = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    assert explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), ret, mask) == pytest.approx(0.0)
    v = torch.tensor([[1.5, 2.0, 2.5, 0.0]])
    # residuals (−0.5, 0, 0.5): variance 0.25; returns (1, 2, 3): variance 1
    assert explained_variance(v, ret, mask) == pytest.approx(0.75)
    assert math.isnan(explained_variance(v, torch.ones(1, 4), mask))
