"""docs/evidence/length_fairness/{probe,calibrate}.py (study 1's band calibration) on hand-built
records whose answer is known: every rule is scaled to clip exactly the target share, its threshold
lands between the right two sequences, and the probe loss is the unclipped surrogate that records
only off-policy calls."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

_DIR = Path(__file__).resolve().parents[1] / "docs" / "evidence" / "length_fairness"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"lf_{name}", _DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cal = _load("calibrate")
probe = _load("probe")


def _records(tmp_path, seqs):
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps({"call": 1, "seqs": seqs}) + "\n")
    return cal.load(path)


def test_each_rule_is_scaled_to_the_target_rate_with_the_threshold_between_the_right_sequences(tmp_path):
    # 100 sequences of 4 tokens pushed up (A = +1), sequence log ratios S = 0.01 .. 1.00 (ℓ = S/4 per token)
    S = [0.01 * (i + 1) for i in range(100)]
    calls = _records(tmp_path, [{"A": 1.0, "ell": [s / 4] * 4} for s in S])
    for rule in cal.RULES:
        k = cal.calibrate(rule, calls, [1, 5], 0.15)
        overall, per = cal.rates(rule, k, calls, [1, 5])
        assert overall == pytest.approx(0.15), rule
        assert per["1-5"] == (pytest.approx(0.15), 100)
        _, hp = cal.band(rule, k)
        # the upper log bound on S separates the 85 unclipped sequences from the 15 clipped ones
        if rule == "gspo":
            bound = 4 * math.log1p(hp["clip_high"])  # on the mean log ratio: × L for S
        elif rule == "ppo":
            bound = 4 * math.log1p(hp["clip_high"])  # every token of a sequence has ℓ = S/4
        elif rule.startswith("fspo"):
            bound = hp["c_high"] * 2.0  # √4; the drift centre is the mean ℓ for fspo_kl
            if rule == "fspo_kl":
                bound += sum(S) / 100
        else:
            bound = math.log1p(hp["eps_high"])
        assert S[84] <= bound < S[85] + 1e-9, (rule, bound)


def test_band_scaling_keeps_the_log_space_shape():
    _, hp = cal.band("gspo", 3.0)
    assert math.log1p(-hp["clip_low"]) == pytest.approx(3 * math.log(1 - 3e-4))
    assert math.log1p(hp["clip_high"]) == pytest.approx(3 * math.log(1 + 4e-4))
    _, hp = cal.band("fspo", 2.5)
    assert (hp["c_low"], hp["c_high"], hp["drift"]) == (pytest.approx(0.05), pytest.approx(0.075), "none")
    _, hp = cal.band("fixed_seq", 1e4)
    assert 0 < 1 - hp["eps_low"]  # a ratio's lower bound never reaches 0


def test_probe_is_the_unclipped_surrogate_and_skips_on_policy_calls(tmp_path):
    out = tmp_path / "p.jsonl"
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -2.0])
    kw = dict(agg="token-mean", global_tokens=None, global_seqs=None, horizon=None, out=str(out))
    probe.probe(logp, logp.detach().clone(), adv, mask, **kw)  # on-policy: nothing written
    assert not out.exists()
    old = logp.detach() - torch.tensor([[0.1, -0.2, 5.0], [0.0, 0.3, 0.0]])
    loss, stats = probe.probe(logp, old, adv, mask, **kw)
    ratio = torch.exp(torch.tensor([[0.1, -0.2], [0.0, 0.3]]))
    expected = -(1.0 * ratio[0].sum() + -2.0 * torch.cat([ratio[1], torch.ones(1)]).sum()) / 5
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert not stats["clipped"].any()
    rec = json.loads(out.read_text())
    assert [s["A"] for s in rec["seqs"]] == [1.0, -2.0]
    assert rec["seqs"][0]["ell"] == pytest.approx([0.1, -0.2]) and rec["seqs"][1]["ell"] == pytest.approx([0.0, 0.3, 0.0])
