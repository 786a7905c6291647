"""PNG plots of a run from its metrics.jsonl, next to it: reward per preference group over steps
(`reward_by_group.png`), clip rate by length bin pooled over the run (`clip_rate_by_length.png`),
response length (`response_length.png`). The figures are the report's (`fairalign.report.plots`);
report.html embeds them with the rest."""
from __future__ import annotations

from pathlib import Path


def make_plots(run_dir: str | Path) -> list[Path]:
    from fairalign.diagnostics import pooled_clip_counts
    from fairalign.report import data as D
    from fairalign.report import plots as P

    run_dir = Path(run_dir)
    rows = D.load_rows(run_dir)
    if not rows:
        return []
    counts, clipped = pooled_clip_counts(rows)
    lre = D.pooled_lre(rows)
    figures = {
        "reward_by_group.png": P.reward_figure(rows),
        "clip_rate_by_length.png": P.pooled_clip_figure(
            {"run": (counts, clipped)}, f"Clip rate by response length, pooled over the run (LRE {lre or 0:.3f})"),
        "response_length.png": P.length_figure(rows),
    }
    return [P.save_png(fig, run_dir / name) for name, fig in figures.items() if fig is not None]
