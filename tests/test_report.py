"""`fairalign report`: one self-contained report.html for a run or a study directory.

A real tiny-model run (through `fairalign train`, which writes the report at the end), synthetic runs
with odd data (one step, missing files, nulls, thousands of steps, many groups), a synthetic study
(comparison.json + ARM/seed-S/ runs), the CLI, `make_plots`, and a headless-chromium rendering when
chromium is installed."""
import json
import random
import re
import shutil
import subprocess

import pytest

from fairalign.cli import main
from fairalign.diagnostics import lre_from_pooled_counts
from fairalign.report import write_report

TINY = ["model=tiny", "task=personas", "steps=2", "rollout.prompts_per_step=2", "rollout.generations=2",
        "rollout.max_new_tokens=6", "log.tensorboard=false", "log.progress=false"]
BINS = ["1-2", "2-4", "4-8", "8-16", "16-32", "32-64"]
EVIL = "<script>alert('x')</script> & <b>bold</b>"


def synthetic_metrics(steps: int, groups: int = 3, seed: int = 0, shift: float = 0.0, nulls: bool = True) -> list[dict]:
    """metrics.jsonl rows shaped like the trainer's: clip metrics missing on some steps, nulls here and there."""
    rnd = random.Random(seed)
    rows = []
    for s in range(1, steps + 1):
        r = {"step": s, "reward/mean": 0.3 + 0.4 * s / steps + shift + rnd.gauss(0, 0.05), "reward/std": 0.2,
             "reward/persona_reward": 0.5, "reward/length_reward": 0.1 + rnd.random() * 0.1,
             "response_length/mean": 20 + rnd.random() * 5, "response_length/max": 32.0, "truncated_frac": 0.3,
             "loss": rnd.gauss(0, 0.02), "approx_kl": abs(rnd.gauss(0, 1e-3)), "entropy": 3.0 - s / steps,
             "grad_norm": 1 + rnd.random(), "lr": 1e-5, "skipped_updates": 0.0, "pgrpo/history_frac": min(1.0, s / 5),
             "time/generate_s": 1.0 + rnd.random() * 0.1, "time/reward_s": 0.05, "time/logprob_s": 0.3,
             "time/update_s": 0.8, "step_s": 2.3, "tokens_per_s": 300.0}
        for g in range(groups):
            if rnd.random() < 0.8:
                r[f"reward/group/g{g}"] = 0.2 + 0.1 * g + 0.4 * s / steps + shift + rnd.gauss(0, 0.05)
        if s % 4 != 1:  # steps with an off-policy update carry the clip metrics
            counts, clipped = {}, {}
            for i, b in enumerate(BINS):
                if rnd.random() < 0.85:
                    n = rnd.randint(1, 12)
                    counts[b], clipped[b] = float(n), float(sum(rnd.random() < 0.05 + 0.04 * i for _ in range(n)))
                    r[f"clip_rate/len/{b}"] = clipped[b] / n
                    r[f"clip_count/len/{b}"] = counts[b]
                    r[f"clip_clipped/len/{b}"] = clipped[b]
            r.update({"clip/off_policy_updates": 1, "clip_frac": 0.05, "clip_rate/upper": 0.1, "clip_rate/lower": 0.05,
                      "lre": lre_from_pooled_counts(counts, clipped) if counts else 0.0})
        if nulls and s % 7 == 3:
            r["entropy"], r["approx_kl"], r["reward/mean"] = None, None, None  # non-finite values are logged as null
        rows.append(r)
    return rows


