"""The printed reading of a study (comparison.json -> text): first the primary metrics, one block each
(the untrained policy as the first row, then every arm with its mean, its difference to the untrained
policy and to the baseline with 95% interval, mde80, p and the Holm-adjusted p) and one sentence per
comparison that claims only what the interval supports; then every other metric as secondary rows.
"""
from __future__ import annotations

from fairalign.compare.spec import UNTRAINED

ALPHA = 0.05


def metric_order(name: str):
    prefixes = ("heldout/reward", "heldout/group/", "dialogue/avg", "dialogue/n_", "dialogue/al/", "heldout/",
                "train/", "lre/", "clip_rate/", "time/")
    rank = next((i for i, p in enumerate(prefixes) if name.startswith(p)), len(prefixes))
    tail = name.rsplit("/", 1)[-1]
    lead = tail.split("-")[0]
    return rank, int(lead) if lead.isdigit() else 0, name


def _iv(d: dict) -> str:
    if d["ci95"] is None:
        return f"{d['mean']:+.3f} (n=1)"
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def _mde(d: dict) -> str:
    return "" if d.get("mde80") is None else f"{d['mde80']:.3f}"


def _p(v) -> str:
    return "" if v is None else f"{v:.3g}"


def _pm(s: dict | None) -> str:
    if s is None:
        return ""
    if s["ci95"] is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ± {(s['ci95'][1] - s['ci95'][0]) / 2:.3f}"


def _grid(header: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return [fmt(header), *(fmt(r) for r in rows)]


def significant(d: dict) -> bool:
    """The comparison's verdict at 5%: the Holm-adjusted p where there is one, else whether the 95%
    interval excludes 0."""
    if d.get("p_adj") is not None:
        return d["p_adj"] < ALPHA
    ci = d.get("ci95")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def verdict(d: dict | None) -> str:
    """One sentence on a paired difference, claiming no more than it supports."""
    if d is None:
        return "no paired value"
    if d["ci95"] is None:
        return f"{d['mean']:+.3f} from one seed: no interval, nothing can be claimed"
    head = _iv(d) + (f", p_adj {d['p_adj']:.3g}" if d.get("p_adj") is not None else "")
    if significant(d):
        return f"{head}: a difference ({'higher' if d['mean'] > 0 else 'lower'})"
    ci = d["ci95"]
    if ci[0] > 0 or ci[1] < 0:
        return f"{head}: the interval excludes 0, but not after the Holm adjustment"
    mde = f"±{d['mde80']:.3f}" if d.get("mde80") is not None else "its interval"
    return f"{head}: no difference detectable above {mde} (mde80)"


def reading(comparison: dict) -> list[str]:
    """One sentence per primary comparison: each arm vs the untrained policy, then each arm vs the baseline."""
    base, out = comparison["baseline"], []
    learned = (comparison.get("untrained") or {}).get("differences") or {}
    for m in comparison.get("primary") or []:
        out += [f"{m}: {a} − {UNTRAINED} {verdict(learned[a][m])}" for a in comparison["arms"]
                if m in learned.get(a, {})]
        out += [f"{m}: {a} − {base} {verdict(comparison['differences'][a].get(m))}" for a in comparison["arms"][1:]]
    return out


def declared(comparison: dict) -> str:
    """When the primary metrics were fixed, from primary.json's record."""
    if comparison.get("primary_default"):
        return "the task's headline metric: the spec has no primary:"
    rec = comparison.get("primary_declared") or {}
    if rec.get("primary") != comparison.get("primary"):
        return "fixed in the spec"
    k, e, n = rec.get("runs_trained_before"), rec.get("runs_evaluated_before"), rec.get("runs")
    if k == 0:
        return "fixed before any run trained"
    if e == 0:  # held-out metrics unseen; the trained runs' training metrics were visible
        return f"fixed before any run was evaluated; {k} of {n} runs had trained"
    return f"declared when {k} of {n} runs had trained: not fixed before the runs"


def format_table(comparison: dict) -> str:
    """The printed reading: title, primary blocks with their sentences, then the secondary metrics."""
    arms, base = comparison["arms"], comparison["baseline"]
    summary, diffs = comparison["arms_summary"], comparison["differences"]
    un = comparison.get("untrained") or {}
    un_summary, learned = un.get("summary") or {}, un.get("differences") or {}
    primary = list(comparison.get("primary") or [])
    n = len(comparison["seeds"])
    lines = [f"paired comparison over {n} seed{'s' if n != 1 else ''} (baseline: {base}); 95% intervals; "
             f"mde80 = the smallest true difference detectable with 80% power (two-sided 5%)"]
    if primary:
        fam = (len(arms) - 1) * len(primary)
        lines.append(f"primary metrics: {', '.join(primary)} ({declared(comparison)})"
                     + (f"; p_adj: Holm over {len(arms) - 1} arm(s) x {len(primary)} metric(s)" if fam > 1 else ""))
        for m in primary:
            lines.append(m)
            header = ["arm", "mean ± 95%", f"− {UNTRAINED} [95% CI]", "mde80", f"− {base} [95% CI]", "mde80", "p",
                      "p_adj"]
            rows = []
            if un_summary.get(m) is not None:
                rows.append([UNTRAINED, _pm(un_summary[m]), "", "", "", "", "", ""])
            for a in arms:
                ld, d = learned.get(a, {}).get(m), diffs.get(a, {}).get(m) if a != base else None
                rows.append([a, _pm(summary[a].get(m)), _iv(ld) if ld else "", _mde(ld) if ld else "",
                             _iv(d) if d else "", _mde(d) if d else "", _p(d.get("p")) if d else "",
                             _p(d.get("p_adj")) if d else ""])
            lines += _grid(header, rows, indent="  ")
        lines.append("reading:")
        lines += [f"  {r}" for r in reading(comparison)]
    else:
        lines.append("no primary metrics (the task's evaluation is its own and the spec names none): every row is "
                     "secondary")
    secondary = sorted({m for a in arms for m in summary[a]} - set(primary), key=metric_order)
    if secondary:
        lines.append("secondary metrics (descriptive: no adjustment for the many rows)")
        cols = ([UNTRAINED] if un_summary else []) + list(arms)
        header = ["metric", *cols, *(f"{a} - {base} [95% CI] mde80 p" for a in arms[1:])]
        rows = []
        for m in secondary:
            row = [m]
            if un_summary:
                row.append(_pm(un_summary.get(m)))
            row += [_pm(summary[a].get(m)) for a in arms]
            for a in arms[1:]:
                d = diffs[a].get(m)
                row.append("" if d is None else " ".join(x for x in (_iv(d), _mde(d) and f"mde80 {_mde(d)}",
                                                                     d.get("p") is not None and f"p={_p(d['p'])}")
                                                         if x))
            rows.append(row)
        lines += _grid(header, rows)
    if any(d.get("method") == "bootstrap" for x in diffs.values() for d in x.values()):
        lines.append("dialogue metrics: intervals, mde80 and p from the two-level bootstrap over seeds x profiles")
    return "\n".join(lines)
