"""`fairalign compare`: a paired seed study of two arms (the tiny model, 2 steps): its layout, its
comparison.json (numbers re-derived here from the run files: paired differences, mde80, Holm's p_adj over
the primary metrics, the untrained policy's evaluation and every arm's difference to it, train/reward_mean,
derived metrics), the printed reading and the report leading with the primary metrics, an idempotent rerun,
a killed study that resumes to the same result, the t statistics against hand-computed values, and one-line
spec errors. The dialogue bootstrap: tests/test_compare_bootstrap.py."""
import io
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import yaml

from fairalign.cli import main
from fairalign.errors import ConfigError
from fairalign.compare import holm, mde80, mean_interval, paired_differences, run_study, t_quantile, t_two_sided_p

ARMS = {"grpo": {"algo.advantage": "grpo"}, "rloo": {"algo": {"advantage": "rloo"}, "optim.lr": 0.05}}
BASE = {"model": "tiny", "task": "personas", "steps": 2, "rollout.prompts_per_step": 2, "rollout.generations": 2,
        "rollout.max_new_tokens": 6, "log": {"tensorboard": False}}
SEEDS = [0, 1]
RUN_FILES = ("config.yaml", "metrics.jsonl", "eval.json", "final")
# eval.examples=4 evaluates casual, concise, detailed_list, formal (round-robin over the sorted groups)
MINORITIES = ["heldout/group/casual", "heldout/group/detailed_list", "heldout/group/formal"]
PRIMARY = ["heldout/reward", "heldout/minorities", "train/reward_mean"]
T975_1, T80_1 = math.tan(0.475 * math.pi), math.tan(0.3 * math.pi)  # Student t with 1 dof is Cauchy


class SimulatedKill(Exception):
    """Raised from inside a training step: the process 'dies' there (nothing after it runs)."""


def _spec(folder: Path, **changes) -> Path:
    spec = {"output_dir": str(folder / "study"), "seeds": SEEDS, "base": BASE, "arms": ARMS, "eval": {"examples": 4},
            "derived": {"heldout/minorities": MINORITIES}, "primary": PRIMARY}
    spec.update(changes)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _run_files(study: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for arm in [*ARMS, "untrained"] for p in (study / arm).rglob("*")
            if p.is_file()}


def _no_timings(runs: dict) -> dict:
    return {a: {s: {k: v for k, v in m.items() if not k.startswith("time/")} for s, m in seeds.items()}
            for a, seeds in runs.items()}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("compare")
    spec = _spec(folder)
    out = io.StringIO()
    comparison = run_study(spec, stream=out)
    return {"spec": spec, "dir": folder / "study", "comparison": comparison, "log": out.getvalue()}


def test_layout_progress_and_eval_files(study):
    d = study["dir"]
    for arm in ARMS:
        for seed in SEEDS:
            run = d / arm / f"seed-{seed}"
            for name in RUN_FILES:
                assert (run / name).exists(), run / name
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["seed"] == seed and cfg["output_dir"] == str(run)
            assert cfg["save_every"] == 1 and cfg["log"]["progress"] is False  # max(1, steps // 5)
            ev = json.loads((run / "eval.json").read_text())
            assert ev["kind"] == "heldout" and ev["n"] == 4 and set(ev["by_group"])
    assert json.loads((d / "comparison.json").read_text()) == study["comparison"]
    for seed in SEEDS:  # paired: step 1 of every arm sees the same prompts and samples the same tokens
        first = [json.loads((d / arm / f"seed-{seed}" / "samples.jsonl").read_text().splitlines()[0]) for arm in ARMS]
        assert first[0]["prompt"] == first[1]["prompt"] and first[0]["completion"] == first[1]["completion"]
    lines = [x for x in study["log"].splitlines() if " step " in x]
    assert len(lines) == len(ARMS) * len(SEEDS) * BASE["steps"]
    assert re.fullmatch(r"\[grpo seed 0\] step 1/2  reward \d\.\d{3}  study 1/8 steps, eta \d+m\d\ds", lines[0])
    assert lines[-1].startswith("[rloo seed 1] step 2/2") and "study 8/8 steps" in lines[-1]
    evaluated = [x.split("]")[0] + "]" for x in study["log"].splitlines() if "] evaluated: " in x]
    assert evaluated == ["[untrained seed 0]", "[grpo seed 0]", "[rloo seed 0]",  # the untrained policy first
                         "[untrained seed 1]", "[grpo seed 1]", "[rloo seed 1]"]
    for seed in SEEDS:
        ev = json.loads((d / "untrained" / f"seed-{seed}" / "eval.json").read_text())
        assert ev["kind"] == "heldout" and ev["n"] == 4 and ev["starting_policy"]["model"] == "tiny"
    assert not (d / "untrained" / "seed-0" / "config.yaml").exists()  # an evaluation, not a run


