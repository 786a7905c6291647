"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display needed).

Every function takes plain data (rows of metrics.jsonl, or series already drawn from them) and
returns a `Figure`, or None when there is nothing to draw; the caller embeds it (`to_base64`) or
saves it (`save_png`). `fairalign.report.run_plots.make_plots` saves three of them next to the run.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

from fairalign.report.data import (TIME_PARTS, clip_rate_series, cumulative_pooled_lre, downsample, finite,
                                   keys_with_prefix, length_bins, natural, series)

MAX_GROUP_LINES = 12  # more preference groups than this: thin unlabelled lines (the report's table names them)
DPI = 100
Line = tuple[str, list[float], list[float]]  # (label, xs, ys)


def figure(width: float = 10.0, height: float = 3.6, ncols: int = 1, nrows: int = 1, *,
           legend_right: bool = False, left: float = 0.8, top: float = 0.4):
    """A figure with a grid of axes and fixed margins in inches (a layout engine would draw every
    figure twice; the report must stay fast). `legend_right` keeps 1.9 in for a legend there."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    right = 1.9 if legend_right else 0.25
    gap_w, gap_h = 0.85, 0.8  # inches between panels: the y labels, the next title and x label
    ax_w = (width - left - right - (ncols - 1) * gap_w) / ncols
    ax_h = (height - top - 0.55 - (nrows - 1) * gap_h) / nrows
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=0.55 / height, top=1 - top / height,
                        wspace=gap_w / ax_w, hspace=gap_h / ax_h)
    return fig, [ax for row in axes for ax in row]


def to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def save_png(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=110)
    return Path(path)


def color(i: int) -> tuple:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if i < 10 else colormaps["tab20"]
    return cmap(i % cmap.N)


def short(text: str, n: int = 20) -> str:
    """A label cut to n characters (legends and tick labels have fixed room)."""
    text = str(text)
    return text if len(text) <= n else text[:n - 1] + "…"


def _marker(*series_lengths: int) -> str | None:
    """Dots on every line of a panel when its longest line has at most 30 points."""
    return "o" if max(series_lengths, default=0) <= 30 else None


def _style(ax, grid_axis: str = "both", steps_x: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.grid(alpha=0.3, axis=grid_axis)
    if steps_x:  # steps are whole numbers (a 1-step run would get ticks at 0.96, 0.98, ...)
        lo, hi = ax.get_xlim()
        if hi - lo < 2:
            ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_yscale() == "linear":  # 1e-3-sized values with "1e-3" over the axis (short tick labels)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))


def lines_figure(panels: list[tuple[str, str, list[Line]]], width: float = 10.0, height: float = 3.6):
    """One panel per (title, ylabel, lines); lines and panels without a point are left out (None if
    all are); a panel that was given several lines keeps a legend, so a lone survivor is named."""
    panels = [(t, y, [ln for ln in lines if ln[1]], len(lines)) for t, y, lines in panels]
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = figure(width, height, ncols=len(panels))
    for ax, (title, ylabel, lines, given) in zip(axes, panels):
        mk = _marker(*(len(ln[1]) for ln in lines))
        for i, (label, xs, ys) in enumerate(lines):
            xs, ys = downsample(xs, ys)
            ax.plot(xs, ys, marker=mk, ms=3, lw=1.5, color=color(i), label=label)
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        _style(ax)
        if given > 1:
            ax.legend(fontsize=8)
    return fig


def reward_figure(rows: list[dict]):
    """Overall mean reward (black) and the mean reward of each preference group."""
    groups = sorted(keys_with_prefix(rows, "reward/group/"), key=natural)
    xs, ys = series(rows, "reward/mean")
    if not xs and not any(series(rows, k)[0] for k in groups):
        return None
    fig, (ax,) = figure(10, 4.2, legend_right=True)
    many = len(groups) > MAX_GROUP_LINES
    mk = _marker(len(rows))
    for i, k in enumerate(groups):
        gx, gy = downsample(*series(rows, k))
        if many:
            ax.plot(gx, gy, lw=0.8, alpha=0.45, color="tab:blue")
        else:
            ax.plot(gx, gy, lw=1.3, marker=mk, ms=3, color=color(i), label=short(k.split("/", 2)[2]))
    xs, ys = downsample(xs, ys)
    ax.plot(xs, ys, color="black", lw=2.2, marker=mk, ms=4, label="all samples")
    title = "Training reward: all samples and per preference group"
    if many:
        title += f" ({len(groups)} groups, thin lines)"
    ax.set(xlabel="step", ylabel="mean reward", title=title)
    _style(ax)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _bin_colors(n: int):
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.05 + 0.85 * i / max(n - 1, 1)) for i in range(n)]


def clip_over_time_figure(rows: list[dict]):
    """Clip rate of each response-length bin over steps (steps without the bin are gaps)."""
    labels = [b for b in length_bins(rows) if series(rows, f"clip_rate/len/{b}")[0]]
    if not labels:
        return None
    fig, (ax,) = figure(10, 3.8, legend_right=True)
    lines = [(b, *clip_rate_series(rows, b)) for b in labels]
    mk = _marker(*(len(ln[1]) for ln in lines))
    for c, (b, xs, ys, _) in zip(_bin_colors(len(labels)), lines):
        ax.plot(xs, ys, lw=1.3, marker=mk, ms=3, color=c, label=f"{b} tokens")
    w = max(ln[3] for ln in lines)
    title = "Clip rate per response-length bin over steps"
    if w > 1:
        title += f" (each point pools the bin's last {w} steps)"
    ax.set(xlabel="step", ylabel="clip rate (sequences)", title=title)
    ax.set_ylim(0, max(0.05, 1.1 * max(y for ln in lines for y in ln[2])))
    _style(ax)
    ax.legend(fontsize=8, title="length bin", title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def lre_figure(rows: list[dict]):
    """Per-step LRE (noisy) next to the LRE of the counts pooled from step 1 to each step."""
    xs, ys = series(rows, "lre")
    cx, cy = cumulative_pooled_lre(rows)
    if not xs and not cx:
        return None
    fig, (ax,) = figure(10, 3.6)
    mk = _marker(len(xs), len(cx))
    if xs:
        dx, dy = downsample(xs, ys)
        label = "per step" if len(dx) == len(xs) else f"per step (means of {len(xs) / len(dx):.0f}-step windows)"
        ax.plot(dx, dy, lw=0.9, alpha=0.6, marker=mk, ms=3, color="tab:gray", label=label)
    if cx:
        ax.plot(cx, cy, lw=2.2, color="tab:red", marker=mk, ms=3, label="pooled counts, steps 1..t")
        ax.axhline(cy[-1], color="tab:red", ls=":", lw=1, label=f"pooled over the run: {cy[-1]:.3f}")
    ax.set(xlabel="step", ylabel="LRE", title="Length reweighting error (0 = every length bin clipped alike)")
    ax.set_ylim(0, max(0.05, 1.1 * max([*ys, *cy])))
    _style(ax)
    ax.legend(fontsize=8)
    return fig


def pooled_clip_figure(pools: dict[str, tuple[dict[str, float], dict[str, float]]], title: str):
    """Pooled clip rate per length bin: {name: (counts, clipped)}; one bar colour per name (arm, in
    the order given, so an arm keeps its colour when another has no counts)."""
    colors = {n: color(j) for j, n in enumerate(pools)} if len(pools) > 1 else {n: "tab:blue" for n in pools}
    pools = {n: p for n, p in pools.items() if p[0]}
    if not pools:
        return None
    labels = sorted({b for c, _ in pools.values() for b in c}, key=lambda b: int(b.split("-")[0]))
    fig, (ax,) = figure(10, 3.8)
    width = 0.8 / len(pools)
    top = 0.0
    for j, (name, (counts, clipped)) in enumerate(pools.items()):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(labels))]
        rates = [clipped.get(b, 0.0) / counts[b] if counts.get(b) else float("nan") for b in labels]
        ax.bar(xs, rates, width=width * 0.95, color=colors[name], label=short(name))
        top = max([top, *(r for r in rates if math.isfinite(r))])
        if len(pools) == 1:
            for x, b, r in zip(xs, labels, rates):
                if math.isfinite(r):
                    ax.annotate(f"n={counts[b]:.0f}", (x, r), ha="center", va="bottom", fontsize=8,
                                xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 8 else 0)
    ax.set_ylim(0, max(top * 1.2, 0.05))
    ax.set(xlabel="response length bin (tokens)", ylabel="clip rate (pooled over steps)", title=title)
    _style(ax, "y", steps_x=False)
    if len(pools) > 1:
        ax.legend(fontsize=8)
    return fig


def timing_figure(rows: list[dict], max_bars: int = 60):
    """Stacked seconds per step of generation, rewards, log-probs, updates and the rest."""
    if not any(finite(r.get(k)) for r in rows for k in TIME_PARTS):
        return None
    parts = [*TIME_PARTS, "other"]
    vals = []
    for r in rows:
        v = [float(r[k]) if finite(r.get(k)) else 0.0 for k in TIME_PARTS]
        total = float(r["step_s"]) if finite(r.get("step_s")) else sum(v)
        vals.append((r.get("step", len(vals) + 1), [*v, max(total - sum(v), 0.0)]))
    n = len(vals)
    nb = min(n, max_bars)
    fig, (ax,) = figure(10, 3.6, legend_right=True)
    xs, stacks = [], [[] for _ in parts]
    for b in range(nb):
        chunk = vals[b * n // nb:(b + 1) * n // nb]
        xs.append(sum(c[0] for c in chunk) / len(chunk))
        for j in range(len(parts)):
            stacks[j].append(sum(c[1][j] for c in chunk) / len(chunk))
    colors = [color(j) if name != "other" else "lightgray" for j, name in enumerate(parts)]
    labels = [name.removeprefix("time/").removesuffix("_s") for name in parts]
    if nb > max_bars // 2:  # many windows: stacked areas (one polygon per part, fast to draw)
        ax.stackplot(xs, stacks, colors=colors, labels=labels)
    else:
        width = (xs[-1] - xs[0]) / max(nb - 1, 1) * 0.85 if nb > 1 else 0.6
        bottom = [0.0] * nb
        for j in range(len(parts)):
            ax.bar(xs, stacks[j], width=width, bottom=bottom, color=colors[j], label=labels[j])
            bottom = [a + b for a, b in zip(bottom, stacks[j])]
    ax.set(xlabel="step" if nb == n else f"step (mean of {n / nb:.0f}-step windows)", ylabel="seconds per step",
           title="Where the time goes")
    _style(ax, "y")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _mean_curve(per_seed: dict[str, tuple[list[float], list[float]]]) -> tuple[list[float], list[float]]:
    """Mean over seeds at the steps at least half of the seeds have (a seed that ran longer, or a
    group one seed did not sample at a step, does not make the mean jump)."""
    maps = [dict(zip(xs, ys)) for xs, ys in per_seed.values() if xs]
    need = (len(maps) + 1) // 2
    steps, ys = [], []
    for s in sorted(set().union(*maps)) if maps else []:
        v = [m[s] for m in maps if s in m]
        if len(v) >= need:
            steps.append(s)
            ys.append(sum(v) / len(v))
    return steps, ys


def overlay_figure(panels: list[tuple[str, dict[str, dict[str, tuple[list[float], list[float]]]]]],
                   ncols: int = 2, ylabel: str = ""):
    """Study curves: per panel {arm: {seed: (xs, ys)}}; one colour per arm, thin seeds, bold mean."""
    panels = [(t, d) for t, d in panels if any(xs for seeds in d.values() for xs, _ in seeds.values())]
    if not panels:
        return None
    arms = list(dict.fromkeys(a for _, d in panels for a in d))
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = figure(10, 3.0 * nrows + 0.8, ncols=ncols, nrows=nrows, top=0.85)
    for ax, (title, data) in zip(axes, panels):
        for arm, seeds in data.items():
            c = color(arms.index(arm))
            for xs, ys in seeds.values():
                dx, dy = downsample(xs, ys)
                ax.plot(dx, dy, lw=0.8, alpha=0.35, color=c)
            mx, my = downsample(*_mean_curve(seeds))
            ax.plot(mx, my, lw=2.2, color=c, marker=_marker(len(mx)), ms=3)
        ax.set(xlabel="step", ylabel=ylabel, title=title)
        _style(ax)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=color(i), lw=2.2, label=f"{short(a)} (mean)") for i, a in enumerate(arms)]
    handles.append(Line2D([], [], color="gray", lw=0.8, alpha=0.6, label="one seed"))
    fig.legend(handles=handles, loc="upper center", ncols=min(len(handles), 6), fontsize=9, frameon=False)
    return fig


def group_diff_figure(diffs: dict[str, dict[str, tuple[float, float | None, float | None]]], title: str,
                      arms: list[str] | None = None):
    """Paired differences per group with 95% intervals: {arm: {group: (mean, lo, hi)}}; an arm's
    colour is its place in `arms` (all the study's arms, as in the other figures)."""
    arms = arms or list(diffs)
    diffs = {a: {g: v for g, v in d.items() if finite(v[0])} for a, d in diffs.items()}
    diffs = {a: d for a, d in diffs.items() if d}
    if not diffs:
        return None
    groups = sorted({g for d in diffs.values() for g in d}, key=natural)
    names = [short(g, 28) for g in groups]
    fig, (ax,) = figure(10, max(2.4, 0.4 * len(groups) * max(1, len(diffs) ** 0.5) + 1.1), legend_right=True,
                        left=min(0.4 + 0.075 * max(len(n) for n in names), 2.6))
    step = 0.7 / len(diffs)
    for j, (arm, d) in enumerate(diffs.items()):
        ys, xs, lo, hi = [], [], [], []
        for i, g in enumerate(groups):
            if g in d:
                m, a, b = d[g]
                ys.append(i - 0.35 + step * (j + 0.5))
                xs.append(m)
                lo.append(m - a if finite(a) else 0.0)
                hi.append(b - m if finite(b) else 0.0)
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, color=color(arms.index(arm) if arm in arms else j),
                    label=short(arm))
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(groups)), names)
    ax.invert_yaxis()
    ax.set(xlabel="paired difference (mean, 95% interval)", title=title)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def length_figure(rows: list[dict]):
    return lines_figure([("Response length", "tokens", [
        ("mean", *series(rows, "response_length/mean")), ("max", *series(rows, "response_length/max"))]),
        ("Truncated at max_new_tokens", "fraction of responses", [("truncated", *series(rows, "truncated_frac"))])])
