"""fairalign's FSPO loss and P-GRPO advantages inside verl 0.9.x (written against verl 0.9.1).

Importing this module registers, in verl's own registries (verl.trainer.ppo.core_algos):
  policy loss "fspo"  (actor_rollout_ref.actor.policy_loss.loss_mode=fspo), with fairalign's clip counts
                      per response-length bin in its metrics;
  estimator   "pgrpo" (algorithm.adv_estimator=pgrpo);
and defines PGRPOCheckpointCallback (trainer.checkpoint_callback_class=...), which records each prompt's
preference group and keeps P-GRPO's statistics in verl's checkpoints. The user's diff, the config keys
and a command line: docs/integrations.md (section verl).

How verl 0.9.1 calls them (the contract this file implements):
- loss: verl.workers.utils.losses.ppo_loss, in every actor worker, once per micro-batch:
    fn(old_log_prob [B,T], log_prob [B,T], advantages [B,T], response_mask [B,T] bool, loss_agg_mode,
       config=ActorConfig, rollout_is_weights [B,T] | None) -> (scalar loss, {name: float})
  The metrics are averaged over micro-batches, ranks and mini-batches; every call returns the same keys.
- estimator: verl.trainer.ppo.ray_trainer.compute_advantage, once per step on the whole batch, in the
  trainer process (the TaskRunner actor):
    fn(token_level_rewards [B,T], response_mask [B,T], config=the `algorithm` DictConfig,
       index=non_tensor_batch["uid"] [B]) -> (advantages [B,T], returns [B,T])

Simplifications (fairalign's choices for verl): FSPO's c_low / c_high are verl's
actor.clip_ratio_low / clip_ratio_high (the keys verl's own gspo reads; verl's ActorConfig rejects new
keys), drift is "none" and there is no dual clip (actor.clip_ratio_c is not read, as in verl's gspo);
the loss matrix is aggregated by verl's agg_loss, so verl's global token/sequence normalization applies.
Length bins are fixed powers of two [1, 2), ..., [32768, 65536) so every call logs the same keys.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any, Mapping

import torch

try:
    import verl
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.checkpoint_callback import CheckpointCallback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"fairalign.integrations.verl needs verl 0.9.x (pip install 'fairalign[verl]'): {exc}") from exc

from fairalign.algos import POLICY_LOSS_REGISTRY
from fairalign.diagnostics import clip_rates_by_length, lre_from_pooled_counts

from .verl_pgrpo import DRIVER, group_key, install_group_recorder, read_groups

logger = logging.getLogger(__name__)
if not str(getattr(verl, "__version__", "0.9")).startswith("0.9"):
    logger.warning("fairalign.integrations.verl is written against verl 0.9.x; found verl %s", verl.__version__)

LENGTH_EDGES = tuple(2 ** k for k in range(17))  # 1, 2, 4, ..., 65536: 16 bins
PREFIX = "actor/fspo/"
_VERL_PPO_DEFAULT = 0.2  # verl's actor.clip_ratio_low/high default (a PPO ratio band)
_warned_defaults = False


# ---------------------------------------------------------------------------------------------- FSPO
def fspo_band(config: Any) -> tuple[float, float]:
    """(c_low, c_high) of FSPO's √L log band from verl's actor config (clip_ratio_low/high, else clip_ratio)."""
    global _warned_defaults
    out = []
    for key in ("clip_ratio_low", "clip_ratio_high"):
        value = config.get(key)
        value = config.get("clip_ratio") if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"loss_mode=fspo: actor_rollout_ref.actor.{key} (FSPO's c_{key[11:]}) must be a "
                             f"number > 0, got {value!r}")
        out.append(float(value))
    if out == [_VERL_PPO_DEFAULT] * 2 and not _warned_defaults:
        _warned_defaults = True
        logger.warning("loss_mode=fspo reads actor.clip_ratio_low/high as c_low/c_high of its log band "
                       "±c·√L; they are verl's PPO defaults 0.2/0.2 (a very wide band). fairalign suggests "
                       "starting at 0.02/0.03.")
    return out[0], out[1]


def _sequence_advantage(advantages: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """[B]: verl's token advantages [B,T] averaged over each response (the outcome advantage)."""
    if advantages.dim() == 1:
        return advantages.detach()
    return (advantages.detach() * m).sum(1) / m.sum(1).clamp(min=1)


def fspo_metrics(stats: dict, mask: torch.Tensor, advantages: torch.Tensor) -> dict[str, float]:
    """verl metrics of one FSPO call: verl's usual clip fraction and KL, and per length bin the number of
    sequences and of clipped ones (poolable: `length_fairness` turns their averages into rates and LRE)."""
    m = mask.bool()
    lengths = m.sum(1).cpu()  # [B]
    clipped = stats["clipped"].detach().bool().cpu()  # [B]: FSPO clips whole sequences
    adv = _sequence_advantage(advantages, m).cpu()  # [B]
    out = {"actor/pg_clipfrac": stats["clip_frac"], "actor/ppo_kl": stats["approx_kl"],
           PREFIX + "clip_frac_high": stats["clip_frac_high"], PREFIX + "clip_frac_low": stats["clip_frac_low"]}
    for row in clip_rates_by_length(lengths, clipped, edges=LENGTH_EDGES):
        label = f"{row['lo']}-{row['hi']}"
        out[f"{PREFIX}len_count/{label}"] = float(row["count"])
        out[f"{PREFIX}len_clipped/{label}"] = float(round(row["clip_rate"] * row["count"]))
    for side, sel in (("pos", adv > 0), ("neg", adv < 0)):  # upper clips need A > 0, lower clips A < 0
        out[f"{PREFIX}seq_count_{side}"] = float(sel.sum())
        out[f"{PREFIX}seq_clipped_{side}"] = float((sel & clipped).sum())
    return out


