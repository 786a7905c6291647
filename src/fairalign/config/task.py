"""The task a config names (`task`, `task_reward`, `task_reward_weights`, `group_column`,
`reward_timeout_s`, `task_options.*`), built through the task registry; errors are reported in config
keys (`task_reward=`, `task_options.*`) rather than the task factory's Python argument names.
Simplification: the translation is a fixed table of the factories' argument names (get_task's keywords
and the built-in tasks' options), applied to the message of the task layer's ValueError up to a hint for
Python users ("; in Python, get_task(..., reward_funcs=[...])"), which keeps the Python names."""
from __future__ import annotations

import re

from fairalign.config.schema import Config
from fairalign.envs import get_task
from fairalign.errors import ConfigError

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
    message, python = (message.split("; in Python, ", 1) + [None])[:2]  # a Python hint keeps Python's names
    for pattern, key in _CONFIG_TERMS:
        message = pattern.sub(key, message)
    return message if python is None else f"{message}; in Python, {python}"


def task_from_config(cfg: Config):
    """The task named by the config (built-in name or data file) with its rewards and options."""
    try:
        return get_task(cfg.task, seed=cfg.seed, reward_funcs=cfg.task_reward or None,
                        reward_weights=cfg.task_reward_weights, group_column=cfg.group_column,
                        reward_timeout_s=cfg.reward_timeout_s or None, **cfg.task_options)
    except ValueError as e:
        raise ConfigError(in_config_terms(str(e))) from None
    except OSError as e:  # an unreadable task or reward file
        name = getattr(e, "filename", None) or cfg.task
        raise ConfigError(f"task '{cfg.task}': cannot read '{name}': {e.strerror or e}") from None
