"""The FSPO cosine study's harness (docs/evidence/fspo_cosine) on the tiny model, so it cannot rot: run.py's
probe -> calibrated bands -> spec -> `fairalign compare` -> summary, one step per arm; a second call reuses
everything; the summary's numbers are the report functions' own on each run's metrics."""
import importlib.util
import json
import signal
from pathlib import Path

import pytest
import yaml

from fairalign.errors import StopRequested
from fairalign.report import data as D

HERE = Path(__file__).resolve().parents[1] / "docs" / "evidence" / "fspo_cosine"
TINY = ["model=tiny", "steps=1", "rollout.max_new_tokens=8", "rollout.prompts_per_step=2", "rollout.generations=2",
        "threads=1", "log.length_bins=[1,4,6,9]", "seeds=[0]", "eval.examples=4", "log.tensorboard=false"]
ARMS = ["gspo", "ppo", "fspo", "fspo_kl", "fixed_seq"]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"fspo_cosine_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("fspo_cosine")
    assert _load("run").main(["--out", str(out), *TINY]) == 0
    return out


def test_template_is_the_pre_registered_design():
    spec = yaml.safe_load((HERE / "spec_template.yaml").read_text())
    assert list(spec["arms"]) == ARMS
    base = spec["base"]
    assert base["log"]["grad_cosine"] is True and base["log"]["length_bins"] == [1, 24, 48, 65]
    # 6x study 1's off-policy sequence-updates per arm (4 steps x 24 x 3 seeds = 288)
    per_step = base["rollout"]["prompts_per_step"] * base["rollout"]["generations"] * base["algo"]["ppo_epochs"]
    off_policy = per_step - per_step // (base["algo"]["ppo_epochs"] * base["algo"]["minibatches"])
    assert off_policy * base["steps"] * len(spec["seeds"]) >= 5 * 288


def test_run_calibrates_every_arm_and_writes_the_spec(study):
    bands = json.loads((study / "bands.json").read_text())
    assert list(bands["bands"]) == ARMS and bands["target"] == 0.15 and bands["bins"] == [1, 4, 6, 9]
    assert bands["sequence_updates"] > 0 and (study / "probe" / "final").is_dir()
    spec = yaml.safe_load((study / "spec.yaml").read_text())
    assert spec["output_dir"] == str(study)
    assert spec["arms"]["fspo"]["algo.c_low"] == bands["bands"]["fspo"]["c_low"]
    assert spec["arms"]["fixed_seq"]["algo.loss_args.eps_high"] == bands["bands"]["fixed_seq"]["eps_high"]
    assert spec["arms"]["ppo"]["algo.clip_high"] == bands["bands"]["ppo"]["clip_high"]
    assert json.loads((study / "comparison.json").read_text())["arms"] == ARMS


def test_summary_reads_each_runs_metrics(study):
    summary = json.loads((study / "summary.json").read_text())
    assert list(summary["arms"]) == ARMS and set(summary["paired_vs_primary"]) == set(ARMS) - {"fspo"}
    for arm in ARMS:
        rows = D.load_rows(study / arm / "seed-0")
        a = summary["arms"][arm]
        cos = D.pooled_grad_cosine(rows)
        assert (a["cosine"], a["cosine_updates"]) == (pytest.approx(cos[0]), cos[1]) and cos[1] == 3
        assert a["lre"] == pytest.approx(D.pooled_lre(rows)) and a["lre_floor"] == D.pooled_lre_floor(rows)
        counts, clipped = D.pooled_clip_counts(rows)
        assert a["clip_rate"] == pytest.approx(sum(clipped.values()) / sum(counts.values()))
        if a["clip_rate"] == 0:  # nothing clipped: the clipped and the unclipped gradients agree
            assert a["cosine"] == pytest.approx(1.0, abs=1e-6)
    d = summary["paired_vs_primary"]["ppo"]["cosine"]["mean"]
    assert d == pytest.approx(summary["arms"]["fspo"]["cosine"] - summary["arms"]["ppo"]["cosine"])
    for arm in ARMS:  # the post-hoc k: a run's own steps (one seed, so the arm's and the seed's agree)
        a, rows = summary["arms"][arm], D.load_rows(study / arm / "seed-0")
        assert a["k"] == summary["per_seed"][arm]["0"]["k"]
        if a["clip_rate"] > 0:
            assert a["k"] == pytest.approx((1 - a["cosine"]) / a["clip_rate"])  # one step: the ratio itself
        seed0 = summary["per_seed"][arm]["0"]  # one step: the first step is the whole run, and nothing follows it
        assert seed0["k_after_step1"] is None
        assert (seed0["clip_rate_step1"], seed0["cosine_step1"]) == (pytest.approx(a["clip_rate"]), pytest.approx(a["cosine"]))
    d1 = summary["paired_vs_primary"]["ppo"]["cosine_step1"]["mean"]
    assert d1 == pytest.approx(summary["arms"]["fspo"]["cosine"] - summary["arms"]["ppo"]["cosine"])