def test_untrained_row_is_the_starting_policy_through_fairalign_eval(study, tmp_path, capsys):
    """The untrained evaluation of seed 1 is what `fairalign eval` gives the tiny model before any step."""
    out = tmp_path / "eval"
    assert main(["eval", "tiny", "task=personas", "seed=1", "eval.examples=4", "rollout.max_new_tokens=6",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    ref = json.loads((out / "eval.json").read_text())
    ev = json.loads((study["dir"] / "untrained" / "seed-1" / "eval.json").read_text())
    assert ev["metrics"] == ref["metrics"] and ev["by_group"] == ref["by_group"]
    assert study["comparison"]["untrained"]["runs"]["1"]["heldout/reward"] == ref["mean"]


def test_printed_reading_leads_with_the_primary_metrics(study):
    log = study["log"]
    table = log[log.index("paired comparison over 2 seeds"):]
    lines = table.splitlines()
    assert lines[1] == ("primary metrics: heldout/reward, heldout/minorities, train/reward_mean (fixed before any run "
                        "trained); p_adj: Holm over 1 arm(s) x 3 metric(s)")
    assert lines[2] == "heldout/reward"
    assert lines[4].split()[0] == "untrained" and lines[5].split()[0] == "grpo" and lines[6].split()[0] == "rloo"
    assert table.index("heldout/minorities") < table.index("train/reward_mean") < table.index("reading:") \
        < table.index("secondary metrics") < table.index("heldout/group/casual")
    c = study["comparison"]
    # heldout/reward, heldout/minorities: grpo and rloo − untrained, rloo − grpo; train/reward_mean: rloo − grpo
    assert len(c["reading"]) == 2 * 3 + 1
    assert lines[lines.index("reading:") + 1:lines.index("reading:") + 8] == [f"  {r}" for r in c["reading"]]
    assert c["reading"][0].startswith("heldout/reward: grpo − untrained ")
    assert c["reading"][-1].startswith("train/reward_mean: rloo − grpo ")
    assert "rloo - grpo [95% CI] mde80 p" in table and "clip_rate" not in table.split("secondary metrics")[0]
    html = (study["dir"] / "report.html").read_text()
    assert html.index("<h2>Primary metrics</h2>") < html.index("<h2>Method</h2>") < html.index(
        "<h2>Paired differences</h2>")
    primary_html = html[html.index("<h2>Primary metrics</h2>"):html.index("<h2>Method</h2>")]
    assert "<h3>heldout/minorities</h3>" in primary_html and "untrained (starting policy)" in primary_html
    assert "train/reward_final" not in primary_html and "p_adj" in primary_html
    from html import escape

    assert all(escape(r) in primary_html for r in c["reading"])


def test_comparison_numbers_follow_from_the_run_files(study):
    c, d = study["comparison"], study["dir"]
    for key in ("arms", "seeds", "baseline", "runs", "differences", "arms_summary", "method", "wall_s"):
        assert key in c, key
    assert c["arms"] == list(ARMS) and c["seeds"] == SEEDS and c["baseline"] == "grpo"
    assert "t_{0.975, n-1}" in c["method"]
    runs = c["runs"]
    for arm in ARMS:
        for seed in SEEDS:
            m, run = runs[arm][str(seed)], d / arm / f"seed-{seed}"
            ev = json.loads((run / "eval.json").read_text())
            assert m["heldout/reward"] == ev["mean"]
            groups = {k[len("heldout/group/"):]: v for k, v in m.items() if k.startswith("heldout/group/")}
            assert groups == ev["by_group"]
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows] == [1, 2]
            assert m["train/reward_final"] == pytest.approx(rows[-1]["reward/mean"])  # last max(1, 2 // 5) steps
            assert m["train/reward_mean"] == pytest.approx((rows[0]["reward/mean"] + rows[1]["reward/mean"]) / 2)
            minorities = [ev["by_group"][g.split("/")[-1]] for g in MINORITIES]
            assert m["heldout/minorities"] == pytest.approx(sum(minorities) / 3)
            assert m["time/train_s"] == pytest.approx(sum(r["step_s"] for r in rows))
            n = sum(r.get("clip_count/len/4-8", 0) for r in rows)
            if n:
                k = sum(r.get("clip_clipped/len/4-8", 0) for r in rows)
                assert m["clip_rate/len/4-8"] == pytest.approx(k / n)
                assert "lre/pooled" in m
            tot = sum(v for r in rows for k, v in r.items() if k.startswith("clip_count/len/"))
            if tot:  # the overall clip rate (sequence units) pooled over every bin and step
                hit = sum(v for r in rows for k, v in r.items() if k.startswith("clip_clipped/len/"))
                assert m["clip_rate/pooled"] == pytest.approx(hit / tot)
    diffs = c["differences"]
    assert set(diffs) == {"rloo"} and "heldout/reward" in diffs["rloo"] and "train/reward_final" in diffs["rloo"]
    for metric, dm in diffs["rloo"].items():
        per_seed = [runs["rloo"][str(s)][metric] - runs["grpo"][str(s)][metric] for s in SEEDS]
        assert dm["n"] == 2
        assert dm["mean"] == pytest.approx(sum(per_seed) / 2)
        lo, hi = dm["ci95"]
        assert lo <= dm["mean"] <= hi
        half = t_quantile(0.975, 1) * abs(per_seed[0] - per_seed[1]) / 2  # sd/√2 = |d1 - d2|/2 for n = 2
        assert hi - dm["mean"] == pytest.approx(half, abs=1e-12)
        assert 0.0 <= dm["p"] <= 1.0
        assert dm["mde80"] == pytest.approx((T975_1 + T80_1) * abs(per_seed[0] - per_seed[1]) / 2, abs=1e-9)
        assert ("p_adj" in dm) == (metric in PRIMARY)
    # Holm over 1 arm x 3 primary metrics, by hand: sorted p (a <= b <= c) -> 3a, max(3a, 2b), max(.., c), capped at 1
    ps = sorted((diffs["rloo"][m]["p"], m) for m in PRIMARY)
    adj, running = {}, 0.0
    for k, (p, m) in enumerate(ps):
        running = max(running, min(1.0, (3 - k) * p))
        adj[m] = running
    assert {m: diffs["rloo"][m]["p_adj"] for m in PRIMARY} == pytest.approx(adj)
    # the untrained policy: its metrics per seed from untrained/seed-S/eval.json, every arm's paired difference to it
    un = c["untrained"]
    assert un["policy_of"] == "grpo" and un["arms"] == ["grpo", "rloo"]
    for seed in SEEDS:
        ev = json.loads((d / "untrained" / f"seed-{seed}" / "eval.json").read_text())
        assert un["runs"][str(seed)]["heldout/reward"] == ev["mean"]
        assert "train/reward_mean" not in un["runs"][str(seed)]
    for arm in ARMS:
        learned = un["differences"][arm]
        assert "train/reward_mean" not in learned and "heldout/minorities" in learned
        for metric, dm in learned.items():
            per_seed = [runs[arm][str(s)][metric] - un["runs"][str(s)][metric] for s in SEEDS]
            assert dm["mean"] == pytest.approx(sum(per_seed) / 2)
            assert dm["mde80"] == pytest.approx((T975_1 + T80_1) * abs(per_seed[0] - per_seed[1]) / 2, abs=1e-9)
    assert c["primary"] == PRIMARY and c["primary_default"] is False
    assert c["primary_declared"]["runs_trained_before"] == 0 and c["primary_status"] == "fixed before any run trained"
    assert c["primary_declared"]["runs_evaluated_before"] == 0
    for arm in ARMS:
        s = c["arms_summary"][arm]["heldout/reward"]
        assert s["n"] == 2 and s["mean"] == pytest.approx(sum(runs[arm][str(x)]["heldout/reward"] for x in SEEDS) / 2)
    assert any(d["ci95"][1] > d["ci95"][0] for d in diffs["rloo"].values())  # not every difference is zero


def test_rerun_is_a_no_op(study, capsys, monkeypatch):
    """A finished study run again loads, trains and evaluates no model (how long that takes is a benchmark's
    business, not a test's): every path that would is replaced by one that fails the test."""
    import fairalign.compare.study as compare_study

    def must_not_run(name):
        def fail(*a, **k):
            raise AssertionError(f"a rerun of a finished study called {name}")
        return fail

    for name in ("train_run", "load_final", "evaluate_run", "evaluate_untrained"):
        monkeypatch.setattr(compare_study, name, must_not_run(name))
    before = _run_files(study["dir"])
    assert main(["compare", str(study["spec"])]) == 0
    out = capsys.readouterr().out
    assert _run_files(study["dir"]) == before  # nothing in a run directory was written
    assert "0 trained, 0 evaluated, 4 reused) and 2 untrained evaluations (0 made)" in out and " step " not in out
    again = json.loads((study["dir"] / "comparison.json").read_text())
    assert again["runs"] == study["comparison"]["runs"] and again["differences"] == study["comparison"]["differences"]


def test_primary_declared_after_training_but_before_any_evaluation(study, tmp_path):
    """Runs trained (e.g. for a mechanism check) but never evaluated: no held-out metric was visible when
    the primary metrics were declared, and the record says so, with the trained count beside it."""
    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    (copy / "primary.json").unlink()
    for arm in ARMS:
        for seed in SEEDS:
            (copy / arm / f"seed-{seed}" / "eval.json").unlink()
    out = io.StringIO()
    c = run_study(_spec(tmp_path), stream=out)
    assert "0 trained, 4 evaluated, 0 reused" in out.getvalue()
    rec = json.loads((copy / "primary.json").read_text())
    assert (rec["runs_trained_before"], rec["runs_evaluated_before"], rec["runs"]) == (4, 0, 4)
    assert c["primary_status"] == "fixed before any run was evaluated; 4 of 4 runs had trained"


def test_primary_changed_after_the_runs_is_recorded(study, tmp_path):
    """Another primary: list on a finished study re-aggregates (nothing retrains) and says the primary
    metrics were declared after the runs; the earlier declaration is kept."""
    copy = tmp_path / "study"
    shutil.copytree(study["dir"], copy)
    spec = _spec(tmp_path, primary=["heldout/group/concise"])
    out = io.StringIO()
    c = run_study(spec, stream=out)
    assert "4 reused" in out.getvalue()
    assert c["primary"] == ["heldout/group/concise"]
    assert c["primary_status"] == "declared when 4 of 4 runs had trained: not fixed before the runs"
    assert "primary metrics: heldout/group/concise (declared when 4 of 4 runs had trained" in out.getvalue()
    rec = json.loads((copy / "primary.json").read_text())
    assert rec["previous"][0]["primary"] == PRIMARY and rec["previous"][0]["runs_trained_before"] == 0
    assert rec["previous"][0]["runs_evaluated_before"] == 0 and rec["runs_evaluated_before"] == 4
    assert "p_adj" not in c["differences"]["rloo"]["heldout/group/concise"]  # one comparison: nothing to adjust
    assert c["differences"]["rloo"]["heldout/reward"] == {k: v for k, v in study["comparison"]["differences"]["rloo"][
        "heldout/reward"].items() if k != "p_adj"}


def test_a_changed_training_key_is_refused(study, capsys):
    before = _run_files(study["dir"])
    assert main(["compare", str(study["spec"]), "optim.weight_decay=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.weight_decay" in err and "seed-0" in err
    assert _run_files(study["dir"]) == before


def test_killed_study_resumes_to_the_same_comparison(study, tmp_path, monkeypatch):
    from fairalign.train.trainer import Trainer

    spec = _spec(tmp_path)
    real = Trainer.train_step
    calls = []

    def dies_at_the_fourth_step(self):
        if len(calls) == 3:  # grpo seed 0 done; rloo seed 0 checkpointed after step 1, killed in step 2
            raise SimulatedKill()
        calls.append(1)
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", dies_at_the_fourth_step)
    with pytest.raises(SimulatedKill):
        run_study(spec, stream=io.StringIO())
    killed = tmp_path / "study" / "rloo" / "seed-0"
    assert (killed / "checkpoints" / "step-1").is_dir() and not (killed / "final").exists()
    assert not (tmp_path / "study" / "comparison.json").exists()

    resumed_steps = []

    def counting(self):
        resumed_steps.append(self.step + 1)
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", counting)
    out = io.StringIO()
    c = run_study(spec, stream=out)
    assert resumed_steps == [2, 1, 2, 1, 2]  # rloo seed 0 resumed at step 2; seed 1 trained from scratch
    assert "1 reused" in out.getvalue() and "2 untrained evaluations (1 made)" in out.getvalue()
    assert [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    ref = study["comparison"]
    assert _no_timings(c["runs"]) == _no_timings(ref["runs"])
    assert c["untrained"]["runs"] == ref["untrained"]["runs"]
    strip = lambda d: {a: {m: v for m, v in ms.items() if not m.startswith("time/")} for a, ms in d.items()}
    assert strip(c["differences"]) == strip(ref["differences"])

    # other evaluation settings re-evaluate every run and retrain none
    before = {k: v for k, v in _run_files(tmp_path / "study").items() if not k.endswith("eval.json")}
    resumed_steps.clear()
    # 2 held-out examples evaluate casual and concise only: the derived metric must follow (checked before anything)
    with pytest.raises(ConfigError, match="derived: 'heldout/minorities': 'heldout/group/detailed_list' is not"):
        run_study(spec, ["eval.examples=2"], stream=io.StringIO())
    spec = _spec(tmp_path, derived={"heldout/minorities": ["heldout/group/casual"]})
    c2 = run_study(spec, ["eval.examples=2"], stream=io.StringIO())
    assert resumed_steps == []
    assert {k: v for k, v in _run_files(tmp_path / "study").items() if not k.endswith("eval.json")} == before
    assert json.loads((killed / "eval.json").read_text())["n"] == 2
    assert json.loads((tmp_path / "study" / "untrained" / "seed-1" / "eval.json").read_text())["n"] == 2
    assert c2["runs"]["grpo"]["0"]["train/reward_final"] == c["runs"]["grpo"]["0"]["train/reward_final"]


def test_t_interval_matches_hand_computed_values():
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-9)  # Cauchy
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(math.sqrt(2 / (0.05 * (2 - 0.05)) - 2), abs=1e-9)  # dof 2: closed form
    for dof, t in ((3, 3.182446), (4, 2.776445), (5, 2.570582), (10, 2.228139), (30, 2.042272)):
        assert t_quantile(0.975, dof) == pytest.approx(t, abs=1e-6)
    assert t_quantile(0.975, 10 ** 6) == pytest.approx(1.959966, abs=1e-5)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776445, abs=1e-6)
    r = mean_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert r["mean"] == 2.0 and r["n"] == 3 and r["sd"] == pytest.approx(1.0)
    assert r["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    t = 2 / (1 / math.sqrt(3))
    assert r["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)  # dof 2: P(|T|>t) = 1 - t/√(2+t²)
    assert t_two_sided_p(0.0, 7) == pytest.approx(1.0)
    assert mean_interval([0.4]) == {"mean": 0.4, "ci95": None, "n": 1, "sd": None, "p": None}
    assert mean_interval([0.5, 0.5]) == {"mean": 0.5, "ci95": [0.5, 0.5], "n": 2, "sd": 0.0, "p": 0.0}
    arm = {0: {"x": 3.0, "only_arm": 1.0}, 1: {"x": 5.0}, 2: {"x": 6.0}}
    base = {0: {"x": 2.0}, 1: {"x": 3.0}, 2: {"x": 3.0}}
    d = paired_differences(arm, base)
    assert set(d) == {"x"} and d["x"]["mean"] == pytest.approx(2.0) and d["x"]["n"] == 3
    assert d["x"]["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    # mde80 = (t_{0.975,2} + t_{0.80,2}) · sd/√n; 2 dof: t_q = a√(2/(1 − a²)), a = 2q − 1 (t_{0.80,2} = √1.125)
    assert t_quantile(0.80, 2) == pytest.approx(math.sqrt(1.125), abs=1e-9)
    assert d["x"]["mde80"] == pytest.approx((4.302653 + 1.0606602) / math.sqrt(3), abs=1e-6)
    assert mde80(1.0, 3) == pytest.approx(3.0965, abs=1e-4) and mde80(0.0, 5) == 0.0 and mde80(None, 1) is None
    # the issue's example: study 2's paired sd 0.0648 over 5 seeds -> ±0.11 (t_{0.975,4} 2.776445, t_{0.80,4} 0.940965)
    assert t_quantile(0.80, 4) == pytest.approx(0.940965, abs=1e-6)
    assert mde80(0.0648, 5) == pytest.approx((2.776445 + 0.940965) * 0.0648 / math.sqrt(5), abs=1e-6)
    assert round(mde80(0.0648, 5), 2) == 0.11


def test_holm_matches_hand_computed_values():
    # sorted 0.01, 0.03, 0.04 (m = 3): 3·0.01 = 0.03; max(0.03, 2·0.03) = 0.06; max(0.06, 1·0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 2·0.4 = 0.8; max(0.8, 0.5)
    assert holm([0.2, None]) == [pytest.approx(0.4), None]  # a test without p counts in m
    assert holm([0.02]) == [0.02] and holm([0.9, 0.8, 0.7]) == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("changes, expected", [
    ({"arms": {"grpo": {"algo.advantage": "grpo"}, "typo": {"algo.advantag": "rloo"}}},
     r"arm 'typo': unknown config key 'algo.advantag'; did you mean 'algo.advantage'\?"),
    ({"arms": None}, r"arms must map at least two arm names"),
    ({"arms": {"grpo": {"algo.advantage": "grpo"}}}, r"arms must map at least two arm names"),
    ({"seeds": []}, r"seeds must be a non-empty list"),
    ({"arms": {"grpo": {"algo.advantage": "grpo"}, "same": None}}, r"arm 'same' names no change"),
    ({"arms": {"grpo": {"algo.advantage": "grpo"}, "same": {}}}, r"arms 'grpo' and 'same' train the same config"),
    ({"preset": "rlpa-smollm2-cpux"}, r"preset: unknown preset 'rlpa-smollm2-cpux'; known presets: "),
    ({"arms": {"a": {"algo.advantage": "grpo"}, "b": {"optim.lr": 1e-5}}}, r"arms 'a' and 'b' train the same config"),
    ({"arms": {"a": {"algo.advantage": "grpo"}, "b": {"algo.advantage": "nope"}}},
     r"arm 'b': config key 'algo.advantage' has unknown value 'nope'"),
    ({"base": {**BASE, "seed": 3}}, r"'seed' is set by the study"),
    ({"eval": {"exampels": 4}}, r"eval: unknown config key 'eval.exampels'"),
    ({"sedes": [0]}, r"unknown key 'sedes'"),
    ({"keep_checkpoints": "yes"}, r"keep_checkpoints must be true or false, got 'yes'"),
    ({"primary": ["heldout/rewrd"]}, r"primary: 'heldout/rewrd' is not a metric every arm of this study produces; "
                                     r"did you mean 'heldout/reward'\?"),
    ({"primary": ["heldout/group/gardener"]},  # 4 held-out examples: gardener is never evaluated
     r"primary: 'heldout/group/gardener' is not a metric every arm"),
    ({"primary": []}, r"primary must be a non-empty list of metric names"),
    ({"primary": ["heldout/reward", "heldout/reward"]}, r"primary names a metric twice"),
    ({"derived": {"heldout/x": ["heldout/group/casual", "heldout/grup/formal"]}},
     r"derived: 'heldout/x': 'heldout/grup/formal' is not a metric every arm .*did you mean 'heldout/group/formal'"),
    ({"derived": {"heldout/reward": ["heldout/group/casual"]}}, r"derived: 'heldout/reward' is already a metric"),
    ({"derived": ["heldout/group/casual"]}, r"derived must map new metric names"),
    ({"arms": {"grpo": {"algo.advantage": "grpo"}, "untrained": {"algo.advantage": "rloo"}}},
     r"arm name 'untrained' is reserved"),
])
def test_bad_spec_fails_in_one_line_before_training(tmp_path, capsys, changes, expected):
    spec = _spec(tmp_path, **changes)
    assert main(["compare", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fairalign: error: spec '{spec}': "), err
    assert re.search(expected, err), err
    assert not (tmp_path / "study").exists()


def test_cli_help_lists_compare(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "fairalign compare SPEC.yaml" in capsys.readouterr().out


def test_sigterm_in_a_runs_last_step_stops_the_study(tmp_path, monkeypatch, tiny_model_dir):
    """A signal that arrives during a run's last step: that run finishes (final/ written), and the study
    stops there instead of training the next run; a rerun evaluates it and goes on."""
    import os
    import signal

    from fairalign.errors import StopRequested
    from fairalign.train.trainer import Trainer

    spec = _spec(tmp_path)
    real = Trainer.train_step
    calls = []

    def term_in_the_second_step(self):
        calls.append(1)
        if len(calls) == 2:  # grpo seed 0's last step
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", term_in_the_second_step)
    with pytest.raises(StopRequested) as e:
        run_study(spec, stream=io.StringIO())
    assert e.value.exit_code == 143 and "grpo seed 0" in str(e.value) and "fairalign compare" in str(e.value)
    done = tmp_path / "study" / "grpo" / "seed-0"
    assert (done / "final").exists() and len(calls) == 2
    assert not (tmp_path / "study" / "rloo").exists()  # the next run never started

    monkeypatch.setattr(Trainer, "train_step", real)
    out = io.StringIO()
    run_study(spec, stream=out)
    assert "1 to evaluate" in out.getvalue() and "3 trained" in out.getvalue()


def test_primary_check_of_a_task_with_its_own_rollout(tmp_path):
    """A task with its own rollout (docs/extending.md's guess game) and the default evaluation: its group
    names come from that rollout, so any heldout/group/<g> may be primary; other names are still checked."""
    from fairalign.compare import load_study

    doc = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    (tmp_path / "guess_game.py").write_text(re.search(r"```python title=guess_game.py\n(.*?)```", doc, re.S)[1])
    base = {**BASE, "task": f"{tmp_path / 'guess_game.py'}:make_task"}
    study = load_study(_spec(tmp_path, base=base, derived=None, primary=["heldout/group/all", "heldout/reward"]))
    assert study.primary == ["heldout/group/all", "heldout/reward"]
    assert load_study(_spec(tmp_path, base=base, derived=None, primary=None)).primary == ["heldout/reward"]
    with pytest.raises(ConfigError, match="primary: 'heldout/rewrd' is not a metric every arm"):
        load_study(_spec(tmp_path, base=base, derived=None, primary=["heldout/rewrd"]))
