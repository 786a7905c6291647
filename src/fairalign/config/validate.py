"""Checking a `Config` after it is loaded: named choices, ranges, and the methods' own hyperparameters
(methods.py asks the registries). Each failure is one `ConfigError` line naming the key and what is allowed."""
from __future__ import annotations

from typing import Any

from fairalign.config.methods import check_methods
from fairalign.config.schema import CHOICES, GROUP_ESTIMATORS, AlgoConfig, Config
from fairalign.errors import ConfigError


def _check_choice(key: str, value: str) -> None:
    allowed = CHOICES[key]
    if value is None or (key in ("algo.loss", "algo.advantage") and ":" in str(value)):
        return  # None: the method's default; module:function: checked by config/methods.py
    if value not in allowed:
        raise ConfigError(f"config key '{key}' has unknown value '{value}'; allowed: {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key '{key}' must be {bound}, got {value}")


CRITIC_KEYS = ("vf_coef", "value_clip", "critic_lr")  # what only a critic uses


def _check_critic_keys(a: AlgoConfig) -> None:
    _positive("algo.vf_coef", a.vf_coef)
    for key in ("value_clip", "critic_lr"):
        if getattr(a, key) is not None:
            _positive(f"algo.{key}", getattr(a, key))
    if a.critic == "none":
        defaults = AlgoConfig()
        for key in CRITIC_KEYS:
            if getattr(a, key) != getattr(defaults, key):
                raise ConfigError(f"config key 'algo.{key}' applies only to a critic, but algo.critic=none; "
                                  f"set algo.critic=head or model (with algo.advantage=gae) or remove it")


def validate(cfg: Config) -> None:
    for key in CHOICES:
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        _check_choice(key, obj)
    a, r, o = cfg.algo, cfg.rollout, cfg.optim
    _positive("threads", cfg.threads, allow_zero=True)
    _positive("sft.steps", cfg.sft.steps, allow_zero=True)
    _positive("sft.batch_size", cfg.sft.batch_size)
    _positive("sft.lr", cfg.sft.lr)
    if not (cfg.steps == 0 and cfg.sft.steps > 0):  # steps=0 with a warm-up: a supervised-only run
        _positive("steps", cfg.steps)
    _positive("save_every", cfg.save_every, allow_zero=True)
    _positive("keep_last", cfg.keep_last)
    _positive("optim.lr", o.lr)
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    _positive("optim.grad_clip", o.grad_clip, allow_zero=True)
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), got {o.betas}")
    _positive("rollout.prompts_per_step", r.prompts_per_step)
    _positive("rollout.generations", r.generations)
    _positive("rollout.max_new_tokens", r.max_new_tokens)
    _positive("rollout.temperature", r.temperature, allow_zero=True)
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {r.top_p}")
    _positive("rollout.dynamic_max_extra_rounds", r.dynamic_max_extra_rounds, allow_zero=True)
    if r.dynamic_sampling != "none" and r.generations < 2:
        raise ConfigError(f"config key 'rollout.generations' must be >= 2 for rollout.dynamic_sampling="
                          f"{r.dynamic_sampling} (a group of one has nothing to compare), got {r.generations}")
    if not 0 <= r.overlong_buffer_frac <= 1:
        raise ConfigError(f"config key 'rollout.overlong_buffer_frac' must be in [0, 1] (a share of "
                          f"rollout.max_new_tokens), got {r.overlong_buffer_frac}")
    _positive("rollout.overlong_penalty", r.overlong_penalty, allow_zero=True)
    if a.advantage in GROUP_ESTIMATORS and r.generations < 2:
        raise ConfigError(f"config key 'rollout.generations' must be >= 2 for the group estimator "
                          f"'{a.advantage}', got {r.generations}")
    if a.horizon is not None:
        _positive("algo.horizon", a.horizon)
    _positive("algo.beta", a.beta, allow_zero=True)
    _positive("algo.ppo_epochs", a.ppo_epochs)
    _positive("algo.minibatches", a.minibatches)
    _positive("algo.micro_batch_size", a.micro_batch_size, allow_zero=True)
    batch = r.prompts_per_step * r.generations
    if a.minibatches > batch:
        raise ConfigError(f"config key 'algo.minibatches' ({a.minibatches}) exceeds the batch size "
                          f"prompts_per_step*generations = {batch}")
    _check_critic_keys(a)
    check_methods(a)  # method names, hyperparameters that belong to them, estimator values, critic
    _positive("lora.r", cfg.lora.r)
    _positive("lora.alpha", cfg.lora.alpha)
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"config key 'lora.dropout' must be in [0, 1), got {cfg.lora.dropout}")
    _positive("eval.examples", cfg.eval.examples, allow_zero=True)
    _positive("eval.temperature", cfg.eval.temperature, allow_zero=True)
    _positive("eval.generations", cfg.eval.generations)
    _positive("eval.batch_size", cfg.eval.batch_size)
    _positive("log.samples_per_step", cfg.log.samples_per_step, allow_zero=True)
    _positive("max_skipped_updates", cfg.max_skipped_updates)
    _positive("reward_timeout_s", cfg.reward_timeout_s, allow_zero=True)
    _positive("max_prompt_tokens", cfg.max_prompt_tokens, allow_zero=True)
    if cfg.task_reward_weights is not None and len(cfg.task_reward_weights) != len(cfg.task_reward):
        raise ConfigError(f"config key 'task_reward_weights' has {len(cfg.task_reward_weights)} values "
                          f"for {len(cfg.task_reward)} task_reward functions")
    if cfg.log.length_bins is not None:
        edges = cfg.log.length_bins
        if len(edges) < 2 or any(not isinstance(e, int) for e in edges) or sorted(set(edges)) != list(edges):
            raise ConfigError(f"config key 'log.length_bins' must be >= 2 increasing integers, got {edges}")
