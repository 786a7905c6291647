"""Time per training step: fairalign's Trainer vs TRL 1.16 `GRPOTrainer` on identical settings
(a benchmark script, not a test).

Both sides get the same model folder (identical fp32 weights), the same personas training prompts in
the same order (fairalign's seeded `PromptSampler` order; TRL reads them unshuffled), the same reward
function and weight, P prompts x G generations per optimizer step, one epoch over each batch (TRL:
gradient_accumulation_steps=1, num_iterations=1, so no extra "old log-prob" pass on either side),
beta=0 (no reference model), token-mean aggregation (fairalign `agg=token-mean`; TRL
`loss_type="dapo"`, which normalizes by the active tokens of the batch -- TRL's `"grpo"` is
sequence-mean), PPO clip 0.2, group-std-normalized advantages, the same max new tokens, temperature
1.0, top-p 1.0, no top-k, fp32 (TRL: bf16=False and gradient_checkpointing=False, both of which it
turns on by default), no vLLM, the same learning rate (constant schedule), no saving, no reporting,
the same seed and `torch.set_num_threads(--threads)`.

Each (framework, repetition) runs in its own subprocess; the order alternates
fairalign, TRL, TRL, fairalign, ... (ABBA) so slow drifts in machine load hit both sides alike.
A subprocess runs --warmup steps (not timed) and then --steps timed steps:
- fairalign: wall time around `Trainer.train_step()` (includes its metrics and jsonl logging);
- TRL: wall time from `on_step_begin` to `on_step_end` of a TrainerCallback (generation, rewards,
  forward/backward, clipping, optimizer step; TRL's own log call runs after `on_step_end`).
The time split per phase comes from fairalign's time/* metrics and, for TRL, from timing wrappers
around `_generate_single_turn` (generation), `_calculate_rewards`, `_generate_and_score_completions`
and `compute_loss` (the training forward); "update" is the rest of the step (backward, clipping,
optimizer). Peak memory is the subprocess's VmHWM (peak resident set) at exit.

Simplifications: generation stops at EOS on both sides and the two samplers use different random
streams, so completion lengths can differ; the table reports the mean completion length of each.
Each framework keeps its default optimizer implementation (TRL: transformers' default
`adamw_torch_fused`; fairalign: `torch.optim.AdamW`).

    PYTHONPATH=src .venv/bin/python benchmarks/step_time.py --models tiny,smollm2 --steps 5 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {  # model key -> (fairalign model name, prompts P, generations G, max new tokens T)
    "tiny": ("tiny", 8, 4, 32),
    "tiny-4x8x64": ("tiny", 4, 8, 64),  # the small-model shape of docs/performance.md's floor section
    "smollm2": ("smollm2-135m", 4, 4, 48),
}
RESULT_TAG = "STEP_TIME_RESULT "
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_TELEMETRY": "1"}


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_folder(key: str) -> Path:
    """The local HF folder both frameworks load for model key `key` (built / converted on first use)."""
    from fairalign.models import resolve_model_path

    return Path(resolve_model_path(SETTINGS[key][0]))


def prompt_order(seed: int, n_steps: int, prompts_per_step: int) -> list[dict]:
    """The personas training examples fairalign's sampler draws in its first `n_steps` steps, in order."""
    from fairalign.envs import get_task
    from fairalign.train.data import PromptSampler

    task = get_task("personas", seed=seed)
    sampler = PromptSampler(len(task.train_examples), seed)
    return [task.train_examples[i] for _ in range(n_steps) for i in sampler.take(prompts_per_step)]


