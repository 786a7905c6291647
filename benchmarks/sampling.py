"""Micro-benchmark: one decode step's token sampling, torch.multinomial vs fairalign's inverse-CDF
sampler (`fairalign.rollout.hf_engine.sample_categorical`), at SmolLM2's vocabulary size.

    python benchmarks/sampling.py [--rows 16] [--vocab 49152] [--threads 1] [--repeats 200]
"""
from __future__ import annotations

import argparse
import time

import torch

from fairalign.rollout.hf_engine import sample_categorical


def bench(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    probs = torch.softmax(torch.randn(a.rows, a.vocab) * 3, dim=-1)
    g = torch.Generator().manual_seed(0)
    t_multi = bench(lambda: torch.multinomial(probs, 1, generator=g), a.repeats)
    t_icdf = bench(lambda: sample_categorical(probs, g), a.repeats)
    print(f"{a.rows} x {a.vocab}, {a.threads} thread(s): torch.multinomial {t_multi:.2f} ms, "
          f"inverse CDF {t_icdf:.2f} ms per decode step ({t_multi / t_icdf:.1f}x)")


if __name__ == "__main__":
    main()
