"""P-GRPO (arXiv 2603.10009): advantages normalized by running per-preference-group statistics.

For a sample of preference group p with reward r (docs/algorithms.md):
    A = (r − mean_p) / (std_p + eps),   std_p = sqrt(M2_p / n_p)  (population std)
using the statistics from BEFORE the current batch; then the batch is added to the statistics.
Cold start: while n_p < min_count the sample gets plain GRPO (its prompt group's mean and sample
std, eps added to the std; a group of one: mean 0, std 1).
Zero-variance guard (fairalign's choice), `zero_std`: a group whose history has std_p <= min_std
(default 1e-3; e.g. a 0/1 reward that has always been 0) must not give (r − mean)/eps (which is 1e6
for the first success after eight failures). Two rules:
- "fallback" (default): such a sample gets the GRPO fallback (its prompt group's statistics). For a
  never-solved minority this turns P-GRPO back into GRPO, exactly where it was meant to differ.
- "floor": the history is used with its std floored, A = (r − mean_p)/(max(std_p, min_std) + eps), so
  the history's mean stays in play; |A| is then bounded by (reward range)/min_std, so set min_std
  to the smallest spread you accept as a scale (e.g. 0.1 for rewards in [0, 1]).
The rules differ only for a group whose history spreads less than min_std, and there only for samples that
differ from the history's mean (a never-solved group scoring 0 again gets 0 from both); docs/algorithms.md
says, from the studies, why fallback is the default.
`last_history_frac` is the share of the last batch normalized by group history (logged as
`pgrpo/history_frac`): under "floor" every sample past the cold start counts.

State per group: Welford (n, mean, M2) in float64 on the CPU, grown as new groups appear. A
batch is folded in with Chan et al.'s parallel update, which is also how `merge` combines two
normalizers exactly (e.g. the per-rank deltas under data parallelism).

fairalign's choices (the paper does not pin them): eps is added to the std (not under the sqrt);
the fallback is per sample, so one batch can mix P-GRPO and GRPO advantages; optional `decay`
d in (0, 1] multiplies a group's old (n, M2) by d each time that group receives a new batch
(exponential forgetting, per update of the group; off by default; `merge` applies no decay).
Groups are any hashables (ints from a tensor, strings, tuples); the Python work is one pass to
label-encode the batch plus one dict lookup per *distinct* group, never per-sample statistics.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch

from ._validate import check_number, check_rewards, check_rewards_index
from .advantages import group_stats

STATE_FORMAT = "fairalign.pgrpo/1"
ZERO_STD_RULES = ("fallback", "floor")


def _plain_key(key: Any) -> Hashable:
    """Numpy / 0-dim tensor scalars -> Python scalars; lists -> tuples (JSON round trip)."""
    if isinstance(key, list):
        return tuple(_plain_key(k) for k in key)
    if hasattr(key, "item") and callable(key.item) and getattr(key, "ndim", 0) == 0:
        return key.item()
    return key


class PreferenceGroupNormalizer:
    """Stateful P-GRPO advantage normalizer; call it like `norm(rewards, groups, index)`."""

    def __init__(self, min_count: int = 8, eps: float = 1e-6, decay: float | None = None,
                 min_std: float = 1e-3, zero_std: str = "fallback"):
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
        check_number(eps, "eps", low=0.0, low_open=True)
        check_number(min_std, "min_std", low=0.0)
        self.min_std = float(min_std)
        if zero_std not in ZERO_STD_RULES:
            raise ValueError(f"zero_std must be one of {', '.join(ZERO_STD_RULES)}, got {zero_std!r}")
        if zero_std == "floor" and self.min_std <= 0:
            raise ValueError("min_std must be > 0 with zero_std='floor' (it is the floor of the std)")
        self.zero_std = zero_std
        check_number(decay, "decay", low=0.0, low_open=True, allow_none=True)
        if decay is not None and decay > 1:
            raise ValueError(f"decay must be None or in (0, 1], got {decay!r}")
        self.min_count = min_count
        self.eps = float(eps)
        self.decay = None if decay is None else float(decay)
        self._slot: dict[Hashable, int] = {}
        self._keys: list[Hashable] = []
        self._n = torch.zeros(0, dtype=torch.float64)  # [G]
        self._mean = torch.zeros(0, dtype=torch.float64)  # [G]
        self._m2 = torch.zeros(0, dtype=torch.float64)  # [G]
        self.last_history_frac = 0.0  # fraction of the last batch normalized by group history

    # ----------------------------------------------------------------- encoding
    @property
    def group_count(self) -> int:
        return len(self._keys)

    def _encode(self, groups: Any, n: int) -> tuple[list, torch.Tensor]:
        """(distinct keys [U], inv [N] long on CPU: position of each sample's key in keys)."""
        if isinstance(groups, torch.Tensor):
            if groups.dim() != 1 or groups.is_floating_point() or groups.is_complex():
                raise ValueError("preference_groups tensor must be 1-D integer [N], got "
                                 f"{groups.dtype} {tuple(groups.shape)}")
            if groups.numel() != n:
                raise ValueError(f"preference_groups has {groups.numel()} entries, rewards {n}")
            uniq, inv = torch.unique(groups.cpu(), return_inverse=True)
            return uniq.tolist(), inv
        if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
            raise ValueError("preference_groups must be a 1-D integer tensor or a list of "
                             f"hashables, got {type(groups).__name__}")
        if len(groups) != n:
            raise ValueError(f"preference_groups has {len(groups)} entries, rewards {n}")
        ids: dict[Hashable, int] = {}
        try:
            codes = [ids.setdefault(g, len(ids)) for g in groups]  # label encoding, one pass
        except TypeError as exc:
            raise ValueError(f"preference_groups entries must be hashable: {exc}") from None
        return [_plain_key(k) for k in ids], torch.tensor(codes, dtype=torch.long)

    def _slots(self, keys: list, create: bool) -> torch.Tensor:
        """Slot of each distinct key in the state ([U] long); -1 (or a new slot if create)."""
        out, new = [], 0
        for key in keys:  # loop over distinct groups only
            slot = self._slot.get(key, -1)
            if slot < 0 and create:
                slot = self._slot[key] = len(self._keys)
                self._keys.append(key)
                new += 1
            out.append(slot)
        if new:
            pad = torch.zeros(new, dtype=torch.float64)
            self._n, self._mean, self._m2 = (torch.cat([t, pad]) for t in
                                             (self._n, self._mean, self._m2))
        return torch.tensor(out, dtype=torch.long)

    # ----------------------------------------------------------------- core math
    def _combine(self, slots: torch.Tensor, n_b, mean_b, m2_b, decay: float | None) -> None:
        """Chan parallel update of the state at `slots` [U] with batch (n_b, mean_b, m2_b) [U]."""
        n_a, mean_a, m2_a = self._n[slots], self._mean[slots], self._m2[slots]
        if decay is not None:
            n_a, m2_a = n_a * decay, m2_a * decay
        n = n_a + n_b
        safe_n = n.clamp(min=1e-300)
        delta = mean_b - mean_a
        mean = torch.where(n > 0, mean_a + delta * (n_b / safe_n), mean_a)
        m2 = m2_a + m2_b + delta.square() * (n_a * n_b / safe_n)
        self._n[slots], self._mean[slots], self._m2[slots] = n, mean, m2

    def _update_encoded(self, r: torch.Tensor, keys: list, inv: torch.Tensor) -> None:
        slots = self._slots(keys, create=True)  # [U]
        zeros = torch.zeros(len(keys), dtype=torch.float64)
        cnt = zeros.index_add(0, inv, torch.ones_like(r))  # [U]
        mean_b = zeros.index_add(0, inv, r) / cnt  # [U]; every distinct key has >= 1 sample
        m2_b = zeros.index_add(0, inv, (r - mean_b[inv]).square())  # [U]
        self._combine(slots, cnt, mean_b, m2_b, self.decay)

    # ----------------------------------------------------------------- public API
    def __call__(self, rewards: torch.Tensor, preference_groups: Any, index: torch.Tensor,
                 update: bool = True) -> torch.Tensor:
        """Advantages [N] for rewards [N]; then (if update) fold the batch into the statistics."""
        check_rewards_index(rewards, index)
        keys, inv = self._encode(preference_groups, rewards.numel())
        slots = self._slots(keys, create=False)  # [U], -1 = never seen
        known = slots >= 0
        n_u, mean_u, m2_u = (torch.zeros(len(keys), dtype=torch.float64) for _ in range(3))  # [U]
        n_u[known], mean_u[known], m2_u[known] = (t[slots[known]] for t in
                                                  (self._n, self._mean, self._m2))
        std_u = (m2_u / n_u.clamp(min=1e-300)).sqrt()  # population std before this batch
        dev = rewards.device
        n_s, mean_s, std_s = (t[inv].to(dev) for t in (n_u, mean_u, std_u))  # [N] each
        r = rewards.to(torch.float64)
        use = n_s >= self.min_count  # [N]: enough history
        if self.zero_std == "floor":
            std_s = std_s.clamp(min=self.min_std)  # a degenerate history keeps its mean, with a floored scale
        else:
            use = use & (std_s > self.min_std)  # a degenerate history falls back to the prompt group
        adv_pref = (r - mean_s) / (std_s + self.eps)  # [N]
        _, g_mean, g_std = group_stats(rewards, index)  # GRPO fallback statistics, [N]
        adv_grpo = (r - g_mean) / (g_std + self.eps)
        adv = torch.where(use, adv_pref, adv_grpo)
        self.last_history_frac = float(use.double().mean()) if use.numel() else 0.0
        if update:
            self._update_encoded(r.detach().cpu(), keys, inv)
        return adv.to(rewards.dtype)

    def update(self, rewards: torch.Tensor, preference_groups: Any) -> None:
        """Fold rewards [N] of the given groups into the statistics (no advantages)."""
        check_rewards(rewards)
        keys, inv = self._encode(preference_groups, rewards.numel())
        self._update_encoded(rewards.detach().to(torch.float64).cpu(), keys, inv)

    def merge(self, other: "PreferenceGroupNormalizer") -> None:
        """Fold another normalizer's statistics into this one (exact Chan update, no decay)."""
        if not isinstance(other, PreferenceGroupNormalizer):
            raise ValueError(f"can only merge a PreferenceGroupNormalizer, got {type(other).__name__}")
        if not other._keys:
            return
        slots = self._slots(list(other._keys), create=True)
        self._combine(slots, other._n.clone(), other._mean.clone(), other._m2.clone(), None)

    def stats(self) -> dict:
        """group -> (n, mean, population std), plain Python numbers (n is an int without decay)."""
        std = (self._m2 / self._n.clamp(min=1e-300)).sqrt()
        out = {}
        for key, n, mean, s in zip(self._keys, self._n.tolist(), self._mean.tolist(), std.tolist()):
            out[key] = (int(round(n)) if self.decay is None else n, mean, s)
        return out

    def state_dict(self) -> dict:
        """Plain, JSON-serializable state (if the group keys are): lists of floats."""
        return {
            "format": STATE_FORMAT,
            "min_count": self.min_count,
            "eps": self.eps,
            "decay": self.decay,
            "groups": list(self._keys),
            "n": self._n.tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the statistics saved by `state_dict` (min_count/eps/decay/min_std/zero_std stay as constructed)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state must be a dict from state_dict() with format {STATE_FORMAT!r}")
        keys = [_plain_key(k) for k in state["groups"]]
        cols = [torch.as_tensor(state[k], dtype=torch.float64).reshape(-1)
                for k in ("n", "mean", "m2")]
        if any(c.numel() != len(keys) for c in cols):
            raise ValueError("state: 'groups', 'n', 'mean', 'm2' must have the same length")
        if len(set(keys)) != len(keys):
            raise ValueError("state: duplicate group keys")
        if not all(bool(torch.isfinite(c).all()) for c in cols) or bool((cols[0] < 0).any()) \
                or bool((cols[2] < 0).any()):
            raise ValueError("state: n, mean, m2 must be finite with n >= 0 and m2 >= 0")
        self._keys = keys
        self._slot = {k: i for i, k in enumerate(keys)}
        self._n, self._mean, self._m2 = (c.clone() for c in cols)

    def __repr__(self) -> str:
        return (f"PreferenceGroupNormalizer(min_count={self.min_count}, eps={self.eps}, "
                f"decay={self.decay}, min_std={self.min_std}, zero_std={self.zero_std!r}, groups={self.group_count})")

