"""A task read from your own .jsonl or .parquet file, scored by your own reward functions.

Each row needs a "prompt" (a non-empty string, or a non-empty list of chat messages
`{"role": ..., "content": ...}`); every other column is kept and passed to the reward functions.
The preference group comes from `group_column` (default "group"; if that default column is absent,
every row is in group "all"). An optional "split" column ("train" / "test") fixes the split;
otherwise a seeded 90/10 split is drawn.

`read_jsonl_objects` is the package's one JSONL reader (task files here, RLPA profile files).

Simplifications: the whole file is read into memory; parquet needs pyarrow (imported only here).
"""
from __future__ import annotations

import json
import os
import random

from fairalign.envs.rewards import make_reward_specs
from fairalign.envs.task import Task

ROLES = ("system", "user", "assistant", "tool")
SPLITS = ("train", "test")


def read_jsonl_objects(path, what: str = "file") -> list[tuple[int, dict]]:
    """[(line number, object)] of a JSONL file (1-based, blank lines skipped). Every error is one
    ValueError naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} {str(path)!r}: {e}") from e
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {n}: must be a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    return rows


def _read_jsonl(path: str) -> list[tuple[str, dict]]:
    """[(where, row)] with where = "line N" (1-based, blank lines skipped)."""
    return [(f"line {n}", row) for n, row in read_jsonl_objects(path, "task file")]


def _read_parquet(path: str) -> list[tuple[str, dict]]:
    """[(where, row)] with where = "row N" (1-based)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path!r} needs pyarrow: pip install pyarrow "
                         f"(or fairalign[parquet])") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:
        raise ValueError(f"cannot read task file {path!r}: {type(e).__name__}: {e}") from e
    return [(f"row {n}", row) for n, row in enumerate(rows, start=1)]


def _check_prompt(path: str, where: str, prompt) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{path}: {where}: 'prompt' is empty")
        return
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise ValueError(f"{path}: {where}: 'prompt' is an empty list of messages")
        for k, m in enumerate(prompt):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise ValueError(f"{path}: {where}: 'prompt' message {k} must be "
                                 f"{{'role': one of {'/'.join(ROLES)}, 'content': a string}}, got {m!r}")
        return
    raise ValueError(f"{path}: {where}: 'prompt' must be a string or a list of chat messages, "
                     f"got {type(prompt).__name__}")


def load_file_task(path, *, seed: int = 0, reward_funcs=None, reward_weights=None, group_column: str = "group",
                   test_fraction: float = 0.1) -> Task:
    """Read a .jsonl/.parquet task file; see the module docstring for the format."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"task file {path!r} must end in .jsonl or .parquet")
    if not os.path.isfile(path):
        raise ValueError(f"task file not found: {path!r}")
    if not reward_funcs:
        raise ValueError(f"task file {path!r} needs reward functions: set task_reward=module:function "
                         f"(several: task_reward=[a:f, b:g]); in Python, get_task(..., reward_funcs=[...])")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rewards = make_reward_specs(reward_funcs, reward_weights)
    rows = _read_jsonl(path) if suffix == ".jsonl" else _read_parquet(path)
    if not rows:
        raise ValueError(f"task file {path!r} has no rows")
    has_split = any("split" in row for _, row in rows)
    explicit_group = group_column != "group"
    train, test = [], []
    where_of: dict[int, str] = {}
    for where, row in rows:
        if "prompt" not in row:
            raise ValueError(f"{path}: {where}: missing the 'prompt' column (columns: {', '.join(sorted(row))})")
        _check_prompt(path, where, row["prompt"])
        ex = dict(row)
        if group_column in ex:
            group = ex[group_column]
            if not isinstance(group, (str, int, bool)):
                raise ValueError(f"{path}: {where}: group column {group_column!r} must be a string or an integer, "
                                 f"got {type(group).__name__}")
        elif explicit_group:
            raise ValueError(f"{path}: {where}: missing the group column {group_column!r}")
        else:
            group = "all"
        ex["group"] = group
        where_of[id(ex)] = where
        if has_split:
            split = ex.pop("split", None)
            if split not in SPLITS:
                raise ValueError(f"{path}: {where}: 'split' must be 'train' or 'test', got {split!r}")
            (train if split == "train" else test).append(ex)
        else:
            train.append(ex)
    if not has_split:
        order = list(range(len(train)))
        random.Random(f"file-task-{seed}").shuffle(order)
        n_test = round(len(order) * test_fraction)
        if test_fraction > 0 and len(order) >= 2:
            n_test = max(1, n_test)
        test_idx = set(order[:n_test])
        examples = train
        train = [ex for i, ex in enumerate(examples) if i not in test_idx]
        test = [ex for i, ex in enumerate(examples) if i in test_idx]
    if not train:
        raise ValueError(f"task file {path!r} has no training rows")
    name = os.path.splitext(os.path.basename(path))[0]
    sources = [f"{path}: {where_of[id(ex)]}" for ex in train]  # where each training row came from
    return Task(name=name, train_examples=train, test_examples=test, rewards=rewards,
                description=f"examples from {path}", info={"path": os.path.abspath(path)}, train_sources=sources)
