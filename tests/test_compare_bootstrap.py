"""The two-level (seeds x profiles) paired bootstrap of the dialogue metrics in `fairalign compare`:
hand-computed bootstrap distributions (crossed and nested profile draws, seed draws), the vectorized
AL(k) / AVG / N-IR / N-R² against fairalign.envs.rlpa.metrics, and a tiny RLPA study through the CLI
whose per-dialogue records are set to known totals, so its intervals are known by hand."""
import io
import json
import math
import random

import numpy as np
import pytest
import yaml

from fairalign.cli import main
from fairalign.compare import dialogue_bootstrap, run_study
from fairalign.compare.bootstrap import Z_SUM, curve_metrics
from fairalign.envs.rlpa.metrics import alignment_by_turn, dialogue_metrics


def dialogues(totals: list[list[float]], ids=None) -> list[dict]:
    """Per-dialogue records as RLPA's evaluation writes them: totals[i][k] = the judge's total at turn k+1."""
    ids = ids or [f"p{i}" for i in range(len(totals))]
    return [{"dialogue": i, "profile_id": pid, "group": "g", "turns": [{"turn": k + 1, "total": t} for k, t in
                                                                        enumerate(row)]}
            for i, (pid, row) in enumerate(zip(ids, totals))]


def flat(values: list[float], turns: int = 2) -> list[list[float]]:
    """Dialogues whose AL is `v` at every turn (AL = 50 · total), so their AVG is v and N-IR 0."""
    return [[v / 50.0] * turns for v in values]


def test_curve_metrics_match_the_rlpa_metrics():
    al = np.array([[10.0, 20.0, 30.0], [5.0, 5.0, 5.0], [30.0, 10.0, 20.0]])
    m = curve_metrics(al)
    # by hand: [10, 20, 30] normalizes to [0, .5, 1]: slope 0.5 per turn, a perfect fit; a flat curve has 0 and 0
    assert m["dialogue/avg"].tolist() == pytest.approx([20.0, 5.0, 20.0])
    assert m["dialogue/n_ir"][:2].tolist() == pytest.approx([0.5, 0.0])
    assert m["dialogue/n_r2"][:2].tolist() == pytest.approx([1.0, 0.0])
    rnd = random.Random(0)
    for _ in range(50):
        curve = [rnd.choice([0.0, 25.0, 50.0, 100.0]) * rnd.random() for _ in range(rnd.randint(2, 10))]
        ref = dialogue_metrics(curve)
        got = curve_metrics(np.array(curve))
        for k in ("avg", "n_ir", "n_r2"):
            assert float(got[f"dialogue/{k}"]) == pytest.approx(ref[k], abs=1e-12)
    assert set(curve_metrics(np.array([[40.0]]))) == {"dialogue/al/1"}  # one turn: no curve statistics


def test_crossed_profiles_hand_computed():
    """Two seeds that evaluated the same two profiles, AVG differences 1 and 3 in both seeds. One profile draw
    serves both drawn seeds, so the statistic is the mean of two profile draws: 1, 2, 3 with probability
    1/4, 1/2, 1/4: interval [1, 3], se √0.5, every draw > 0 (p = 2/(R + 1), its smallest value)."""
    arm = {0: dialogues(flat([1.0, 3.0])), 1: dialogues(flat([1.0, 3.0]))}
    base = {0: dialogues(flat([0.0, 0.0])), 1: dialogues(flat([0.0, 0.0]))}
    b = dialogue_bootstrap(arm, base)
    avg = b["dialogue/avg"]
    assert avg["design"] == "crossed" and avg["n"] == 2 and avg["profiles"] == 2 and avg["method"] == "bootstrap"
    assert avg["ci95"] == pytest.approx([1.0, 3.0])
    assert avg["se"] == pytest.approx(math.sqrt(0.5), abs=0.03)
    assert avg["p"] == 2 / 4001 and avg["mde80"] == pytest.approx(Z_SUM * avg["se"])  # no draw <= 0: 2·(1 + 0)/(R + 1)
    assert Z_SUM == pytest.approx(1.959964 + 0.841621, abs=1e-6)
    assert b["dialogue/al/1"]["ci95"] == pytest.approx([1.0, 3.0])
    assert b["dialogue/n_ir"]["ci95"] == [0.0, 0.0] and b["dialogue/n_ir"]["p"] == 1.0  # flat curves in both arms
    assert dialogue_bootstrap(arm, base) == b  # seeded: the same report twice


