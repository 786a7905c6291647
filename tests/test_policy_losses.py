"""Tests for fairalign.algos policy losses: hand-computed cases, an independent loop reference
written from the formulas (docs/algorithms.md), and hypothesis properties."""

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import AGG_MODES, POLICY_LOSS_REGISTRY, compute_policy_loss, fspo_log_band

POLICY_LOSSES = {n: spec.fn for n, spec in POLICY_LOSS_REGISTRY.items()}  # the registered functions
DEFAULT_HPARAMS = {n: dict(spec.hparams) for n, spec in POLICY_LOSS_REGISTRY.items()}  # their declared defaults

torch.set_default_dtype(torch.float32)
F64 = torch.float64
SETTINGS = settings(max_examples=40, deadline=None)


# ----------------------------------------------------------------------------- helpers
def make_batch(seed, B=4, T=6, scale=0.3, dtype=F64, adv_shape="seq"):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=dtype) * 3 - 0.1
    logp = (old + torch.randn(B, T, generator=g, dtype=dtype) * scale).requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    shape = (B,) if adv_shape == "seq" else (B, T)
    adv = torch.randn(*shape, generator=g, dtype=dtype)
    return logp, old, adv, mask


def loss_and_grad(name, logp, old, adv, mask, agg="token-mean", **kw):
    leaf = logp.detach().clone().requires_grad_()
    loss, stats = compute_policy_loss(name, leaf, old, adv, mask, agg=agg, **kw)
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, stats


def ref_weights(mask, agg, horizon=None):
    """Per-token weight w[i][t] of the aggregation, written with loops."""
    B, T = mask.shape
    lengths = [int(mask[i].sum()) for i in range(B)]
    total = sum(lengths)
    n_seq = sum(1 for L in lengths if L > 0)
    H = T if horizon is None else horizon
    w = [[0.0] * T for _ in range(B)]
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            if agg == "token-mean":
                w[i][t] = 1.0 / total
            elif agg == "seq-mean-token-mean":
                w[i][t] = 1.0 / (n_seq * lengths[i])
            elif agg == "seq-mean-token-sum":
                w[i][t] = 1.0 / n_seq
            else:
                w[i][t] = 1.0 / (n_seq * H)
    return w


def adv_at(adv, i, t):
    return adv[i] if adv.dim() == 1 else adv[i, t]


def ref_token_loss(name, logp, old, adv, mask, agg, clip_low, clip_high, dual_clip=None):
    """Reference for ppo / cispo: Σ_i,t w_it · token loss, written per token with loops."""
    w = ref_weights(mask, agg)
    total = logp.new_zeros(())
    B, T = mask.shape
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            A = adv_at(adv, i, t)
            r = torch.exp(logp[i, t] - old[i, t])
            if name == "ppo":
                term = torch.maximum(-A * r, -A * torch.clamp(r, 1 - clip_low, 1 + clip_high))
                if dual_clip is not None and A < 0:
                    term = torch.minimum(term, -A * dual_clip)
            else:  # cispo
                low = 0.0 if clip_low is None else 1 - clip_low
                wgt = torch.clamp(r.detach(), min=low, max=1 + clip_high)
                if dual_clip is not None and A < 0:
                    wgt = torch.clamp(wgt, max=dual_clip)
                term = -wgt * A * logp[i, t]
            total = total + w[i][t] * term
    return total


