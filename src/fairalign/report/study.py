"""The report of a study directory (what `fairalign compare` writes): comparison.json and the run
directories `ARM/seed-S/`.

comparison.json: {"arms": [...], "seeds": [...], "runs": {arm: {seed: {metric: value}}},
"differences": {arm: {metric: {"mean", "ci95": [lo, hi], "n", "p", "mde80", "p_adj"}}}, "method": str,
"arms_summary": ..., "primary": [...], "reading": [...], "untrained": {"runs", "summary", "differences"}}.
Sections: the primary metrics first (the untrained policy as the first row, every arm's difference to it
and to the baseline with interval, mde80, p, p_adj, and the one-sentence readings), the method text, the
secondary paired differences (rows whose interval excludes 0 highlighted), per-group differences
(`heldout/group/<g>`) with their intervals, each arm's final metrics over seeds (the untrained policy
first), training curves with the seeds overlaid (thin per seed, bold mean), pooled clip rate per length
bin per arm, and the run directories. A comparison.json of an older fairalign (no primary, no untrained
policy) gives the sections it has data for.
"""
from __future__ import annotations

import math
from pathlib import Path

from fairalign.diagnostics import pooled_clip_counts
from fairalign.errors import ConfigError
from fairalign.report import data as D
from fairalign.report import plots as P
from fairalign.report.html import Page, esc, fmt, fmt_interval, json_table, table

GROUP_PREFIX = "heldout/group/"
CURVES = (("reward/mean", "Training reward"), ("response_length/mean", "Response length (tokens)"),
          ("approx_kl", "approx_kl"), ("entropy", "Entropy"), ("clip_frac", "clip_frac (tokens)"),
          ("pgrpo/history_frac", "P-GRPO history share"), ("step_s", "Seconds per step"))
MAX_GROUP_PANELS = 12


def _ci(d: dict) -> tuple[float | None, float | None]:
    ci = d.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        return (ci[0] if D.finite(ci[0]) else None), (ci[1] if D.finite(ci[1]) else None)
    return None, None


def _excludes_zero(d: dict) -> bool:
    lo, hi = _ci(d)
    return lo is not None and hi is not None and (lo > 0 or hi < 0)


def _p(v) -> str:
    if not D.finite(v):
        return "—"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def load_study(study_dir: Path) -> tuple[dict, list[str], list[str], dict[str, dict[str, list[dict]]]]:
    """(comparison.json, arms, seeds, {arm: {seed: metrics rows}}) for the run directories present."""
    comp = D.read_json(study_dir / "comparison.json")
    if not isinstance(comp, dict):
        raise ConfigError(f"{study_dir / 'comparison.json'} is not a JSON object")
    runs = comp.get("runs") if isinstance(comp.get("runs"), dict) else {}
    arms = [str(a) for a in (comp.get("arms") or list(runs))]
    seeds = [str(s) for s in (comp.get("seeds") or sorted({s for r in runs.values() for s in r}))]
    rows = {a: {s: D.load_rows(study_dir / a / f"seed-{s}") for s in seeds} for a in arms}
    return comp, arms, seeds, rows


def build_study_page(study_dir: Path) -> Page:
    study_dir = Path(study_dir)
    comp, arms, seeds, rows = load_study(study_dir)
    page = Page(f"fairalign study report: {study_dir.name}",
                f"{study_dir.resolve()} · {len(arms)} arms × {len(seeds)} seeds")
    n_found = sum(1 for a in arms for s in seeds if rows[a][s])
    wall = comp.get("wall_s")
    primary = _primary_names(comp)
    page.facts([("arms", ", ".join(arms)), ("baseline (differences are arm − baseline)", comp.get("baseline")),
                ("seeds", ", ".join(seeds)), ("runs with metrics", f"{n_found} / {len(arms) * len(seeds)}"),
                ("primary metrics", ", ".join(primary) if primary else None),
                ("wall time of the last `fairalign compare` call", f"{wall / 60:.1f} min" if D.finite(wall) else None)])
    if primary:
        page.section("Primary metrics", lambda: _primary(page, comp, primary))
    if comp.get("method") or comp.get("spec"):
        page.section("Method", lambda: _method(page, comp))
    page.section("Paired differences", lambda: _differences(page, comp, set(primary)))
    page.section("Per-group differences", lambda: _group_differences(page, comp))
    page.section("Per-arm results", lambda: _arm_results(page, comp, arms, seeds))
    page.section("Training curves", lambda: _curves(page, arms, rows))
    page.section("Length fairness", lambda: _fairness(page, arms, seeds, rows))
    page.section("Runs", lambda: _runs(page, study_dir, arms, seeds, rows))
    return page


