"""Run logging: metrics.jsonl (one JSON object per step, flushed and fsynced), samples.jsonl,
TensorBoard event files, optional Weights & Biases, and the live progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from fairalign.errors import ConfigError


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; a null says "not finite"
    return v


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash: everything before it is good
    return out


def truncate_after_step(path: Path, step: int) -> None:
    """Keep only well-formed lines with step <= `step` (used on resume: no duplicate steps)."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


class RunLogger:
    """Writes one run's metrics and samples; only the main process creates one."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True, wandb: bool = False,
                 config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                raise ConfigError("log.wandb=true needs Weights & Biases: pip install wandb") from None
            self._wandb = wb.init(project="fairalign", dir=str(self.run_dir), config=config or {})

    def log(self, metrics: dict) -> None:
        row = {k: _clean(v) for k, v in metrics.items()}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        step = int(metrics["step"])
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and k != "step" and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        if not samples:
            return
        with open(self.samples_path, "a") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}) + "\n")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """A rich progress bar with ETA and the key numbers on a terminal; one plain line per step when
    the output is a file, a CI log or a cluster job's log (a live bar shows nothing there)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "train",
                 stream=None):
        self.enabled = enabled
        self._t0 = time.time()
        self._start = start
        self.total = total
        self.description = description
        self._stream = stream or sys.stdout
        self._plain = enabled and not self._stream.isatty()
        if not enabled or self._plain:
            self._bar = None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), transient=False)
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, completed=start, info="")

    def update(self, step: int, metrics: dict) -> None:
        if self._plain:
            done = step - self._start
            per_step = (time.time() - self._t0) / max(done, 1)
            print(f"{'step' if self.description == 'train' else self.description} {step}/{self.total}  "
                  f"{self._info(metrics)}  eta {format_duration(per_step * (self.total - step))}",
                  file=self._stream, flush=True)
            return
        if self._bar is None:
            return
        self._bar.update(self._task, completed=step, info=self._info(metrics))

    @staticmethod
    def _info(metrics: dict) -> str:
        if "sft/loss" in metrics:
            return f"loss {metrics['sft/loss']:.3f}  {metrics.get('sft/step_s', float('nan')):.1f}s/step"
        return (f"reward {metrics.get('reward/mean', float('nan')):.3f}  "
                f"len {metrics.get('response_length/mean', float('nan')):.0f}  "
                f"clip {metrics.get('clip_frac', float('nan')):.3f}  "
                f"{metrics.get('step_s', float('nan')):.1f}s/step")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