def ref_seq_objective(name, logp, old, adv, mask, agg, hp, mu=0.0):
    """Reference for gspo / fspo from the *sequence* form J_i(θ) computed with autograd.

    GSPO: s_i = exp(mean ℓ);  FSPO: s_i = exp(S_i), S_i = Σ ℓ, band μL ± c√L.
    J_i = max(-A s_i, -A clip(s_i)), dual clip min(J_i, -A c) where A < 0.
    The per-token sg form of the loss has (with W_i = Σ_t w_it, w_i = W_i / L_i):
      value    = Σ_i W_i J_i            (every token carries the value J_i)
      gradient = ∇ Σ_i W_i J_i (GSPO: ∇s_i = s_i·mean ∇logp) and ∇ Σ_i w_i J_i (FSPO: ∇ exp(S_i)
                 = exp(S_i)·Σ ∇logp, one term per token).
    Returns (value_objective, gradient_objective).
    """
    w = ref_weights(mask, agg)
    value = logp.new_zeros(())
    grad_obj = logp.new_zeros(())
    for i in range(mask.shape[0]):
        toks = [t for t in range(mask.shape[1]) if mask[i, t]]
        if not toks:
            continue
        L = len(toks)
        ell = [logp[i, t] - old[i, t] for t in toks]
        A = adv[i]
        if name == "gspo":
            s = torch.exp(sum(ell) / L)
            lo, hi = 1 - hp["clip_low"], 1 + hp["clip_high"]
        else:
            s = torch.exp(sum(ell))
            lo = math.exp(mu * L - hp["c_low"] * math.sqrt(L))
            hi = math.exp(mu * L + hp["c_high"] * math.sqrt(L))
        J = torch.maximum(-A * s, -A * torch.clamp(s, lo, hi))
        if hp.get("dual_clip") is not None and A < 0:
            J = torch.minimum(J, -A * hp["dual_clip"])
        W = sum(w[i][t] for t in toks)
        value = value + W * J
        grad_obj = grad_obj + (W * J if name == "gspo" else (W / L) * J)
    return value, grad_obj


# ----------------------------------------------------------------------------- hand cases
def test_ppo_hand_computed_positive_advantage():
    old = torch.zeros(1, 3, dtype=F64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]], dtype=F64)).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = compute_policy_loss("ppo", logp, old, torch.tensor([1.0], dtype=F64), mask)
    # r=1.5 clipped to 1.2; r=0.5 below the band but A>0 keeps -r; r=1.1 inside.
    assert loss.item() == pytest.approx(-(1.2 + 0.5 + 1.1) / 3)
    loss.backward()
    # d(-r)/d logp = -r for unclipped tokens, 0 for the clipped one; /3 from token-mean
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5 / 3, -1.1 / 3]], dtype=F64))
    assert stats["clipped"].tolist() == [[True, False, False]]
    assert stats["clip_frac"] == pytest.approx(1 / 3)
    assert stats["clip_frac_high"] == pytest.approx(1 / 3) and stats["clip_frac_low"] == 0
    assert stats["approx_kl"] == pytest.approx(-(math.log(1.5) + math.log(0.5) + math.log(1.1)) / 3)


def test_ppo_hand_computed_negative_advantage_and_dual_clip():
    old = torch.zeros(1, 3, dtype=F64)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]], dtype=F64)).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    A = torch.tensor([-2.0], dtype=F64)
    loss, stats = compute_policy_loss("ppo", logp, old, A, mask, agg="seq-mean-token-sum")
    # A<0: r=1.5 -> 2*1.5; r=0.5 clipped up to 0.8 -> 2*0.8; r=1.1 -> 2*1.1
    assert loss.item() == pytest.approx(2 * 1.5 + 2 * 0.8 + 2 * 1.1)
    assert stats["clipped"].tolist() == [[False, True, False]]
    assert stats["clip_frac_low"] == pytest.approx(1 / 3)
    loss, stats = compute_policy_loss("ppo", logp, old, A, mask, agg="seq-mean-token-sum",
                                      dual_clip=1.3)
    assert loss.item() == pytest.approx(2 * 1.3 + 2 * 0.8 + 2 * 1.1)
    assert stats["dual_clip_frac"] == pytest.approx(1 / 3)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, torch.tensor([[0.0, 0.0, 2 * 1.1]], dtype=F64))


def test_ppo_dapo_clip_higher():
    old = torch.zeros(1, 2, dtype=F64)
    logp = torch.log(torch.tensor([[1.25, 1.3]], dtype=F64))
    mask = torch.ones(1, 2, dtype=torch.bool)
    A = torch.tensor([1.0], dtype=F64)
    loss, stats = compute_policy_loss("ppo", logp, old, A, mask, clip_high=0.28)
    assert loss.item() == pytest.approx(-(1.25 + 1.28) / 2)
    assert stats["clipped"].tolist() == [[False, True]]


