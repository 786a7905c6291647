"""Tasks and reward functions: built-in `personas` and `arithmetic`, your own .jsonl/.parquet files,
and (when installed alongside) the RLPA dialogue task. See docs/tasks.md."""
from fairalign.envs.base import (
    REWARD_FUNCTIONS,
    TASKS,
    RewardResult,
    RewardSpec,
    Task,
    as_trl_completions,
    collate_columns,
    completion_text,
    compute_rewards,
    get_task,
    known_tasks,
    load_reward_function,
    make_reward_specs,
    register_reward,
    register_task,
)
from fairalign.envs import arithmetic, personas  # noqa: F401  (register the built-in tasks)

__all__ = [
    "Task", "RewardSpec", "RewardResult", "get_task", "TASKS", "known_tasks", "load_reward_function",
    "compute_rewards", "make_reward_specs", "collate_columns", "completion_text", "as_trl_completions",
    "REWARD_FUNCTIONS", "register_task", "register_reward",
]
