"""Small exact statistics for paired seed studies: Student-t quantiles and p-values, the paired
difference of two arms over seeds with its t interval and minimum detectable difference (mde80), a mean
with its t interval, and Holm's step-down adjustment of p-values. Pure Python (no scipy).

The t distribution is evaluated through the regularized incomplete beta function,
two-sided p = I_{ν/(ν+t²)}(ν/2, 1/2), computed with a continued fraction (modified Lentz); the
quantile is found by bisection on that p, to about 1e-12. Good to ~1e-10 for ν >= 1.
"""
from __future__ import annotations

import math
from typing import Sequence

METHOD = ("paired difference per seed (arm minus the first arm, same seed); mean over the n seeds where both "
          "runs have the metric; 95% interval mean ± t_{0.975, n-1} · sd/√n (sd with n-1); two-sided p of the "
          "paired t-test (t = mean/(sd/√n), n-1 dof); n = 1 gives a null interval and p; sd = 0 gives a "
          "zero-width interval and p = 1 (mean 0) or 0. mde80 = (t_{0.975, n-1} + t_{0.80, n-1}) · sd/√n: the "
          "smallest true difference this many seeds detect with 80% power (two-sided 5%) at the observed sd. "
          "p_adj: Holm's step-down adjustment over every arm x primary metric (only when there is more than one "
          "such comparison). Per-arm means use the same t interval. t quantiles and p-values are exact "
          "(regularized incomplete beta), not a normal approximation.")
POWER = 0.80


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (converges fast for x < (a+1)/(a+b+2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        # even step: d_{2m} = m(b-m)x / ((a+2m-1)(a+2m))
        num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step: d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, dof: float) -> float:
    """P(|T| >= |t|) for Student's t with `dof` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(dof / 2.0, 0.5, dof / (dof + t * t))


def t_quantile(q: float, dof: float) -> float:
    """The q-quantile of Student's t (0 < q < 1), by bisection on the two-sided p-value."""
    if not 0.0 < q < 1.0 or dof <= 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and dof > 0, got q={q}, dof={dof}")
    if q == 0.5:
        return 0.0
    target = 2.0 * (1.0 - q) if q > 0.5 else 2.0 * q  # two-sided tail mass of |T| >= t
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, dof) > target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_p(mid, dof) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    t = 0.5 * (lo + hi)
    return t if q > 0.5 else -t


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """{"mean", "ci95": [lo, hi] | None, "n", "sd" | None, "p" | None}: the t interval of the mean and the
    two-sided p of the one-sample t-test of mean 0 (for paired differences: the paired t-test)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "ci95": None, "n": 1, "sd": None, "p": None}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    if se == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = t_two_sided_p(mean / se, n - 1)
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n, "sd": sd, "p": p}


def mde80(sd: float | None, n: int) -> float | None:
    """The smallest true mean difference a paired t-test of n differences with standard deviation `sd`
    detects with 80% power at two-sided 5%: (t_{0.975, n-1} + t_{0.80, n-1}) · sd / √n. None for n < 2."""
    if n < 2 or sd is None:
        return None
    return (t_quantile(0.975, n - 1) + t_quantile(POWER, n - 1)) * sd / math.sqrt(n)


def paired_differences(arm: dict, baseline: dict) -> dict:
    """{metric: mean_interval of arm[seed][metric] - baseline[seed][metric], plus "mde80" and "method": "t"}
    over the seeds where both runs have a finite value; `arm` and `baseline` map seed -> {metric: value}."""
    out = {}
    metrics = sorted({m for s in arm for m in arm[s]} & {m for s in baseline for m in baseline[s]})
    for m in metrics:
        diffs = [arm[s][m] - baseline[s][m] for s in arm
                 if s in baseline and _finite(arm[s].get(m)) and _finite(baseline[s].get(m))]
        if diffs:
            d = mean_interval(diffs)
            out[m] = {**d, "mde80": mde80(d["sd"], d["n"]), "method": "t"}
    return out


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values of a family of m tests, in the order given: with p sorted
    ascending, p_adj(i) = max over j <= i of min(1, (m - j + 1) · p(j)). A test without a p-value (None)
    counts in m, is ordered last, and gets None."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: (ps[i] is None, ps[i] if ps[i] is not None else 0.0))
    out: list[float | None] = [None] * m
    running = 0.0
    for rank, i in enumerate(order):
        if ps[i] is None:
            continue
        running = max(running, min(1.0, (m - rank) * ps[i]))
        out[i] = running
    return out


def summarize(runs: dict) -> dict:
    """{metric: mean_interval over seeds} for one arm's runs (seed -> {metric: value})."""
    metrics = sorted({m for s in runs for m in runs[s]})
    out = {}
    for m in metrics:
        vals = [runs[s][m] for s in runs if _finite(runs[s].get(m))]
        if vals:
            out[m] = mean_interval(vals)
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
