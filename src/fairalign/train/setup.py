"""Pieces the trainer is built from: seeding, device choice, the task a config names, the
learning-rate schedule, and trimming padding off a sub-batch. (The methods a config names are
built in methods.py.)"""
from __future__ import annotations

import math
import random
import re

import numpy as np
import torch

from fairalign.envs import get_task
from fairalign.train.config import Config, ConfigError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`device` config value -> the torch device this process trains on (its own GPU under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is 'cuda' but no CUDA GPU is visible (use device=auto or cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


# Python argument names in the task layer's messages -> the config keys a CLI user typed
_CONFIG_TERMS = [(re.compile(r"(?<![\w.])reward_weights\b"), "task_reward_weights"),
                 (re.compile(r"(?<![\w.])reward_funcs\b"), "task_reward"),
                 (re.compile(r"(?<![\w.])(test_fraction|shares|n_train|n_test)\b"), r"task_options.\1"),
                 (re.compile(r"^task option '(\w+)'"), r"config key 'task_options.\1'")]


def in_config_terms(message: str) -> str:
    """A task-layer error message with Python argument names replaced by the config keys."""
    unknown = re.match(r"unknown option '(\w+)' for task '([^']+)'; valid options: (.*)$", message)
    if unknown:
        valid = ", ".join(f"task_options.{o.strip()}" for o in unknown.group(3).split(",") if o.strip() != "none")
        return f"unknown config key 'task_options.{unknown.group(1)}' for task '{unknown.group(2)}'; valid: {valid or 'none'}"
    if message.startswith("bad reward function spec"):
        return f"config key 'task_reward': {message}"
    for pattern, key in _CONFIG_TERMS:
        message = pattern.sub(key, message)
    return message


def task_from_config(cfg: Config):
    """The task named by the config (built-in name or data file) with its rewards and options; errors
    name the config keys (task_reward=, task_options.*), not the Python arguments."""
    try:
        return _task(cfg)
    except ValueError as e:
        raise ConfigError(in_config_terms(str(e))) from None


def _task(cfg: Config):
    return get_task(cfg.task, seed=cfg.seed, reward_funcs=cfg.task_reward or None,
                    reward_weights=cfg.task_reward_weights, group_column=cfg.group_column,
                    reward_timeout_s=cfg.reward_timeout_s or None,
                    **cfg.task_options)


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


def trim_padding(batch, idx: torch.Tensor):
    """Sub-batch tensors with padding columns removed (prompt: left, response: right)."""
    pm = batch.prompt_mask[idx]
    first = int(pm.any(0).float().argmax()) if pm.any() else 0
    rlen = max(1, int(batch.lengths[idx].max()))
    return (batch.prompt_ids[idx, first:], pm[:, first:], batch.response_ids[idx, :rlen],
            batch.response_mask[idx, :rlen], rlen)