def test_gspo_hand_computed():
    old = torch.zeros(1, 3, dtype=F64)
    logp = torch.tensor([[0.1, -0.1, 0.3]], dtype=F64, requires_grad=True)  # mean ℓ = 0.1
    mask = torch.ones(1, 3, dtype=torch.bool)
    s = math.exp(0.1)
    loss, stats = compute_policy_loss("gspo", logp, old, torch.tensor([1.0], dtype=F64), mask,
                                      agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-(1 + 4e-4))  # s > 1+4e-4: clipped, A > 0
    assert stats["clipped"].tolist() == [True] and stats["clip_frac"] == 1.0
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.all(grad == 0)
    loss, stats = compute_policy_loss("gspo", logp, old, torch.tensor([-2.0], dtype=F64), mask,
                                      agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(2 * s)  # A < 0, s above the band: unclipped
    assert stats["clipped"].tolist() == [False]
    assert stats["seq_log_ratio"].tolist() == pytest.approx([0.1])
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, torch.full((1, 3), 2 * s / 3, dtype=F64))  # s·A·(1/L) per token


def test_fspo_hand_computed_band_and_clip():
    c_low, c_high = 0.1, 0.2
    old = torch.zeros(3, 4, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    # S = 0.5 (L=4, band [-0.2, 0.4]); S = 0.3 (inside); S = -0.15 (L=1, band [-0.1, 0.2])
    logp = torch.tensor([[0.2, 0.1, 0.1, 0.1], [0.1, 0.1, 0.05, 0.05], [-0.15, 9.0, 9.0, 9.0]],
                        dtype=F64, requires_grad=True)
    A = torch.tensor([1.0, 1.0, -1.0], dtype=F64)
    loss, stats = compute_policy_loss("fspo", logp, old, A, mask, agg="seq-mean-token-sum",
                                      c_low=c_low, c_high=c_high)
    assert stats["log_ratio_sum"].tolist() == pytest.approx([0.5, 0.3, -0.15])
    assert stats["band_low"].tolist() == pytest.approx([-0.2, -0.2, -0.1])
    assert stats["band_high"].tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert stats["clipped"].tolist() == [True, False, True]
    assert stats["clip_frac"] == pytest.approx(5 / 9)
    expected = (4 * -math.exp(0.4) + 4 * -math.exp(0.3) + 1 * math.exp(-0.1)) / 3
    assert loss.item() == pytest.approx(expected)
    (grad,) = torch.autograd.grad(loss, logp)
    want = torch.zeros(3, 4, dtype=F64)
    want[1] = -math.exp(0.3) / 3  # per token -A·e^{S}·(1/N); clipped rows and padding get 0
    assert torch.allclose(grad, want)


def test_fspo_drift_kl_centers_band_on_batch_mean():
    old = torch.zeros(2, 2, dtype=F64)
    logp = torch.tensor([[-0.1, -0.1], [-0.3, 0.0]], dtype=F64)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    _, stats = compute_policy_loss("fspo", logp, old, torch.ones(2, dtype=F64), mask,
                                   drift="kl", c_low=0.05, c_high=0.05)
    mu = (-0.1 - 0.1 - 0.3) / 3
    assert stats["drift_mu"] == pytest.approx(mu)
    assert stats["band_low"].tolist() == pytest.approx([2 * mu - 0.05 * math.sqrt(2), mu - 0.05])
    assert stats["band_high"].tolist() == pytest.approx([2 * mu + 0.05 * math.sqrt(2), mu + 0.05])
    # S = -0.2 vs hi = 2μ+0.0707 = -0.262: clipped (A>0); S = -0.3 vs hi = -0.117: not clipped
    assert stats["clipped"].tolist() == [True, False]


def test_fspo_log_band_formula_and_length_scaling():
    L = torch.tensor([0, 1, 4, 100])
    lo, hi = fspo_log_band(L, 0.0, 0.02, 0.03)
    assert lo.tolist() == pytest.approx([0.0, -0.02, -0.04, -0.2])
    assert hi.tolist() == pytest.approx([0.0, 0.03, 0.06, 0.3])
    lo, hi = fspo_log_band(torch.tensor([4.0]), -0.01, 0.02, 0.03)
    assert lo.item() == pytest.approx(-0.04 - 0.04) and hi.item() == pytest.approx(-0.04 + 0.06)
    with pytest.raises(ValueError, match="c_low"):
        fspo_log_band(L, 0.0, 0.0, 0.03)
    with pytest.raises(ValueError, match="lengths"):
        fspo_log_band(torch.tensor([-1]), 0.0, 0.02, 0.03)


def test_cispo_hand_computed():
    old = torch.zeros(1, 3, dtype=F64)
    logp = torch.log(torch.tensor([[5.0, 0.1, 1.0]], dtype=F64)).requires_grad_()
    mask = torch.ones(1, 3, dtype=torch.bool)
    A = torch.tensor([2.0], dtype=F64)
    loss, stats = compute_policy_loss("cispo", logp, old, A, mask, agg="seq-mean-token-sum")
    # weights: min(5, 4) = 4, 0.1 (no lower bound by default), 1; loss = -Σ w·A·logp
    lp = logp.detach()[0]
    assert loss.item() == pytest.approx(-(4 * 2 * lp[0] + 0.1 * 2 * lp[1] + 1 * 2 * lp[2]).item())
    assert stats["clipped"].tolist() == [[True, False, False]]
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, torch.tensor([[-8.0, -0.2, -2.0]], dtype=F64))  # never zeroed
    loss, stats = compute_policy_loss("cispo", logp, old, A, mask, agg="seq-mean-token-sum",
                                      clip_low=0.5, clip_high=0.28)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, torch.tensor([[-2 * 1.28, -2 * 0.5, -2.0]], dtype=F64))
    assert stats["clip_frac_high"] == pytest.approx(1 / 3)
    assert stats["clip_frac_low"] == pytest.approx(1 / 3)


