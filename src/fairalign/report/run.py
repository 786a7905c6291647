"""The report of one run directory (config.yaml, metrics.jsonl, samples.jsonl, eval/summary JSON).

Sections: headline numbers, the config (non-default keys first), reward per preference group,
length fairness (clip rate per length bin over steps, per-step and pooled LRE, pooled per-bin clip
rates), response length, KL and entropy, P-GRPO's history share, optimization, the time split,
evaluations, the SFT warm-up and the last step's samples. A section without data says so in one line.
"""
from __future__ import annotations

import base64
from pathlib import Path

from fairalign.diagnostics import pooled_clip_counts
from fairalign.report import data as D
from fairalign.report import plots as P
from fairalign.report.html import (
    Page,
    esc,
    flatten,
    fmt,
    fmt_interval,
    json_table,
    table,
    truncate,
)

EVAL_FILES = (("eval.json", "Held-out evaluation (fairalign eval)"),
              ("summary.json", "Before / after summary (fairalign demo)"),
              ("dialogue_eval.json", "Dialogue evaluation (fairalign eval-dialogue)"))
SAMPLE_CHARS = 600


def _defaults() -> dict:
    from fairalign.config import Config, to_dict

    return flatten(to_dict(Config()))


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, dict) else str(m)
                         for m in prompt)
    return str(prompt)


def _reward_functions(rows: list[dict]) -> list[str]:
    skip = {"reward/mean", "reward/std", "reward/errors", "reward/frac_zero_std"}  # step statistics, not functions
    return [k for k in D.keys_with_prefix(rows, "reward/") if k.count("/") == 1 and k not in skip]


def build_run_page(run_dir: Path, rows: list[dict] | None = None) -> Page:
    run_dir = Path(run_dir)
    rows = D.load_rows(run_dir) if rows is None else rows
    cfg = D.read_yaml(run_dir / "config.yaml") or {}
    algo = cfg.get("algo") if isinstance(cfg.get("algo"), dict) else {}
    page = Page(f"fairalign run report: {run_dir.name}",
                f"{run_dir.resolve()} · model {cfg.get('model', '?')} · task {cfg.get('task', '?')} · "
                f"loss {algo.get('loss', '?')} · advantage {algo.get('advantage', '?')}")
    _headline(page, run_dir, cfg, rows)
    page.section("Configuration", lambda: _config(page, run_dir, cfg))
    page.section("Reward", lambda: _reward(page, rows))
    page.section("Length fairness", lambda: _fairness(page, rows))
    page.section("Response length", lambda: page.figure(
        P.length_figure(rows), "response length", "No response-length metrics in metrics.jsonl."))
    page.section("KL and entropy", lambda: page.figure(P.lines_figure([
        ("KL", "nats", [("approx_kl (old − new policy)", *D.series(rows, "approx_kl")),
                        ("kl to the reference", *D.series(rows, "kl"))]),
        ("Entropy", "nats per token", [("entropy", *D.series(rows, "entropy"))])]),
        "KL and entropy", "No kl, approx_kl or entropy values in metrics.jsonl."))
    if D.keys_with_prefix(rows, "pgrpo/history_frac"):
        page.section("P-GRPO", lambda: page.figure(P.lines_figure([(
            "Share of samples normalized by their preference group's history", "fraction",
            [("pgrpo/history_frac", *D.series(rows, "pgrpo/history_frac"))])]), "P-GRPO history share",
            "pgrpo/history_frac has no finite value."))
    page.section("Optimization", lambda: _optimization(page, rows))
    page.section("Time", lambda: _timing(page, rows))
    page.section("Evaluation", lambda: _evaluations(page, run_dir))
    if (run_dir / "sft_metrics.jsonl").is_file():
        page.section("Supervised warm-up", lambda: _sft(page, run_dir))
    page.section("Samples", lambda: _samples(page, run_dir))
    return page


def _headline(page: Page, run_dir: Path, cfg: dict, rows: list[dict]) -> None:
    last = rows[-1].get("step") if rows else 0
    _, step_s = D.series(rows, "step_s")
    _, tps = D.series(rows, "tokens_per_s")
    page.facts([
        ("steps logged / planned", f"{last} / {cfg.get('steps', '?')}"),
        ("finished (final/ written)", "yes" if (run_dir / "final").is_dir() else "no"),
        ("training time (Σ step_s)", f"{sum(step_s):.1f} s" if step_s else None),
        ("reward/mean, first 10% of steps", D.window_mean(rows, "reward/mean", last=False)),
        ("reward/mean, last 10% of steps", D.window_mean(rows, "reward/mean")),
        ("pooled LRE (whole run)", D.pooled_lre(rows)),
        ("pooled LRE, 95% interval", fmt_interval(D.pooled_lre_interval(rows))),
        ("LRE of flat clipping at these counts (noise floor: mean, 95th pct)", _floor(D.pooled_lre_floor(rows))),
        ("gradient cosine, clipped vs unclipped loss (mean over updates)", _cosine(D.pooled_grad_cosine(rows))),
        ("tokens per second (mean)", sum(tps) / len(tps) if tps else None),
        ("seed", cfg.get("seed")),
    ])
    if not rows:
        page.note("metrics.jsonl is missing or empty: the run logged no step yet.")
    elif len(rows) > D.MAX_POINTS:
        page.note(f"{len(rows)} steps: curves show means of consecutive windows ({D.MAX_POINTS} points at most); "
                  f"tables and pooled numbers use every step.")