def test_nested_profiles_hand_computed():
    """The same differences, but seed 1 evaluated other profiles: each drawn seed gets its own draw, so the
    statistic is the mean of two independent means of two draws: variance 0.5 / 2, se 0.5."""
    arm = {0: dialogues(flat([1.0, 3.0])), 1: dialogues(flat([1.0, 3.0]), ids=["q0", "q1"])}
    base = {0: dialogues(flat([0.0, 0.0])), 1: dialogues(flat([0.0, 0.0]), ids=["q0", "q1"])}
    avg = dialogue_bootstrap(arm, base)["dialogue/avg"]
    assert avg["design"] == "nested"
    assert avg["se"] == pytest.approx(0.5, abs=0.02)
    assert avg["ci95"] == pytest.approx([1.0, 3.0])  # P(1) = P(3) = 1/16 > 2.5%


def test_seed_level_hand_computed():
    """One profile per seed, differences 2 and 4: only the seeds vary; the mean of two seed draws is 2, 3, 4
    with probability 1/4, 1/2, 1/4."""
    arm = {0: dialogues(flat([2.0])), 1: dialogues(flat([4.0]))}
    base = {0: dialogues(flat([0.0])), 1: dialogues(flat([0.0]))}
    avg = dialogue_bootstrap(arm, base)["dialogue/avg"]
    assert avg["ci95"] == pytest.approx([2.0, 4.0]) and avg["se"] == pytest.approx(math.sqrt(0.5), abs=0.03)
    # one arm alone (the per-arm summary): the same distribution, the arm's values
    assert dialogue_bootstrap(arm)["dialogue/avg"]["ci95"] == pytest.approx([2.0, 4.0])


def test_derived_and_unpairable_dialogues():
    arm = {0: dialogues([[0.02, 0.06], [0.02, 0.06]])}  # AL(1) = 1, AL(2) = 3 for both profiles
    base = {0: dialogues([[0.0, 0.0], [0.0, 0.0]])}
    b = dialogue_bootstrap(arm, base, derived={"dialogue/late": ["dialogue/al/1", "dialogue/al/2"],
                                               "mixed": ["dialogue/al/1", "heldout/reward"]})
    assert b["dialogue/late"]["ci95"] == pytest.approx([2.0, 2.0]) and "mixed" not in b
    assert b["dialogue/n_ir"]["ci95"] == pytest.approx([1.0, 1.0])  # rising curve vs flat
    assert dialogue_bootstrap(arm, {0: dialogues([[0.0, 0.0], [0.0, 0.0]], ids=["x", "y"])}) is None
    assert dialogue_bootstrap(arm, {0: dialogues([[0.0], [0.0]])}) is None  # another number of turns


# ---------------------------------------------------------------------------------------------
# through `fairalign compare` on the tiny model

BASE = {"model": "tiny", "task": "rlpa", "steps": 1, "task_options": {"max_turns": 2, "n_train": 8, "n_test": 4},
        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 8}, "log": {"tensorboard": False}}
ARMS = {"grpo": {"algo.advantage": "grpo"}, "rloo": {"algo.advantage": "rloo", "optim.lr": 0.05}}


