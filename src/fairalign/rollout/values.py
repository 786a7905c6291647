"""Token values of given responses under a value model (`fairalign.models.value.ValueModel`): the
critic's pass, laid out like the log-prob pass (logprobs.py).

    values[i, t] = V(prompt_i + response_i[:t])     (the state in which response token t was sampled)

i.e. the value model's output at the positions that predict each response token, over the same inputs
as `sequence_logprobs` (left-padded prompts, correct position ids). 0 on padding.
Simplifications: one forward per call (no prompt sharing), so the number of forwards never depends on
the data and a sharded value model needs no `all_ranks` agreement.
"""
from __future__ import annotations

import torch

from fairalign.rollout.logprobs import response_inputs


def sequence_values(value_model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, R] float32 values; gradients flow when grad is enabled. `value_model(input_ids, attention_mask,
    position_ids) -> [B, T]`."""
    if prompt_ids.shape != prompt_mask.shape or response_ids.shape != response_mask.shape:
        raise ValueError("prompt_ids/prompt_mask and response_ids/response_mask must have equal shapes")
    B, R = response_ids.shape
    device = next(value_model.parameters()).device
    r_mask = response_mask.bool().to(device)
    used = r_mask.any(0).nonzero()
    n_keep = int(used[-1]) + 1 if used.numel() else 1  # trailing all-padding response columns are skipped
    inputs = response_inputs(prompt_ids.to(device), prompt_mask.to(device), response_ids.to(device), n_keep)
    v = value_model(**inputs)[:, -n_keep:].float()  # [B, n_keep]
    v = v * r_mask[:, :n_keep]
    return torch.cat([v, v.new_zeros(B, R - n_keep)], dim=1)  # [B, R]