# ------------------------------------------------------------------------------------- children
def child_fairalign(a) -> dict:
    import torch
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = build_config({
            "model": a.model_path, "task": "personas", "seed": a.seed, "output_dir": out,
            "steps": a.warmup + a.steps, "precision": "fp32",
            "algo": {"loss": "ppo", "agg": "token-mean", "advantage": "grpo", "beta": 0.0,
                     "ppo_epochs": 1, "minibatches": 1, "micro_batch_size": 0},
            "rollout": {"engine": "hf", "prompts_per_step": a.prompts, "generations": a.generations,
                        "max_new_tokens": a.max_new_tokens, "temperature": 1.0, "top_p": 1.0},
            "optim": {"lr": a.lr, "schedule": "constant", "warmup_steps": 0, "weight_decay": 0.0,
                      "grad_clip": 1.0},
            "log": {"samples_per_step": 0, "tensorboard": False, "wandb": False, "progress": False},
        })
        trainer = Trainer(cfg, progress=False)
        threads = torch.get_num_threads()
        times, rows = [], []
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            m = trainer.train_step()
            dt = time.perf_counter() - t0
            if i >= a.warmup:
                times.append(dt)
                rows.append(m)
        if trainer.logger is not None:
            trainer.logger.close()
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"step_s": times, "threads": threads,
            "mean_len": statistics.mean(r["response_length/mean"] for r in rows),
            "max_len": max(r["response_length/max"] for r in rows),
            "split": {"generate": med("time/generate_s"), "reward": med("time/reward_s"),
                      "logprob": med("time/logprob_s"), "update": med("time/update_s")}}


def child_trl(a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from fairalign.envs import get_task

    n_steps = a.warmup + a.steps
    examples = prompt_order(a.seed, n_steps, a.prompts)
    dataset = Dataset.from_list(examples)
    task = get_task("personas", seed=a.seed)
    funcs = [spec.func for spec in task.rewards]
    weights = [float(spec.weight) for spec in task.rewards]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0, self.times, self.logs = 0.0, [], []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, seed=a.seed, data_seed=a.seed, max_steps=n_steps, num_train_epochs=1,
            per_device_train_batch_size=a.prompts * a.generations, num_generations=a.generations,
            gradient_accumulation_steps=1, num_iterations=1, beta=0.0, loss_type="dapo",
            epsilon=0.2, scale_rewards="group", max_completion_length=a.max_new_tokens,
            temperature=1.0, top_p=1.0, top_k=0, bf16=False, fp16=False, gradient_checkpointing=False,
            use_vllm=False, use_cpu=True, learning_rate=a.lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, reward_weights=weights,
            shuffle_dataset=False, disable_dropout=True, logging_steps=1, save_strategy="no",
            report_to="none", disable_tqdm=True, log_completions=False, dataloader_num_workers=0,
        )
        timer = StepTimer()
        # the model object, not its folder: TRL's loader needs `architectures` in config.json, which the tiny
        # model's folder does not write; the same fp32 weights either way
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(a.model_path, dtype=torch.float32)
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                              callbacks=[timer])
        phases: dict[str, list[float]] = {"generate": [], "reward": [], "gen_and_score": [], "forward": []}

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    phases[name].append(time.perf_counter() - t0)
            return wrapper

        trainer._generate_single_turn = timed("generate", trainer._generate_single_turn)
        trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
        trainer._generate_and_score_completions = timed("gen_and_score", trainer._generate_and_score_completions)
        trainer.compute_loss = timed("forward", trainer.compute_loss)
        trainer.train()
        threads = torch.get_num_threads()
    times = timer.times[a.warmup:]
    logs = timer.logs[a.warmup:]
    if len(times) != a.steps or any(len(v) != n_steps for v in phases.values()):
        raise RuntimeError(f"TRL ran {len(timer.times)} steps / phases {[(k, len(v)) for k, v in phases.items()]}, "
                           f"expected {n_steps}")
    p = {k: v[a.warmup:] for k, v in phases.items()}
    other = [t - gs - fw for t, gs, fw in zip(times, p["gen_and_score"], p["forward"])]
    return {"step_s": times, "threads": threads,
            "mean_len": statistics.mean(r["completions/mean_length"] for r in logs) if logs else float("nan"),
            "max_len": max(r["completions/max_length"] for r in logs) if logs else float("nan"),
            "split": {"generate": statistics.median(p["generate"]), "reward": statistics.median(p["reward"]),
                      "prep": statistics.median(g - x - r for g, x, r in zip(p["gen_and_score"], p["generate"],
                                                                              p["reward"])),
                      "forward": statistics.median(p["forward"]),
                      "backward+optim": statistics.median(other)}}


