"""Reward functions: `RewardSpec` (a named, weighted function), loading functions by name or
"module:function" / "file.py:function", and `compute_rewards`, the weighted scoring of a batch.

Reward functions follow TRL's calling convention: `func(prompts=[...], completions=[...], **columns)`
returns one float per completion, where every other dataset column arrives as a keyword list aligned
with `completions`. Completions are strings for string prompts and `[{"role": "assistant",
"content": text}]` for chat-message prompts.

Simplifications (fairalign's choices):
- A function that does not take `**kwargs` receives only the arguments it names (TRL would pass
  all of them and let Python raise).
- `None` in a reward list means "not applicable" (TRL's convention): it contributes 0.
- A file given as "path/to/file.py:function" is imported once per absolute path and cached
  (fairalign.userspec, shared with the config's other user code: losses, estimators, tasks).
"""
from __future__ import annotations

import inspect
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch

from fairalign.userspec import is_user_spec, load_callable

RewardFunc = Callable[..., Sequence[Any]]


@dataclass
class RewardSpec:
    """One reward term: `weight * func(prompts=..., completions=..., **columns)`; `timeout_s` (None = no
    limit) bounds each call (config key `reward_timeout_s`)."""
    name: str
    func: RewardFunc
    weight: float = 1.0
    timeout_s: float | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"RewardSpec name must be a non-empty string, got {self.name!r}")
        if not callable(self.func):
            raise ValueError(f"RewardSpec {self.name!r}: func must be callable, got {type(self.func).__name__}")
        try:
            self.weight = float(self.weight)
        except (TypeError, ValueError):
            raise ValueError(f"RewardSpec {self.name!r}: weight must be a number, got {self.weight!r}") from None
        if not math.isfinite(self.weight):
            raise ValueError(f"RewardSpec {self.name!r}: weight must be finite, got {self.weight}")


# ----------------------------------------------------------------------------- reward registry
REWARD_FUNCTIONS: dict[str, RewardFunc] = {}


def register_reward(name: str):
    """Decorator: make a built-in reward function loadable by its short `name`."""
    def deco(func):
        REWARD_FUNCTIONS[name] = func
        return func
    return deco


def load_reward_function(spec: str | RewardFunc) -> RewardFunc:
    """Resolve a reward function from "pkg.module:func", "path/to/file.py:func" (see
    fairalign.userspec), a built-in short name (see REWARD_FUNCTIONS) or a callable (returned as is)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"reward function spec must be a string or a callable, got {spec!r}")
    spec = spec.strip()
    if spec in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[spec]
    if not is_user_spec(spec):
        raise ValueError(f"bad reward function spec {spec!r}: use 'module:function', 'path/to/file.py:function' "
                         f"or a built-in name ({', '.join(sorted(REWARD_FUNCTIONS))})")
    return load_callable(spec, "reward function spec")


def _func_name(func: RewardFunc) -> str:
    name = getattr(func, "__name__", None)
    if name is None and hasattr(func, "func"):  # functools.partial
        name = getattr(func.func, "__name__", None)
    return name or type(func).__name__


def make_reward_specs(funcs: Sequence, weights: Sequence[float] | None = None) -> list[RewardSpec]:
    """RewardSpecs from functions / specs (see `load_reward_function`) and optional weights (default 1).
    Names are the functions' __name__, made unique with suffixes _2, _3, ..."""
    if isinstance(funcs, (str, bytes)) or callable(funcs):
        funcs = [funcs]
    funcs = [load_reward_function(f) for f in funcs]
    if not funcs:
        raise ValueError("reward_funcs is empty: give at least one reward function")
    if weights is None:
        weights = [1.0] * len(funcs)
    weights = list(weights)
    if len(weights) != len(funcs):
        raise ValueError(f"reward_weights has {len(weights)} values for {len(funcs)} reward functions")
    specs, seen = [], {}
    for func, w in zip(funcs, weights):
        base = _func_name(func)
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}_{seen[base]}"
        while any(s.name == name for s in specs):
            name += "_"
        specs.append(RewardSpec(name, func, w))
    return specs


# ----------------------------------------------------------------------------- reward computation
class RewardResult(NamedTuple):
    totals: torch.Tensor               # [N] float32, weighted sum over reward functions
    per_reward: dict                   # name -> [N] float32 (unweighted values)
    n_errors: int                      # (function, sample) pairs scored 0 because of an error (on_error="zero")


def completion_text(completion) -> str:
    """The text of a completion in either format (string, or a list of chat messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role") == "assistant"] or msgs
        return "".join(str(m.get("content", "")) for m in assistant)
    return str(completion)


def as_trl_completions(prompts: Sequence, completions: Sequence) -> list:
    """Completions in TRL's format: chat-message prompts get `[{"role": "assistant", "content": text}]`."""
    out = []
    for p, c in zip(prompts, completions):
        if isinstance(c, str) and isinstance(p, (list, tuple)):
            out.append([{"role": "assistant", "content": c}])
        else:
            out.append(c)
    return out


def collate_columns(examples: Sequence[dict], repeat: int = 1) -> dict:
    """Examples -> {column: list} for reward functions (every column but "prompt"), each example
    repeated `repeat` times in a row (one per generation). Missing keys become None."""
    keys: list = []
    for ex in examples:
        keys.extend(k for k in ex if k != "prompt" and k not in keys)
    return {k: [ex.get(k) for ex in examples for _ in range(repeat)] for k in keys}