def test_default_hparams_are_the_documented_ones():
    assert DEFAULT_HPARAMS["ppo"] == {"clip_low": 0.2, "clip_high": 0.2, "dual_clip": None}
    assert DEFAULT_HPARAMS["gspo"] == {"clip_low": 3e-4, "clip_high": 4e-4, "dual_clip": None}
    assert DEFAULT_HPARAMS["fspo"] == {"c_low": 0.02, "c_high": 0.03, "drift": "none",
                                       "dual_clip": None}
    assert set(DEFAULT_HPARAMS["cispo"]) == {"clip_low", "clip_high", "dual_clip"}
    assert set(POLICY_LOSSES) == {"ppo", "gspo", "fspo", "cispo"}
    for name, fn in POLICY_LOSSES.items():  # the registered functions use the same defaults
        params = inspect.signature(fn).parameters
        assert {k: params[k].default for k in DEFAULT_HPARAMS[name]} == DEFAULT_HPARAMS[name]


# ----------------------------------------------------------------------------- reference cross-checks
HP = {"ppo": dict(clip_low=0.2, clip_high=0.28), "cispo": dict(clip_low=None, clip_high=0.5),
      "gspo": dict(clip_low=0.01, clip_high=0.02), "fspo": dict(c_low=0.05, c_high=0.1)}


@SETTINGS
@given(seed=st.integers(0, 10_000), agg=st.sampled_from(AGG_MODES),
       name=st.sampled_from(["ppo", "cispo"]), adv_shape=st.sampled_from(["seq", "tok"]),
       dual=st.sampled_from([None, 1.5]))
def test_token_losses_match_loop_reference(seed, agg, name, adv_shape, dual):
    logp, old, adv, mask = make_batch(seed, adv_shape=adv_shape, scale=0.5)
    hp = dict(HP[name], dual_clip=dual)
    if name == "cispo" and dual is not None:
        hp["dual_clip"] = 1.2  # below the cap 1.5 so it can bind
    loss, grad, _ = loss_and_grad(name, logp, old, adv, mask, agg=agg, **hp)
    leaf = logp.detach().clone().requires_grad_()
    ref = ref_token_loss(name, leaf, old, adv, mask, agg, hp["clip_low"], hp["clip_high"],
                         hp["dual_clip"])
    (ref_grad,) = torch.autograd.grad(ref, leaf)
    assert torch.allclose(loss, ref.detach(), atol=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-10)


@SETTINGS
@given(seed=st.integers(0, 10_000), agg=st.sampled_from(AGG_MODES),
       name=st.sampled_from(["gspo", "fspo"]), dual=st.sampled_from([None, 1.05]))
def test_sequence_losses_match_sequence_form_reference(seed, agg, name, dual):
    logp, old, adv, mask = make_batch(seed, scale=0.05)
    hp = dict(HP[name], dual_clip=dual)
    loss, grad, stats = loss_and_grad(name, logp, old, adv, mask, agg=agg, **hp)
    leaf = logp.detach().clone().requires_grad_()
    value, grad_obj = ref_seq_objective(name, leaf, old, adv, mask, agg, hp)
    (ref_grad,) = torch.autograd.grad(grad_obj, leaf)
    assert torch.allclose(loss, value.detach(), atol=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-10)
    # clip_frac = fraction of response tokens in clipped sequences
    lengths = mask.sum(1)
    frac = (stats["clipped"].double() * lengths).sum() / lengths.sum()
    assert stats["clip_frac"] == pytest.approx(frac.item())


