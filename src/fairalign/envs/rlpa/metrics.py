"""Multi-turn dialogue metrics (RLPA paper's evaluation): AL(k), AVG, N-IR, N-R².

- `alignment_by_turn(records, key="total")` -> AL(k) x 100 for k = 1..K. fairalign's choice of
  AL(k): the mean over dialogues of the turn-k reward as a fraction of its maximum, i.e.
  `mean(total) / 2 * 100` (profile F1 plus the 0/1 response verdict, each in [0, 1]).
  `key="response"` gives the judge pass rate x 100 and `key="profile"` the mean profile F1 x 100
  (kept separately in the logs, since profile F1 alone rises just because users reveal more).
- `dialogue_metrics(al)`: AVG = mean AL(k); with y = min–max normalized AL(k) and x = k:
  N-IR = least-squares slope of y on x, N-R² = R² of that fit. A flat curve (max == min) has no
  trend: N-IR = 0 and N-R² = 0 by convention.
Pure Python; records are plain dicts with a "turn" (1-based) and the reward keys.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

_SCALE = {"total": 0.5, "profile": 1.0, "response": 1.0}


def alignment_by_turn(records: Iterable[Mapping], key: str = "total") -> list[float]:
    """AL(k) x 100 for k = 1..max turn (NaN for a turn with no records)."""
    if key not in _SCALE:
        raise ValueError(f"key must be one of {', '.join(_SCALE)}, got {key!r}")
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for r in records:
        k = int(r["turn"])
        if k < 1:
            raise ValueError(f"record turn must be >= 1, got {k}")
        sums[k] = sums.get(k, 0.0) + float(r[key]) * _SCALE[key]
        counts[k] = counts.get(k, 0) + 1
    if not counts:
        return []
    return [100.0 * sums[k] / counts[k] if k in counts else math.nan for k in range(1, max(counts) + 1)]


def dialogue_metrics(al_by_turn: Sequence[float]) -> dict[str, float]:
    """{"avg", "n_ir", "n_r2"} of an AL(k) curve (k = 1..K, K >= 2)."""
    y = [float(v) for v in al_by_turn]
    if len(y) < 2:
        raise ValueError(f"al_by_turn needs at least 2 turns, got {len(y)}")
    if not all(math.isfinite(v) for v in y):
        raise ValueError("al_by_turn must be finite (a NaN means a turn had no records)")
    avg = sum(y) / len(y)
    lo, hi = min(y), max(y)
    if hi == lo:
        return {"avg": avg, "n_ir": 0.0, "n_r2": 0.0}
    yn = [(v - lo) / (hi - lo) for v in y]  # min–max normalized, in [0, 1]
    x = list(range(1, len(y) + 1))
    mx, my = sum(x) / len(x), sum(yn) / len(yn)
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, yn))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_res = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(x, yn))
    ss_tot = sum((b - my) ** 2 for b in yn)
    return {"avg": avg, "n_ir": slope, "n_r2": 1.0 - ss_res / ss_tot}
