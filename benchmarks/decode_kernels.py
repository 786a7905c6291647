"""What the CPU decode kernels (rollout/decode_kernels.py) buy, op by op (a benchmark script).

1. One linear layer of SmolLM2's shapes at decode-sized inputs: `F.linear` (which re-packs the weight
   for oneDNN on every call) against oneDNN's linear on a weight packed once, in ms per call, with
   the FLOP floor at the measured square-matmul rate.
2. One `generate` call of the demo's first rollout (8 prompts x 4 samples, 48 new tokens) with
   `cpu_kernels` off and on: wall time and torch.profiler's top ops by self CPU time.

    PYTHONPATH=src .venv/bin/python benchmarks/decode_kernels.py [--threads 2] [--rows 32]
"""
from __future__ import annotations

import argparse
import os
import time


def per_call(fn, reps: int = 30) -> float:
    """Mean seconds per call of `fn()` over `reps` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=32, help="decode rows for the linear-layer timing")
    a = ap.parse_args()
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from fairalign.envs import get_task
    from fairalign.models import load_policy
    from fairalign.rollout import HFGenerationEngine

    torch.set_num_threads(a.threads)
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    rate = 2 * n ** 3 / min(per_call(lambda: x @ y, 1) for _ in range(5))
    print(f"fp32 square-matmul rate {rate / 1e9:.0f} GFLOP/s, {a.threads} threads\n")
    print("| linear (out x in) | rows | F.linear ms | packed ms | FLOP floor ms |")
    print("|---|---|---|---|---|")
    for out_f, in_f in ((49152, 576), (1536, 576), (576, 1536), (576, 576)):
        w, inp = torch.randn(out_f, in_f), torch.randn(a.rows, in_f)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, a.rows)
        plain_s = per_call(lambda: F.linear(inp, w))
        packed_s = per_call(lambda: torch.ops.mkldnn._linear_pointwise(inp, packed, None, "none", [], ""))
        print(f"| {out_f} x {in_f} | {a.rows} | {plain_s * 1e3:.2f} | {packed_s * 1e3:.2f} | "
              f"{2 * a.rows * out_f * in_f / rate * 1e3:.2f} |")
    model, tok = load_policy("smollm2-135m")
    model.eval()
    prompts = [ex["prompt"] for ex in get_task("personas").train_examples[:8]]
    for kernels in (False, True):
        engine = HFGenerationEngine(model, tok, max_new_tokens=48, temperature=1.0, cpu_kernels=kernels)
        engine.generate(prompts, generations=4, generator_seed=1)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            batch = engine.generate(prompts, generations=4, generator_seed=0)
            wall = time.perf_counter() - t
        print(f"\ncpu_kernels={kernels}: {wall:.2f} s for {int(batch.lengths.sum())} tokens in {len(batch)} rows")
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:6]
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        for e in ops:
            print(f"  {e.key:<50} {e.self_cpu_time_total / 1e6:6.2f} s  {100 * e.self_cpu_time_total / total:4.1f}%")


if __name__ == "__main__":
    main()
