"""fairalign inside TRL 1.16: `FairGRPOTrainer(GRPOTrainer)` with `FairGRPOConfig(GRPOConfig)`.

A stock TRL GRPO script switches by renaming the two classes and setting `fair_loss` and/or
`pgrpo_group_column` (docs/integrations.md); RLPA dialogues come in through TRL's `rollout_func`
(`rlpa_rollout_func`, trl_rlpa.py, re-exported here). Everything else stays TRL: datasets, reward functions,
generation (transformers or vLLM), `accelerate launch`, PEFT, checkpoints.

Where it hooks into TRL 1.16's GRPOTrainer:
- `_generate_and_score_completions` (P-GRPO): after TRL has scored the generation batch, the advantages
  are replaced by fairalign's P-GRPO estimator's on the weighted reward sum, keyed by the dataset column
  `pgrpo_group_column`. TRL already gathers every process's rewards (`_calculate_rewards`); the groups
  are gathered the same way, and every process runs the estimator on the whole global batch and keeps
  its own rows. So every process holds the state one process would, and a prompt's generations may
  straddle processes (TRL allows it; P-GRPO's cold-start GRPO fallback needs the whole prompt group).
  Completions that no reward function scored get advantage 0 and do not enter the history (as in TRL).
  The groups are read after TRL has written a `rollout_func`'s extra fields into the rows, so a field
  of that name (RLPA's `rlpa_group`, trl_rlpa.py) decides the group.
- `_generate_and_score_completions` (TRL's vLLM importance-sampling correction, trl_is.py): the share
  of each completion that TRL's ratio masked or truncated is pooled per length bin (training only);
  with `fair_is_band_high` the ratio is replaced by the sqrt(L) band's, from TRL's own train and
  sampler log-probs. TRL 1.16 computes the ratio there, before `_compute_loss`, which is what lets
  the loss below see it (tests/test_integration_trl_is.py fails if TRL moves it).
- `_compute_loss` (fair_loss): the policy loss is `fairalign.algos.compute_policy_loss` on TRL's
  per-token log-probs, behaviour log-probs, advantages and loss mask. Its normalizers are global over
  the optimizer step: the tokens (or sequences) of all its micro-batches on all processes, counted
  when the generation batch is buffered (`_prepare_inputs`); divided by the process count because
  data-parallel backends average gradients. A loss needing whole-minibatch statistics (FSPO
  drift="kl") gets them from one extra no-grad pass over the step's micro-batches, at its first one.
  beta > 0 adds beta·k3 (TRL's estimator, with `use_bias_correction_kl`) aggregated the same way.
  TRL's vLLM importance-sampling ratio w (per token or per sequence, > 0 or masked to 0) enters as
  advantages A·w, which for every fairalign loss equals weighting its per-token loss by w.
- Metrics go through TRL's own logging: `self._metrics` (entropy, kl, pgrpo/*) and, for the clip
  rates per length bin and the LRE, `log()` (pooled over the logging interval; trl_clip.py); the
  correction's `is_mask_*` / `is_trunc_*` and the band's `is_band_*` the same way (trl_is.py).
  Updates that are exactly on-policy (the first optimizer step on a generation batch, or no behaviour
  log-probs at all) cannot clip and are left out of the clip metrics.
- Checkpoints: the P-GRPO state is written as `fairalign_pgrpo.json` into every TRL checkpoint folder
  and read back by `resume_from_checkpoint` (`_load_optimizer_and_scheduler`, as TRL does for its own
  entropy controller).
Simplifications: with fair_loss, TRL's loss-only options that have no fairalign meaning are refused
(trl_config.py lists them); the MoE router auxiliary loss is refused too.
"""
from __future__ import annotations

import copy
import json
import os

import torch
from accelerate.utils import gather_object
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from fairalign.algos import BATCH_STATISTICS, POLICY_LOSS_REGISTRY, aggregate, build_estimator, compute_policy_loss, kl_penalty
from fairalign.algos.estimators import LOCAL
from fairalign.integrations.trl_clip import ClipPool
from fairalign.integrations.trl_config import FairGRPOConfig, check_fair_fields, pgrpo_hparams, resolved_loss_hparams
from fairalign.integrations.trl_is import (TRUNCATE_MODES, LengthRatePool, correction_weights, sqrt_band_ratio,
                                          summed_mismatch)
from fairalign.integrations.trl_rlpa import (RLPA_GROUP_COLUMN, RLPA_REWARD_FUNCS, RLPARollout, rlpa_dataset,
                                             rlpa_profile_reward, rlpa_response_reward, rlpa_rollout_func)
from fairalign.errors import ConfigError