def _accepts(func) -> tuple[bool, set]:
    """(takes **kwargs, names of keyword-passable parameters)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True, set()
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return var_kw, names


class RewardTimeout(Exception):
    """A reward call did not return within its `timeout_s`."""


def _call(spec: RewardSpec, prompts: list, completions: list, columns: dict) -> list:
    var_kw, names = _accepts(spec.func)
    kwargs = {"prompts": prompts, "completions": completions, **columns}
    if not var_kw:
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    if not spec.timeout_s:
        return spec.func(**kwargs)
    # Simplification: a Python call cannot be interrupted, so it runs in a daemon thread that is abandoned
    # (left to finish or hang in the background) when the limit passes.
    result: dict = {}

    def run():
        try:
            result["value"] = spec.func(**kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    worker = threading.Thread(target=run, name=f"reward-{spec.name}", daemon=True)
    worker.start()
    worker.join(spec.timeout_s)
    if worker.is_alive():
        raise RewardTimeout(spec.name)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _as_list(out, name: str, N: int) -> list:
    """A reward function's output as a plain list; ValueError if it is not a sequence."""
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().reshape(-1).tolist()
    elif hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # numpy arrays
        out = list(out.tolist()) if getattr(out, "ndim", 1) else [out.item()]
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__"):
        raise ValueError(f"reward function {name!r} returned {type(out).__name__}, expected a list of {N} floats")
    return list(out)


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _to_float(v, name: str, i: int, completion) -> float:
    """One reward value -> float; raises ValueError naming the function and the sample."""
    if v is None:
        return 0.0
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"reward function {name!r} returned a non-number {v!r} for sample {i} "
                         f"(completion {completion_text(completion)[:60]!r})") from None
    if not math.isfinite(x):
        raise ValueError(f"reward function {name!r} returned {x} for sample {i} "
                         f"(completion {completion_text(completion)[:60]!r})")
    return x


def _locate_failure(spec: RewardSpec, prompts, completions, columns) -> int | None:
    """Index of the first sample on which the function raises when called on that sample alone."""
    for i in range(len(completions)):
        try:
            _call(spec, prompts[i:i + 1], completions[i:i + 1], {k: v[i:i + 1] for k, v in columns.items()})
        except Exception:
            return i
    return None


def _score_one(spec: RewardSpec, prompts, completions, columns, on_error: str) -> tuple[list, int]:
    """Values of one reward function, [N] floats, and the number of samples zeroed by errors."""
    N = len(completions)
    try:
        raw = _call(spec, prompts, completions, columns)
    except RewardTimeout:
        if on_error == "raise":
            raise ValueError(f"reward function {spec.name!r} did not return within reward_timeout_s={spec.timeout_s:g} "
                             f"s on a batch of {N} samples (set on_reward_error=zero to score such calls 0, or "
                             f"raise reward_timeout_s)") from None
        return [0.0] * N, N
    except Exception as e:
        i = _locate_failure(spec, prompts, completions, columns)
        where = f"at sample {i}" if i is not None else f"on the batch of {N} samples (no single sample fails alone)"
        if on_error == "raise":
            raise ValueError(f"reward function {spec.name!r} raised {_one_line(e)} {where}") from e
        if N == 1 or i is None:
            return [0.0] * N, N
        vals, errs = [], 0  # salvage: score sample by sample
        for j in range(N):
            v, err = _score_one(spec, prompts[j:j + 1], completions[j:j + 1],
                                {k: c[j:j + 1] for k, c in columns.items()}, on_error)
            vals.extend(v)
            errs += err
        return vals, errs
    try:
        raw = _as_list(raw, spec.name, N)
        if len(raw) != N:
            raise ValueError(f"reward function {spec.name!r} returned {len(raw)} values for {N} completions")
    except ValueError:
        if on_error == "raise":
            raise
        return [0.0] * N, N
    vals, errs = [], 0
    for i, v in enumerate(raw):
        try:
            vals.append(_to_float(v, spec.name, i, completions[i]))
        except ValueError:
            if on_error == "raise":
                raise
            vals.append(0.0)
            errs += 1
    return vals, errs


def compute_rewards(specs: Sequence[RewardSpec], prompts: Sequence, completions: Sequence,
                    columns: dict | None = None, *, on_error: str = "raise") -> RewardResult:
    """Score N completions with every reward function and sum them with their weights.

    prompts: N prompts (str or chat messages); completions: N strings (converted to TRL's
    conversational format for chat prompts) or already-formatted completions; columns: column ->
    list of N values, passed to every function as keyword arguments.
    on_error: "raise" (ValueError naming the function and the sample) or "zero" (the failing
    values score 0 and are counted in n_errors).
    Returns RewardResult(totals [N], per_reward {name: [N]}, n_errors).
    """
    if on_error not in ("raise", "zero"):
        raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
    if not specs:
        raise ValueError("no reward functions: the task's rewards list is empty")
    prompts, N = list(prompts), len(completions)
    if len(prompts) != N:
        raise ValueError(f"got {len(prompts)} prompts for {N} completions")
    columns = dict(columns or {})
    for k, v in columns.items():
        if k in ("prompts", "completions"):
            raise ValueError(f"column name {k!r} clashes with a reward function argument; rename the column")
        if len(v) != N:
            raise ValueError(f"column {k!r} has {len(v)} values for {N} completions")
    columns = {k: list(v) for k, v in columns.items()}
    completions = as_trl_completions(prompts, list(completions))
    totals = torch.zeros(N, dtype=torch.float32)  # [N]
    per_reward, n_errors = {}, 0
    for spec in specs:
        vals, errs = _score_one(spec, prompts, completions, columns, on_error)
        r = torch.tensor(vals, dtype=torch.float32)  # [N]
        per_reward[spec.name] = r
        totals += spec.weight * r
        n_errors += errs
    return RewardResult(totals, per_reward, n_errors)