METRIC_ORDER = ("heldout/reward", GROUP_PREFIX, "dialogue/", "heldout/", "train/", "lre/", "clip_rate/", "time/")


def _metric_order(m: str) -> tuple[int, list]:
    """Held-out reward first, then its groups, dialogue scores, training numbers, diagnostics, times."""
    return next((i for i, p in enumerate(METRIC_ORDER) if m.startswith(p)), len(METRIC_ORDER)), D.natural(m)


def _method(page: Page, comp: dict) -> None:
    if comp.get("method"):
        page.para(str(comp["method"]), cls="method")
    made = [[k, comp[k]] for k in ("spec", "overrides", "eval_overrides") if comp.get(k)]
    if made:
        page.add(table(["made by", ""], made, num_cols=set(), text_cols={1}))


def _summary_cell(d) -> str:
    """An arms_summary entry {"mean", "ci95", "n", ...} as "mean [lo, hi] (n=…)"."""
    if not isinstance(d, dict):
        return fmt(d)
    ci = _ci(d)
    return f"{fmt(d.get('mean'), 3)} {fmt_interval(ci, 3) if ci != (None, None) else ''} (n={fmt(d.get('n'))})"


def _primary_names(comp: dict) -> list[str]:
    names = comp.get("primary")
    return [str(m) for m in names] if isinstance(names, list) else []


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _primary(page: Page, comp: dict, primary: list[str]) -> None:
    arms = [str(a) for a in comp.get("arms") or []]
    base = comp.get("baseline") or (arms[0] if arms else "")
    summary, diffs = _dict(comp.get("arms_summary")), _dict(comp.get("differences"))
    un = _dict(comp.get("untrained"))
    un_summary, learned = _dict(un.get("summary")), _dict(un.get("differences"))
    status = comp.get("primary_status")
    page.para(f"These metrics carry the study's claims; {status or 'declared in the spec'}. "
              "Every difference is paired by seed; mde80 is the smallest true difference the study detects with "
              "80% power (two-sided 5%); p_adj is Holm's adjustment over every arm × primary metric. Highlighted "
              "rows: a difference to the baseline at 5% (p_adj where there is one).")
    for m in primary:
        body, classes = [], []
        if isinstance(un_summary.get(m), dict):
            body.append(["untrained (starting policy)", _summary_cell(un_summary[m]), *["—"] * 6])
            classes.append("")
        for a in arms:
            ld = _dict(_dict(learned.get(a)).get(m))
            d = _dict(_dict(diffs.get(a)).get(m)) if a != base else {}
            body.append([a, _summary_cell(_dict(summary.get(a)).get(m)) if m in _dict(summary.get(a)) else "—",
                         _diff_cell(ld), fmt(ld.get("mde80"), 3), _diff_cell(d), fmt(d.get("mde80"), 3),
                         _p(d.get("p")), _p(d.get("p_adj"))])
            sig = d.get("p_adj") < 0.05 if D.finite(d.get("p_adj")) else _excludes_zero(d)
            classes.append("sig" if d and sig else "")
        page.add(f"<h3>{esc(m)}</h3>")
        page.add(table(["arm", "mean [95% interval] (n)", "− untrained [95% interval]", "mde80",
                        f"− {base} [95% interval]", "mde80", "p", "p_adj"], body,
                       num_cols={2, 3, 4, 5, 6, 7}, row_classes=classes))
    lines = comp.get("reading")
    if isinstance(lines, list) and lines:
        page.add("<h3>Reading</h3><ul>" + "".join(f"<li>{esc(x)}</li>" for x in lines) + "</ul>")


