"""Compatibility module: what `fairalign.envs.base` held before it was split. New code imports
from the modules themselves: `fairalign.envs.task` (Task), `fairalign.envs.rewards` (RewardSpec,
reward loading, compute_rewards), `fairalign.envs.registry` (register_task, get_task, known_tasks)
and `fairalign.envs.file_task` (read_jsonl_objects)."""
from fairalign.envs.file_task import read_jsonl_objects
from fairalign.envs.registry import TASK_FILE_SUFFIXES, TASKS, LazyTask, get_task, known_tasks, register_task
from fairalign.envs.rewards import (REWARD_FUNCTIONS, RewardFunc, RewardResult, RewardSpec, as_trl_completions,
                                    collate_columns, completion_text, compute_rewards, load_reward_function,
                                    make_reward_specs, register_reward)
from fairalign.envs.task import Task

__all__ = [
    "Task", "RewardSpec", "RewardResult", "RewardFunc", "get_task", "TASKS", "TASK_FILE_SUFFIXES", "LazyTask",
    "known_tasks", "register_task", "load_reward_function", "compute_rewards", "make_reward_specs",
    "collate_columns", "completion_text", "as_trl_completions", "REWARD_FUNCTIONS", "register_reward",
    "read_jsonl_objects",
]
