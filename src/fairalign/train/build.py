"""From a config to the parts a run is made of: seeding, the run directory and the checkpoint to resume,
the policy (model + LoRA + the strategy's wrapping, its engine), the optimizer and schedule, the training
prompts that fit the context. The trainer (trainer.py) calls these in order; nothing here trains.

Simplifications, on purpose:
- The policy stays in eval mode (dropout off) for generation *and* updates, so the behaviour log-probs
  equal the first update's own forward.
- Training prompts too long for the context are handled once, at the start (`on_long_prompt`): an error
  naming the first one, or dropped and counted; the task itself is left as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from fairalign.config import Config
from fairalign.dist import Dist
from fairalign.errors import ConfigError
from fairalign.models import load_trained, resolve_device
from fairalign.rollout import HFGenerationEngine
from fairalign.train import checkpoint as ckpt
from fairalign.train.policy import Policy
from fairalign.train.run_lock import RunLock


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: no mmap for large blocks (each would be unmapped on
    free and page-faulted in again, zero-filled, by the next tensor of that size) and no trimming of the
    heap's free top below 2 GiB. True when applied; False where there is no glibc (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) & bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def configure_process(cfg: Config) -> None:
    """The process-wide settings a run asks for: torch's CPU threads (`threads`), the C allocator's
    (`cpu_allocator`), and DeepSpeed's accelerator named on a CPU-only machine: transformers'
    save_pretrained imports deepspeed when it is installed, and its auto-detection would print a WARNING
    for the CPU it finds anyway."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.cpu_allocator == "keep":
        keep_freed_memory()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


# what a run writes into its directory (besides the lock): what --overwrite deletes
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "sft_metrics.jsonl", "checkpoints", "final",
             "reference", "tb", ".tmp-final", "report.html", "summary.json", "eval.json", "reward_by_group.png",
             "clip_rate_by_length.png", "response_length.png", "dialogue_eval.json", "dialogue_al.png", "wandb")


def _run_files(run_dir: Path) -> list[str]:
    """The files of a run in `run_dir` that a new run would mix with: its logs, a complete checkpoint, its
    final model (a config.yaml alone is left by a run stopped before its first step: nothing to mix)."""
    found = [n for n in ("metrics.jsonl", "samples.jsonl", "sft_metrics.jsonl") if (run_dir / n).exists()]
    found += ["final/"] if (run_dir / "final").exists() else []
    steps = ckpt.list_checkpoints(run_dir) if (run_dir / "checkpoints").is_dir() else []
    return found + ([f"checkpoints/step-{steps[-1][0]}"] if steps else [])


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A ConfigError when the directory is in use by a live run (its lock), or when a new run (not `resume`,
    not `overwrite`) would write into another run's directory."""
    if not run_dir.is_dir():
        return
    RunLock(run_dir).release()  # a live run holds it: "in use by another fairalign run (pid N)"
    if not (resume or overwrite):
        _refuse_another_run(run_dir)


def _refuse_another_run(run_dir: Path) -> None:
    found = _run_files(run_dir)
    if found:
        raise ConfigError(f"output_dir '{run_dir}' holds another run ({', '.join(found)}); continue it with "
                          f"--resume {run_dir}, choose a new output_dir=..., or delete it and start over with "
                          f"--overwrite")


def remove_run_files(run_dir: Path) -> None:
    """Delete what a run wrote into `run_dir` (RUN_FILES and eval-step-N/); other files are left alone."""
    for p in run_dir.iterdir():
        if p.name in RUN_FILES or p.name.startswith("eval-step-"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def open_run_dir(run_dir: Path, dist: Dist, resume: bool, *, overwrite: bool = False,
                 steps: int | None = None) -> tuple[RunLock | None, int, Path | None]:
    """Create the run directory and take its lock (rank 0: one live run per directory; a killed run's
    lock is released by the OS). A new run refuses a directory that holds another run's logs or
    checkpoints (`overwrite`: they are deleted first, under the lock). With `resume`: the newest checkpoint
    that verifies, as (step, path); `steps` (the run's total) may not be below it.
    Returns (lock, step, checkpoint path or None)."""
    lock = None
    if dist.is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"output_dir '{run_dir}' cannot be created: {e.strerror or e}") from None
        lock = RunLock(run_dir)
        if overwrite and not resume:
            remove_run_files(run_dir)
        if not resume:
            _refuse_another_run(run_dir)
    if not resume:
        return lock, 0, None
    if not ckpt.list_checkpoints(run_dir):
        raise ConfigError(f"--resume: no complete checkpoint under '{run_dir / 'checkpoints'}'")
    found = ckpt.newest_valid_checkpoint(
        run_dir, report=lambda msg: dist.is_main and print(f"fairalign: {msg}", file=sys.stderr))
    if found is None:
        raise ConfigError(f"--resume: no checkpoint under '{run_dir / 'checkpoints'}' verifies (each has a damaged "
                          f"or missing file, named above); start a new run")
    step, path = found
    if steps is not None:
        check_resume_steps(step, steps)
    return lock, step, path