def test_a_second_call_reuses_the_probe_bands_and_runs(study, capsys):
    files = [study / "bands.json", study / "probe" / "probe.jsonl"] + [study / a / "seed-0" / "metrics.jsonl" for a in ARMS]
    before = [f.read_text() for f in files]
    assert _load("run").main(["--out", str(study), *TINY]) == 0
    out = capsys.readouterr().out
    assert "done, reused" in out and "(target 0.15), reused" in out
    assert [f.read_text() for f in files] == before  # nothing retrained or recalibrated


def test_a_stop_exits_with_the_signal_and_names_this_script(study, monkeypatch, capsys):
    """SIGTERM mid-study: one line telling the user to rerun run.py (not `fairalign compare`, which would
    skip the summary), no traceback, exit 143."""
    import fairalign.compare

    def stopped(spec, overrides, rerun=""):
        raise StopRequested(f"stopped by SIGTERM after step 1; rerun `{rerun}` to continue the study", signal.SIGTERM)

    monkeypatch.setattr(fairalign.compare, "run_study", stopped)
    assert _load("run").main(["--out", str(study), *TINY]) == 143
    err = capsys.readouterr().err
    assert err.startswith("run.py: stopped by SIGTERM after step 1; rerun `.venv/bin/python "
                          f"docs/evidence/fspo_cosine/run.py --out {study} model=tiny") and "Traceback" not in err


def test_summary_helpers_hand_computed():
    s = _load("summarize")
    assert s.holm([0.01, None, 0.04, 0.03]) == [pytest.approx(0.03), None, pytest.approx(0.06), pytest.approx(0.06)]
    assert s.spearman([0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.85, 0.1]) == pytest.approx(-0.8)
    assert s.spearman([0.1, 0.2], [1, 2]) is None
    # mde80 of 3 paired differences with sd 0.1: (t_.975,2 + t_.80,2)·0.1/√3 = (4.3027 + 1.0607)·0.0577
    assert s.mde80({"n": 3, "sd": 0.1}) == pytest.approx((4.3027 + 1.0607) * 0.1 / 3 ** 0.5, abs=1e-4)
    assert s.mde80({"n": 1, "sd": None}) is None


