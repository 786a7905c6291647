"""fairalign.algos: pure tensor math for RL alignment (torch only, no other fairalign imports).

Policy losses (ppo, gspo, fspo, cispo), loss aggregation, advantage estimators (grpo, dr_grpo,
rloo, reinforce_pp_baseline, batch_joint, pgrpo, gae), the stateful P-GRPO normalizer, KL estimators, DAPO's
rollout-side pieces (overlong penalty, tied-group detection and selection for dynamic sampling) and the
critic's pieces: GAE (gae.py) and the clipped value loss (value_loss.py). Tensors in,
tensors and plain dicts out. Definitions: docs/algorithms.md.
Losses and estimators are registered by name with their hyperparameters (registry.py); the
estimator protocol (estimators.py) is how a trainer calls any of them; `compute_policy_loss` and
`compute_advantages` call one by name.
"""

from .advantages import batch_joint, dr_grpo, grpo, group_stats, reinforce_pp_baseline, rloo
from .aggregation import AGG_MODES, aggregate
from .dapo import group_order, overlong_penalty, select_groups, tied_groups, zero_groups
from .fspo import fspo_log_band
from .gae import compute_gae, last_token_rewards, masked_moments, whiten_with_moments
from .kl import KL_ESTIMATORS, kl_penalty
from .pgrpo import PreferenceGroupNormalizer
from .policy_losses import compute_policy_loss, loss_batch_stats
from .registry import (BATCH_STATISTICS, ESTIMATOR_INPUTS, ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY,
                       register_estimator, register_policy_loss)
from .estimators import LOCAL, AdvantageEstimator, build_estimator, compute_advantages
from .value_loss import compute_value_loss, explained_variance, explained_variance_from_moments

__all__ = [
    "AdvantageEstimator",
    "BATCH_STATISTICS",
    "ESTIMATOR_INPUTS",
    "ESTIMATOR_REGISTRY",
    "LOCAL",
    "POLICY_LOSS_REGISTRY",
    "build_estimator",
    "loss_batch_stats",
    "register_estimator",
    "register_policy_loss",
    "AGG_MODES",
    "KL_ESTIMATORS",
    "PreferenceGroupNormalizer",
    "aggregate",
    "batch_joint",
    "compute_advantages",
    "compute_gae",
    "compute_value_loss",
    "explained_variance",
    "explained_variance_from_moments",
    "last_token_rewards",
    "masked_moments",
    "whiten_with_moments",
    "compute_policy_loss",
    "dr_grpo",
    "fspo_log_band",
    "group_order",
    "grpo",
    "group_stats",
    "kl_penalty",
    "overlong_penalty",
    "reinforce_pp_baseline",
    "rloo",
    "select_groups",
    "tied_groups",
    "zero_groups",
]