__all__ = ["FairGRPOConfig", "FairGRPOTrainer", "PGRPO_STATE_FILE", "pgrpo_advantages", "sampler_weighted_advantages",
           "RLPA_GROUP_COLUMN", "RLPA_REWARD_FUNCS", "RLPARollout", "rlpa_dataset", "rlpa_profile_reward",
           "rlpa_response_reward", "rlpa_rollout_func"]

PGRPO_STATE_FILE = "fairalign_pgrpo.json"
# extra model inputs TRL passes to its log-prob pass (multimodal models)
_MODEL_EXTRAS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _loss_mask(inputs: dict) -> torch.Tensor:
    """[B, T] completion tokens the loss sees (TRL masks tool-output tokens out)."""
    mask = inputs["completion_mask"]
    return mask if "tool_mask" not in inputs else mask * inputs["tool_mask"]


def pgrpo_advantages(estimator, rewards_per_func: torch.Tensor, weights: torch.Tensor, groups: list,
                     num_generations: int) -> torch.Tensor:
    """P-GRPO advantages [N] of a global TRL generation batch: rewards_per_func [N, F] (NaN = not scored),
    reward weights [F], preference group per row; rows of one prompt are `num_generations` consecutive
    rows. Unscored rows get 0 and stay out of the estimator (and its history)."""
    rpf = rewards_per_func.detach().cpu().double()  # [N, F]
    rewards = (rpf * weights.detach().cpu().double()).nansum(dim=1)  # [N]
    scored = ~torch.isnan(rpf).all(dim=1)  # [N]
    index = torch.arange(len(groups)) // num_generations  # [N] prompt id
    adv = torch.zeros(len(groups), dtype=torch.float64)  # [N]
    rows = scored.nonzero().flatten().tolist()
    if rows:
        adv[scored] = estimator(rewards[scored], index[scored], [groups[i] for i in rows], LOCAL).double()
    return adv.float()


def sampler_weighted_advantages(advantages: torch.Tensor, is_ratio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] advantages A_i·w_it for TRL's vLLM importance-sampling ratio w ([B, T] or [B, 1], >= 0)."""
    return (advantages.unsqueeze(1) * is_ratio).expand(mask.shape)


