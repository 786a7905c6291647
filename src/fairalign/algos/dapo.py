"""DAPO's rollout-side pieces as pure tensor functions (DAPO, Yu et al. 2025, arXiv 2503.14476):
the soft overlong penalty, the prompt groups dynamic sampling leaves out, and the choice of the
groups a step trains on. docs/algorithms.md ("DAPO's dynamic sampling and overlong shaping") has
the formulas; train/rollout_stage.py is where the trainer uses them.

    pen = overlong_penalty(lengths, max_len=64, buffer=12.8, factor=1.0) # [N], 0 down to -factor
    order, inverse = group_order(index)                                  # groups in first-seen order
    tied = tied_groups(rewards, index)                                   # [K] bool, all rewards equal
    zero = zero_groups(advantages, index)                                # [K] bool, all advantages 0
    chosen, fillers = select_groups(informative, target)                 # positions in the global order

Simplifications (fairalign's choices):
- "equal" and "zero" are absolute: a group ties when max − min of its values is <= `tol`, and has
  zero advantages when max |A| <= `tol` (default 1e-6 for both).
- Groups are identified by the prompt index and ordered by their first row, so the answer does not
  depend on what values the index holds.
"""
from __future__ import annotations

from typing import Sequence

import torch

TIE_TOL = 1e-6


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: float, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, times `factor`: [N] lengths (tokens) -> [N] float32 penalty.

        0                                          if L <= max_len − buffer
        factor · ((max_len − buffer) − L) / buffer   if max_len − buffer < L <= max_len
        −factor                                    if L > max_len
    `buffer` (L_cache, tokens) may be fractional: fairalign sets it as a share of max_len.
    """
    if isinstance(buffer, bool) or not isinstance(buffer, (int, float)) or not 0 < buffer <= max_len:
        raise ValueError(f"buffer must be a number of tokens in (0, max_len={max_len}], got {buffer!r}")
    if factor < 0:
        raise ValueError(f"factor must be >= 0, got {factor}")
    over = (lengths.double() - (max_len - buffer)).clamp(min=0.0, max=float(buffer))  # [N] tokens into the buffer
    return (-factor * over / buffer).float()  # [N]


def group_order(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct prompt ids of `index` [N] in order of their first row ([K]), and each row's
    position in that order ([N] long)."""
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
    uniq, inv = torch.unique(index, return_inverse=True)  # sorted ids [K], [N]
    rows = torch.arange(index.numel(), device=index.device)
    first = torch.full((uniq.numel(),), index.numel(), dtype=torch.long, device=index.device)
    first = first.scatter_reduce(0, inv, rows, reduce="amin")  # [K] first row of each id
    by_first = torch.argsort(first)  # [K] sorted position -> first-seen position
    rank = torch.empty_like(by_first)
    rank[by_first] = torch.arange(uniq.numel(), device=index.device)
    return uniq[by_first], rank[inv]


def _group_reduce(values: torch.Tensor, index: torch.Tensor, reduce: str) -> torch.Tensor:
    if values.shape != index.shape:
        raise ValueError(f"values {tuple(values.shape)} and index {tuple(index.shape)} must have the same shape")
    order, pos = group_order(index)
    init = torch.full((order.numel(),), float("inf") if reduce == "amin" else float("-inf"),
                      dtype=torch.float64, device=values.device)
    return init.scatter_reduce(0, pos.to(values.device), values.double(), reduce=reduce)  # [K]


def tied_groups(values: torch.Tensor, index: torch.Tensor, tol: float = TIE_TOL) -> torch.Tensor:
    """[K] bool, one per prompt group in first-seen order: every value of the group (rewards [N])
    lies within `tol` of the others (max − min <= tol). A group of one ties."""
    span = _group_reduce(values, index, "amax") - _group_reduce(values, index, "amin")
    return (span <= tol).cpu()


def zero_groups(advantages: torch.Tensor, index: torch.Tensor, tol: float = TIE_TOL) -> torch.Tensor:
    """[K] bool, one per prompt group in first-seen order: every advantage of the group is zero
    (max |A| <= tol), i.e. the group gives no policy gradient."""
    return (_group_reduce(advantages.abs(), index, "amax") <= tol).cpu()


def select_groups(informative: Sequence[bool], target: int) -> tuple[list[int], list[int]]:
    """The groups a step trains on, as positions in the step's global group order.

    The first `target` informative groups; if there are fewer, the earliest uninformative ones fill
    the batch up to `target` (they are returned again in `fillers`, to get zero loss weight).
    Returns (chosen positions, sorted; filler positions, sorted)."""
    if target < 0:
        raise ValueError(f"target must be >= 0, got {target}")
    flags = [bool(x) for x in informative]
    kept = [p for p, ok in enumerate(flags) if ok][:target]
    fillers = [p for p, ok in enumerate(flags) if not ok][:target - len(kept)]
    return sorted(kept + fillers), fillers
