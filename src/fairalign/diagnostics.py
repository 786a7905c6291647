"""Length-fairness diagnostics (docs/length_fairness.md, "The diagnostics"): clip rate per response-length bin and the
length-reweighting error (LRE). Pure torch, no models, no files.

A sample is "clipped" when its policy loss sits on the flat (zero-gradient) side of the clip band
(docs/algorithms.md: `(A > 0 and S > hi) or (A < 0 and S < lo)`); the caller decides that and passes a
bool per sample. Here we only bin by length and count.

One unit for every loss: the *sequence*. A sequence-level loss (GSPO, FSPO) clips a sequence or not;
a token-level loss (PPO, CISPO) clips some of its tokens, and the sequence counts as clipped by the
share of its tokens that were (a float in [0, 1]; fairalign's rule). So `clipped` may be bool or
float weights in [0, 1], and per-bin "clipped counts" are sums of those weights.
For reporting, pool the per-bin counts (`clip_count/len/<bin>`, `clip_clipped/len/<bin>`, logged
every step) over steps and compute the LRE from the pooled counts (`lre_from_pooled_counts`): the
max form over ~10 sequences per bin per step is dominated by noise.

Bins are half-open, `[edges[k], edges[k+1])`. fairalign's choices for edge cases:
- default edges are powers of two from the largest power of two <= the shortest length up to the
  smallest power of two > the longest one (so every sample falls in a bin); a bin `[0, 1)` is
  prepended when some length is 0;
- with explicit edges, samples outside `[edges[0], edges[-1])` are in no bin and are ignored;
- an empty bin is reported with `count = 0` and `clip_rate = 0.0` (check `count` before reading
  it); empty bins never enter the LRE or the metrics;
- no samples: `clip_rates_by_length` returns `[]` and the LRE is 0.0;
- everything clipped (mean acceptance ā = 0): every bin has acceptance 0, i.e. all bins are
  clipped at the same rate, so the LRE is 0.0.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

EdgesLike = Sequence[int] | torch.Tensor | None


def _check_inputs(lengths: torch.Tensor, clipped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate and return (lengths as int64 [N], clipped as float64 weights in [0, 1] [N])."""
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise ValueError("lengths must be a 1-D tensor of response lengths, shape [N]")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise ValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    if not isinstance(clipped, torch.Tensor) or clipped.shape != lengths.shape:
        raise ValueError(
            f"clipped must be a tensor with the same shape as lengths {tuple(lengths.shape)}"
        )
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError("lengths must be >= 0")
    weights = clipped.detach().cpu().double()
    if clipped.dtype.is_floating_point and weights.numel() and not bool(((weights >= 0) & (weights <= 1)).all()):
        raise ValueError("clipped weights must lie in [0, 1] (a share of clipped tokens) or be bool")
    return lengths.detach().to(torch.int64).cpu(), weights


def default_edges(lengths: torch.Tensor) -> list[int]:
    """Powers of two covering `lengths` ([N] int): 2^a <= min(len) and 2^b > max(len); [0, 1, ...]
    when a length is 0. Empty input gives []."""
    if lengths.numel() == 0:
        return []
    lo, hi = int(lengths.min()), int(lengths.max())
    start = 1 << (max(lo, 1).bit_length() - 1)  # largest power of two <= max(lo, 1)
    stop = 1 << hi.bit_length()  # smallest power of two > hi (hi=0 -> 1)
    edges = [0] if lo == 0 else []
    e = start
    while e <= stop:
        edges.append(e)
        e <<= 1
    return edges


def _resolve_edges(lengths: torch.Tensor, edges: EdgesLike) -> list[int]:
    if edges is None:
        return default_edges(lengths)
    vals = edges.tolist() if isinstance(edges, torch.Tensor) else list(edges)
    if len(vals) < 2:
        raise ValueError(f"edges must have at least 2 entries (one bin), got {vals}")
    if any(float(v) != int(v) for v in vals):
        raise ValueError(f"edges must be integers, got {vals}")
    vals = [int(v) for v in vals]
    if any(b <= a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"edges must be strictly increasing, got {vals}")
    return vals


