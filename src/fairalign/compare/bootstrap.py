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
min(1, 2 · min(1 + #draws <= 0, 1 + #draws >= 0) / (resamples + 1)) (never 0: at least 2 / (resamples + 1)).
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
    n = Xa.shape[0]
    crossed = all(ids[s] == ids[seeds[0]] for s in seeds)
    rng = np.random.default_rng(seed)
    S = rng.integers(0, n, size=(resamples, n))                                      # [R, n] drawn seeds
    arms = [X for X in (Xa, Xb) if X is not None]
    curves = [np.empty((resamples, n, K)) for _ in arms]                             # [R, n, K] per arm
    if crossed:  # one profile draw per resample (multinomial counts), shared by every drawn seed
        w = rng.multinomial(int(m[0]), np.full(int(m[0]), 1.0 / m[0]), size=resamples)   # [R, m]
        for X, out in zip(arms, curves):
            every_seed = np.einsum("rm,smk->rsk", w, X) / m[0]                      # [R, n, K]
            out[:] = np.take_along_axis(every_seed, S[..., None], axis=1)
    else:  # each drawn seed draws from its own profiles
        for s in range(n):
            hit = S == s                                                             # [R, n]
            w = rng.multinomial(int(m[s]), np.full(int(m[s]), 1.0 / m[s]), size=int(hit.sum()))  # [k, m_s]
            for X, out in zip(arms, curves):
                out[hit] = w @ X[s, :m[s]] / m[s]                                    # [k, K]
    stat = curve_metrics(curves[0])
    if Xb is not None:
        other = curve_metrics(curves[1])
        stat = {k: v - other[k] for k, v in stat.items()}
    flat = {k: v.mean(1) for k, v in stat.items()}                                  # [R]: mean over drawn seeds
    for name, parts in (derived or {}).items():
        if parts and all(p in flat for p in parts):
            flat[name] = np.mean([flat[p] for p in parts], axis=0)
    out = {}
    for k, d in flat.items():
        se = float(d.std(ddof=1)) if len(d) > 1 else 0.0
        p = min(1.0, 2.0 * (1 + min(int((d <= 0).sum()), int((d >= 0).sum()))) / (len(d) + 1))
        out[k] = {"ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))], "se": se, "p": p,
                  "mde80": Z_SUM * se, "n": n,
                  "profiles": int(m[0]) if (m == m[0]).all() else [int(x) for x in m],
                  "design": "crossed" if crossed else "nested", "method": "bootstrap", "resamples": resamples}
    return out
