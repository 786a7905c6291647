"""Sequence advantage estimators from rewards [N] and prompt index [N] (docs/algorithms.md).

  grpo                   (r − mean_g) / (std_g + eps), sample std (n−1)
  dr_grpo                r − mean_g                                       (Dr. GRPO)
  rloo                   r_i − mean_{j≠i} r_j                              (RLOO)
  reinforce_pp_baseline  r − mean_g, then whitened over the batch: (x − mean)/(std + eps)
  batch_joint            (r − mean_B) / (std_B + eps) over the whole batch, prompts and preference
                         groups mixed (the joint normalization P-GRPO replaces; `index` is not used)

Groups are the distinct values of `index` (any integers, not necessarily contiguous), found
with torch.unique(return_inverse=True); per-group sums use index_add (no Python loop).

A batch of one: reinforce_pp_baseline and batch_joint give 0 (no spread to normalize by).
Groups of one (the convention of verl's GRPO family, fairalign documents it): grpo, dr_grpo and
reinforce_pp_baseline use mean 0 (and std 1 for grpo), so the advantage is the raw reward
(÷(1+eps) for grpo); rloo has no leave-one-out baseline and gives 0.
Statistics are computed in float64 and returned in the rewards' dtype.
"""

from __future__ import annotations

import torch

from ._validate import check_number, check_rewards_index

GRPO_EPS = 1e-6


def _group_sums(rewards: torch.Tensor, index: torch.Tensor):
    """(inv [N] group id per sample, count [G], sum [G], raw mean [G], sample std [G]), float64."""
    check_rewards_index(rewards, index)
    r = rewards.to(torch.float64)
    uniq, inv = torch.unique(index, return_inverse=True)  # inv: [N] group id per sample
    G = uniq.numel()
    zeros = torch.zeros(G, dtype=r.dtype, device=r.device)
    count = zeros.index_add(0, inv, torch.ones_like(r))  # [G]
    total = zeros.index_add(0, inv, r)  # [G]
    mean = total / count.clamp(min=1)  # [G]
    sq = zeros.index_add(0, inv, (r - mean[inv]) ** 2)  # [G], two-pass for accuracy
    std = (sq / (count - 1).clamp(min=1)).sqrt()  # [G], sample std (n-1)
    return inv, count, total, mean, std


def group_stats(rewards: torch.Tensor, index: torch.Tensor):
    """Per-sample (count n, group mean, sample std with n−1) of the sample's group, each [N].

    Groups of one get mean 0 and std 1 (GRPO convention). float64.
    """
    inv, count, _, mean, std = _group_sums(rewards, index)
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return count[inv], mean[inv], std[inv]


def grpo(rewards: torch.Tensor, index: torch.Tensor, eps: float = GRPO_EPS) -> torch.Tensor:
    """GRPO: (r − mean_g)/(std_g + eps), sample std; a group of one: mean 0, std 1."""
    check_number(eps, "eps", low=0.0, low_open=True)
    _, mean, std = group_stats(rewards, index)
    return ((rewards.to(torch.float64) - mean) / (std + eps)).to(rewards.dtype)


def dr_grpo(rewards: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO: r − mean_g (no std normalization); a group of one: mean 0."""
    _, mean, _ = group_stats(rewards, index)
    return (rewards.to(torch.float64) - mean).to(rewards.dtype)


def rloo(rewards: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """RLOO: r_i − (Σ_g r − r_i)/(n_g − 1); a group of one gets advantage 0."""
    r = rewards.to(torch.float64)
    inv, count, total, _, _ = _group_sums(rewards, index)
    n = count[inv]  # [N]
    loo = (total[inv] - r) / (n - 1).clamp(min=1)  # leave-one-out mean
    adv = torch.where(n > 1, r - loo, torch.zeros_like(r))
    return adv.to(rewards.dtype)


def reinforce_pp_baseline(rewards: torch.Tensor, index: torch.Tensor,
                          eps: float = GRPO_EPS) -> torch.Tensor:
    """REINFORCE++ with baseline: r − mean_g, then batch whitening (sample std, + eps)."""
    check_number(eps, "eps", low=0.0, low_open=True)
    _, mean, _ = group_stats(rewards, index)
    x = rewards.to(torch.float64) - mean  # [N]
    if x.numel() < 2:
        return torch.zeros_like(rewards)
    white = (x - x.mean()) / (x.std(unbiased=True) + eps)
    return white.to(rewards.dtype)


def batch_joint(rewards: torch.Tensor, index: torch.Tensor, eps: float = GRPO_EPS) -> torch.Tensor:
    """Batch-joint normalization: (r − mean)/(std + eps) over every sample of the batch (sample std),
    whatever its prompt or preference group; `index` is checked but not used. A batch of one gives 0."""
    check_number(eps, "eps", low=0.0, low_open=True)
    check_rewards_index(rewards, index)
    r = rewards.to(torch.float64)  # [N]
    if r.numel() < 2:
        return torch.zeros_like(rewards)
    return ((r - r.mean()) / (r.std(unbiased=True) + eps)).to(rewards.dtype)
