"""`fairalign demo` (what `make demo` runs): P-GRPO + FSPO on the `personas` task with the embedded
SmolLM2-135M-Instruct, on CPU, with an honest held-out evaluation before and after training.

Writes runs/demo/ (config, metrics, samples, checkpoints, final model), summary.json, the PNG
plots and prints a before/after table per preference group. Each group's change is the paired difference
(the same held-out prompt, greedy, before and after) with a 95% t interval over that group's held-out
prompts: it says how much the prompts chosen could move the number, not how much another training seed
would (that is what `fairalign compare` measures).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from fairalign.compare.stats import mean_interval
from fairalign.config import build_config
from fairalign.config.presets import get_preset, merge

# Sized to finish in under 15 minutes on 2 CPU cores: 20 steps at ~24 s/step on a 2-core AMD EPYC
# (benchmarks/step_floor.py; README has the measured total). Before the decode kernels and the shared
# behaviour pass (2026-12-06) a step took ~28 s there and 44-46 s on a 2-core Intel machine, and the demo ran 16.
DEMO_SETTINGS: dict = {
    "model": "smollm2-135m",
    "task": "personas",
    "output_dir": "runs/demo",
    "seed": 0,
    "steps": 20,
    "save_every": 10,
    "precision": "fp32",
    "rollout": {"prompts_per_step": 8, "generations": 4, "max_new_tokens": 48, "temperature": 1.0},
    "optim": {"lr": 2e-5, "warmup_steps": 2},
    # two optimizer steps per rollout batch: the second is off-policy, so FSPO's √L band is exercised
    # and the clip-rate-by-length diagnostics are non-trivial
    "algo": {"pgrpo_min_count": 8, "minibatches": 2},
    "eval": {"examples": 64, "temperature": 0.0, "batch_size": 32},
}


def paired_changes(before: dict, after: dict) -> dict:
    """{group: mean_interval of after − before over the held-out samples, paired sample by sample}, and
    "all" over every sample; `before` / `after` are two `Task.evaluate` results on the same examples."""
    b, a = before["samples"], after["samples"]
    if len(a) != len(b) or any(x["group"] != y["group"] for x, y in zip(a, b)):
        raise ValueError("paired_changes: the two evaluations are not the same held-out samples")
    diffs: dict[str, list[float]] = {}
    for x, y in zip(b, a):
        diffs.setdefault(x["group"], []).append(y["reward"] - x["reward"])
    out = {g: mean_interval(d) for g, d in sorted(diffs.items())}
    out["all"] = mean_interval([y["reward"] - x["reward"] for x, y in zip(b, a)])
    return out


def _change_cell(c: dict) -> str:
    if c["ci95"] is None:
        return f"{c['mean']:+.3f} (n={c['n']})"
    return f"{c['mean']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"


def demo_config(overrides: list[str] | None = None):
    return build_config(merge(get_preset("pgrpo-fspo"), DEMO_SETTINGS), overrides)


def run_demo(overrides: list[str] | None = None, console=None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from fairalign.eval.run import evaluate_policy
    from fairalign.report import write_report
    from fairalign.report.run_plots import make_plots
    from fairalign.train.trainer import Trainer

    console = console or Console()
    cfg = demo_config(overrides)
    run_dir = Path(cfg.output_dir)
    if run_dir.exists():
        console.print(f"[dim]removing the previous demo run in {run_dir}[/dim]")
        shutil.rmtree(run_dir)
    t0 = time.time()
    console.print(f"[bold]fairalign demo[/bold]: {cfg.algo.advantage} advantages + {cfg.algo.loss} loss on "
                  f"'{cfg.task}' with {cfg.model}, {cfg.steps} steps of "
                  f"{cfg.rollout.prompts_per_step}x{cfg.rollout.generations} samples (seed {cfg.seed})")
    trainer = Trainer(cfg)
    console.print(f"held-out evaluation before training ({cfg.eval.examples} prompts, greedy) ...")
    before = evaluate_policy(trainer.model, trainer.tokenizer, trainer.task, cfg)
    t_train = time.time()
    trainer.train()
    train_s = time.time() - t_train
    console.print("held-out evaluation after training ...")
    after = evaluate_policy(trainer.model, trainer.tokenizer, trainer.task, cfg)
    plots = make_plots(run_dir)
    changes = paired_changes(before, after)
    summary = {
        "model": cfg.model, "task": cfg.task, "seed": cfg.seed, "steps": cfg.steps,
        "algorithm": {"loss": cfg.algo.loss, "advantage": cfg.algo.advantage},
        "heldout_reward_before": before["mean"], "heldout_reward_after": after["mean"],
        "heldout_reward_by_group_before": before["by_group"],
        "heldout_reward_by_group_after": after["by_group"],
        "heldout_reward_by_function_before": before["by_reward"],
        "heldout_reward_by_function_after": after["by_reward"],
        "heldout_response_length_before": before["response_length"],
        "heldout_response_length_after": after["response_length"],
        "heldout_examples": before["n"],
        "heldout_examples_by_group": {g: c["n"] for g, c in changes.items() if g != "all"},
        "heldout_change": changes,  # paired after − before per held-out prompt: mean, 95% t interval, n
        "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t0, 1),
        "plots": [p.name for p in plots],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table(title=f"held-out reward, before -> after ({summary['total_seconds']:.0f} s)")
    table.add_column("group")
    table.add_column("prompts", justify="right")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("change [95% interval]", justify="right")
    for g in before["by_group"]:
        b, a = before["by_group"][g], after["by_group"].get(g, float("nan"))
        table.add_row(g, str(changes[g]["n"]), f"{b:.3f}", f"{a:.3f}", _change_cell(changes[g]))
    table.add_row("[bold]all[/bold]", str(changes["all"]["n"]), f"{before['mean']:.3f}", f"{after['mean']:.3f}",
                  _change_cell(changes["all"]))
    console.print(table)
    console.print("[dim]change: paired (same prompt) after − before with a 95% t interval over the held-out "
                  "prompts of one training seed; it does not cover another seed (use `fairalign compare`)[/dim]")
    console.print(f"wrote {run_dir}/summary.json, metrics.jsonl, samples.jsonl and plots: "
                  f"{', '.join(p.name for p in plots)}")
    console.print(f"wrote {write_report(run_dir)} (open it in a browser)")
    return summary
