"""Soak test: many steps of the tiny model with frequent checkpoints, watching memory and step time.

    .venv/bin/python benchmarks/soak.py [--steps 500] [--save-every 10] [--out runs/soak]

Runs `fairalign train`'s own loop (Trainer.train, so checkpoints, logging and the signal handling
are exercised exactly as in a run) and samples the process's resident memory (RSS, /proc/self/statm)
and the step time. Prints a JSON summary: RSS and mean step time over the first and the last 10% of
the steps, and their growth. Flat is the goal; growth is a leak to find. Linux only (reads /proc).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=10)
    ap.add_argument("--out", default="runs/soak")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    shutil.rmtree(args.out, ignore_errors=True)
    cfg = build_config({"model": "tiny", "task": "personas", "steps": args.steps, "save_every": args.save_every,
                        "output_dir": args.out, "seed": 0,
                        "rollout": {"prompts_per_step": 4, "generations": 4, "max_new_tokens": 16},
                        "log": {"tensorboard": True, "progress": False, "samples_per_step": 4}})
    trainer = Trainer(cfg, progress=False)
    samples = []  # (step, rss MB, step seconds)
    original = trainer.train_step

    def timed_step():
        t0 = time.perf_counter()
        m = original()
        samples.append((m["step"], rss_mb(), time.perf_counter() - t0))
        if m["step"] % 50 == 0:
            print(f"step {m['step']}/{args.steps}  rss {samples[-1][1]:.0f} MB  {samples[-1][2]:.3f} s/step",
                  flush=True)
        return m

    trainer.train_step = timed_step
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    k = max(1, len(samples) // 10)
    head, tail = samples[:k], samples[-k:]

    def mean(rows, i):
        return sum(r[i] for r in rows) / len(rows)

    out = {"steps": len(samples), "save_every": args.save_every, "wall_s": round(wall, 1),
           "rss_mb_first10pct": round(mean(head, 1), 1), "rss_mb_last10pct": round(mean(tail, 1), 1),
           "rss_growth_mb": round(mean(tail, 1) - mean(head, 1), 1),
           "step_s_first10pct": round(mean(head, 2), 4), "step_s_last10pct": round(mean(tail, 2), 4),
           "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "checkpoints_on_disk": len(list((Path(args.out) / "checkpoints").glob("step-*")))}
    (Path(args.out) / "soak.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
