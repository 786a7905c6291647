"""Length-bin measures beside the LRE (fairalign.diagnostics): the flat-clipping noise floor of the LRE
(exact enumeration and the seeded simulation), the log-ratio of the extreme bins' clip rates and the
logistic slope on log L with their Wald intervals — hand-computed — and where the reports read them
(report/data.py from a run's logged per-bin counts; the run report prints the floor beside the LRE)."""
import json
import math
from pathlib import Path

import pytest

from fairalign.diagnostics import (
    bin_length,
    extreme_bin_log_ratio,
    logistic_length_slope,
    logistic_slope,
    lre_floor_from_pooled_counts,
    lre_from_pooled_counts,
    lre_noise_floor,
)
from fairalign.report import data as D

ROOT = Path(__file__).resolve().parents[1]


def test_noise_floor_exact_hand_computed():
    """Bins of 1 and 1 sequences at rate ½: outcomes (0,0) and (1,1) give LRE 0 (all bins alike), (1,0) and
    (0,1) give acceptances (0, 1) around ā = ½, LRE 1: E = ½, 95th percentile 1. Bins of 2 and 1: (X1, X2) =
    (1,0) → ā = ⅔, LRE ½; (2,0) → ā = ⅓, LRE 2; (0,1) → ā = ⅔, LRE 1; (1,1) → ā = ⅓, LRE 1; the rest 0;
    with P(X1) = ¼, ½, ¼ and P(X2) = ½, ½: E = ½·½·½ + ¼·½·2 + ¼·½·1 + ½·½·1 = 0.75."""
    assert lre_noise_floor([1, 1], 0.5) == {"mean": pytest.approx(0.5), "q95": pytest.approx(1.0), "method": "exact"}
    floor = lre_noise_floor([2, 1], 0.5)
    assert floor["mean"] == pytest.approx(0.75) and floor["q95"] == pytest.approx(2.0)
    assert lre_noise_floor([5], 0.3)["mean"] == 0.0 and lre_noise_floor([5, 0, 3], 0.0)["mean"] == 0.0
    with pytest.raises(ValueError, match="rate must be in"):
        lre_noise_floor([3, 3], 1.5)


def test_noise_floor_simulation_matches_the_exact_value():
    exact = lre_noise_floor([5, 8, 12], 0.3)  # 6·9·13 = 702 outcomes: enumerated
    sim = lre_noise_floor([5, 8, 12], 0.3, exact_limit=0, n_sim=200_000, seed=1)
    assert exact["method"] == "exact" and sim["method"] == "simulation"
    assert sim["mean"] == pytest.approx(exact["mean"], abs=0.004)
    assert lre_noise_floor([5, 8, 12], 0.3, exact_limit=0, seed=1) == lre_noise_floor([5, 8, 12], 0.3, exact_limit=0,
                                                                                         seed=1)  # seeded
    # more sequences per bin, a lower floor: noise shrinks as 1/√n
    assert lre_noise_floor([50, 80, 120], 0.3)["mean"] < exact["mean"] / 2


def test_noise_floor_of_study_one_reproduces_the_audit():
    """Study 1's FSPO run, seed 1 (committed metrics): pooled LRE 0.043 at bins of 30/27/39 sequences with
    1/2/4 clipped; flat clipping at that rate gives 0.050 on average, the audit's 0.049: the measured LRE
    is within the noise floor."""
    rows = D.load_rows(ROOT / "docs" / "evidence" / "length_fairness" / "metrics", "fspo-seed-1.jsonl")
    counts, clipped = D.pooled_clip_counts(rows)
    assert counts == {"1-24": 30.0, "24-48": 27.0, "48-65": 39.0} and sum(clipped.values()) == 7.0
    assert D.pooled_lre(rows) == pytest.approx(0.043, abs=5e-4)
    floor = D.pooled_lre_floor(rows)
    assert floor["method"] == "exact" and floor["mean"] == pytest.approx(0.0499, abs=5e-4)
    assert floor == lre_floor_from_pooled_counts(counts, clipped)


def test_extreme_bin_log_ratio_hand_computed():
    """Shortest bin 10/100 clipped, longest 40/200: log(0.2/0.1) = ln 2, se² = 1/40 − 1/200 + 1/10 − 1/100
    = 0.11, interval ln 2 ± 1.96·0.3317 = [0.0431, 1.3432]. The middle bin does not enter."""
    out = extreme_bin_log_ratio({"1-8": 100, "8-16": 50, "16-64": 200}, {"1-8": 10, "8-16": 49, "16-64": 40})
    assert out["log_ratio"] == pytest.approx(math.log(2)) and out["se"] == pytest.approx(math.sqrt(0.11))
    assert out["ci95"] == pytest.approx([0.0431, 1.3432], abs=1e-4)
    assert (out["short"], out["long"], out["corrected"]) == ("1-8", "16-64", False)
    # the same ratio at a tenth of the overall clip rate (the LRE would shrink), with a wider interval
    low = extreme_bin_log_ratio({"1-8": 1000, "16-64": 2000}, {"1-8": 10, "16-64": 40})
    assert low["log_ratio"] == pytest.approx(math.log(2)) and low["se"] > out["se"]
    # no clip in the short bin: Haldane's +0.5 (k) and +1 (n) in both bins
    zero = extreme_bin_log_ratio({"1-8": 19, "16-64": 39}, {"1-8": 0, "16-64": 3})
    assert zero["corrected"] and zero["log_ratio"] == pytest.approx(math.log((3.5 / 40) / (0.5 / 20)))
    # min_count skips a near-empty extreme bin (the demo's 2-4-token bin of one sequence)
    assert extreme_bin_log_ratio({"2-4": 1, "4-8": 25, "32-64": 80}, {"2-4": 1, "4-8": 12, "32-64": 17},
                                 min_count=5)["short"] == "4-8"
    assert extreme_bin_log_ratio({"4-8": 25}, {"4-8": 3}) is None