def _diff_cell(d: dict) -> str:
    if not d or not D.finite(d.get("mean")):
        return "—"
    return f"{d['mean']:+.3f} {fmt_interval(_ci(d), 3) if _ci(d) != (None, None) else '(n=1)'}"


def _differences(page: Page, comp: dict, primary: set[str] = frozenset()) -> None:
    diffs = comp.get("differences") if isinstance(comp.get("differences"), dict) else {}
    body, classes = [], []
    for arm, metrics in diffs.items():
        if not isinstance(metrics, dict):
            continue
        for m in sorted((m for m in metrics if m not in primary), key=_metric_order):
            d = metrics[m] if isinstance(metrics[m], dict) else {}
            body.append([arm, m, fmt(d.get("mean"), 3), fmt_interval(_ci(d), 3), fmt(d.get("mde80"), 3),
                         _p(d.get("p")), d.get("n"), "bootstrap" if d.get("method") == "bootstrap" else "t"])
            classes.append("sig" if _excludes_zero(d) else "")
    if not body:
        page.note("comparison.json has no paired differences.")
        return
    base = f"the baseline arm '{comp['baseline']}'" if comp.get("baseline") else "the reference arm"
    page.para(f"{'Secondary metrics (descriptive: no adjustment for the many rows). ' if primary else ''}"
              f"Each arm minus {base}, paired by seed (same seeds, prompts and held-out set). "
              "Highlighted rows: the 95% interval excludes 0. n is the number of paired seeds; mde80 the smallest "
              "true difference detectable with 80% power; interval: a t interval over seeds, or the two-level "
              "bootstrap over seeds × profiles (dialogue metrics).")
    page.add(table(["arm", "metric", "mean difference", "95% interval", "mde80", "p", "n", "interval"], body,
                   num_cols={2, 3, 4, 5, 6}, row_classes=classes))


def _group_differences(page: Page, comp: dict) -> None:
    diffs = comp.get("differences") if isinstance(comp.get("differences"), dict) else {}
    per_arm = {}
    for arm, metrics in diffs.items():
        if isinstance(metrics, dict):
            per_arm[arm] = {m[len(GROUP_PREFIX):]: (d.get("mean"), *_ci(d)) for m, d in metrics.items()
                            if m.startswith(GROUP_PREFIX) and isinstance(d, dict)}
    base = f"'{comp['baseline']}'" if comp.get("baseline") else "the reference arm"
    page.figure(P.group_diff_figure(per_arm, f"Held-out reward per preference group: difference to {base}",
                                    arms=[str(a) for a in comp.get("arms") or per_arm]),
                "per-group differences", f"No {GROUP_PREFIX}<g> differences in comparison.json.")


def _arm_results(page: Page, comp: dict, arms: list[str], seeds: list[str]) -> None:
    runs = comp.get("runs") if isinstance(comp.get("runs"), dict) else {}
    metrics = sorted({m for a in runs.values() if isinstance(a, dict) for r in a.values() if isinstance(r, dict)
                      for m in r}, key=_metric_order)
    if not metrics:
        page.note("comparison.json has no per-run metrics.")
        return
    summary = comp.get("arms_summary")
    structured = isinstance(summary, dict) and all(isinstance(v, dict) for v in summary.values())
    un = _dict(comp.get("untrained"))
    un_summary = _dict(un.get("summary"))
    body, raw = [], []
    for m in metrics:
        cells = []
        if un_summary:
            cells.append(_summary_cell(un_summary[m]) if isinstance(un_summary.get(m), dict) else "—")
        for a in arms:
            if structured and m in summary.get(a, {}):
                cells.append(_summary_cell(summary[a][m]))
                continue
            vals = [runs.get(a, {}).get(s, {}).get(m) for s in seeds]
            vals = [v for v in vals if D.finite(v)]
            if not vals:
                cells.append("—")
                continue
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            sd = sd if sd > 1e-9 * max(1.0, abs(mean)) else 0.0  # rounding noise of equal values
            cells.append(f"{fmt(mean, 3)} ± {fmt(sd, 3)} (n={len(vals)})")
        body.append([m, *cells])
        raw.append([m, *(runs.get(a, {}).get(s, {}).get(m) for a in arms for s in seeds)])
    cols = (["untrained"] if un_summary else []) + arms
    page.para("Per arm over its seeds: the mean with its 95% interval from arms_summary (n seeds), or, "
              "where arms_summary lacks the metric, mean ± standard deviation."
              + (" untrained: the starting policy of each seed, evaluated once." if un_summary else ""))
    page.add(table(["metric", *cols], body, num_cols=set(range(1, len(cols) + 1))))
    page.add("<details><summary>every run's value</summary>"
             + table(["metric", *(f"{a} / seed {s}" for a in arms for s in seeds)], raw) + "</details>")
    if summary is not None and not structured:
        page.add("<h3>Arms summary</h3>" + json_table(summary))


