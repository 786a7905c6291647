"""The evidence recheck scripts run as their docs say (`PYTHONPATH=src python docs/evidence/<study>/recheck.py`)
on the committed files and give the numbers the readings quote; their one hand-written statistic, Fisher's
exact test, against hand-computed tables. Seconds: no model is loaded."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_recheck(study: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{study}.json"
    done = subprocess.run([sys.executable, f"docs/evidence/{study}/recheck.py", "--json", str(out)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": "src"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def load_length_fairness_recheck():
    folder = ROOT / "docs/evidence/length_fairness"
    sys.path.insert(0, str(folder))  # recheck.py imports its neighbour summarize.py
    try:
        spec = importlib.util.spec_from_file_location("length_fairness_recheck", folder / "recheck.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(folder))


def test_fisher_exact_against_hand_computed_tables():
    fisher = load_length_fairness_recheck().fisher_two_sided
    # 0/3 vs 3/3: given 3 clipped of 6, P(x in the first group) = 1/20, 9/20, 9/20, 1/20 for x = 0..3;
    # the tables at most as likely as x = 0 are x = 0 and x = 3: p = 2/20
    assert fisher(0, 3, 3, 3) == pytest.approx(0.1, abs=1e-12)
    # 1/2 vs 1/2: every table (x = 0, 1, 2 with 1/6, 4/6, 1/6) is at most as likely as x = 1: p = 1
    assert fisher(1, 2, 1, 2) == pytest.approx(1.0, abs=1e-12)
    # FSPO's 2/86 vs 12/133, summed with exact fractions
    n1, n2, total = 86, 133, 14
    probs = {x: Fraction(math.comb(n1, x) * math.comb(n2, total - x), math.comb(n1 + n2, total))
             for x in range(total + 1)}
    exact = float(sum(p for p in probs.values() if p <= probs[2]))
    assert fisher(2, 86, 12, 133) == pytest.approx(exact, rel=1e-9)
    assert round(exact, 3) == 0.052


def test_length_fairness_recheck_gives_the_readings_numbers(tmp_path):
    out = run_recheck("length_fairness", tmp_path)
    arms = out["arms"]
    assert {a: round(r["overall_rate"], 3) for a, r in arms.items()} == {
        "gspo": 0.118, "ppo": 0.127, "fspo": 0.062, "fspo_kl": 0.080, "fixed_seq": 0.094}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert [round(mean(arms[a]["lre_per_seed"]), 3) for a in ("fspo", "fspo_kl")] == [0.043, 0.049]
    assert [round(mean(arms[a]["floor_per_seed"]), 3) for a in ("fspo", "fspo_kl")] == [0.049, 0.057]
    diffs = {k: (round(d["mean"], 3), [round(v, 3) for v in d["ci95"]]) for k, d in out["fspo_lre_differences"].items()}
    assert diffs["fspo - ppo"] == (-0.027, [-0.078, 0.024])
    assert diffs["fspo - fixed_seq"] == (-0.049, [-0.098, 0.0])
    assert diffs["fspo - gspo"] == (-0.195, [-0.282, -0.107])
    assert diffs["fspo_kl - fspo"][0] == 0.006
    assert out["fspo_fisher"]["short"] == [2, 86] and out["fspo_fisher"]["long"] == [12, 133]
    assert round(out["fspo_fisher"]["p"], 3) == 0.052
    assert len(out["holm"]) == 21
    assert sorted(t["test"] for t in out["holm"] if t["p_holm"] < 0.05) == [
        "fspo_kl - gspo, clip rate 1-24", "length slope, fixed_seq"]


def test_pgrpo_recheck_gives_the_readings_numbers(tmp_path):
    out = run_recheck("pgrpo", tmp_path)
    graded, binary = out["pgrpo"], out["pgrpo_binary"]
    assert round(graded["time"]["sum_wall_s"]) == 3444 and round(graded["time"]["study_wall_s"]) == 3620
    mde = {(s, m): round(out[s]["differences"][m]["mde80"], 2)
           for s in out for m in ("heldout/reward", "heldout/minorities")}
    assert mde == {("pgrpo", "heldout/reward"): 0.11, ("pgrpo", "heldout/minorities"): 0.13,
                   ("pgrpo_binary", "heldout/reward"): 0.21, ("pgrpo_binary", "heldout/minorities"): 0.25}
    assert round(binary["grpo_tied_share"], 2) == 0.41 and round(graded["grpo_tied_share"], 2) == 0.06
    use = binary["history_use"]  # [used, presences, first appearances, guard presences where a sample differed]
    assert use["detailed_list"] == [0, 13, 5, 0] and use["formal"] == [0, 9, 5, 0]
    minorities = [sum(use[p][i] for p in ("detailed_list", "formal", "gardener", "casual")) for i in (0, 1, 3)]
    assert minorities == [8, 44, 3]  # the guard fired at 16 minority presences; only 3 had a sample to tell the rules apart
    for arm in ("grpo", "pgrpo"):  # never solved in any training batch of either arm
        assert binary["batches_scoring_above_0"][arm]["detailed_list"] == [0, 13]
        assert binary["batches_scoring_above_0"][arm]["formal"] == [0, 9]
