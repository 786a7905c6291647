"""Relative file paths in a config made absolute, so a run's config.yaml works from any folder
(`fairalign eval RUN`, `--resume RUN` run elsewhere than the training did).

What is a path: `task` and `model` when they name an existing file or folder; the file part of a
"file.py:function" spec (`task`, `task_reward`, `algo.loss`, `algo.advantage`) when that file exists; and a
string value of `task_options` (at any depth) that names an existing file with a suffix
(`task_options.profiles=my_profiles.jsonl`).
Simplifications: a name that does not exist relative to the current folder is left as it is (its error
then names it as the user wrote it); a built-in model or task name is never taken for a folder; `output_dir`
is left as given (the run directory is where the user put it).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fairalign.config.schema import Config
from fairalign.envs import TASKS

_BUILTIN_MODELS = ("smollm2-135m", "smollm2-135m-instruct", "tiny")


def _existing(path: str, base: Path) -> str | None:
    """The absolute path of `path` when it is relative and exists under `base`, else None."""
    p = Path(path).expanduser()
    if p.is_absolute() or not (base / p).exists():
        return None
    return str((base / p).resolve())


def _spec(value: Any, base: Path) -> Any:
    """'file.py:fn' -> '/abs/file.py:fn' when file.py exists; anything else unchanged."""
    if not isinstance(value, str) or ":" not in value:
        return value
    where, name = value.rsplit(":", 1)
    full = _existing(where, base) if where.endswith(".py") else None
    return f"{full}:{name}" if full else value


def _file_or_spec(value: Any, base: Path) -> Any:
    if not isinstance(value, str):
        return value
    if ":" in value:
        return _spec(value, base)
    return _existing(value, base) or value


def _options(value: Any, base: Path) -> Any:
    if isinstance(value, dict):
        return {k: _options(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_options(v, base) for v in value]
    if isinstance(value, str) and Path(value).suffix and (base / Path(value).expanduser()).is_file():
        return _existing(value, base) or value
    return value


def absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """A copy of `cfg` with its relative file paths resolved against `base` (default: the current folder)."""
    base = Path(base or Path.cwd())
    out = copy.deepcopy(cfg)
    if out.task not in TASKS:
        out.task = _file_or_spec(out.task, base)
    if out.model.lower() not in _BUILTIN_MODELS and not out.model.startswith("tiny-"):
        out.model = _existing(out.model, base) or out.model
    out.task_reward = [_spec(r, base) for r in out.task_reward]
    out.algo.loss = _spec(out.algo.loss, base)
    out.algo.advantage = _spec(out.algo.advantage, base)
    out.task_options = _options(out.task_options, base)
    return out