@SETTINGS
@given(seed=st.integers(0, 10_000), agg=st.sampled_from(AGG_MODES))
def test_fspo_huge_band_equals_unclipped_sequence_is_objective(seed, agg):
    logp, old, adv, mask = make_batch(seed, scale=0.3)
    loss, grad, stats = loss_and_grad("fspo", logp, old, adv, mask, agg=agg, c_low=1e6,
                                      c_high=1e6)
    assert not stats["clipped"].any()
    leaf = logp.detach().clone().requires_grad_()
    w = ref_weights(mask, agg)
    value, grad_obj = leaf.new_zeros(()), leaf.new_zeros(())
    for i in range(mask.shape[0]):
        toks = [t for t in range(mask.shape[1]) if mask[i, t]]
        J = -adv[i] * torch.exp(sum(leaf[i, t] - old[i, t] for t in toks))  # -A·exp(S_i)
        value = value + sum(w[i][t] for t in toks) * J
        grad_obj = grad_obj + w[i][toks[0]] * J  # per-token weight (constant within a row)
    (ref_grad,) = torch.autograd.grad(grad_obj, leaf)
    assert torch.allclose(loss, value.detach(), atol=1e-10)
    assert torch.allclose(grad, ref_grad, atol=1e-10)
    if agg == "seq-mean-token-mean":  # value = mean_i(-A_i exp(S_i)) exactly
        S = ((logp.detach() - old) * mask).sum(1)
        assert loss.item() == pytest.approx((-adv * S.exp()).mean().item())
    if agg == "seq-mean-token-sum":  # gradient = ∇ mean_i(-A_i exp(S_i)) exactly
        leaf2 = logp.detach().clone().requires_grad_()
        obj = (-adv * ((leaf2 - old) * mask).sum(1).exp()).mean()
        (g2,) = torch.autograd.grad(obj, leaf2)
        assert torch.allclose(grad, g2, atol=1e-10)


@SETTINGS
@given(seed=st.integers(0, 10_000), B=st.integers(1, 6), dual=st.sampled_from([None, 1.5]),
       agg=st.sampled_from(AGG_MODES))
def test_gspo_equals_ppo_for_one_token_responses(seed, B, dual, agg):
    g = torch.Generator().manual_seed(seed)
    T = 3
    old = -torch.rand(B, T, generator=g, dtype=F64)
    logp = old + torch.randn(B, T, generator=g, dtype=F64) * 0.4
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[torch.arange(B), torch.randint(0, T, (B,), generator=g)] = True  # one token per row
    adv = torch.randn(B, generator=g, dtype=F64)
    hp = dict(clip_low=0.1, clip_high=0.2, dual_clip=dual)
    l1, g1, s1 = loss_and_grad("ppo", logp, old, adv, mask, agg=agg, **hp)
    l2, g2, s2 = loss_and_grad("gspo", logp, old, adv, mask, agg=agg, **hp)
    assert torch.allclose(l1, l2, atol=1e-12) and torch.allclose(g1, g2, atol=1e-12)
    assert torch.equal(s1["clipped"].any(1), s2["clipped"])
    assert s1["clip_frac"] == pytest.approx(s2["clip_frac"])


# ----------------------------------------------------------------------------- properties
@SETTINGS
@given(seed=st.integers(0, 10_000), name=st.sampled_from(sorted(POLICY_LOSSES)),
       agg=st.sampled_from(AGG_MODES), extra_cols=st.integers(1, 4), extra_rows=st.integers(0, 2),
       adv_shape=st.sampled_from(["seq", "tok"]))
