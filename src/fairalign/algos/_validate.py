"""Shared input checks for `fairalign.algos` (pure torch).

Every public entry point validates its tensors here so error messages are uniform: one line,
naming the offending argument and, for names, listing the valid choices.

Simplification: non-finite values are only rejected where they matter (response tokens for
log-probs, every entry for rewards); padded positions may hold anything, and are replaced by 0
before any arithmetic so they cannot leak NaN into values or gradients.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

LOG_RATIO_MAX = 20.0  # exp(20) ~ 4.9e8: log ratios are clamped here before exp (overflow guard)


def check_name(name: Any, registry: Mapping[str, Any], what: str) -> None:
    """Raise ValueError unless `name` is a key of `registry`."""
    if not isinstance(name, str) or name not in registry:
        valid = ", ".join(repr(k) for k in registry)
        raise ValueError(f"unknown {what} {name!r}; valid names: {valid}")


def check_number(value: Any, arg: str, *, low: float | None = None, low_open: bool = False,
                 allow_none: bool = False) -> None:
    """Raise ValueError unless `value` is a finite real number (>= low, or > low if low_open)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        extra = " or None" if allow_none else ""
        raise ValueError(f"{arg} must be a finite number{extra}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        op = ">" if low_open else ">="
        raise ValueError(f"{arg} must be {op} {low}, got {value!r}")


def check_dual_clip(dual_clip: Any) -> None:
    """dual_clip is None (off) or a number > 1."""
    check_number(dual_clip, "dual_clip", low=1.0, low_open=True, allow_none=True)


def check_hparams(name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
    """Reject unknown hyperparameters (typos) and return defaults updated with `given`."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(defaults) or "(none)"
        raise ValueError(f"unknown hyperparameter(s) {unknown} for loss {name!r}; valid: {valid}")
    out = dict(defaults)
    out.update(given)
    return out


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Half-precision inputs are upcast to float32 for the loss math; float64 stays float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def prepare_loss_inputs(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor):
    """Check shapes/values and return sanitized tensors for a policy loss.

    Returns (logp [B,T] with grad, old_logp [B,T] detached, ell = logp − old_logp [B,T]
    detached, adv [B,1] or [B,T], m bool [B,T]), floating tensors in the compute dtype with
    padded positions set to 0 (so padded ℓ = 0 and padded A = 0 for [B,T] advantages).
    """
    for arg, t in (("logp", logp), ("old_logp", old_logp), ("advantages", advantages),
                   ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if logp.dim() != 2:
        raise ValueError(f"logp must have shape [B, T], got {tuple(logp.shape)}")
    if not logp.is_floating_point():
        raise ValueError(f"logp must be a floating tensor, got {logp.dtype}")
    shape = logp.shape
    if old_logp.shape != shape:
        raise ValueError(f"old_logp shape {tuple(old_logp.shape)} != logp shape {tuple(shape)}")
    if mask.shape != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logp shape {tuple(shape)}")
    if advantages.shape not in (shape[:1], shape):
        raise ValueError(f"advantages must have shape [B]={tuple(shape[:1])} or "
                         f"[B, T]={tuple(shape)}, got {tuple(advantages.shape)}")
    m = as_bool_mask(mask, "mask")
    dtype = compute_dtype(logp)
    zero = torch.zeros((), dtype=dtype, device=logp.device)
    logp_c = torch.where(m, logp.to(dtype), zero)  # padded -> 0 (gradient 0 there)
    old_c = torch.where(m, old_logp.detach().to(dtype), zero)
    ell = logp_c.detach() - old_c  # [B, T]; non-finite only if a response position is
    if advantages.dim() == 1:
        adv = torch.where(m.any(dim=1), advantages.detach().to(dtype), zero).unsqueeze(1)
    else:
        adv = torch.where(m, advantages.detach().to(dtype), zero)
    ok = torch.stack([torch.isfinite(ell).all(), torch.isfinite(adv).all()]).tolist()  # 1 sync
    if not ok[0]:
        raise ValueError("logp/old_logp contain NaN or inf at response (mask=1) positions")
    if not ok[1]:
        raise ValueError("advantages contain NaN or inf for response tokens")
    return logp_c, old_c, ell, adv, m


def as_bool_mask(mask: torch.Tensor, arg: str = "mask") -> torch.Tensor:
    """Accept a bool mask or a 0/1 numeric mask; return a bool tensor."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"{arg} must be bool or 0/1, got {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{arg} must be bool or contain only 0/1 values")
    return mask != 0


def check_rewards(rewards: torch.Tensor) -> None:
    """rewards: 1-D floating [N] without NaN/inf."""
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [N], got {_shape_of(rewards)}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating tensor, got {rewards.dtype}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf")


def check_rewards_index(rewards: torch.Tensor, index: torch.Tensor) -> None:
    """rewards: 1-D floating [N] without NaN/inf; index: 1-D integer [N]."""
    check_rewards(rewards)
    if not isinstance(index, torch.Tensor) or index.dim() != 1:
        raise ValueError(f"index must be a 1-D tensor [N], got {_shape_of(index)}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"index must be an integer tensor, got {index.dtype}")
    if index.shape != rewards.shape:
        raise ValueError(f"index shape {tuple(index.shape)} != rewards shape "
                         f"{tuple(rewards.shape)}")


def _shape_of(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__
