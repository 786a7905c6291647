"""`fairalign report DIR`: one self-contained report.html for a run or a study directory.

A run directory has config.yaml and/or metrics.jsonl (`fairalign train` and `fairalign demo`
write its report at the end of every run); a study directory has comparison.json and its runs in
`ARM/seed-S/` (`fairalign compare`). The page embeds its figures as base64 PNG and its CSS, and has
no JavaScript, so it opens from disk, offline, in any browser. See docs/report.md.
"""
from __future__ import annotations

import os
from pathlib import Path

from fairalign.errors import ConfigError
from fairalign.report.run import build_run_page
from fairalign.report.study import build_study_page

REPORT_NAME = "report.html"


def kind_of(path: str | Path) -> str | None:
    """"study", "run", or None when `path` is neither."""
    p = Path(path)
    if (p / "comparison.json").is_file():
        return "study"
    if (p / "config.yaml").is_file() or (p / "metrics.jsonl").is_file():
        return "run"
    return None


def write_report(path: str | Path) -> Path:
    """Write `path`/report.html for the run or study directory `path`; returns the file's path.
    Raises ValueError when `path` is neither kind of directory."""
    p = Path(path)
    kind = kind_of(p)
    if kind is None:
        raise ConfigError(f"report: '{p}' is neither a run directory (config.yaml, metrics.jsonl) nor a study "
                         f"directory (comparison.json)")
    page = build_study_page(p) if kind == "study" else build_run_page(p)
    out = p / REPORT_NAME
    tmp = out.with_name(REPORT_NAME + ".tmp")
    tmp.write_text(page.render(), encoding="utf-8")
    os.replace(tmp, out)
    return out


__all__ = ["REPORT_NAME", "kind_of", "write_report"]