def test_padding_invariance(seed, name, agg, extra_cols, extra_rows, adv_shape):
    logp, old, adv, mask = make_batch(seed, adv_shape=adv_shape)
    B, T = mask.shape
    g = torch.Generator().manual_seed(seed + 1)
    big_logp = torch.randn(B + extra_rows, T + extra_cols, generator=g, dtype=F64) * 30
    big_old = torch.randn(B + extra_rows, T + extra_cols, generator=g, dtype=F64) * 30
    big_logp[:B, :T] = logp.detach()
    big_old[:B, :T] = old
    big_mask = torch.zeros(B + extra_rows, T + extra_cols, dtype=torch.bool)
    big_mask[:B, :T] = mask
    if adv_shape == "seq":
        big_adv = torch.cat([adv, torch.randn(extra_rows, dtype=F64) * 5])
    else:
        big_adv = torch.randn(B + extra_rows, T + extra_cols, generator=g, dtype=F64) * 5
        big_adv[:B, :T] = adv
    kw = {"horizon": 8} if agg == "seq-mean-token-sum-norm" else {}
    l1, g1, s1 = loss_and_grad(name, logp, old, adv, mask, agg=agg, **kw)
    l2, g2, s2 = loss_and_grad(name, big_logp, big_old, big_adv, big_mask, agg=agg, **kw)
    assert torch.allclose(l1, l2, atol=1e-10)
    assert torch.allclose(g1, g2[:B, :T], atol=1e-10)
    assert torch.all(g2[B:] == 0) and torch.all(g2[:, T:] == 0)
    if s2["clipped"].dim() == 2:  # token-level: padded positions are never clipped
        assert not (s2["clipped"] & ~big_mask).any()
    assert s1["clip_frac"] == pytest.approx(s2["clip_frac"])
    assert s1["approx_kl"] == pytest.approx(s2["approx_kl"])


@SETTINGS
@given(seed=st.integers(0, 10_000), name=st.sampled_from(sorted(POLICY_LOSSES)),
       agg=st.sampled_from(AGG_MODES), dual=st.sampled_from([None, 3.0]))