@core_algos.register_policy_loss("fspo")
def compute_policy_loss_fspo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                             response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                             rollout_is_weights: torch.Tensor | None = None):
    """verl policy loss "fspo": fairalign's FSPO loss matrix, verl's aggregation. Returns (loss, metrics)."""
    if config is None:
        raise ValueError("loss_mode=fspo needs verl's actor config (actor_rollout_ref.actor)")
    c_low, c_high = fspo_band(config)
    loss_mat, stats = POLICY_LOSS_REGISTRY["fspo"].fn(log_prob, old_log_prob, advantages, response_mask,
                                            c_low=c_low, c_high=c_high, drift="none", dual_clip=None)  # [B,T]
    if rollout_is_weights is not None:  # verl's rollout correction weights, as its own losses apply them
        loss_mat = loss_mat * rollout_is_weights
    loss = core_algos.agg_loss(loss_mat=loss_mat, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                               **(config.get("global_batch_info") or {}))
    return loss, fspo_metrics(stats, response_mask, advantages)


def length_fairness(metrics: Mapping[str, float]) -> dict[str, float]:
    """Clip rate per length bin, LRE and the upper/lower clip rates from FSPO's counts in verl's metrics:
    one step's (verl logs averages of the counts; their ratios are the pooled rates) or sums over steps."""
    def counts(kind: str) -> dict[str, float]:
        head = f"{PREFIX}len_{kind}/"
        return {k[len(head):]: float(v) for k, v in metrics.items() if k.startswith(head)}

    n, k = counts("count"), counts("clipped")
    out = {f"clip_rate/len/{b}": k.get(b, 0.0) / c for b, c in n.items() if c > 0}
    out["lre"] = lre_from_pooled_counts(n, k)
    for key, side in (("clip_rate/upper", "pos"), ("clip_rate/lower", "neg")):
        total = float(metrics.get(f"{PREFIX}seq_count_{side}", 0.0))
        out[key] = float(metrics.get(f"{PREFIX}seq_clipped_{side}", 0.0)) / total if total > 0 else 0.0
    return out


# -------------------------------------------------------------------------------------------- P-GRPO
@core_algos.register_adv_est("pgrpo")
def compute_pgrpo_outcome_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                                    index: Any = None, config: Any = None, non_tensor_batch: Any = None, **unused):
    """verl estimator "pgrpo": fairalign's P-GRPO on sequence rewards, keyed by preference group.

    The groups come from `non_tensor_batch[algorithm.pgrpo_group_key]` when a caller passes the batch
    (verl 0.9.1 does so only for GDPO), else from the groups recorded by uid at fetch time."""
    extra = sorted(k for k, v in unused.items() if v is not None)
    if extra:
        raise ValueError(f"adv_estimator=pgrpo does not use verl's {', '.join(extra)}")
    if index is None:
        raise ValueError("adv_estimator=pgrpo needs verl's prompt ids (index = non_tensor_batch['uid'])")
    groups = None if non_tensor_batch is None else read_groups(non_tensor_batch, group_key(config))
    scores = token_level_rewards.sum(dim=-1)  # [B]: the sequence reward (verl puts it on the last token)
    adv = DRIVER.advantages(scores, index, groups, config)  # [B]
    adv = adv.unsqueeze(-1) * response_mask  # [B, T]
    return adv, adv


def resume_folder(trainer_config: Any) -> str | None:
    """The global_step_N folder verl's v1 trainer will resume from (its _load_checkpoint's rule), or None."""
    mode = trainer_config.get("resume_mode", "auto")
    if mode == "disable":
        return None
    if mode == "auto":
        from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path  # heavy: only when resuming

        return find_latest_ckpt_path(os.path.abspath(trainer_config.get("default_local_dir")))
    if mode == "resume_path":
        return os.path.abspath(trainer_config.get("resume_from_path"))
    raise ValueError(f"unknown trainer.resume_mode={mode!r}")


class PGRPOCheckpointCallback(CheckpointCallback):
    """trainer.checkpoint_callback_class=fairalign.integrations.verl.PGRPOCheckpointCallback

    verl's v1 trainer builds it in its own process (where compute_advantage runs) before it resumes.
    With algorithm.adv_estimator=pgrpo it: records every fetched prompt's group (algorithm.pgrpo_group_key)
    by uid; loads P-GRPO's state from the checkpoint being resumed; writes it next to each checkpoint
    (global_step_N/fairalign_pgrpo.json). Otherwise it does nothing."""

    def __init__(self, config: Any = None, trainer_cls: type | None = None):
        super().__init__(config=config)
        self.enabled = config is not None and config.algorithm.get("adv_estimator") == "pgrpo"
        if not self.enabled:
            return
        group_key(config.algorithm)  # a missing key fails here, before any rollout
        if trainer_cls is None:
            base = sys.modules.get("verl.trainer.ppo.v1.trainer_base")
            if base is None:
                raise RuntimeError("PGRPOCheckpointCallback works with verl's v1 trainer (trainer.use_v1=true)")
            trainer_cls = base.PPOTrainer
        install_group_recorder(trainer_cls, DRIVER)
        DRIVER.configure(config.algorithm)
        folder = resume_folder(config.trainer)
        if folder is not None:
            DRIVER.load(folder, config.algorithm)

    def on_save(self, trainer, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs) -> None:
        if self.enabled:
            DRIVER.save(checkpoint_dir)
