"""Timing of fairalign.algos at training-batch scale (a benchmark script, not a test).

Default batch: 4096 sequences x 8192 tokens (33.5M token positions, fp32, response lengths
uniform in [1, T]). For every policy loss: forward (loss + stats, input checks included) and
forward+backward; for every advantage estimator and P-GRPO: one call on 4096 rewards (groups of
8 generations, 64 preference groups). Prints a markdown table; median of --repeats runs after
one warm-up.

    PYTHONPATH=src python benchmarks/algos.py [--batch 4096 --seq-len 8192 --device cpu --threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fairalign.algos import (AGG_MODES, ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY,
                             PreferenceGroupNormalizer, aggregate, compute_advantages,
                             compute_policy_loss, kl_penalty)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Median wall time in ms over `repeats` calls after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--pref-groups", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T, dev = args.batch, args.seq_len, args.device

    g = torch.Generator().manual_seed(0)
    old = (-torch.rand(B, T, generator=g) * 3).to(dev)  # [B, T]
    logp0 = old + (torch.randn(B, T, generator=g) * 0.05).to(dev)  # [B, T]
    lengths = torch.randint(1, T + 1, (B,), generator=g).to(dev)  # [B]
    mask = torch.arange(T, device=dev)[None, :] < lengths[:, None]  # [B, T]
    rewards = torch.rand(B, generator=g).to(dev)  # [B]
    index = (torch.arange(B) // args.group_size).to(dev)  # [B]
    adv = compute_advantages("grpo", rewards, index)  # [B]
    tokens = int(mask.sum())

    if dev == "cpu":
        hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    else:
        hw = torch.cuda.get_device_name(dev)
    print(f"# fairalign.algos timings: B={B} x T={T} ({B * T / 1e6:.1f}M positions, "
          f"{tokens / 1e6:.1f}M response tokens), fp32, device={dev} ({hw}), torch "
          f"{torch.__version__}, median of {args.repeats}\n")
    print("| component | forward ms | forward+backward ms | fwd+bwd response tokens/s |")
    print("|---|---:|---:|---:|")

    for name in POLICY_LOSS_REGISTRY:
        agg = "seq-mean-token-mean" if name in ("gspo", "fspo") else "token-mean"
        logp = logp0.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                compute_policy_loss(name, logp, old, adv, mask, agg=agg)

        def fwd_bwd():
            loss, _ = compute_policy_loss(name, logp, old, adv, mask, agg=agg)
            loss.backward()
            logp.grad = None

        f = timed(fwd, dev, args.repeats)
        fb = timed(fwd_bwd, dev, args.repeats)
        print(f"| loss `{name}` ({agg}) | {f:.0f} | {fb:.0f} | {tokens / fb * 1e3 / 1e6:.1f}M |")

    loss_mat = logp0.clone().requires_grad_()
    for agg in AGG_MODES:
        def agg_fb():
            aggregate(loss_mat, mask, agg).backward()
            loss_mat.grad = None
        f = timed(lambda: aggregate(loss_mat.detach(), mask, agg), dev, args.repeats)
        fb = timed(agg_fb, dev, args.repeats)
        print(f"| aggregate `{agg}` | {f:.0f} | {fb:.0f} | {tokens / fb * 1e3 / 1e6:.1f}M |")

    for kind in ("k1", "k2", "k3"):
        f = timed(lambda: kl_penalty(logp0, old, kind), dev, args.repeats)
        print(f"| kl_penalty `{kind}` | {f:.0f} | – | – |")

    print("\n| advantages on N rewards | ms |")
    print("|---|---:|")
    for name in (n for n, s in ESTIMATOR_REGISTRY.items() if not s.requires):
        ms = timed(lambda: compute_advantages(name, rewards, index), dev, args.repeats)
        print(f"| `{name}` (N={B}) | {ms:.2f} |")
    pref_t = (torch.arange(B) % args.pref_groups).to(dev)
    pref_l = [f"persona-{i % args.pref_groups}" for i in range(B)]
    for label, groups in (("tensor groups", pref_t), ("list[str] groups", pref_l)):
        norm = PreferenceGroupNormalizer(min_count=8)
        norm(rewards, groups, index)  # warm state: every group past min_count
        ms = timed(lambda: norm(rewards, groups, index), dev, args.repeats)
        print(f"| P-GRPO normalizer, {label} ({args.pref_groups} groups, N={B}) | {ms:.2f} |")


if __name__ == "__main__":
    main()
