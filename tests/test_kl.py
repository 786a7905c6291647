"""Tests for fairalign.algos.kl_penalty: hand values, exact expectations over a categorical
distribution (k1 and k3 are unbiased for KL(π‖ref)), properties and validation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.algos import kl_penalty

F64 = torch.float64


def test_hand_computed():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    assert kl_penalty(logp, ref, "k1")[0].tolist() == pytest.approx([0.5, -1.0])
    assert kl_penalty(logp, ref, "k2")[0].tolist() == pytest.approx([0.125, 0.5])
    assert kl_penalty(logp, ref)[0].tolist() == pytest.approx(
        [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])


def test_gradients_hand_computed():
    logp = torch.tensor([[-1.0, -2.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=F64)
    d = (ref - logp).detach()
    for kind, want in (("k1", torch.ones_like(d)), ("k2", -d), ("k3", 1 - d.exp())):
        (g,) = torch.autograd.grad(kl_penalty(logp, ref, kind).sum(), logp)
        assert torch.allclose(g, want)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), V=st.integers(2, 30))
def test_k1_k3_expectations_equal_exact_kl(seed, V):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(V, generator=g, dtype=F64) * 2, dim=0)
    ref = torch.log_softmax(torch.randn(V, generator=g, dtype=F64) * 2, dim=0)
    p = logp.exp()
    kl = (p * (logp - ref)).sum()
    for kind in ("k1", "k3"):
        est = (p * kl_penalty(logp[None], ref[None], kind)[0]).sum()
        assert est.item() == pytest.approx(kl.item(), rel=1e-9, abs=1e-12)
    assert torch.all(kl_penalty(logp[None], ref[None], "k3") >= 0)
    assert torch.all(kl_penalty(logp[None], ref[None], "k2") >= 0)


def test_extreme_values_are_finite():
    logp = torch.tensor([[-60.0, -0.01, -1.0]], requires_grad=True)
    ref = torch.tensor([[-0.01, -60.0, -1.0]])
    for kind in ("k1", "k2", "k3"):
        out = kl_penalty(logp, ref, kind)
        (g,) = torch.autograd.grad(out.sum(), logp)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
        assert out[0, 2].item() == 0.0


def test_validation():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown kl estimator 'k4'.*'k1'.*'k3'"):
        kl_penalty(x, x, "k4")
    with pytest.raises(ValueError, match="ref_logp shape"):
        kl_penalty(x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="logp must be a floating"):
        kl_penalty(torch.zeros(2, 3, dtype=torch.long), x)
