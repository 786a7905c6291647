"""Loss aggregation: reduce a per-token loss matrix [B, T] to a scalar (docs/algorithms.md).

Modes (m = response mask, L_i = Σ_t m[i,t], N = number of sequences with L_i > 0):
  token-mean               Σ_i Σ_t loss·m / Σ_i L_i                  (default; DAPO)
  seq-mean-token-mean      Σ_i (Σ_t loss·m / L_i) / N                (GRPO paper, GSPO)
  seq-mean-token-sum       Σ_i (Σ_t loss·m) / N
  seq-mean-token-sum-norm  Σ_i (Σ_t loss·m / horizon) / N            (Dr. GRPO; horizon default T)

Global normalizers: pass `global_tokens` (Σ L_i over every data-parallel rank and minibatch) or
`global_seqs` (N over the same) and the local sum is divided by it instead of the local count, so
the losses of the pieces of a split batch add up to the loss of the whole batch.

Simplification (fairalign's choice): rows whose mask is all zero contribute nothing and are not
counted in N (they are treated as padding rows, not as empty responses).
"""

from __future__ import annotations

from typing import Any

import torch

from ._validate import as_bool_mask, check_name

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
_AGG_REGISTRY = {name: None for name in AGG_MODES}


def _check_normalizer(value: Any, arg: str) -> None:
    if value is None or isinstance(value, torch.Tensor):
        return  # tensors (e.g. from an all_reduce) are trusted: checking them would force a sync
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{arg} must be None, a tensor, or a number > 0, got {value!r}")


def check_agg_args(agg: str, horizon: Any = None, global_tokens: Any = None,
                   global_seqs: Any = None) -> None:
    """Validate the aggregation mode and its optional arguments (ValueError)."""
    check_name(agg, _AGG_REGISTRY, "agg")
    _check_normalizer(global_tokens, "global_tokens")
    _check_normalizer(global_seqs, "global_seqs")
    if horizon is not None:
        if isinstance(horizon, bool) or not isinstance(horizon, (int, float)) or not horizon > 0:
            raise ValueError(f"horizon must be None or a number > 0, got {horizon!r}")


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean",
              horizon: float | None = None, global_tokens: Any = None,
              global_seqs: Any = None) -> torch.Tensor:
    """Reduce `loss_mat` [B, T] over response tokens `mask` [B, T] to a scalar, per `agg`."""
    check_agg_args(agg, horizon, global_tokens, global_seqs)
    if not isinstance(loss_mat, torch.Tensor) or loss_mat.dim() != 2:
        raise ValueError(f"loss_mat must be a tensor [B, T], got "
                         f"{tuple(loss_mat.shape) if isinstance(loss_mat, torch.Tensor) else loss_mat!r}")
    if not isinstance(mask, torch.Tensor) or mask.shape != loss_mat.shape:
        raise ValueError(f"mask shape {tuple(getattr(mask, 'shape', ()))} != loss_mat shape "
                         f"{tuple(loss_mat.shape)}")
    m = as_bool_mask(mask)
    zero = torch.zeros((), dtype=loss_mat.dtype, device=loss_mat.device)
    masked = torch.where(m, loss_mat, zero)  # [B, T]; padded NaN/inf cannot leak
    return aggregate_masked(masked, m, agg, horizon, global_tokens, global_seqs)


def aggregate_masked(masked: torch.Tensor, m: torch.Tensor, agg: str, horizon=None,
                     global_tokens: Any = None, global_seqs: Any = None) -> torch.Tensor:
    """`aggregate` for a loss matrix already 0 on padding and a bool mask (no checks)."""
    if agg == "token-mean":
        denom = m.sum().clamp(min=1) if global_tokens is None else global_tokens
        return masked.sum() / denom

    lengths = m.sum(dim=1)  # [B]
    seq_sum = masked.sum(dim=1)  # [B]
    if agg == "seq-mean-token-mean":
        per_seq = seq_sum / lengths.clamp(min=1)  # [B]
    elif agg == "seq-mean-token-sum":
        per_seq = seq_sum
    else:  # seq-mean-token-sum-norm
        per_seq = seq_sum / float(masked.shape[1] if horizon is None else horizon)
    denom = (lengths > 0).sum().clamp(min=1) if global_seqs is None else global_seqs
    return per_seq.sum() / denom