def test_gradients_finite_for_extreme_log_ratios(seed, name, agg, dual):
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 5
    old = -torch.rand(B, T, generator=g, dtype=torch.float32) * 2
    signs = torch.randint(0, 2, (B, T), generator=g) * 2 - 1
    logp = old + 50.0 * signs  # log ratios of ±50
    mask = torch.rand(B, T, generator=g) < 0.8
    adv = torch.randn(B, generator=g)
    hp = {"c_low": 0.02, "c_high": 0.03} if name == "fspo" else {}
    loss, grad, stats = loss_and_grad(name, logp, old, adv, mask, agg=agg, dual_clip=dual, **hp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert math.isfinite(stats["approx_kl"]) and 0 <= stats["clip_frac"] <= 1


@SETTINGS
@given(seed=st.integers(0, 10_000), name=st.sampled_from(sorted(POLICY_LOSSES)),
       agg=st.sampled_from(AGG_MODES), cut=st.integers(1, 5))
def test_global_normalizers_make_split_batches_add_up(seed, name, agg, cut):
    logp, old, adv, mask = make_batch(seed, B=6, T=5)
    full, gfull, _ = loss_and_grad(name, logp, old, adv, mask, agg=agg)
    tokens = int(mask.sum())
    seqs = int((mask.sum(1) > 0).sum())
    parts, grads = [], []
    for sl in (slice(0, cut), slice(cut, 6)):
        loss, grad, _ = loss_and_grad(name, logp[sl], old[sl], adv[sl], mask[sl], agg=agg,
                                      global_tokens=tokens, global_seqs=seqs)
        parts.append(loss)
        grads.append(grad)
    assert torch.allclose(parts[0] + parts[1], full, atol=1e-12)
    assert torch.allclose(torch.cat(grads), gfull, atol=1e-12)


def test_all_masked_rows_and_empty_batch_are_finite():
    logp, old, adv, mask = make_batch(3)
    mask[1] = False
    for name in POLICY_LOSSES:
        for agg in AGG_MODES:
            loss, grad, stats = loss_and_grad(name, logp, old, adv, mask, agg=agg)
            assert torch.isfinite(loss) and torch.isfinite(grad).all()
            assert torch.all(grad[1] == 0)
            assert not stats["clipped"][1].any()
            loss, grad, stats = loss_and_grad(name, logp, old, adv, torch.zeros_like(mask), agg=agg)
            assert loss.item() == 0 and torch.all(grad == 0) and stats["clip_frac"] == 0


def test_nan_in_padding_is_ignored_and_float_mask_accepted():
    logp, old, adv, mask = make_batch(5, adv_shape="tok")
    logp2 = logp.detach().clone()
    old2 = old.clone()
    adv2 = adv.clone()
    logp2[~mask] = float("nan")
    old2[~mask] = float("inf")
    adv2[~mask] = float("nan")
    for name in POLICY_LOSSES:
        l1, g1, _ = loss_and_grad(name, logp, old, adv, mask)
        l2, g2, _ = loss_and_grad(name, logp2, old2, adv2, mask.double())
        assert torch.allclose(l1, l2) and torch.allclose(g1, g2)


def test_registry_functions_return_clean_loss_matrix():
    logp, old, adv, mask = make_batch(11)
    for name, fn in POLICY_LOSSES.items():
        loss_mat, stats = fn(logp, old, adv, mask)
        assert loss_mat.shape == mask.shape and torch.all(loss_mat[~mask] == 0)
        loss, _ = compute_policy_loss(name, logp, old, adv, mask)
        assert torch.allclose(loss_mat.sum() / mask.sum(), loss)
        assert set(stats) >= {"clipped", "clip_frac", "approx_kl"}


def test_half_precision_inputs_are_upcast():
    logp, old, adv, mask = make_batch(7, dtype=torch.float32)
    for name in POLICY_LOSSES:
        l32, g32, _ = loss_and_grad(name, logp, old, adv, mask)
        lbf, gbf, _ = loss_and_grad(name, logp.detach().bfloat16(), old.bfloat16(), adv, mask)
        assert lbf.dtype == torch.float32 and gbf.dtype == torch.bfloat16
        assert torch.allclose(l32, lbf, atol=0.1)


# ----------------------------------------------------------------------------- validation
def test_validation_errors():
    logp, old, adv, mask = make_batch(1)
    with pytest.raises(ValueError, match="unknown policy loss 'dpo'.*'ppo'.*'fspo'"):
        compute_policy_loss("dpo", logp, old, adv, mask)
    with pytest.raises(ValueError, match="unknown agg 'mean'.*token-mean"):
        compute_policy_loss("ppo", logp, old, adv, mask, agg="mean")
    with pytest.raises(ValueError, match="c_low"):
        compute_policy_loss("fspo", logp, old, adv, mask, c_low=0.0)
    with pytest.raises(ValueError, match="c_high"):
        compute_policy_loss("fspo", logp, old, adv, mask, c_high=-1.0)
    with pytest.raises(ValueError, match="clip_low"):
        compute_policy_loss("ppo", logp, old, adv, mask, clip_low=-0.1)
    with pytest.raises(ValueError, match="clip_low"):
        compute_policy_loss("gspo", logp, old, adv, mask, clip_low=-0.1)
    for name in POLICY_LOSSES:
        with pytest.raises(ValueError, match="dual_clip"):
            compute_policy_loss(name, logp, old, adv, mask, dual_clip=1.0)
    with pytest.raises(ValueError, match="drift"):
        compute_policy_loss("fspo", logp, old, adv, mask, drift="mean")
    with pytest.raises(ValueError, match="unknown hyperparameter.*c_low.*ppo"):
        compute_policy_loss("ppo", logp, old, adv, mask, c_low=0.1)
    with pytest.raises(ValueError, match="old_logp shape"):
        compute_policy_loss("ppo", logp, old[:, :-1], adv, mask)
    with pytest.raises(ValueError, match="mask shape"):
        compute_policy_loss("ppo", logp, old, adv, mask[:-1])
    with pytest.raises(ValueError, match="advantages must have shape"):
        compute_policy_loss("ppo", logp, old, adv[:-1], mask)
    with pytest.raises(ValueError, match=r"logp must have shape \[B, T\]"):
        compute_policy_loss("ppo", logp[0], old[0], adv, mask[0])
    with pytest.raises(ValueError, match="mask must be bool or contain only 0/1"):
        compute_policy_loss("ppo", logp, old, adv, mask.double() * 2)
    bad = old.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        compute_policy_loss("fspo", logp, bad, adv, mask)
    bad_adv = adv.clone()
    bad_adv[0] = float("nan")
    with pytest.raises(ValueError, match="advantages contain NaN"):
        compute_policy_loss("gspo", logp, old, bad_adv, mask)
    with pytest.raises(ValueError, match="global_tokens"):
        compute_policy_loss("ppo", logp, old, adv, mask, global_tokens=0)