def _bin_counts(
    lengths: torch.Tensor, clipped: torch.Tensor, edges: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (bin index per sample [N] (-1 = outside), counts [K], clipped counts [K])."""
    k = len(edges) - 1
    bounds = torch.tensor(edges, dtype=torch.int64)  # [K+1]
    idx = torch.bucketize(lengths, bounds, right=True) - 1  # [N]; edges[idx] <= len < edges[idx+1]
    inside = (idx >= 0) & (idx < k)  # [N]
    idx = torch.where(inside, idx, torch.full_like(idx, -1))  # [N]
    counts = torch.bincount(idx[inside], minlength=k)  # [K]
    n_clip = torch.bincount(idx[inside], weights=clipped[inside].double(), minlength=k)  # [K]
    return idx, counts, n_clip


def clip_rates_by_length(
    lengths: torch.Tensor, clipped: torch.Tensor, edges: EdgesLike = None
) -> list[dict]:
    """One row per bin `[lo, hi)`: {"lo", "hi", "count", "clip_rate"}. lengths [N] int, clipped [N] bool."""
    lengths, clipped = _check_inputs(lengths, clipped)
    e = _resolve_edges(lengths, edges)
    if not e:
        return []
    _, counts, n_clip = _bin_counts(lengths, clipped, e)
    rates = n_clip / counts.clamp(min=1)  # [K]; 0.0 for empty bins
    return [
        {"lo": e[k], "hi": e[k + 1], "count": int(counts[k]), "clip_rate": float(rates[k])}
        for k in range(len(e) - 1)
    ]


def _lre_from_counts(counts: torch.Tensor, n_clip: torch.Tensor) -> float:
    """LRE = max_k |a_k/ā − 1| over non-empty bins, a_k = 1 − clip_rate_k, ā count-weighted."""
    keep = counts > 0
    if not bool(keep.any()):
        return 0.0
    n = counts[keep].double()  # [K']
    acc = 1.0 - n_clip[keep] / n  # [K'] acceptance per bin
    mean_acc = float((acc * n).sum() / n.sum())
    if mean_acc <= 0.0:  # everything clipped: all bins equal
        return 0.0
    return float((acc / mean_acc - 1.0).abs().max())


def length_reweighting_error(
    lengths: torch.Tensor, clipped: torch.Tensor, edges: EdgesLike = None
) -> float:
    """fairalign's LRE (max form, docs/length_fairness.md); 0.0 when all non-empty bins clip at the same rate."""
    lengths, clipped = _check_inputs(lengths, clipped)
    e = _resolve_edges(lengths, edges)
    if not e:
        return 0.0
    _, counts, n_clip = _bin_counts(lengths, clipped, e)
    return _lre_from_counts(counts, n_clip)


def clip_rate_metrics(
    lengths: torch.Tensor, clipped: torch.Tensor, advantages: torch.Tensor, edges: EdgesLike = None
) -> dict[str, float]:
    """Flat metrics for metrics.jsonl: `clip_rate/len/<lo>-<hi>` per non-empty bin, `lre`,
    `clip_rate/upper` (clipped among A > 0) and `clip_rate/lower` (among A < 0); a side with no
    samples reports 0.0. advantages [N] float."""
    lengths, clipped = _check_inputs(lengths, clipped)
    if not isinstance(advantages, torch.Tensor) or advantages.shape != lengths.shape:
        raise ValueError(
            f"advantages must be a tensor with the same shape as lengths {tuple(lengths.shape)}"
        )
    adv = advantages.detach().cpu()
    out: dict[str, float] = {}
    e = _resolve_edges(lengths, edges)
    if e:
        _, counts, n_clip = _bin_counts(lengths, clipped, e)
        rates = n_clip / counts.clamp(min=1)  # [K]
        for k in torch.nonzero(counts > 0).flatten().tolist():
            out[f"clip_rate/len/{e[k]}-{e[k + 1]}"] = float(rates[k])
            out[f"clip_count/len/{e[k]}-{e[k + 1]}"] = float(counts[k])  # for pooling over steps
            out[f"clip_clipped/len/{e[k]}-{e[k + 1]}"] = float(n_clip[k])
        out["lre"] = _lre_from_counts(counts, n_clip)
    else:
        out["lre"] = 0.0
    for key, side in (("clip_rate/upper", adv > 0), ("clip_rate/lower", adv < 0)):
        n_side = int(side.sum())
        out[key] = float(clipped[side].sum()) / n_side if n_side else 0.0
    return out


def pooled_clip_counts(rows) -> tuple[dict[str, float], dict[str, float]]:
    """Per-bin sequences and clipped weight summed over logged steps: `rows` are metric dicts with
    `clip_count/len/<bin>` and `clip_clipped/len/<bin>` (non-finite values count as absent); returns
    ({bin label: sequences}, {bin label: clipped weight})."""
    counts: dict[str, float] = {}
    clipped: dict[str, float] = {}

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")

    for r in rows:
        for k, v in r.items():
            if k.startswith("clip_count/len/") and finite(v):
                b = k[len("clip_count/len/"):]
                counts[b] = counts.get(b, 0.0) + v
                c = r.get(f"clip_clipped/len/{b}")
                clipped[b] = clipped.get(b, 0.0) + (c if finite(c) else 0.0)
    return counts, clipped


def lre_from_pooled_counts(counts: dict[str, float], clipped: dict[str, float]) -> float:
    """LRE from per-bin counts pooled over steps: {bin label: sequences}, {bin label: clipped weight}
    (labels as in the metric keys, e.g. "8-16")."""
    labels = sorted(counts, key=lambda b: int(b.split("-")[0]))
    c = torch.tensor([float(counts[b]) for b in labels], dtype=torch.float64)
    k = torch.tensor([float(clipped.get(b, 0.0)) for b in labels], dtype=torch.float64)
    return _lre_from_counts(c, k)


def sequence_clip_weight(clipped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] in [0, 1]: 1/0 for a sequence-level flag [B], the share of clipped tokens for [B, T]."""
    if clipped.dim() == 1:
        return clipped.detach().double().cpu()
    m = mask.bool()
    lengths = m.sum(1).clamp(min=1)  # [B]
    return ((clipped.detach().bool() & m).sum(1).double() / lengths.double()).cpu()