def set_totals(path, per_profile: list[float]) -> None:
    """Rewrite an eval.json's dialogues with total = per_profile[i] at every turn, and its metrics from them
    (fairalign.envs.rlpa.metrics), as if the policy had scored so."""
    ev = json.loads(path.read_text())
    for d, t in zip(ev["dialogues"], per_profile, strict=True):
        for turn in d["turns"]:
            turn["total"] = t
    records = [t for d in ev["dialogues"] for t in d["turns"]]
    al = alignment_by_turn(records, "total")
    m = dialogue_metrics(al)
    ev["metrics"] = {"dialogue/avg": m["avg"], "dialogue/n_ir": m["n_ir"], "dialogue/n_r2": m["n_r2"],
                     **{f"dialogue/al/{k}": v for k, v in enumerate(al, 1)}}
    path.write_text(json.dumps(ev))


def test_rlpa_study_bootstraps_seeds_and_profiles(tmp_path, tiny_model_dir, capsys):
    spec = tmp_path / "rlpa.yaml"
    spec.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "study"), "seeds": [0, 1], "base": BASE,
                                    "arms": ARMS, "eval": {"profiles": 3, "turns": 2}}, sort_keys=False))
    first = run_study(spec, stream=io.StringIO())
    assert first["primary"] == ["dialogue/avg"] and first["primary_default"] is True
    study = tmp_path / "study"
    ids = None
    for sub in ("grpo", "rloo", "untrained"):
        for seed in (0, 1):
            ev = json.loads((study / sub / f"seed-{seed}" / "eval.json").read_text())
            got = [d["profile_id"] for d in ev["dialogues"]]
            assert len(got) == 3 and (ids is None or got == ids)  # the same test profiles for every seed: crossed
            ids = got
            # rloo scores AL 1, 3, 1 on the three profiles at every turn; grpo and the untrained policy 0
            set_totals(study / sub / f"seed-{seed}" / "eval.json", [0.02, 0.06, 0.02] if sub == "rloo" else [0.0] * 3)
    assert main(["compare", str(spec)]) == 0  # re-aggregates: nothing trains or evaluates
    out = capsys.readouterr().out
    assert "0 trained, 0 evaluated, 4 reused) and 2 untrained evaluations (0 made)" in out
    c = json.loads((study / "comparison.json").read_text())
    # by hand: per-seed AVG difference 5/3 in both seeds (so the t interval over seeds would be [5/3, 5/3]);
    # a draw is the mean of 3 profile draws from {1, 3, 1}: 1 + 2k/3, k ~ Binomial(3, 1/3), so P(1) = 8/27,
    # P(3) = 1/27 > 2.5%: interval [1, 3]; se = (2/3)·√(3 · 1/3 · 2/3) = 0.5443
    se = 2 / 3 * math.sqrt(2 / 3)
    for d in (c["differences"]["rloo"]["dialogue/avg"], c["untrained"]["differences"]["rloo"]["dialogue/avg"]):
        assert d["method"] == "bootstrap" and d["design"] == "crossed" and d["n"] == 2 and d["profiles"] == 3
        assert d["mean"] == pytest.approx(5 / 3) and d["sd"] == pytest.approx(0.0, abs=1e-12)
        assert d["ci95"] == pytest.approx([1.0, 3.0]) and d["se"] == pytest.approx(se, abs=0.02)
        assert d["p"] == 2 / 4001 and d["mde80"] == pytest.approx(Z_SUM * d["se"])
    assert c["arms_summary"]["rloo"]["dialogue/avg"]["ci95"] == pytest.approx([1.0, 3.0])
    assert c["untrained"]["summary"]["dialogue/avg"]["ci95"] == [0.0, 0.0]
    assert c["differences"]["rloo"]["train/reward_mean"]["method"] == "t"  # not a dialogue metric
    assert "two-level paired bootstrap" in c["method"]
    assert "dialogue/avg: rloo − grpo +1.667 [+1.000, +3.000]: a difference (higher)" in c["reading"]
    assert "  dialogue/avg: rloo − grpo +1.667 [+1.000, +3.000]: a difference (higher)" in out
    assert "two-level bootstrap over seeds x profiles" in out
    html = (study / "report.html").read_text()
    assert "<h3>dialogue/avg</h3>" in html and "<td>bootstrap</td>" in html