def check_resume_steps(step: int, steps: int) -> None:
    """A ConfigError when a run resumed from checkpoint `step` is given a total of `steps` below it."""
    if step > steps:
        raise ConfigError(f"--resume: steps={steps} is below the run's newest checkpoint, step {step}; steps is the "
                          f"run's total, so give steps={step + 1} or more to train on")


def lora_config(cfg: Config):
    """The peft LoraConfig of `lora.*`."""
    import peft

    lc = cfg.lora
    targets = lc.target_modules if lc.target_modules == "all-linear" else \
        [t.strip() for t in lc.target_modules.split(",")]
    return peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                           task_type="CAUSAL_LM")


def load_model(cfg: Config, checkpoint: Path | None):
    """(model, tokenizer) to train: the configured model, with a new LoRA adapter (lora.enabled), or the
    checkpoint's weights / adapter when resuming."""
    weights = None if checkpoint is None else checkpoint / "model"
    if cfg.lora.enabled:
        try:
            import peft
        except ImportError:
            raise ConfigError("lora.enabled=true needs peft: pip install 'fairalign[lora]'") from None
    try:
        model, tok = load_trained(cfg.model, weights, adapter=cfg.lora.enabled, trainable=True,
                                  trust_remote_code=cfg.trust_remote_code, allow_download=cfg.allow_download)
    except ConfigError as e:
        if checkpoint is None or "do not fit" not in str(e):
            raise
        raise ConfigError(f"--resume: checkpoint '{checkpoint}' does not match model '{cfg.model}'") from None
    if cfg.lora.enabled and checkpoint is None:
        model = peft.get_peft_model(model, lora_config(cfg))
    return model, tok


def make_engine(cfg: Config, model, tokenizer, task, dist: Dist):
    """The generation engine `rollout.engine` names, over the policy's weights."""
    r = cfg.rollout
    if r.engine == "vllm":
        from fairalign.rollout.vllm_engine import make_vllm_engine

        return make_vllm_engine(model, tokenizer, r, precision=cfg.precision, seed=cfg.seed,
                                trust_remote_code=cfg.trust_remote_code, world_size=dist.world,
                                completion_prefix=task.completion_prefix)
    return HFGenerationEngine(model, tokenizer, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                              top_p=r.top_p, chat_template=r.chat_template, completion_prefix=task.completion_prefix,
                              all_ranks=dist.all_ranks)


def build_policy(cfg: Config, dist: Dist, task, checkpoint: Path | None) -> Policy:
    """The policy on its device, in eval mode, wrapped by the strategy (FSDP2: sharded in place, before
    the optimizer exists), with its generation engine."""
    device = resolve_device(cfg.device)
    model, tokenizer = load_model(cfg, checkpoint)
    model.to(device)
    model.eval()
    model = dist.prepare_model(model)
    engine = make_engine(cfg, model, tokenizer, task, dist)
    t = cfg.rollout.temperature
    return Policy(model=model, tokenizer=tokenizer, engine=engine, dist=dist, device=device,
                  precision=cfg.precision, logp_temperature=t if t > 0 else 1.0)


def lr_lambda(schedule: str, warmup: int, total: int):
    """Learning-rate multiplier per optimizer step: linear warmup, then constant / linear / cosine decay."""
    def f(i: int) -> float:
        if warmup and i < warmup:
            return (i + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (i - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def adamw(params, lr: float, cfg: Config) -> torch.optim.AdamW:
    """AdamW with optim.betas and optim.weight_decay at learning rate `lr` (the policy's, the critic's or
    the warm-up's)."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)


def lr_schedule(optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """optim.schedule with optim.warmup_steps over the run's optimizer steps (steps x epochs x minibatches)."""
    total = cfg.steps * cfg.algo.ppo_epochs * cfg.algo.minibatches
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, total))


def training_examples(cfg: Config, task, policy: Policy) -> tuple[list[dict], int]:
    """The task's training examples whose prompts leave room for the response (`max_prompt_tokens`, or the
    model's context − rollout.max_new_tokens) under `on_long_prompt`: (examples kept, number dropped)."""
    limit = cfg.max_prompt_tokens
    if limit <= 0:
        context = getattr(getattr(policy.model, "config", None), "max_position_embeddings", None) or 10**9
        limit = context - cfg.rollout.max_new_tokens
    if limit <= 0:
        raise ConfigError(f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens}) leaves no room for a prompt "
                          f"in the model's context")
    examples = task.train_examples
    lengths = []
    for s in range(0, len(examples), 256):
        texts, templated = policy.engine.render_prompts([ex["prompt"] for ex in examples[s:s + 256]])
        ids = policy.tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        lengths += [len(x) for x in ids]
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return list(examples), 0
    if cfg.on_long_prompt == "error":
        i = too_long[0]
        where = task.train_sources[i] if task.train_sources else f"task '{task.name}': training example {i}"
        raise ConfigError(f"{where}: prompt has {lengths[i]} tokens, more than the {limit} allowed "
                          f"({len(too_long)} such prompts; set on_long_prompt=skip to drop them or raise "
                          f"max_prompt_tokens)")
    drop = set(too_long)
    kept = [ex for i, ex in enumerate(examples) if i not in drop]
    if not kept:
        raise ConfigError(f"every training prompt is longer than {limit} tokens")
    return kept, len(too_long)
