"""Length-fairness simulation: how often each clip band clips responses of each length.

Model (docs/length_fairness.md, "Why √L"): token log ratios ℓ are iid N(μ, σ²), so a response of length L has
sequence log ratio S_L = Σ_t ℓ_t ~ N(μL, σ²L) exactly; we sample S_L directly (8192-token
responses cost nothing). Each sample gets an advantage sign ±1 at random and counts as clipped
when `(A > 0 and S > hi) or (A < 0 and S < lo)` (docs/algorithms.md). Bands, in sum (log) space:

- `fixed`: PPO-style clip on the sequence ratio exp(S):  [log(1 − 0.2), log(1 + 0.2)]
- `gspo`:  clip on exp(mean_t ℓ) with [1 − 3e-4, 1 + 4e-4]:  L·[log(1 − 3e-4), log(1 + 4e-4)]
- `fspo`:  fairalign.algos.fspo_log_band: [μ̂L − c_low√L, μ̂L + c_high√L], μ̂ = 0 (drift none)
           or the batch mean of ℓ, Σ S / Σ L (drift kl)

Simplifications: independent tokens, one fixed set of lengths, no policy update.
Run: `fairalign simulate-clipping --out docs/figures` or `python -m fairalign.simulate`.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from fairalign.algos import fspo_log_band
from fairalign.diagnostics import clip_rates_by_length, length_reweighting_error

METHODS = ("fixed", "gspo", "fspo")
DRIFTS = ("none", "kl")
DEFAULT_LENGTHS = tuple(2**k for k in range(4, 14))  # 16, 32, ..., 8192

# Defaults, chosen so every band has a visible clip rate somewhere (see docs/length_fairness.md).
SIGMA = 0.02  # per-token log-ratio std
MU = -SIGMA**2 / 2  # -2e-4: the drift that keeps E[exp(ℓ)] = 1 (per-token KL ≈ σ²/2)
FIXED_CLIP = (0.2, 0.2)  # (clip_low, clip_high) on exp(S)
GSPO_CLIP = (3e-4, 4e-4)  # (clip_low, clip_high) on exp(mean ℓ)
FSPO_C = (0.02, 0.03)  # (c_low, c_high): fairalign's suggested starting values


def sample_sequences(
    lengths: list[int] | tuple[int, ...], samples_per_length: int, mu: float, sigma: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (L [N] int64, S [N] float64, A [N] float64 in {−1, +1}), N = len(lengths)·samples."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.tensor(lengths, dtype=torch.int64).repeat_interleave(samples_per_length)  # [N]
    Lf = L.double()  # [N]
    z = torch.randn(L.shape, generator=gen, dtype=torch.float64)  # [N]
    S = mu * Lf + sigma * Lf.sqrt() * z  # [N] ~ N(μL, σ²L)
    A = torch.randint(0, 2, L.shape, generator=gen).double() * 2 - 1  # [N] ±1
    return L, S, A


def log_band(
    method: str,
    L: torch.Tensor,
    S: torch.Tensor,
    drift: str = "kl",
    fixed_clip: tuple[float, float] = FIXED_CLIP,
    gspo_clip: tuple[float, float] = GSPO_CLIP,
    fspo_c: tuple[float, float] = FSPO_C,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo [N], hi [N]) of `method`'s band on the sequence log ratio S = Σ ℓ."""
    Lf = L.double()  # [N]
    if method == "fixed":
        lo = torch.full_like(Lf, math.log1p(-fixed_clip[0]))
        hi = torch.full_like(Lf, math.log1p(fixed_clip[1]))
        return lo, hi
    if method == "gspo":
        return Lf * math.log1p(-gspo_clip[0]), Lf * math.log1p(gspo_clip[1])
    if method == "fspo":
        if drift not in DRIFTS:
            raise ValueError(f"drift must be one of {list(DRIFTS)}, got {drift!r}")
        mu_hat = float(S.sum() / Lf.sum()) if drift == "kl" else 0.0  # batch mean of ℓ
        lo, hi = fspo_log_band(Lf, mu_hat, fspo_c[0], fspo_c[1])
        return lo.double(), hi.double()
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def clipped_mask(S: torch.Tensor, A: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """docs/algorithms.md: (A > 0 and S > hi) or (A < 0 and S < lo). All [N]; returns bool [N]."""
    return ((A > 0) & (S > hi)) | ((A < 0) & (S < lo))


def simulate_clipping(
    mu: float = MU,
    sigma: float = SIGMA,
    seed: int = 0,
    samples_per_length: int = 20000,
    drift: str = "kl",
    lengths: list[int] | tuple[int, ...] = DEFAULT_LENGTHS,
    fixed_clip: tuple[float, float] = FIXED_CLIP,
    gspo_clip: tuple[float, float] = GSPO_CLIP,
    fspo_c: tuple[float, float] = FSPO_C,
) -> dict:
    """Simulate and return {"config", "lengths", "mu_hat", "methods": {name: {"bins", "lre",
    "clip_rate", "clip_rate_upper", "clip_rate_lower"}}}; bins are powers of two."""
    if drift not in DRIFTS:
        raise ValueError(f"drift must be one of {list(DRIFTS)}, got {drift!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if samples_per_length < 1:
        raise ValueError(f"samples_per_length must be >= 1, got {samples_per_length}")
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be a non-empty list of positive ints, got {lengths}")
    L, S, A = sample_sequences(lengths, samples_per_length, mu, sigma, seed)
    methods = {}
    for name in METHODS:
        lo, hi = log_band(name, L, S, drift, fixed_clip, gspo_clip, fspo_c)
        clipped = clipped_mask(S, A, lo, hi)  # [N]
        methods[name] = {
            "bins": clip_rates_by_length(L, clipped),
            "lre": length_reweighting_error(L, clipped),
            "clip_rate": float(clipped.double().mean()),
            "clip_rate_upper": float(clipped[A > 0].double().mean()),
            "clip_rate_lower": float(clipped[A < 0].double().mean()),
        }
    config = {
        "mu": mu, "sigma": sigma, "seed": seed, "samples_per_length": samples_per_length,
        "drift": drift, "fixed_clip": list(fixed_clip), "gspo_clip": list(gspo_clip),
        "fspo_c": list(fspo_c),
    }
    return {
        "config": config,
        "lengths": [int(x) for x in lengths],
        "mu_hat": float(S.sum() / L.double().sum()),
        "methods": methods,
    }


def format_table(result: dict) -> str:
    """Markdown table: one row per length bin, one column per method, then the LRE row."""
    names = list(result["methods"])
    head = "| length bin | " + " | ".join(f"{n} clip rate" for n in names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    per_method = [result["methods"][n]["bins"] for n in names]  # same lengths -> same bins
    for k, b in enumerate(per_method[0]):
        if b["count"] > 0:
            rates = " | ".join(f"{rows[k]['clip_rate']:.4f}" for rows in per_method)
            lines.append(f"| [{b['lo']}, {b['hi']}) | {rates} |")
    lines.append("| **LRE** | " + " | ".join(f"**{result['methods'][n]['lre']:.4f}**" for n in names) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Clip rate vs. response length, one line per method (Agg backend, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result["config"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, m in result["methods"].items():
        bins = [b for b in m["bins"] if b["count"] > 0]
        label = f"{name} (drift {cfg['drift']})" if name == "fspo" else name
        ax.plot([b["lo"] for b in bins], [b["clip_rate"] for b in bins], marker="o",
                label=f"{label}: LRE {m['lre']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("response length L (tokens)")
    ax.set_ylabel("clip rate")
    ax.set_ylim(0, 0.55)
    ax.set_title(f"Clip rate by length: token log ratio ~ N({cfg['mu']:.2g}, {cfg['sigma']:.2g}²), "
                 f"{cfg['samples_per_length']} samples/length, seed {cfg['seed']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add the simulate-clipping options to `parser` (or a new one) and return it."""
    p = parser or argparse.ArgumentParser(prog="fairalign simulate-clipping", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/simulate", help="output folder for the PNG and JSON")
    p.add_argument("--mu", type=float, default=MU, help="mean token log ratio (drift); write a negative value as --mu=-1e-4")
    p.add_argument("--sigma", type=float, default=SIGMA, help="std of the token log ratio")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--samples-per-length", type=int, default=20000, help="samples per length")
    p.add_argument("--drift", choices=DRIFTS, default="kl", help="FSPO band centre: none (μ=0) or kl (batch mean)")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: simulate, print the table, write clip_rate_by_length.{png,json} under --out."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run with parsed options (for a CLI that registered them with `build_parser(subparser)`)."""
    result = simulate_clipping(mu=args.mu, sigma=args.sigma, seed=args.seed,
                               samples_per_length=args.samples_per_length, drift=args.drift)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "clip_rate_by_length.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "clip_rate_by_length.png")
    print(f"mu={args.mu:g} sigma={args.sigma:g} drift={args.drift} mu_hat={result['mu_hat']:.3g}")
    print(format_table(result))
    print(f"wrote {out / 'clip_rate_by_length.png'} and {out / 'clip_rate_by_length.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