def write_run(path, steps=12, groups=3, seed=0, shift=0.0, config=True, samples=True, nulls=True):
    path.mkdir(parents=True, exist_ok=True)
    if config:
        (path / "config.yaml").write_text(f"model: tiny\ntask: personas\nseed: {seed}\nsteps: {steps}\n"
                                          "algo:\n  loss: fspo\n  advantage: pgrpo\n")
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                synthetic_metrics(steps, groups, seed, shift, nulls)))
    if samples:
        lines = [{"step": s, "group": "g0", "prompt": [{"role": "user", "content": f"question {s}"}],
                  "completion": EVIL if s == steps else "fine", "reward": 0.5, "advantage": 0.1,
                  "reward/persona_reward": 0.5} for s in range(1, steps + 1) for _ in range(2)]
        (path / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_study(path, arms=("grpo", "pgrpo"), seeds=(0, 1, 2), steps=30, groups=3):
    runs, differences = {}, {}
    for j, arm in enumerate(arms):
        runs[arm] = {}
        for s in seeds:
            write_run(path / arm / f"seed-{s}", steps=steps, groups=groups, seed=10 * j + s, shift=0.1 * j)
            runs[arm][str(s)] = {"heldout/reward": 0.5 + 0.1 * j + 0.01 * s,
                                 **{f"heldout/group/g{g}": 0.4 + 0.05 * g * j for g in range(groups)}}
    for j, arm in enumerate(arms[1:], 1):
        differences[arm] = {"heldout/reward": {"mean": 0.1, "ci95": [0.04, 0.16], "n": len(seeds), "p": 0.004},
                            **{f"heldout/group/g{g}": {"mean": 0.05 * g, "ci95": [0.05 * g - 0.06, 0.05 * g + 0.06],
                                                       "n": len(seeds), "p": 0.3} for g in range(groups)}}
    summary = {a: {"heldout/reward": {"mean": 0.5 + 0.1 * j, "ci95": [0.45 + 0.1 * j, 0.55 + 0.1 * j],
                                      "n": len(seeds), "sd": 0.01}} for j, a in enumerate(arms)}
    comp = {"arms": list(arms), "seeds": list(seeds), "baseline": arms[0], "runs": runs, "differences": differences,
            "method": "Paired by seed: each arm minus grpo; 95% t-interval over seeds.", "arms_summary": summary,
            "wall_s": 754.2, "spec": "study.yaml", "overrides": ["steps=30"], "eval_overrides": []}
    (path / "comparison.json").write_text(json.dumps(comp))
    return path


def assert_self_contained(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I), "fetches something"
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    assert "could not be drawn" not in text


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real 2-step tiny-model run made by `fairalign train` (which writes report.html at the end)."""
    run = tmp_path_factory.mktemp("report") / "tiny"
    assert main(["train", *TINY, f"output_dir={run}"]) == 0
    return run


def test_train_writes_a_report_of_the_tiny_run(tiny_run):
    text = (tiny_run / "report.html").read_text()
    assert_self_contained(text)
    for section in ("Configuration", "Reward", "Length fairness", "Response length", "KL and entropy",
                    "Optimization", "Time", "Evaluation", "Samples"):
        assert f"<h2>{section}</h2>" in text, section
    for name in ("rollout.max_new_tokens", "time/generate_s", "time/update_s", "clip_rate/upper", "step_s"):
        assert name in text, name
    assert text.count("data:image/png;base64,") >= 6
    samples = [json.loads(x) for x in (tiny_run / "samples.jsonl").read_text().splitlines()]
    last = [s for s in samples if s["step"] == 2]
    from html import escape

    assert escape(last[0]["completion"][:40]) in text


def test_sample_text_is_escaped(tmp_path):
    run = write_run(tmp_path / "run")
    text = write_report(run).read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert_self_contained(text)
    assert "<b>bold</b>" not in text


def test_run_report_sections_and_pooled_lre(tmp_path):
    run = write_run(tmp_path / "run", steps=40)
    (run / "eval.json").write_text(json.dumps({"mean": 0.61, "by_group": {"g0": 0.5, "g1": 0.7}, "n": 8}))
    (run / "summary.json").write_text(json.dumps({"heldout_reward_before": 0.4, "heldout_reward_after": 0.6}))
    text = write_report(run).read_text()
    assert_self_contained(text)
    assert "<h2>P-GRPO</h2>" in text and "<h2>Evaluation</h2>" in text
    assert "by_group.g1" in text and "heldout_reward" in text and "before" in text
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert "10 of 40 steps have no clip metrics" in text
    from fairalign.diagnostics import pooled_clip_counts
    from fairalign.report.html import fmt

    lre = lre_from_pooled_counts(*pooled_clip_counts(rows))
    assert f"<b>pooled LRE (whole run)</b><span>{fmt(lre)}</span>" in text
    assert "95% bootstrap interval over steps" in text
    # the config table lists the non-default keys first
    assert "algo.loss" in text and "fspo" in text


def test_series_pooling_and_downsampling():
    from fairalign.report import data as D

    rows = synthetic_metrics(1000, seed=3)
    xs, ys = D.downsample(*D.series(rows, "entropy"))
    assert len(xs) == D.MAX_POINTS and xs == sorted(xs)
    assert all(v is not None for v in ys)  # nulls are dropped, not averaged in
    # a per-bin rate over a window is the pooled rate of its counts, not the mean of the rates
    steps = [r for r in rows if "clip_count/len/4-8" in r]
    _, rates, w = D.clip_rate_series(steps[:40], "4-8")
    last = steps[40 - w:40]
    assert w == 5 and rates[-1] == pytest.approx(sum(r["clip_clipped/len/4-8"] for r in last)
                                                 / sum(r["clip_count/len/4-8"] for r in last))
    lre = D.pooled_lre(rows)
    assert lre == pytest.approx(lre_from_pooled_counts(*D.pooled_clip_counts(rows)))
    lo, hi = D.pooled_lre_interval(rows)
    assert lo <= lre <= hi and (lo, hi) == D.pooled_lre_interval(rows)  # seeded: the same report twice
    assert D.cumulative_pooled_lre(rows)[1][-1] == pytest.approx(lre)
    assert D.pooled_lre_interval(rows[:1]) is None and D.pooled_lre([]) is None


@pytest.mark.parametrize("case", ["one-step", "metrics-only", "config-only", "empty-metrics", "all-null",
                                  "long", "many-groups", "torn-line"])
def test_odd_runs_give_a_report_not_an_error(tmp_path, case):
    run = tmp_path / "run"
    if case == "one-step":
        write_run(run, steps=1)
    elif case == "metrics-only":
        write_run(run, config=False, samples=False)
    elif case == "config-only":
        run.mkdir()
        (run / "config.yaml").write_text("model: tiny\n")
    elif case == "empty-metrics":
        write_run(run)
        (run / "metrics.jsonl").write_text("")
    elif case == "all-null":
        run.mkdir()
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward/mean": None, "lre": None,
                                                               "clip_rate/len/4-8": None, "time/generate_s": None})
                                                   + "\n" for s in range(1, 4)))
    elif case == "long":
        write_run(run, steps=3000, groups=4)
    elif case == "many-groups":
        write_run(run, steps=20, groups=40)
    elif case == "torn-line":
        write_run(run)
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 13, "reward/me')
        with open(run / "samples.jsonl", "a") as f:
            f.write('{"step": 13, "compl')
    text = write_report(run).read_text()
    assert_self_contained(text)
    if case in ("config-only", "empty-metrics", "all-null"):
        assert 'class="note"' in text
    if case == "long":
        assert len(text) < 3_000_000


def test_study_report(tmp_path):
    study = write_study(tmp_path / "study")
    write_report(study / "grpo" / "seed-0")
    text = write_report(study).read_text()
    assert_self_contained(text)
    for section in ("Method", "Paired differences", "Per-group differences", "Per-arm results",
                    "Training curves", "Length fairness", "Runs"):
        assert f"<h2>{section}</h2>" in text, section
    assert "95% interval" in text and "heldout/group/g2" in text
    assert '<tr class="sig"><td>pgrpo</td><td>heldout/reward</td>' in text  # [0.04, 0.16] excludes 0
    assert text.count('<tr class="sig">') == 2  # and g2's [0.04, 0.16]; g0, g1 include 0
    assert "Paired by seed: each arm minus grpo" in text and "the baseline arm &#x27;grpo&#x27;" in text
    assert "0.6 [0.55, 0.65] (n=3)" in text  # arms_summary: mean [95% interval] (n)
    assert "0.45 ± 0 (n=3)" in text  # a metric arms_summary lacks: mean ± sd over the seeds
    assert 'href="grpo/seed-0/report.html"' in text
    assert text.count("data:image/png;base64,") >= 4


def test_study_with_missing_runs_and_partial_json(tmp_path):
    study = write_study(tmp_path / "study", seeds=(0, 1))
    shutil.rmtree(study / "pgrpo" / "seed-1")
    comp = json.loads((study / "comparison.json").read_text())
    comp["differences"]["pgrpo"]["heldout/reward"] = {"mean": None, "ci95": None, "n": 1, "p": None}
    comp["arms_summary"] = [1, 2]  # not the usual {arm: {metric: {...}}}
    del comp["method"], comp["baseline"], comp["wall_s"]
    (study / "comparison.json").write_text(json.dumps(comp))
    text = write_report(study).read_text()
    assert_self_contained(text)
    assert "missing" in text


def test_cli_report(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    assert str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fairalign: error:") and "neither a run directory" in err and err.count("\n") == 1


def test_make_plots_still_writes_the_run_pngs(tmp_path):
    from fairalign.report.run_plots import make_plots

    run = write_run(tmp_path / "run")
    names = sorted(p.name for p in make_plots(run))
    assert names == ["clip_rate_by_length.png", "response_length.png", "reward_by_group.png"]
    assert all((run / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_demo_writes_the_report(tmp_path):
    from fairalign.demo import run_demo
    from rich.console import Console

    out = tmp_path / "demo"
    run_demo([*TINY, f"output_dir={out}", "eval.examples=4", "eval.batch_size=4", "save_every=0"],
             console=Console(file=open(tmp_path / "log.txt", "w")))
    text = (out / "report.html").read_text()
    assert "Before / after summary" in text and "heldout_reward" in text


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_chromium_renders_the_report(tiny_run, tmp_path):
    """What a user sees: the page renders headless, and the screenshot is not one flat colour."""
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,2400", (tiny_run / "report.html").as_uri()],
                   check=False, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100
    assert len(img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # text and figures, not a blank page


def test_reward_functions_plot_holds_only_the_task_reward_parts():
    """The rollout stage's reward/frac_zero_std (a share of tied groups) is not a reward function: the
    "Reward functions" plot draws the per-function means only."""
    from fairalign.report.run import _reward_functions

    rows = [{"step": 1, "reward/mean": 0.5, "reward/std": 0.1, "reward/errors": 0.0, "reward/frac_zero_std": 0.25,
             "reward/format": 1.0, "reward/length": 0.2, "reward/group/concise": 0.4}]
    assert _reward_functions(rows) == ["reward/format", "reward/length"]
