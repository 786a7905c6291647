"""The task registry: names -> task factories, `get_task` (a name or a .jsonl/.parquet file) and
`known_tasks`.

There is one way to register a task, `register_task`: as a decorator on a factory
`factory(*, seed: int, **options) -> Task`, or with `module=` for an optional task whose module is
imported only when the task is first asked for (RLPA's is registered so below). That module either
registers the real factory under the same name when imported, or defines
`make_task(*, seed, **options) -> Task`.

Simplifications (fairalign's choices):
- A factory takes keyword options only; `get_task` checks their names against its signature.
- A lazily registered task whose module cannot be found (a missing optional install) is an unknown
  task; `known_tasks` leaves it out.
- A name that is not registered is a factory when it is "module:function" or "file.py:function"
  (fairalign.userspec; called like a registered factory), else a task file when it looks like a
  path (a / or the .jsonl/.parquet suffix, or an existing file).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from typing import Callable

from fairalign.envs.rewards import RewardSpec, make_reward_specs
from fairalign.envs.task import Task
from fairalign.userspec import is_user_spec, load_callable

TASK_FILE_SUFFIXES = (".jsonl", ".parquet")


class LazyTask:
    """A registered task whose module `module` is imported on first use (see the module docstring)."""

    def __init__(self, name: str, module: str):
        self.name, self.module = name, module

    def available(self) -> bool:
        """True when the module exists as a real module or package (not a bare folder)."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return False
        return spec is not None and spec.origin not in (None, "namespace")

    def resolve(self) -> Callable[..., Task]:
        """Import the module and return the task's real factory (it then replaces this entry)."""
        module = importlib.import_module(self.module)
        factory = TASKS.get(self.name)
        if factory is None or factory is self:  # the module did not register itself: use its make_task
            factory = getattr(module, "make_task", None)
            if not callable(factory):
                raise ValueError(f"task {self.name!r}: module {self.module} defines no make_task(*, seed, **options)")
            TASKS[self.name] = factory
        return factory

    def __call__(self, **options) -> Task:
        return self.resolve()(**options)

    def __repr__(self) -> str:
        return f"LazyTask({self.name!r}, module={self.module!r})"


TASKS: dict[str, Callable[..., Task]] = {}  # name -> factory (or a LazyTask standing in for it)


def register_task(name: str, factory: Callable[..., Task] | None = None, *, module: str | None = None):
    """Register a task under `name`. `@register_task(name)` decorates a factory
    `factory(*, seed: int, **options) -> Task`; `register_task(name, factory)` does the same as a call;
    `register_task(name, module="pkg.mod")` registers an optional task imported on first use."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a task name must be a non-empty string, got {name!r}")
    if module is not None:
        if factory is not None:
            raise ValueError(f"register_task({name!r}): give a factory or module=, not both")
        TASKS[name] = LazyTask(name, module)
        return TASKS[name]

    def deco(f):
        if not callable(f):
            raise ValueError(f"register_task({name!r}): the factory must be callable, got {type(f).__name__}")
        TASKS[name] = f
        return f
    return deco if factory is None else deco(factory)


def known_tasks() -> list[str]:
    """Names get_task accepts (built-in tasks plus optional ones whose module is installed)."""
    return sorted(n for n, f in TASKS.items() if not isinstance(f, LazyTask) or f.available())


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown task {name!r}: choose one of {', '.join(known_tasks())}, "
                      f"give a path to a .jsonl/.parquet file or a factory as 'module:function' / 'file.py:function'")


def _looks_like_file(name: str) -> bool:
    return name.lower().endswith(TASK_FILE_SUFFIXES) or os.sep in name or "/" in name or os.path.exists(name)


def _check_options(name: str, factory, options: dict):
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p, v in params.items() if v.kind is v.KEYWORD_ONLY and p != "seed"]
    for k in options:
        if k not in valid:
            raise ValueError(f"unknown option {k!r} for task {name!r}; valid options: {', '.join(valid) or 'none'}")


def _apply_group_column(task: Task, group_column: str) -> None:
    for split, examples in (("train", task.train_examples), ("test", task.test_examples)):
        for i, ex in enumerate(examples):
            if group_column not in ex:
                raise ValueError(f"group_column {group_column!r} is missing from {split} example {i} of task "
                                 f"{task.name!r}; its columns: {', '.join(sorted(ex))}")
            ex["group"] = ex[group_column]


def get_task(name_or_path, *, seed: int = 0, reward_funcs=None, reward_weights=None,
             group_column: str = "group", reward_timeout_s: float | None = None, **task_options) -> Task:
    """A task by registered name (see TASKS), from a factory "module:function" / "file.py:function"
    (called with seed and the options), or from a .jsonl/.parquet file.

    reward_funcs: replaces the task's default rewards (callables or specs, see load_reward_function);
    reward_weights: one weight per reward function (default 1; with no reward_funcs, re-weights the
    task's defaults); group_column: the column holding the preference group (copied to "group");
    reward_timeout_s: a limit on each reward call (None or 0 = none).
    """
    task = _build_task(name_or_path, seed, reward_funcs, reward_weights, group_column, task_options)
    if reward_timeout_s:
        task.rewards = [RewardSpec(s.name, s.func, s.weight, float(reward_timeout_s)) for s in task.rewards]
    return task


def _build_task(name_or_path, seed, reward_funcs, reward_weights, group_column, task_options) -> Task:
    name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(name, str) or not name:
        raise ValueError(f"task must be a task name or a file path, got {name_or_path!r}")
    factory = TASKS.get(name)
    if factory is not None:
        if isinstance(factory, LazyTask):
            if not factory.available():
                raise _unknown(name)
            factory = factory.resolve()
        _check_options(name, factory, task_options)
        task = factory(seed=seed, **task_options)
    elif is_user_spec(name) and not name.lower().endswith(TASK_FILE_SUFFIXES):
        factory = load_callable(name, "task")
        _check_options(name, factory, task_options)
        task = factory(seed=seed, **task_options)
        if not isinstance(task, Task):
            raise ValueError(f"task {name!r}: the factory returned a {type(task).__name__}, not a fairalign Task")
    elif _looks_like_file(name):
        from fairalign.envs.file_task import load_file_task
        _check_options(name, load_file_task, task_options)
        return load_file_task(name, seed=seed, reward_funcs=reward_funcs, reward_weights=reward_weights,
                              group_column=group_column, **task_options)
    else:
        raise _unknown(name)
    if reward_funcs is not None:
        task.rewards = make_reward_specs(reward_funcs, reward_weights)
    elif reward_weights is not None:
        weights = list(reward_weights)
        if len(weights) != len(task.rewards):
            raise ValueError(f"reward_weights has {len(weights)} values for the {len(task.rewards)} rewards of "
                             f"task {task.name!r} ({', '.join(s.name for s in task.rewards)})")
        task.rewards = [RewardSpec(s.name, s.func, w) for s, w in zip(task.rewards, weights)]
    if group_column != "group":
        _apply_group_column(task, group_column)
    return task


register_task("rlpa", module="fairalign.envs.rlpa")  # optional: imported on first use