def _curves(page: Page, arms: list[str], rows: dict) -> None:
    panels = [(title, {a: {s: D.series(r, key) for s, r in rows[a].items() if r} for a in arms})
              for key, title in CURVES]
    panels.append(("LRE of the pooled counts, steps 1..t",
                   {a: {s: D.cumulative_pooled_lre(r, 150) for s, r in rows[a].items() if r} for a in arms}))
    page.figure(P.overlay_figure(panels), "training curves per arm", "No run directory has metrics.jsonl.")
    all_rows = [r for a in arms for r in rows[a].values()]
    groups = sorted({k for r in all_rows for k in D.keys_with_prefix(r, "reward/group/")}, key=D.natural)
    if groups:
        shown = groups[:MAX_GROUP_PANELS]
        page.add("<h3>Training reward per preference group</h3>")
        page.figure(P.overlay_figure(
            [(k.split("/", 2)[2], {a: {s: D.series(r, k) for s, r in rows[a].items() if r} for a in arms})
             for k in shown], ncols=3, ylabel="mean reward"), "reward per group", "")
        if len(groups) > len(shown):
            page.note(f"{len(groups) - len(shown)} more preference groups not drawn ({len(groups)} in all).")


def _fairness(page: Page, arms: list[str], seeds: list[str], rows: dict) -> None:
    pools, body = {}, []
    for a in arms:
        merged = [row for r in rows[a].values() for row in r]
        pools[a] = pooled_clip_counts(merged)
        per_seed = [D.pooled_lre(rows[a][s]) for s in seeds if rows[a][s]]
        per_seed = [v for v in per_seed if v is not None]
        body.append([a, D.pooled_lre(merged), fmt_interval(D.pooled_lre_interval(merged)),
                     sum(per_seed) / len(per_seed) if per_seed else None,
                     ", ".join(fmt(v) for v in per_seed) or "—"])
    page.figure(P.pooled_clip_figure(pools, "Clip rate per length bin, pooled over every step of every seed"),
                "pooled clip rate per arm", "No clip_count/len/<bin> counts in the runs' metrics.")
    page.add(table(["arm", "LRE, all seeds pooled", "95% interval (bootstrap over steps)",
                    "mean of the seeds' pooled LRE", "per seed"], body, num_cols={1, 2, 3}))


def _runs(page: Page, study_dir: Path, arms: list[str], seeds: list[str], rows: dict) -> None:
    body = []
    for a in arms:
        for s in seeds:
            rel = f"{a}/seed-{s}"
            r = rows[a][s]
            report = study_dir / rel / "report.html"
            link = (f'<a href="{esc(rel)}/report.html">report</a>',) if report.is_file() else "—"
            status = f"{r[-1].get('step', '?')} steps" if r else \
                ("no metrics.jsonl" if (study_dir / rel).is_dir() else "missing")
            body.append([a, s, (f"<code>{esc(rel)}</code>",), status, link])
    page.add(table(["arm", "seed", "run directory", "logged", "run report"], body, num_cols=set()))
