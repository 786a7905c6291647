"""Compare `fairalign eval-dialogue` results: one AL(k) plot and a markdown table.

    python benchmarks/rlpa_compare.py --out docs/figures/rlpa_cpu \\
        untrained=runs/eval-base/dialogue_eval.json sft=runs/sft/dialogue_eval.json sft+rl=runs/rl/dialogue_eval.json

Writes <out>.png and <out>.md (AL(k) per turn, AVG, N-IR, N-R², mean profile F1 and response pass).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(results: dict[str, dict]) -> str:
    names = list(results)
    K = max(len(r["al_by_turn"]) for r in results.values())
    lines = ["| turn k | " + " | ".join(f"AL(k) {n}" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for k in range(K):
        cells = [f"{r['al_by_turn'][k]:.2f}" if k < len(r["al_by_turn"]) else "" for r in results.values()]
        lines.append(f"| {k + 1} | " + " | ".join(cells) + " |")
    for key, label, fmt in (("avg", "AVG", "{:.2f}"), ("n_ir", "N-IR", "{:.3f}"), ("n_r2", "N-R²", "{:.3f}")):
        lines.append(f"| **{label}** | " + " | ".join(fmt.format(r.get(key, float("nan"))) for r in results.values()) + " |")
    for key, label in (("profile_f1_by_turn", "mean profile F1 ×100"), ("response_pass_by_turn", "response pass %")):
        vals = [sum(r[key]) / len(r[key]) for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in results.items():
        k = list(range(1, len(r["al_by_turn"]) + 1))
        ax1.plot(k, r["al_by_turn"], marker="o", label=f"{name} (AVG {r.get('avg', float('nan')):.1f})")
        ax2.plot(k, r["profile_f1_by_turn"], marker=".", label=name)
    ax1.set(xlabel="turn k", ylabel="AL(k) ×100", title="Alignment level per turn")
    ax2.set(xlabel="turn k", ylabel="profile F1 ×100", title="Profile F1 per turn")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=path/to/dialogue_eval.json")
    ap.add_argument("--out", required=True, help="output path without extension")
    args = ap.parse_args()
    results = {}
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"rlpa_compare: '{item}' is not NAME=PATH")
        results[name] = json.loads(Path(path).read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out.with_suffix(".png"))
    md = table(results)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
