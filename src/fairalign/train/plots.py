"""PNG plots of a run from its metrics.jsonl: reward per preference group over steps, clip rate by
length bin, response length. Matplotlib with the Agg backend (no display needed)."""
from __future__ import annotations

from pathlib import Path

from fairalign.train.logging import read_jsonl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bin_key(k: str) -> int:
    return int(k.rsplit("/", 1)[1].split("-")[0])


def make_plots(run_dir: str | Path) -> list[Path]:
    run_dir = Path(run_dir)
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if not rows:
        return []
    plt = _plt()
    out = []
    steps = [r["step"] for r in rows]

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = sorted({k for r in rows for k in r if k.startswith("reward/group/")})
    for k in groups:
        xs = [r["step"] for r in rows if r.get(k) is not None]
        ys = [r[k] for r in rows if r.get(k) is not None]
        ax.plot(xs, ys, marker=".", label=k.split("/", 2)[2])
    ax.plot(steps, [r["reward/mean"] for r in rows], color="black", lw=2, label="all")
    ax.set(xlabel="step", ylabel="mean reward", title="Training reward per preference group")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.append(run_dir / "reward_by_group.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    bins = sorted({k for r in rows for k in r if k.startswith("clip_rate/len/")}, key=_bin_key)
    if bins:
        fig, ax = plt.subplots(figsize=(7, 4))
        means = []
        for k in bins:
            vals = [r[k] for r in rows if r.get(k) is not None]
            means.append(sum(vals) / len(vals))
        ax.bar(range(len(bins)), means)
        ax.set_xticks(range(len(bins)), [k.rsplit("/", 1)[1] for k in bins], rotation=45)
        lre = [r["lre"] for r in rows if r.get("lre") is not None]
        mean_lre = sum(lre) / len(lre) if lre else float("nan")
        ax.set(xlabel="response length bin (tokens)", ylabel="clip rate (mean over steps)",
               title=f"Clip rate by response length (mean LRE {mean_lre:.3f})")
        fig.tight_layout()
        out.append(run_dir / "clip_rate_by_length.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["response_length/mean"] for r in rows], label="mean")
    ax.plot(steps, [r["response_length/max"] for r in rows], label="max", alpha=0.6)
    ax.set(xlabel="step", ylabel="tokens", title="Response length")
    ax.legend()
    fig.tight_layout()
    out.append(run_dir / "response_length.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out
