"""Tests for fairalign.simulate: the three bands behave as docs/length_fairness.md, "Why √L" predicts, the
simulated rates match the closed-form normal probabilities, and the sum-level FSPO decision equals
the real token-level `compute_policy_loss("fspo", ...)` clip mask."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fairalign.simulate import METHODS, clipped_mask, log_band, main, simulate_clipping

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def result_kl():
    return simulate_clipping(seed=0, samples_per_length=20000, drift="kl")


def rates(result, method):
    return [b["clip_rate"] for b in result["methods"][method]["bins"] if b["count"] > 0]


def phi(x):
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_bins_one_per_length(result_kl):
    for m in METHODS:
        bins = [b for b in result_kl["methods"][m]["bins"] if b["count"] > 0]
        assert [b["lo"] for b in bins] == result_kl["lengths"]
        assert all(b["count"] == 20000 for b in bins)


def test_fixed_clip_rate_increases_with_length(result_kl):
    r = rates(result_kl, "fixed")
    assert all(b > a for a, b in zip(r, r[1:])), r
    assert r[0] < 0.05 and r[-1] > 0.4


def test_gspo_clip_rate_decreases_with_length(result_kl):
    r = rates(result_kl, "gspo")
    assert all(b < a for a, b in zip(r, r[1:])), r
    assert r[0] > 0.4 and r[-1] < 0.25


def test_fspo_kl_is_flat(result_kl):
    r = rates(result_kl, "fspo")
    assert result_kl["methods"]["fspo"]["lre"] < 0.02
    assert max(r) - min(r) < 0.02
    assert 0.05 < min(r) and max(r) < 0.2  # a moderate, non-trivial rate
    # the unfair bands have a much larger LRE
    assert result_kl["methods"]["fixed"]["lre"] > 0.2
    assert result_kl["methods"]["gspo"]["lre"] > 0.2


def test_fspo_without_drift_correction_is_not_flat():
    # with μ = -2e-4 and no drift correction the band is off-centre by μ√L/σ: long responses
    # are clipped more often on the lower side
    res = simulate_clipping(seed=1, samples_per_length=20000, drift="none")
    r = rates(res, "fspo")
    assert r[-1] > r[0] + 0.08
    assert res["methods"]["fspo"]["lre"] > 0.08


@pytest.mark.parametrize("method", METHODS)
def test_rates_match_closed_form(result_kl, method):
    # P(clipped | L) = ½·P(S > hi) + ½·P(S < lo) with S ~ N(μL, σ²L); 5 standard errors
    cfg = result_kl["config"]
    mu, sigma = cfg["mu"], cfg["sigma"]
    mu_hat = result_kl["mu_hat"]
    for b in result_kl["methods"][method]["bins"]:
        L = b["lo"]
        if method == "fixed":
            lo, hi = math.log(0.8), math.log(1.2)
        elif method == "gspo":
            lo, hi = L * math.log(1 - 3e-4), L * math.log(1 + 4e-4)
        else:
            lo = mu_hat * L - 0.02 * math.sqrt(L)
            hi = mu_hat * L + 0.03 * math.sqrt(L)
        sd = sigma * math.sqrt(L)
        p = 0.5 * (1 - phi((hi - mu * L) / sd)) + 0.5 * phi((lo - mu * L) / sd)
        se = math.sqrt(max(p * (1 - p), 1e-4) / b["count"])
        assert abs(b["clip_rate"] - p) < 5 * se, (method, L, b["clip_rate"], p)


def test_mu_hat_is_batch_token_mean(result_kl):
    assert result_kl["mu_hat"] == pytest.approx(result_kl["config"]["mu"], abs=2e-5)


def test_seed_reproducible_and_seed_matters():
    a = simulate_clipping(seed=3, samples_per_length=500, lengths=(16, 64))
    b = simulate_clipping(seed=3, samples_per_length=500, lengths=(16, 64))
    c = simulate_clipping(seed=4, samples_per_length=500, lengths=(16, 64))
    assert a == b
    assert a["methods"]["fixed"]["bins"] != c["methods"]["fixed"]["bins"]


def test_clipped_mask_rule():
    S = torch.tensor([0.5, 0.5, -0.5, -0.5, 0.0], dtype=torch.float64)
    A = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    lo = torch.full((5,), -0.1, dtype=torch.float64)
    hi = torch.full((5,), 0.1, dtype=torch.float64)
    assert clipped_mask(S, A, lo, hi).tolist() == [True, False, False, True, False]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"drift": "mean"}, "drift"), ({"sigma": 0.0}, "sigma"),
     ({"samples_per_length": 0}, "samples_per_length"), ({"lengths": (0, 16)}, "lengths")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_clipping(**kwargs)


def test_log_band_unknown_method():
    L = torch.tensor([16]); S = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="method"):
        log_band("ppo", L, S)


# ---------- agreement with the real token-level loss ----------

@pytest.mark.parametrize("drift", ["none", "kl"])
def test_sum_level_decision_matches_fspo_loss(drift):
    from fairalign.algos import compute_policy_loss

    gen = torch.Generator().manual_seed(7)
    lengths = [3, 5, 8, 12, 16]
    B, T = 400, max(lengths)
    L = torch.tensor(lengths).repeat(B // len(lengths))  # [B]
    mask = torch.arange(T)[None, :] < L[:, None]  # [B, T]
    ell = (-2e-3 + 0.05 * torch.randn(B, T, generator=gen, dtype=torch.float64)) * mask  # [B, T]
    old_logp = -1.0 - torch.rand(B, T, generator=gen, dtype=torch.float64)  # [B, T]
    logp = old_logp + ell  # [B, T]
    adv = torch.randint(0, 2, (B,), generator=gen).double() * 2 - 1  # [B]
    _, stats = compute_policy_loss(
        "fspo", logp, old_logp, adv, mask, c_low=0.02, c_high=0.03, drift=drift
    )
    # the simulation's decision from the per-sequence sum only
    S = ((logp - old_logp) * mask).sum(1)  # [B], as the loss computes it
    mu_hat = S.sum() / L.sum()
    sim_clipped = clipped_mask(
        S, adv, *log_band("fspo", L, S, drift=drift, fspo_c=(0.02, 0.03))
    )
    if drift == "kl":
        assert float(mu_hat) != 0.0
    assert 0 < int(sim_clipped.sum()) < B  # non-trivial
    loss_clipped = torch.as_tensor(stats["clipped"]).reshape(B).bool()
    assert torch.equal(loss_clipped, sim_clipped)
    # and the drift setting matters on this data: the other drift gives a different decision
    other = "none" if drift == "kl" else "kl"
    assert not torch.equal(
        loss_clipped, clipped_mask(S, adv, *log_band("fspo", L, S, drift=other, fspo_c=(0.02, 0.03)))
    )


# ---------- the command line ----------

def test_main_writes_png_and_json(tmp_path, capsys):
    rc = main(["--out", str(tmp_path / "o"), "--samples-per-length", "200", "--seed", "2",
               "--drift", "none", "--mu=-1e-4", "--sigma", "0.03"])
    assert rc == 0
    png = tmp_path / "o" / "clip_rate_by_length.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "o" / "clip_rate_by_length.json").read_text())
    assert data["config"]["drift"] == "none" and data["config"]["sigma"] == 0.03
    assert set(data["methods"]) == set(METHODS)
    out = capsys.readouterr().out
    assert "| **LRE** |" in out and "fspo" in out


def test_python_dash_m_entry(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fairalign.simulate", "--out", str(tmp_path), "--samples-per-length", "50"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "clip_rate_by_length.png").exists()