def _cosine(pooled: tuple[float, int] | None) -> str | None:
    return None if pooled is None else f"{fmt(pooled[0])} ({pooled[1]} updates)"


def _floor(floor: dict | None) -> str | None:
    return None if floor is None else f"{fmt(floor['mean'])}, {fmt(floor['q95'])}"


def _measures(rows: list[dict]) -> str:
    """The extreme bins' log rate ratio and the logistic slope on log L, each with its 95% Wald interval."""
    ratio, slope = D.pooled_extreme_log_ratio(rows), D.pooled_length_slope(rows)
    parts = []
    if ratio:
        parts.append(f"log(clip rate of bin {ratio['long']} / bin {ratio['short']}) {fmt(ratio['log_ratio'])} "
                     f"{fmt_interval(ratio['ci95'])}")
    if slope:
        parts.append(f"logistic slope of clipped on log length {fmt(slope['slope'])} {fmt_interval(slope['ci95'])}")
    return "; ".join(parts) + " (> 0: long responses clipped more)" if parts else "none can be computed here"


def _config(page: Page, run_dir: Path, cfg: dict) -> None:
    if not cfg:
        page.note("No readable config.yaml in the run directory.")
        return
    flat = flatten(cfg)
    try:
        defaults = _defaults()
    except Exception:  # an older config layout: show everything
        defaults = {}
    changed = [[k, v, defaults.get(k, "(not a key of this version)")] for k, v in flat.items()
               if k not in defaults or defaults[k] != v]
    if changed:
        page.add(table(["key", "value", "default"], changed, num_cols=set(), text_cols={1, 2}))
    else:
        page.note("Every key has its default value.")
    text = (run_dir / "config.yaml").read_text(errors="replace")
    page.add(f"<details><summary>the whole resolved config.yaml ({len(flat)} keys)</summary>"
             f"<pre>{esc(text)}</pre></details>")


def _reward(page: Page, rows: list[dict]) -> None:
    page.figure(P.reward_figure(rows), "reward per preference group", "No reward metrics in metrics.jsonl.")
    groups = sorted(D.keys_with_prefix(rows, "reward/group/"), key=D.natural)
    if groups:
        body = []
        for k in groups:
            first, lastm = D.window_mean(rows, k, last=False), D.window_mean(rows, k)
            change = lastm - first if first is not None and lastm is not None else None
            body.append([k.split("/", 2)[2], first, lastm, change, len(D.series(rows, k)[0])])
        page.add("<h3>Per preference group (mean over the first and last 10% of the steps that sampled it)</h3>")
        page.add(table(["group", "first 10%", "last 10%", "change", "steps with samples"], body,
                       num_cols={1, 2, 3, 4}))
    funcs = _reward_functions(rows)
    if len(funcs) > 1:
        page.figure(P.lines_figure([("Reward functions (unweighted means)", "reward",
                                     [(k, *D.series(rows, k)) for k in funcs])]), "reward functions", "")


def _fairness(page: Page, rows: list[dict]) -> None:
    with_clip = sum(1 for r in rows if any(k.startswith("clip_rate/len/") for k in r))
    if not with_clip:
        page.note("No step has clip metrics (clip_rate/len/<bin>, clip_count/len/<bin>, lre): every update was "
                  "exactly on-policy (clip/off_policy_updates = 0), so nothing could clip.")
        return
    if with_clip < len(rows):
        page.note(f"{len(rows) - with_clip} of {len(rows)} steps have no clip metrics (their updates were all "
                  f"exactly on-policy, clip/off_policy_updates = 0, so nothing could clip).")
    page.figure(P.clip_over_time_figure(rows), "clip rate per length bin over steps",
                "No clip_rate/len/<bin> metrics: nothing to show per length bin.")
    page.figure(P.lre_figure(rows), "LRE per step and pooled", "No LRE values or per-bin counts in metrics.jsonl.")
    counts, clipped = pooled_clip_counts(rows)
    if not counts:
        page.note("No clip_count/len/<bin> counts to pool (runs before they were logged, or no off-policy update).")
        return
    if not any(clipped.values()):
        page.note("Nothing was clipped in this run: every per-bin clip rate is 0, so the LRE is 0.")
    lre = D.pooled_lre(rows)
    _, per_step = D.series(rows, "lre")
    mean_step = sum(per_step) / len(per_step) if per_step else float("nan")
    ci = D.pooled_lre_interval(rows)
    if ci:
        page.para(f"LRE of the counts pooled over the run: {fmt(lre)}, 95% bootstrap interval over steps "
                  f"{fmt_interval(ci)}. The per-step LRE (mean {fmt(mean_step)}) sees a handful of sequences per bin "
                  f"and is dominated by noise; a bin with few sequences also moves the pooled one (counts below).")
    floor = _floor(D.pooled_lre_floor(rows))
    page.para(f"Perfectly flat clipping at the run's pooled clip rate would give an LRE of {floor} "
              f"(mean, 95th percentile) at these bin counts, from sampling noise alone: an LRE within it says nothing "
              f"about length. The LRE also shrinks as the overall clip rate falls; measures that do not: "
              f"{_measures(rows)}.")
    page.figure(P.pooled_clip_figure({"run": (counts, clipped)},
                                     f"Clip rate per length bin, pooled over {with_clip} steps "
                                     f"(pooled LRE {lre:.3f}; mean per-step LRE {mean_step:.3f})"),
                "pooled clip rate per length bin", "")
    labels = sorted(counts, key=lambda b: int(b.split("-")[0]))
    page.add(table(["length bin (tokens)", "sequences", "clipped (weight)", "clip rate"],
                   [[b, counts[b], clipped.get(b, 0.0), clipped.get(b, 0.0) / counts[b] if counts[b] else None]
                    for b in labels], num_cols={1, 2, 3}))
    sides = [[k, D.window_mean(rows, k, frac=1.0)] for k in ("clip_frac", "clip_rate/upper", "clip_rate/lower")]
    page.add(table(["metric (mean over steps with it)", "value"], sides, num_cols={1}))


