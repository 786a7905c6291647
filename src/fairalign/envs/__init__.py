"""Tasks and reward functions: built-in `personas` and `arithmetic`, your own .jsonl/.parquet files,
and (when installed alongside) the RLPA dialogue task. See docs/tasks.md.

`task.py` holds `Task` and its rollout, `rewards.py` the reward functions and their scoring,
`registry.py` the task registry and `get_task`, `file_task.py` task files (and the JSONL reader)."""
from fairalign.envs.registry import TASKS, LazyTask, get_task, known_tasks, register_task
from fairalign.envs.rewards import (
    REWARD_FUNCTIONS,
    RewardResult,
    RewardSpec,
    as_trl_completions,
    collate_columns,
    completion_text,
    compute_rewards,
    load_reward_function,
    make_reward_specs,
    register_reward,
)
from fairalign.envs.task import Task
from fairalign.envs import arithmetic, personas  # noqa: F401  (register the built-in tasks)

__all__ = [
    "Task", "RewardSpec", "RewardResult", "get_task", "TASKS", "known_tasks", "load_reward_function",
    "compute_rewards", "make_reward_specs", "collate_columns", "completion_text", "as_trl_completions",
    "REWARD_FUNCTIONS", "register_task", "register_reward", "LazyTask",
]
