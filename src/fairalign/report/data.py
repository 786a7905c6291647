"""What a report reads: a run directory's files and the series drawn from its metrics.jsonl.

Pure Python over the logged rows (one dict per step). metrics.jsonl writes null for a non-finite
value and leaves a key out where a step has no value (clip metrics of an on-policy step), so every
series here keeps only the steps whose value is a finite number. Long runs are drawn from at most
`MAX_POINTS` points: consecutive steps are averaged into windows. Per-bin clip rates are pooled from
the logged counts (clipped weight / sequences), never averaged as rates; next to the pooled LRE, the same
counts give its flat-clipping noise floor and two measures that do not shrink with the overall clip rate
(the extreme bins' log rate ratio, the logistic slope on log L; fairalign.diagnostics), and the logged
gradient cosines pool into one mean over every update.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from fairalign.diagnostics import (
    extreme_bin_log_ratio,
    logistic_length_slope,
    lre_floor_from_pooled_counts,
    lre_from_pooled_counts,
    pooled_clip_counts,
)
from fairalign.train.logging import read_jsonl

MAX_POINTS = 300
TIME_PARTS = ("time/generate_s", "time/reward_s", "time/logprob_s", "time/update_s")


def finite(v) -> bool:
    """A finite int or float (not a bool, None, NaN or inf); called for every value of every row."""
    t = type(v)
    return t is int or (t is float and v - v == 0.0) or (t not in (bool, str, type(None)) and
                                                         isinstance(v, (int, float)) and math.isfinite(v))


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where `key` is a finite number."""
    pts = [(r.get("step", i + 1), r[key]) for i, r in enumerate(rows) if finite(r.get(key))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def downsample(xs: list[float], ys: list[float], weights: list[float] | None = None,
               max_points: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most `max_points` points: means of consecutive windows (x: window mean; y: weighted mean)."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    w = weights or [1.0] * n
    out_x, out_y = [], []
    for b in range(max_points):
        lo, hi = b * n // max_points, (b + 1) * n // max_points
        ws = sum(w[lo:hi])
        out_x.append(sum(xs[lo:hi]) / (hi - lo))
        out_y.append(sum(y * wi for y, wi in zip(ys[lo:hi], w[lo:hi])) / ws if ws > 0
                     else sum(ys[lo:hi]) / (hi - lo))
    return out_x, out_y


def keys_with_prefix(rows: list[dict], prefix: str) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k.startswith(prefix):
                seen[k] = None
    return list(seen)


def natural(text: str) -> list:
    """Sort key that puts g2 before g10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def bin_label(key: str) -> str:
    return key.rsplit("/", 1)[1]


def _bin_lo(label: str) -> int:
    try:
        return int(label.split("-")[0])
    except ValueError:
        return 1 << 62


def length_bins(rows: list[dict]) -> list[str]:
    """Bin labels ("8-16", ...) seen in `clip_rate/len/<bin>` or `clip_count/len/<bin>`, shortest first."""
    labels = {bin_label(k) for k in keys_with_prefix(rows, "clip_rate/len/")}
    labels |= {bin_label(k) for k in keys_with_prefix(rows, "clip_count/len/")}
    return sorted(labels, key=_bin_lo)


def clip_rate_series(rows: list[dict], label: str) -> tuple[list[float], list[float], int]:
    """A bin's clip rate over steps, each point pooled over a trailing window of the bin's last `w`
    steps (w ~ 1/8 of them, 1 to 50; a per-bin rate of ~10 sequences is mostly noise): (xs, ys, w)."""
    key, ckey, kkey = f"clip_rate/len/{label}", f"clip_count/len/{label}", f"clip_clipped/len/{label}"
    pts = []
    for i, r in enumerate(rows):
        if finite(r.get(key)):
            n = float(r[ckey]) if finite(r.get(ckey)) and r[ckey] > 0 else None
            k = float(r[kkey]) if n is not None and finite(r.get(kkey)) else None
            pts.append((r.get("step", i + 1), (k, n) if k is not None else (float(r[key]), 1.0)))
    w = max(1, min(50, len(pts) // 8))
    xs, ys, sum_k, sum_n = [], [], [0.0], [0.0]
    for j, (step, (k, n)) in enumerate(pts):
        sum_k.append(sum_k[-1] + k)
        sum_n.append(sum_n[-1] + n)
        lo = max(0, j + 1 - w)
        xs.append(step)
        ys.append((sum_k[-1] - sum_k[lo]) / (sum_n[-1] - sum_n[lo]))
    return (*downsample(xs, ys), w)


def pooled_lre(rows: list[dict]) -> float | None:
    counts, clipped = pooled_clip_counts(rows)
    return lre_from_pooled_counts(counts, clipped) if counts else None


def pooled_lre_floor(rows: list[dict]) -> dict | None:
    """The LRE that flat clipping at the run's pooled rate would give from sampling noise alone, at the
    pooled bin counts: {"mean", "q95", "method"} (diagnostics.lre_noise_floor); None without counts."""
    counts, clipped = pooled_clip_counts(rows)
    return lre_floor_from_pooled_counts(counts, clipped) if counts else None


def pooled_extreme_log_ratio(rows: list[dict], min_count: float = 1) -> dict | None:
    """log(clip rate of the longest / the shortest bin with >= min_count sequences) of the pooled counts,
    with its 95% Wald interval (diagnostics.extreme_bin_log_ratio); None with fewer than two bins."""
    counts, clipped = pooled_clip_counts(rows)
    return extreme_bin_log_ratio(counts, clipped, min_count=min_count) if counts else None


def pooled_length_slope(rows: list[dict]) -> dict | None:
    """Logistic slope of "clipped" on log length over the pooled bins, with its 95% Wald interval
    (diagnostics.logistic_length_slope); None when it cannot be fitted."""
    counts, clipped = pooled_clip_counts(rows)
    return logistic_length_slope(counts, clipped) if counts else None


def pooled_grad_cosine(rows: list[dict]) -> tuple[float, int] | None:
    """(mean of `grad_cosine` over every update of the rows, number of updates): Σ grad_cosine·updates /
    Σ updates (log.grad_cosine); None when no step logged one."""
    num = den = 0.0
    for r in rows:
        if finite(r.get("grad_cosine")) and finite(r.get("grad_cosine/updates")):
            num += r["grad_cosine"] * r["grad_cosine/updates"]
            den += r["grad_cosine/updates"]
    return (num / den, int(den)) if den > 0 else None


def pooled_lre_interval(rows: list[dict], n_boot: int = 200, seed: int = 0) -> tuple[float, float] | None:
    """95% bootstrap interval of the pooled LRE, resampling the steps that have per-bin counts (seeded,
    so a report is reproducible); None with fewer than 2 such steps."""
    import numpy as np

    labels = sorted(pooled_clip_counts(rows)[0], key=_bin_lo)
    steps = [r for r in rows if any(k.startswith("clip_count/len/") for k in r)]
    if len(steps) < 2 or not labels:
        return None

    def column(r: dict, prefix: str) -> list[float]:
        return [float(r[k]) if finite(r.get(k := f"{prefix}{b}")) else 0.0 for b in labels]

    counts = np.array([column(r, "clip_count/len/") for r in steps])  # [S, K]
    clipped = np.array([column(r, "clip_clipped/len/") for r in steps])  # [S, K]
    times = np.random.default_rng(seed).multinomial(len(steps), [1.0 / len(steps)] * len(steps), size=n_boot)
    vals = [lre_from_pooled_counts(dict(zip(labels, c)), dict(zip(labels, k)))
            for c, k in zip(times @ counts, times @ clipped)]  # [n_boot] resampled pooled LREs
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return round(float(lo), 12), round(float(hi), 12)  # no 2e-16 for an LRE that is 0 up to rounding


def cumulative_pooled_lre(rows: list[dict], max_points: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """LRE of the counts pooled from step 1 up to each step (at most `max_points` evaluations)."""
    idx = [i for i, r in enumerate(rows) if any(k.startswith("clip_count/len/") for k in r)]
    if not idx:
        return [], []
    picks = sorted({idx[(j + 1) * len(idx) // max_points - 1] for j in range(max_points)}
                   if len(idx) > max_points else idx)
    counts: dict[str, float] = {}
    clipped: dict[str, float] = {}
    xs, ys, done = [], [], 0
    for i in picks:
        part_c, part_k = pooled_clip_counts(rows[done:i + 1])
        done = i + 1
        for b, v in part_c.items():
            counts[b] = counts.get(b, 0.0) + v
            clipped[b] = clipped.get(b, 0.0) + part_k.get(b, 0.0)
        xs.append(rows[i].get("step", i + 1))
        ys.append(lre_from_pooled_counts(counts, clipped))
    return xs, ys


def window_mean(rows: list[dict], key: str, frac: float = 0.1, last: bool = True) -> float | None:
    """Mean of `key` over the last (or first) `frac` of the steps that have it (at least one step)."""
    _, ys = series(rows, key)
    if not ys:
        return None
    k = max(1, int(len(ys) * frac))
    part = ys[-k:] if last else ys[:k]
    return sum(part) / len(part)


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def last_step_samples(path: Path, limit: int = 64) -> list[dict]:
    """The samples of the last step in samples.jsonl (read from the end; a torn last line is skipped)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    out: list[dict] = []
    step = None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        if step is None:
            step = row.get("step")
        elif row.get("step") != step:
            break
        out.append(row)
    return list(reversed(out))[:limit]


def load_rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    """The rows of a run's JSONL file (metrics.jsonl by default); [] when it is missing."""
    return [r for r in read_jsonl(Path(run_dir) / name) if isinstance(r, dict)]