def _optimization(page: Page, rows: list[dict]) -> None:
    page.figure(P.lines_figure([("Policy loss", "loss", [("loss", *D.series(rows, "loss"))]),
                                ("Gradient norm", "global norm", [("grad_norm", *D.series(rows, "grad_norm"))]),
                                ("Learning rate", "lr", [("lr", *D.series(rows, "lr"))])]),
                "optimization", "No loss, grad_norm or lr values in metrics.jsonl.")
    _, skipped = D.series(rows, "skipped_updates")
    if sum(skipped):
        page.note(f"{sum(skipped):.0f} optimizer steps were skipped for a non-finite loss or gradient.")


def _timing(page: Page, rows: list[dict]) -> None:
    page.figure(P.timing_figure(rows), "time split", "No time/* metrics in metrics.jsonl.")
    _, step_s = D.series(rows, "step_s")
    mean_step = sum(step_s) / len(step_s) if step_s else None
    body = []
    for k in (*D.TIME_PARTS, "time/weight_sync_s", "step_s", "tokens_per_s"):
        m = D.window_mean(rows, k, frac=1.0)
        if m is not None:
            share = m / mean_step if mean_step and k.startswith("time/") else None
            body.append([k, m, f"{100 * share:.1f}%" if share is not None else ""])
    if body:
        page.add(table(["metric", "mean per step", "share of step_s"], body, num_cols={1, 2}))


def _evaluations(page: Page, run_dir: Path) -> None:
    found = False
    for name, title in EVAL_FILES:
        path = run_dir / name
        if not path.is_file():
            continue
        found = True
        page.add(f"<h3>{esc(title)}: <code>{esc(name)}</code></h3>")
        obj = D.read_json(path)
        if obj is None:
            page.note(f"{name} is not valid JSON.")
        else:
            page.add(json_table(obj))
    al = run_dir / "dialogue_al.png"
    if al.is_file() and al.stat().st_size < 2_000_000:
        page.add(f'<img alt="dialogue AL(k)" src="data:image/png;base64,'
                 f'{base64.b64encode(al.read_bytes()).decode("ascii")}">')
    if not found:
        page.note("No eval.json, summary.json or dialogue_eval.json yet (`fairalign eval RUN_DIR` writes eval.json).")


def _sft(page: Page, run_dir: Path) -> None:
    rows = D.load_rows(run_dir, "sft_metrics.jsonl")
    loss = [("sft/loss", *D.series(rows, "sft/loss"))]
    page.figure(P.lines_figure([("Supervised warm-up loss", "cross-entropy", loss)]), "SFT loss",
                "sft_metrics.jsonl has no sft/loss values.")


def _samples(page: Page, run_dir: Path) -> None:
    samples = D.last_step_samples(run_dir / "samples.jsonl")
    if not samples:
        page.note("No samples.jsonl (or it is empty).")
        return
    extra = [k for k in samples[0] if k.startswith("reward/")]
    page.para(f"The {len(samples)} samples logged at step {samples[0].get('step', '?')} (the last one); "
              f"texts longer than {SAMPLE_CHARS} characters are cut.")
    body = [[s.get("group", ""), truncate(_prompt_text(s.get("prompt", "")), SAMPLE_CHARS),
             truncate(str(s.get("completion", "")), SAMPLE_CHARS), s.get("reward"), s.get("advantage"),
             *(s.get(k) for k in extra)] for s in samples]
    page.add(table(["group", "prompt", "completion", "reward", "advantage", *extra], body,
                   num_cols=set(range(3, 5 + len(extra))), text_cols={1, 2}))