def test_extreme_log_ratio_does_not_shrink_with_the_overall_rate_but_the_lre_does():
    counts = {"1-8": 1000, "16-64": 1000}
    high = {"1-8": 100, "16-64": 200}   # 10% and 20%
    low = {"1-8": 10, "16-64": 20}      # 1% and 2%: the same ratio
    assert extreme_bin_log_ratio(counts, high)["log_ratio"] == pytest.approx(extreme_bin_log_ratio(counts, low)["log_ratio"])
    assert lre_from_pooled_counts(counts, low) < lre_from_pooled_counts(counts, high) / 5


def test_logistic_slope_hand_computed():
    """Two groups fit exactly: logit 0.1 at x = ln 4, logit 0.2 at x = ln 16, slope (−1.3863 + 2.1972)/ln 4 =
    0.58496; Var = (1/(100·0.1·0.9) + 1/(200·0.2·0.8))/(ln 4)² = 0.074078, se 0.27217, interval ±1.96·se."""
    out = logistic_slope([math.log(4), math.log(16)], [10, 40], [100, 200])
    assert out["slope"] == pytest.approx(0.58496, abs=1e-5) and out["se"] == pytest.approx(0.27217, abs=1e-5)
    assert out["ci95"] == pytest.approx([0.05152, 1.11841], abs=1e-4)
    assert out["intercept"] == pytest.approx(math.log(0.1 / 0.9) - out["slope"] * math.log(4), abs=1e-9)
    # the same odds ratio at a lower overall rate: nearly the same slope (the intercept takes the rate)
    rare = logistic_slope([math.log(4), math.log(16)], [1, 4], [1000, 2000])
    assert rare["slope"] == pytest.approx(math.log((0.002 / 0.998) / (0.001 / 0.999)) / math.log(4), abs=1e-6)
    # nothing to fit: one x, no clip at all, or perfect separation
    assert logistic_slope([1.0, 1.0], [1, 2], [5, 5]) is None
    assert logistic_slope([1.0, 2.0], [0, 0], [5, 5]) is None
    assert logistic_slope([1.0, 2.0], [0, 5], [5, 5]) is None


def test_logistic_length_slope_from_bins():
    """Bins [4, 5) and [16, 17) stand at lengths 4 and 16 (√(lo·(hi−1))); the bin of empty responses is left out."""
    assert bin_length("4-8") == pytest.approx(math.sqrt(28)) and bin_length("0-1") is None
    out = logistic_length_slope({"0-1": 3, "4-5": 100, "16-17": 200}, {"0-1": 3, "4-5": 10, "16-17": 40})
    assert out["slope"] == pytest.approx(0.58496, abs=1e-5)


def test_run_report_prints_the_floor_and_the_measures(tmp_path):
    from fairalign.report import write_report
    from fairalign.report.html import fmt

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "reward/mean": 0.5, "clip/off_policy_updates": 1, "grad_cosine": c, "grad_cosine/updates": 3.0,
             "clip_count/len/4-8": 10.0, "clip_clipped/len/4-8": 1.0 + s % 2, "clip_rate/len/4-8": 0.1,
             "clip_count/len/32-64": 20.0, "clip_clipped/len/32-64": 6.0, "clip_rate/len/32-64": 0.3, "lre": 0.1}
            for s, c in ((1, 0.9), (2, 0.6), (3, 0.9))]
    rows.append({"step": 4, "reward/mean": 0.5, "grad_cosine": 0.1, "grad_cosine/updates": 1.0})
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = write_report(run).read_text()
    floor = D.pooled_lre_floor(rows)
    assert f"{fmt(floor['mean'])}, {fmt(floor['q95'])}" in text and "noise floor" in text
    ratio = D.pooled_extreme_log_ratio(rows)  # 5/30 vs 18/60
    assert ratio["log_ratio"] == pytest.approx(math.log(0.3 / (5 / 30)))
    assert f"log(clip rate of bin 32-64 / bin 4-8) {fmt(ratio['log_ratio'])}" in text
    assert "logistic slope of clipped on log length" in text
    assert D.pooled_grad_cosine(rows) == (pytest.approx((0.9 * 3 + 0.6 * 3 + 0.9 * 3 + 0.1) / 10), 10)
    assert f"{fmt(D.pooled_grad_cosine(rows)[0])} (10 updates)" in text
    assert D.pooled_grad_cosine([{"step": 1}]) is None