class FairGRPOTrainer(GRPOTrainer):
    """GRPOTrainer with fairalign's policy loss (`fair_loss`) and P-GRPO advantages (`pgrpo_group_column`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        a = self.args
        if not isinstance(a, FairGRPOConfig):
            raise ConfigError(f"FairGRPOTrainer needs args=FairGRPOConfig(...), got {type(a).__name__}")
        check_fair_fields(a, warn=False)  # again: fields may have been changed after the config was built
        self._fair_hp = resolved_loss_hparams(a) if a.fair_loss else {}
        self._fair_stat_names = tuple(POLICY_LOSS_REGISTRY[a.fair_loss].batch_stats(self._fair_hp)) if a.fair_loss else ()
        if a.fair_loss and self.aux_loss_enabled:
            raise ConfigError(f"FairGRPOConfig: router_aux_loss_coef={a.router_aux_loss_coef!r} (MoE router loss) is "
                              f"not supported with fair_loss; set router_aux_loss_coef=0.0")
        self._pgrpo = build_estimator("pgrpo", **pgrpo_hparams(a)) if a.pgrpo_group_column else None
        if self._pgrpo is not None:
            self._check_group_column(self.train_dataset, "train_dataset")
            evals = self.eval_dataset.values() if isinstance(self.eval_dataset, dict) else [self.eval_dataset]
            for ds in evals:
                self._check_group_column(ds, "eval_dataset")
        self._clip_pool = ClipPool(a.fair_length_edges)
        is_truncate = self.vllm_importance_sampling_mode in TRUNCATE_MODES
        self._is_pool = LengthRatePool("is_trunc" if is_truncate else "is_mask",
                                       "truncated" if is_truncate else "masked", a.fair_length_edges)
        self._band_pool = LengthRatePool("is_band", "masked", a.fair_length_edges)
        self._step_norms: list[list[int]] = []  # [(tokens, sequences)] per optimizer step of the buffered batch
        self._step_stats: dict = {}  # whole-minibatch statistics of the current optimizer step
        self._rewards_per_func = None  # [N, F] of the last scored generation batch, every process's rows

    def _check_group_column(self, dataset, what: str) -> None:
        cols = getattr(dataset, "column_names", None)
        if isinstance(cols, list) and self.args.pgrpo_group_column not in cols:
            raise ConfigError(f"FairGRPOConfig: pgrpo_group_column={self.args.pgrpo_group_column!r} is not a column "
                              f"of {what}; columns: {', '.join(cols)}")

    # ------------------------------------------------------------------ advantages (P-GRPO)
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs):
        col = self.args.pgrpo_group_column
        if self._pgrpo is not None and any(col not in x for x in inputs):
            raise ConfigError(f"FairGRPOConfig: pgrpo_group_column={col!r} is missing from a batch row (columns: "
                              f"{', '.join(inputs[0])}); keep remove_unused_columns=False")
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if "importance_sampling_ratio" in out:
            self._sampler_correction(out, mode)
        if self._pgrpo is not None:  # read after TRL wrote a rollout_func's extra fields into the rows
            self._pgrpo_advantages([x[col] for x in inputs], out, mode)
        return out

    def _pgrpo_advantages(self, local_groups: list, out: dict, mode: str) -> None:
        groups = gather_object(local_groups)  # [N] in process order, like the gathered rewards
        n_gen = self.num_generations if mode == "train" else self.num_generations_eval
        est = self._pgrpo if mode == "train" else copy.deepcopy(self._pgrpo)  # evaluation never moves the history
        adv = pgrpo_advantages(est, self._rewards_per_func, self.reward_weights, groups, n_gen)  # [N]
        start = self.accelerator.process_index * len(local_groups)
        out["advantages"] = adv[start:start + len(local_groups)].to(out["advantages"])
        logged = self._logs["advantages"]  # TRL logged its own advantages of this batch last
        for _ in range(min(len(adv), len(logged))):
            logged.pop()
        logged.extend(adv.tolist())
        for key, value in est.metrics().items():
            self._metrics[mode][key].append(value)

    # ------------------------------------------------------------------ TRL's vLLM correction (trl_is.py)
    def _sampler_correction(self, out: dict, mode: str) -> None:
        """Pool what TRL's correction masked / truncated per length; apply the sqrt(L) band if set."""
        a = self.args
        mask = _loss_mask(out)  # [B, T]
        lengths = mask.sum(1)  # [B]
        if mode == "train":
            weights = correction_weights(out["importance_sampling_ratio"], mask, self.vllm_importance_sampling_mode,
                                         self.vllm_importance_sampling_clip_min,
                                         self.vllm_importance_sampling_clip_max)  # [B]
            self._is_pool.add(lengths, weights, gather_object)
        if a.fair_is_band_high is not None:
            d = summed_mismatch(out["old_per_token_logps"], out["sampling_per_token_logps"], mask)  # [B, 1]
            mu = 0.0
            if a.fair_is_band_drift == "kl":  # token-mean mismatch of the whole generation batch, all processes
                sums = self.accelerator.reduce(torch.stack([d.sum(), lengths.sum().to(d)]).double(), reduction="sum")
                mu = float(sums[0] / sums[1].clamp(min=1.0))
                self._metrics[mode]["is_band/drift"].append(mu)
            ratio, outside = sqrt_band_ratio(d, lengths, a.fair_is_band_low, a.fair_is_band_high, mu)  # [B, 1], [B]
            out["importance_sampling_ratio"] = ratio
            if mode == "train":
                self._band_pool.add(lengths, outside.double(), gather_object)

    # ------------------------------------------------------------------ policy loss (fair_loss)
    def _prepare_inputs(self, generation_batch):
        buffered = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if self.args.fair_loss is not None and self.model.training and self._buffered_inputs is not buffered:
            self._step_norms = self._optimizer_step_normalizers(self._buffered_inputs)
        return inputs

    def _optimizer_step_normalizers(self, slices: list) -> list[list[int]]:
        """Global (tokens, sequences with a token) of each optimizer step of a buffered generation batch:
        sums over its gradient_accumulation_steps slices and over every process."""
        counts = []
        for inp in slices:
            m = _loss_mask(inp).bool()  # [b, T]
            counts.append(torch.stack([m.sum(), (m.sum(1) > 0).sum()]))
        counts = self.accelerator.reduce(torch.stack(counts).long(), reduction="sum")  # [S, 2]
        return counts.view(-1, self.args.gradient_accumulation_steps, 2).sum(1).tolist()  # [S/ga, 2]

    def _policy_logps(self, model, inputs, entropy: bool):
        """Per-token log-probs [B, T] (and entropies) of the completions under `model`, as TRL computes them."""
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)  # [B, P+T]
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)  # [B, P+T]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, inputs["completion_ids"].size(1), compute_entropy=entropy,
            **{k: inputs.get(k) for k in _MODEL_EXTRAS})
        return logps, entropies

    @torch.no_grad()
    def _minibatch_stats(self, model, first: int, on_policy: bool) -> dict:
        """The loss's whole-minibatch statistics over the optimizer step whose slices start at `first`."""
        if on_policy:  # no update on this batch yet: every log ratio is 0
            return {name: 0.0 for name in self._fair_stat_names}
        sums = torch.zeros(len(self._fair_stat_names), 2, dtype=torch.float64, device=self.accelerator.device)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for inp in self._buffered_inputs[first:first + self.args.gradient_accumulation_steps]:
                logp, _ = self._policy_logps(model, inp, entropy=False)
                ell = logp - inp["old_per_token_logps"]  # [b, T]
                for j, name in enumerate(self._fair_stat_names):
                    num, den = BATCH_STATISTICS[name](ell, _loss_mask(inp))
                    sums[j] += torch.stack([num, den.to(num)]).double()
        sums = self.accelerator.reduce(sums, reduction="sum").tolist()
        return {name: (num / den if den > 0 else 0.0) for name, (num, den) in zip(self._fair_stat_names, sums)}

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        m = mask.to(x.dtype)
        totals = self.accelerator.reduce(torch.stack([(x.detach() * m).sum(), m.sum()]), reduction="sum")
        return float(totals[0] / totals[1].clamp(min=1.0))

    def _compute_loss(self, model, inputs):
        a = self.args
        if a.fair_loss is None:
            return super()._compute_loss(model, inputs)
        mode = "train" if self.model.training else "eval"
        mask = _loss_mask(inputs)  # [B, T]
        logp, entropies = self._policy_logps(model, inputs, entropy=True)  # [B, T] each
        old = inputs.get("old_per_token_logps")  # [B, T]; None: TRL knows the batch is on-policy
        on_policy = old is None
        old = logp.detach() if old is None else old
        norms, batch_stats = {}, None
        if mode == "train":
            ga, spg = a.gradient_accumulation_steps, a.steps_per_generation
            slot = self._step % spg  # which buffered slice this micro-batch is
            k = slot // ga  # which optimizer step of the generation batch
            on_policy = on_policy or (k == 0 and self._step % (spg * self.num_iterations) < spg)
            tokens, seqs = self._step_norms[k]
            world = self.accelerator.num_processes  # gradients are averaged over processes
            norms = {"global_tokens": max(tokens, 1) / world, "global_seqs": max(seqs, 1) / world}
            if self._fair_stat_names:
                if slot % ga == 0:
                    self._step_stats = self._minibatch_stats(model, k * ga, on_policy)
                batch_stats = self._step_stats
        adv = inputs["advantages"]  # [B]
        adv_in = adv if "importance_sampling_ratio" not in inputs else \
            sampler_weighted_advantages(adv, inputs["importance_sampling_ratio"], mask)  # [B] or [B, T]
        loss, stats = compute_policy_loss(a.fair_loss, logp, old, adv_in, mask, a.fair_agg,
                                          horizon=a.max_completion_length, batch_stats=batch_stats,
                                          **norms, **self._fair_hp)
        if self.beta != 0.0:
            kl = kl_penalty(logp, inputs["ref_per_token_logps"], "k3")  # [B, T]
            if a.use_bias_correction_kl:
                kl = kl * torch.exp(logp - old)
            loss = loss + self.beta * aggregate(kl, mask, a.fair_agg, horizon=a.max_completion_length, **norms)
            self._metrics[mode]["kl"].append(self._global_masked_mean(kl, mask))
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropies, mask))
        if mode == "train":
            if not on_policy and "clipped" in stats:
                self._clip_pool.add(stats, mask, adv)
            if self.accelerator.sync_gradients:  # the optimizer step's last micro-batch, on every process
                self._clip_pool.close_step(gather_object)
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.model.training:
            logs.update(self._clip_pool.metrics())
            logs.update(self._is_pool.metrics())
            logs.update(self._band_pool.metrics())
        super().log(logs, start_time)

    # ------------------------------------------------------------------ checkpoints (P-GRPO state)
    def _save_checkpoint(self, model, trial):
        if self._pgrpo is not None and self.args.should_save:  # written first, so hub pushes include it
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, PGRPO_STATE_FILE), "w") as f:
                json.dump(self._pgrpo.state_dict(), f)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if self._pgrpo is None or checkpoint is None:
            return
        path = os.path.join(checkpoint, PGRPO_STATE_FILE)
        if not os.path.isfile(path):
            raise ConfigError(f"resume_from_checkpoint: {checkpoint} has no {PGRPO_STATE_FILE} (P-GRPO state), but "
                              f"pgrpo_group_column={self.args.pgrpo_group_column!r} is set")
        with open(path) as f:
            self._pgrpo.load_state_dict(json.load(f))
