"""The critic's modules: a value head (hidden state -> one scalar) and a value model (a decoder trunk
with a value head), for PPO with a learned value function (`algo.critic`, train/critic.py).

- `ValueHead(hidden_size, seed)`: Linear(H, 1). Weight ~ N(0, (1/(H+1))²), bias 0 (OpenRLHF's init),
  drawn from its own generator so building it never moves the global torch RNG and every rank builds
  the same head.
- `ValueModel.from_causal_lm(lm, seed)`: the causal LM's decoder trunk (`lm.base_model`, e.g.
  Qwen2Model) with a new `ValueHead`; the LM head is dropped. `forward(input_ids, attention_mask,
  position_ids)` returns values [b, T], one per input position (the value of the state that ends
  there). It keeps the trunk's `_no_split_modules`, so FSDP2 shards its decoder layers like the policy's.

Simplifications: values are computed in the head's dtype (float32 unless autocast); no dropout
handling beyond the caller's `eval()`.
"""
from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """Linear(H, 1): hidden states [..., H] -> values [...]."""

    def __init__(self, hidden_size: int, seed: int = 0):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=gen) / (hidden_size + 1))
            self.linear.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)


class ValueModel(nn.Module):
    """A decoder trunk and a value head: token ids [b, T] -> values [b, T]."""

    def __init__(self, trunk: nn.Module, hidden_size: int, seed: int = 0):
        super().__init__()
        self.trunk = trunk
        self.head = ValueHead(hidden_size, seed)
        self._no_split_modules = list(getattr(trunk, "_no_split_modules", None) or [])

    @classmethod
    def from_causal_lm(cls, lm: nn.Module, seed: int = 0) -> "ValueModel":
        trunk = lm.base_model
        if trunk is lm:
            raise ValueError(f"{type(lm).__name__} has no separate decoder trunk (base_model) to build a value model on")
        return cls(trunk, lm.config.hidden_size, seed)

    def forward(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=False)
        return self.head(out.last_hidden_state)  # [b, T]