def child_main(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    result = child_fairalign(a) if a.child == "fairalign" else child_trl(a)
    result["peak_rss_mib"] = peak_rss_mib()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------- parent
def run_child(framework: str, key: str, a) -> dict:
    _, P, G, T = SETTINGS[key]
    cmd = [sys.executable, __file__, "--child", framework, "--model-path", str(model_folder(key)),
           "--prompts", str(P), "--generations", str(G), "--max-new-tokens", str(T),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--seed", str(a.seed), "--lr", str(a.lr),
           "--threads", str(a.threads)]
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{framework} child for {key} failed (exit code {proc.returncode})")
    out = json.loads(lines[-1][len(RESULT_TAG):])
    out["wall_s"] = wall
    return out


def fmt_split(split: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in split.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,smollm2", help="comma-separated: " + ", ".join(SETTINGS))
    ap.add_argument("--steps", type=int, default=5, help="timed steps per subprocess")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per subprocess")
    ap.add_argument("--repeats", type=int, default=2, help="subprocesses per framework and model")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write every raw result to this file")
    # internal: one framework in a subprocess
    ap.add_argument("--child", choices=("fairalign", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--model-path", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--generations", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-new-tokens", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(a)
        return
    keys = [k.strip() for k in a.models.split(",") if k.strip()]
    bad = [k for k in keys if k not in SETTINGS]
    if bad:
        raise SystemExit(f"--models: unknown {bad}; choose from {list(SETTINGS)}")
    if a.steps < 1 or a.repeats < 1 or a.warmup < 0:
        raise SystemExit("--steps and --repeats must be >= 1 and --warmup >= 0")
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import torch
    import transformers
    import trl

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; "
          f"threads {a.threads}; {a.warmup} warm-up + {a.steps} timed steps x {a.repeats} repeats\n", flush=True)
    raw: dict = {}
    rows = []
    for key in keys:
        model_folder(key)  # build / convert once, outside the timed subprocesses
        res = {"fairalign": [], "trl": []}
        for r in range(a.repeats):
            order = ("fairalign", "trl") if r % 2 == 0 else ("trl", "fairalign")
            for fw in order:
                out = run_child(fw, key, a)
                res[fw].append(out)
                print(f"[{key} rep {r}] {fw:9s} median {statistics.median(out['step_s']):.3f} s/step "
                      f"(steps {', '.join(f'{t:.2f}' for t in out['step_s'])}); len {out['mean_len']:.1f}; "
                      f"RSS {out['peak_rss_mib']:.0f} MiB; threads {out['threads']}; "
                      f"split: {fmt_split(out['split'])}; subprocess {out['wall_s']:.0f} s", flush=True)
        raw[key] = res
        _, P, G, T = SETTINGS[key]
        summary = {}
        for fw, outs in res.items():
            pooled = [t for o in outs for t in o["step_s"]]
            reps = [statistics.median(o["step_s"]) for o in outs]
            summary[fw] = {"median": statistics.median(pooled), "rep_min": min(reps), "rep_max": max(reps),
                           "rss": max(o["peak_rss_mib"] for o in outs),
                           "len": statistics.mean(o["mean_len"] for o in outs)}
        rows.append((key, f"{P} prompts x {G} gen, {T} new tokens", summary))
    print("\n| model | setting | fairalign s/step (rep. range) | TRL s/step (rep. range) | fairalign / TRL "
          "| mean completion len (fa / TRL) | peak RSS MiB (fa / TRL) |")
    print("|---|---|---|---|---|---|---|")
    for key, setting, s in rows:
        fa, tr = s["fairalign"], s["trl"]
        print(f"| {key} | {setting} | {fa['median']:.3f} ({fa['rep_min']:.3f}-{fa['rep_max']:.3f}) "
              f"| {tr['median']:.3f} ({tr['rep_min']:.3f}-{tr['rep_max']:.3f}) | {fa['median'] / tr['median']:.2f} "
              f"| {fa['len']:.1f} / {tr['len']:.1f} | {fa['rss']:.0f} / {tr['rss']:.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
