"""Two-level paired bootstrap (seeds x profiles) for the dialogue metrics of a study (numpy).

A dialogue task's evaluation (RLPA: `Task.evaluate` -> eval.json) holds one record per dialogue
(`dialogues`: its `profile_id` and its `turns`, each with the judge's `total` in [0, 2]). From them
AL(k) = mean over dialogues of 50 · total at turn k, and AVG, N-IR, N-R² of that curve
(fairalign.envs.rlpa.metrics). One resample:
  1. draws n seeds with replacement from the study's n seeds;
  2. draws profiles with replacement: when every seed evaluated the same profiles (in the same order;
     the built-in RLPA test split does not depend on the seed) one draw of m profiles serves every drawn
     seed (crossed design: a profile's difficulty is shared by the seeds); otherwise each drawn seed gets
     its own draw of its own m_s profiles (nested design);
  3. recomputes the AL(k) curve and AVG / N-IR / N-R² of both arms from those dialogues (paired: the
     same profiles of the same seed), and averages the per-seed differences over the drawn seeds.
The interval is the 2.5 / 97.5 percentiles of the resampled statistic, `se` its standard deviation,
mde80 = (z_0.975 + z_0.80) · se (the normal analogue of the t formula), and the two-sided p is
min(1, 2 · min(share of draws <= 0, share >= 0)), resolution 1 / resamples.
Simplifications: a fixed number of resamples and generator seed (the same report twice); seeds with
dialogues of another number of turns, or an arm and baseline that evaluated different profiles, give
no bootstrap (the caller keeps the t interval over seeds).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

RESAMPLES = 4000
SEED = 0
Z_SUM = 1.959963984540054 + 0.8416212335729143  # z_0.975 + z_0.80
CELLS_PER_CHUNK = 2_000_000  # floats gathered per chunk of resamples


def al_matrix(dialogues: Sequence[Mapping]) -> np.ndarray:
    """[m, K] AL of each dialogue's turn (50 · total), turns in order."""
    return np.array([[50.0 * float(t["total"]) for t in sorted(d["turns"], key=lambda t: t["turn"])]
                     for d in dialogues], dtype=np.float64)


def curve_metrics(al: np.ndarray) -> dict[str, np.ndarray]:
    """The dialogue metrics of AL curves al [..., K]: dialogue/al/k for every k, and for K >= 2
    dialogue/avg, dialogue/n_ir (slope of the min-max normalized curve on k) and dialogue/n_r2 (its R²;
    a flat curve has 0 and 0), each [...]; the same values as fairalign.envs.rlpa.metrics."""
    K = al.shape[-1]
    out = {f"dialogue/al/{k + 1}": al[..., k] for k in range(K)}
    if K < 2:
        return out
    lo, hi = al.min(-1, keepdims=True), al.max(-1, keepdims=True)
    flat = (hi == lo)[..., 0]
    y = (al - lo) / np.where(hi == lo, 1.0, hi - lo)                                # [..., K]
    x = np.arange(1, K + 1, dtype=np.float64)
    xc = x - x.mean()
    my = y.mean(-1, keepdims=True)
    slope = (y * xc).sum(-1) / (xc * xc).sum()                                       # [...]
    fit = my + slope[..., None] * xc
    ss_res = ((y - fit) ** 2).sum(-1)
    ss_tot = ((y - my) ** 2).sum(-1)
    r2 = 1.0 - ss_res / np.where(flat, 1.0, ss_tot)
    out["dialogue/avg"] = al.mean(-1)
    out["dialogue/n_ir"] = np.where(flat, 0.0, slope)
    out["dialogue/n_r2"] = np.where(flat, 0.0, r2)
    return out


def _stack(per_seed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """([n, m_max, K] zero-padded, [n] dialogue counts)."""
    m = np.array([a.shape[0] for a in per_seed])
    out = np.zeros((len(per_seed), int(m.max()), per_seed[0].shape[1]))
    for i, a in enumerate(per_seed):
        out[i, :a.shape[0]] = a
    return out, m


def dialogue_bootstrap(arm: Mapping, base: Mapping | None = None, derived: Mapping[str, Sequence[str]] | None = None,
                       resamples: int = RESAMPLES, seed: int = SEED) -> dict | None:
    """Intervals of the dialogue metrics of `arm` (seed -> its eval.json `dialogues`), or of arm minus
    `base` paired by seed and profile: {metric: {"ci95", "se", "p", "mde80", "n", "profiles", "design",
    "method": "bootstrap", "resamples"}}, `derived` names (the mean of dialogue metrics) included; None
    when the dialogues cannot be paired or differ in their number of turns. "p" is about mean 0 (for one
    arm only meaningful for differences; the caller drops it)."""
    seeds = [s for s in arm if arm[s] and (base is None or (s in base and base[s]))]
    if not seeds:
        return None
    ids = {s: [d["profile_id"] for d in arm[s]] for s in seeds}
    if base is not None and any([d["profile_id"] for d in base[s]] != ids[s] for s in seeds):
        return None
    mats_a = [al_matrix(arm[s]) for s in seeds]
    mats_b = [al_matrix(base[s]) for s in seeds] if base is not None else None
    K = mats_a[0].shape[1]
    if K == 0 or any(a.shape[1] != K for a in mats_a + (mats_b or [])):
        return None
    Xa, m = _stack(mats_a)                                                           # [n, m_max, K], [n]
    Xb = _stack(mats_b)[0] if mats_b is not None else None
    n, m_max = Xa.shape[0], Xa.shape[1]
    crossed = all(ids[s] == ids[seeds[0]] for s in seeds)
    rng = np.random.default_rng(seed)
    chunk = max(1, CELLS_PER_CHUNK // (n * m_max * K))
    draws: dict[str, list[np.ndarray]] = {}
    done = 0
    while done < resamples:
        c = min(chunk, resamples - done)
        S = rng.integers(0, n, size=(c, n))                                          # [c, n] drawn seeds
        if crossed:
            idx = np.broadcast_to(rng.integers(0, m_max, size=(c, 1, m_max)), (c, n, m_max))
        else:
            ms = m[S][..., None]                                                     # [c, n, 1]
            idx = np.minimum((rng.random((c, n, m_max)) * ms).astype(np.int64), ms - 1)
        keep = (np.arange(m_max) < m[S][..., None])[..., None]                       # [c, n, m_max, 1]
        denom = m[S][..., None].astype(np.float64)                                   # [c, n, 1]

        def curves(X):
            return (X[S[..., None], idx] * keep).sum(2) / denom                      # [c, n, K]

        stat = curve_metrics(curves(Xa))
        if Xb is not None:
            other = curve_metrics(curves(Xb))
            stat = {k: v - other[k] for k, v in stat.items()}
        for k, v in stat.items():
            draws.setdefault(k, []).append(v.mean(1))                                # [c] mean over drawn seeds
        done += c
    flat = {k: np.concatenate(v) for k, v in draws.items()}
    for name, parts in (derived or {}).items():
        if parts and all(p in flat for p in parts):
            flat[name] = np.mean([flat[p] for p in parts], axis=0)
    out = {}
    for k, d in flat.items():
        se = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        p = min(1.0, 2.0 * min(float((d <= 0).mean()), float((d >= 0).mean())))
        out[k] = {"ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))], "se": se, "p": p,
                  "mde80": Z_SUM * se, "n": n,
                  "profiles": int(m[0]) if (m == m[0]).all() else [int(x) for x in m],
                  "design": "crossed" if crossed else "nested", "method": "bootstrap", "resamples": resamples}
    return out
