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

The max-form LRE is biased upward by sampling noise (a bin of few sequences moves it) and shrinks with
the overall clip rate, so arms clipping at different rates are not comparable on it. Next to it, from
the same pooled counts (section "Reading the LRE" of docs/length_fairness.md):
- `lre_noise_floor`: the LRE that perfectly flat clipping gives from sampling noise alone — every
  sequence clipped with the pooled rate, independently, in bins of the observed counts. Exact (every
  outcome enumerated) when there are at most `EXACT_LIMIT` outcomes, else a seeded simulation.
- `extreme_bin_log_ratio`: log(clip rate of the longest bin / of the shortest), a 95% Wald interval
  on the log relative risk (Haldane's +0.5 when a bin has no clip).
- `logistic_length_slope`: the slope of a binomial logistic regression of "clipped" on log L
  (grouped per bin at the bin's geometric-mean length), with its 95% Wald interval from the Fisher
  information. Both measures are free of the overall rate: the intercept / the common factor absorbs it.
The intervals treat a token-level loss's fractional clip weights as counts (an approximation).
"""
from __future__ import annotations

import math
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


# ------------------------------------------------------------------ measures beside the LRE
EXACT_LIMIT = 200_000  # lre_noise_floor enumerates every outcome up to this many, else simulates
Z95 = 1.959963984540054  # the normal 97.5% quantile


def _pooled_arrays(counts: dict[str, float], clipped: dict[str, float]) -> tuple[list[str], list[float], list[float]]:
    """(labels sorted by their lower edge, sequences, clipped weight) of the non-empty bins."""
    labels = [b for b in sorted(counts, key=lambda b: int(b.split("-")[0])) if counts[b] > 0]
    return labels, [float(counts[b]) for b in labels], [float(clipped.get(b, 0.0)) for b in labels]


def _lre_of_outcomes(x, n):
    """LRE (max form) of clip counts x [S, K] in bins of n [K] sequences, per row; numpy."""
    import numpy as np

    acc = 1.0 - x / n  # [S, K]
    mean_acc = 1.0 - x.sum(1) / n.sum()  # [S]
    safe = np.where(mean_acc > 0, mean_acc, 1.0)
    lre = np.abs(acc / safe[:, None] - 1.0).max(1)
    return np.where(mean_acc > 0, lre, 0.0)  # everything clipped: all bins equal, 0


def lre_noise_floor(counts: Sequence[float], rate: float, *, n_sim: int = 20_000, seed: int = 0,
                    exact_limit: int = EXACT_LIMIT) -> dict:
    """The LRE of perfectly flat clipping: each of counts[k] sequences of bin k clipped with probability
    `rate`, independently. {"mean": E[LRE], "q95": its 95th percentile, "method": "exact" | "simulation"}.
    Counts are rounded to whole sequences; empty bins are left out (as the LRE leaves them out)."""
    import numpy as np

    n = np.array([round(float(c)) for c in counts if round(float(c)) > 0], dtype=np.int64)  # [K]
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate!r}")
    if n.size < 2 or rate in (0.0, 1.0):  # one bin, or every bin clipped alike with certainty: LRE 0
        return {"mean": 0.0, "q95": 0.0, "method": "exact"}
    if math.prod(int(v) + 1 for v in n) <= exact_limit:
        grids = np.meshgrid(*[np.arange(v + 1) for v in n], indexing="ij")
        x = np.stack([g.reshape(-1) for g in grids], 1).astype(np.float64)  # [S, K] every outcome
        prob = np.ones(len(x))  # [S]: the product of the bins' binomial probabilities
        for k in range(n.size):
            prob *= _binom_pmf(int(n[k]), rate)[x[:, k].astype(np.int64)]
        lre = _lre_of_outcomes(x, n.astype(np.float64))
        order = np.argsort(lre)
        cdf = np.cumsum(prob[order])
        q95 = float(lre[order][min(np.searchsorted(cdf, 0.95 - 1e-12), len(cdf) - 1)])
        return {"mean": float((prob * lre).sum()), "q95": q95, "method": "exact"}
    rng = np.random.default_rng(seed)
    x = rng.binomial(n, rate, size=(n_sim, n.size)).astype(np.float64)  # [n_sim, K]
    lre = _lre_of_outcomes(x, n.astype(np.float64))
    return {"mean": float(lre.mean()), "q95": float(np.quantile(lre, 0.95)), "method": "simulation"}


def _binom_pmf(n: int, p: float):
    """[n + 1] P(X = j), X ~ Binomial(n, p), 0 < p < 1."""
    import numpy as np

    return np.array([math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                              + j * math.log(p) + (n - j) * math.log1p(-p)) for j in range(n + 1)])


def lre_floor_from_pooled_counts(counts: dict[str, float], clipped: dict[str, float], **kw) -> dict:
    """`lre_noise_floor` at the pooled counts' own overall rate (labels as in `lre_from_pooled_counts`)."""
    _, n, k = _pooled_arrays(counts, clipped)
    if not n:
        return {"mean": 0.0, "q95": 0.0, "method": "exact"}
    return lre_noise_floor(n, sum(k) / sum(n), **kw)


def extreme_bin_log_ratio(counts: dict[str, float], clipped: dict[str, float], *, min_count: float = 1) -> dict | None:
    """log(rate of the longest bin / rate of the shortest bin), among bins with >= min_count sequences,
    with a 95% Wald interval: se² = 1/k_long − 1/n_long + 1/k_short − 1/n_short. A bin with no clip gets
    Haldane's correction (k + 0.5, n + 1 in both bins). > 0: long responses clipped more. None with fewer
    than two such bins. {"log_ratio", "ci95", "se", "short", "long", "corrected"}."""
    labels, n, k = _pooled_arrays(counts, clipped)
    keep = [i for i in range(len(labels)) if n[i] >= min_count]
    if len(keep) < 2:
        return None
    s, ln_ = keep[0], keep[-1]
    ks, ns, kl, nl = k[s], n[s], k[ln_], n[ln_]
    corrected = ks == 0 or kl == 0
    if corrected:
        ks, ns, kl, nl = ks + 0.5, ns + 1, kl + 0.5, nl + 1
    est = math.log((kl / nl) / (ks / ns))
    se = math.sqrt(max(1 / kl - 1 / nl + 1 / ks - 1 / ns, 0.0))
    return {"log_ratio": est, "ci95": [est - Z95 * se, est + Z95 * se], "se": se,
            "short": labels[s], "long": labels[ln_], "corrected": corrected}


def bin_length(label: str) -> float | None:
    """The representative length of bin "lo-hi" ([lo, hi) tokens): the geometric mean of its shortest and
    longest length, sqrt(lo·(hi − 1)); None for the bin of empty responses ("0-1")."""
    lo, hi = (int(v) for v in label.split("-"))
    if hi - 1 < 1:
        return None
    return math.sqrt(max(lo, 1) * (hi - 1))


def logistic_slope(x: Sequence[float], clipped: Sequence[float], trials: Sequence[float], *,
                   iters: int = 100) -> dict | None:
    """Binomial logistic regression logit P(clipped) = a + b·x over groups (x_k, clipped_k of trials_k),
    by Newton's method (IRLS). {"slope": b, "intercept": a, "se": se(b), "ci95": Wald interval of b};
    None with fewer than two distinct x, no variation in the outcome, or no convergence (separation)."""
    rows = [(float(a), float(c), float(t)) for a, c, t in zip(x, clipped, trials) if t > 0]
    if len({r[0] for r in rows}) < 2:
        return None
    tot_c, tot_t = sum(r[1] for r in rows), sum(r[2] for r in rows)
    if tot_c <= 0 or tot_c >= tot_t:
        return None
    a, b = math.log(tot_c / (tot_t - tot_c)), 0.0  # start at the pooled rate, slope 0
    for _ in range(iters):
        g0 = g1 = h00 = h01 = h11 = 0.0
        for xi, ci, ti in rows:
            p = 1.0 / (1.0 + math.exp(-(a + b * xi)))
            w = ti * p * (1.0 - p)
            g0 += ci - ti * p
            g1 += (ci - ti * p) * xi
            h00, h01, h11 = h00 + w, h01 + w * xi, h11 + w * xi * xi
        det = h00 * h11 - h01 * h01
        if det <= 0:
            return None
        da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        a, b = a + da, b + db
        if abs(b) > 1e6:
            return None
        if abs(da) < 1e-12 and abs(db) < 1e-12:
            se = math.sqrt(h00 / det)  # [inverse Fisher information]_bb at the last step
            return {"slope": b, "intercept": a, "se": se, "ci95": [b - Z95 * se, b + Z95 * se]}
    return None


def logistic_length_slope(counts: dict[str, float], clipped: dict[str, float]) -> dict | None:
    """`logistic_slope` of "clipped" on log L from per-bin pooled counts, each bin at `bin_length`.
    > 0: long responses clipped more. None when it cannot be fitted (see `logistic_slope`)."""
    labels, n, k = _pooled_arrays(counts, clipped)
    pts = [(math.log(bin_length(b)), k[i], n[i]) for i, b in enumerate(labels) if bin_length(b)]
    return logistic_slope([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts])


def sequence_clip_weight(clipped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] in [0, 1]: 1/0 for a sequence-level flag [B], the share of clipped tokens for [B, T]."""
    if clipped.dim() == 1:
        return clipped.detach().double().cpu()
    m = mask.bool()
    lengths = m.sum(1).clamp(min=1)  # [B]
    return ((clipped.detach().bool() & m).sum(1).double() / lengths.double()).cpu()