def test_direction_loss_per_clip_rate_hand_computed(tmp_path):
    """Two steps: 3 updates at cosine 0.8 with 2 of 20 sequence-updates clipped, 3 updates at cosine 1 with
    none clipped; k = 3·0.2 / (3·0.1 + 0) = 2. A step with no cosine logged is not a point."""
    s = _load("summarize")
    rows = [{"step": 1, "grad_cosine": 0.8, "grad_cosine/updates": 3,
             "clip_count/len/1-4": 8, "clip_clipped/len/1-4": 2, "clip_count/len/4-9": 12, "clip_clipped/len/4-9": 0},
            {"step": 2, "grad_cosine": 1.0, "grad_cosine/updates": 3,
             "clip_count/len/1-4": 10, "clip_clipped/len/1-4": 0, "clip_count/len/4-9": 10, "clip_clipped/len/4-9": 0},
            {"step": 3, "clip_count/len/1-4": 10, "clip_clipped/len/1-4": 5}]
    points = s.step_points(rows)
    assert points == [pytest.approx((0.1, 0.8, 3)), (0.0, 1.0, 3)]
    assert s.direction_loss_per_clip_rate(points) == pytest.approx(2.0)
    assert s.direction_loss_per_clip_rate([(0.0, 1.0, 3)]) is None  # nothing clipped: no slope
    plot = tmp_path / "k.png"
    s.plot({"arms": {"fspo": {"step_points": points, "k": 2.0}}}, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clipped_events_against_study1_hand_computed():
    """Study 1's summary.json gives rates and counts per bin: 0.025 of 80 = 2 events; 6 here is 3x. A bin or
    an arm study 1 lacks is left out, and a bin study 1 never clipped has no ratio."""
    s = _load("summarize")
    here = {"fspo": {"bins": {"1-24": {"sequences": 300, "clipped": 6.0}, "24-48": {"sequences": 200, "clipped": 4.0},
                              "48-65": {"sequences": 500, "clipped": 10.0}}},
            "new_arm": {"bins": {"1-24": {"sequences": 10, "clipped": 1.0}}}}
    study1 = {"fspo": {"pooled_rate": {"1-24": 0.025, "24-48": 0.0}, "pooled_n": {"1-24": 80.0, "24-48": 69.0}}}
    got = s.events_against(here, study1)
    assert list(got) == ["fspo"] and list(got["fspo"]) == ["1-24", "24-48"]
    assert got["fspo"]["1-24"] == {"here": 6.0, "earlier": pytest.approx(2.0), "ratio": pytest.approx(3.0)}
    assert got["fspo"]["24-48"]["ratio"] is None


def test_committed_study1_summary_has_the_bins_this_study_compares_with():
    """The default --study1 file is study 1's committed summary, with the same three length bins."""
    s = _load("summarize")
    arms = json.loads(s.STUDY1.read_text())["arms"]
    assert set(ARMS) <= set(arms)
    for arm in ARMS:
        assert list(arms[arm]["pooled_n"]) == ["1-24", "24-48", "48-65"]


def test_clip_rate_by_step_recovers_each_band_scale_and_splits_the_probe_into_steps(study, capsys):
    """band_scale inverts calibrate.band for every rule; the tiny probe (1 step of 2 prompts x 2 samples,
    2 epochs x 2 minibatches: 3 of 4 updates off-policy, 2 x 2 x 2 x 3/4 = 6 sequence-updates) is one step."""
    by_step = _load("clip_rate_by_step")
    import calibrate

    for rule in ARMS:
        _, band = calibrate.band(rule, 2.5)
        assert by_step.band_scale(rule, band) == pytest.approx(2.5)
    steps = by_step.probe_steps(study / "probe" / "probe.jsonl", per_step=6)
    assert len(steps) == 1 and sum(len(call[1]) for call in steps[0]) == 6
    assert by_step.main([str(study)]) == 0
    out = capsys.readouterr().out
    assert "probe: 1 steps of 6" in out and all(f"  {arm:10s} probe " in out for arm in ARMS)


def _printed(lines: str) -> list[str]:
    return [line for line in lines.splitlines() if not line.startswith("written: ")]


def test_committed_reading_reproduces_from_the_committed_files(tmp_path, capsys):
    """summary.txt and clip_rate_by_step.txt are the scripts' output on results/ (a copy, so summary.json is
    not rewritten), and the README's pre-registered table quotes them."""
    import shutil

    results = tmp_path / "results"
    shutil.copytree(HERE / "results", results)
    assert _load("summarize").main([str(results)]) == 0
    assert _printed(capsys.readouterr().out) == _printed((HERE / "results" / "summary.txt").read_text())
    assert _load("clip_rate_by_step").main([str(results)]) == 0
    assert capsys.readouterr().out == (HERE / "results" / "clip_rate_by_step.txt").read_text()
    summary = json.loads((results / "summary.json").read_text())
    readme = (HERE / "README.md").read_text()
    for arm, p in summary["paired_vs_primary"].items():
        for metric in ("cosine", "lre"):
            m = p[metric]
            quoted = f"{m['mean']:+.3f} [{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]".replace("-", "−")
            assert quoted in readme, (arm, metric, quoted)


def test_probe_steps_sets_the_probes_length_after_every_override(tmp_path, capsys):
    """--probe-steps 2 beats the dry run's steps=1: the tiny probe records 2 steps x 6 off-policy
    sequence-updates. Reused without --probe-steps or with the same number; refused with another, since its
    bands calibrate the probe that was trained."""
    run = _load("run")
    template = yaml.safe_load((HERE / "spec_template.yaml").read_text())
    overrides, _ = run.split_overrides(TINY)
    record = run.probe(template, tmp_path, overrides, steps=2)
    assert yaml.safe_load((tmp_path / "probe" / "config.yaml").read_text())["steps"] == 2
    assert sum(len(json.loads(line)["seqs"]) for line in record.read_text().splitlines()) == 12
    before = record.read_text()
    assert run.probe(template, tmp_path, overrides) == record and run.probe(template, tmp_path, overrides, 2) == record
    assert record.read_text() == before and capsys.readouterr().out.count("done, reused") == 2
    with pytest.raises(SystemExit) as stop:
        run.probe(template, tmp_path, overrides, steps=3)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (f"run.py: error: {tmp_path / 'probe'} was trained for 2 steps, not --probe-steps "
                                       "3; its bands calibrate that probe (use another --out for a new calibration)\n")


def test_output_dir_override_is_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        _load("run").main(["--out", str(tmp_path), "output_dir=elsewhere"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "run.py: error: give the study folder with --out, not output_dir=\n"
