"""The training loop, readable top to bottom: sample prompts -> generate G responses each ->
score -> advantages -> (behaviour log-probs) -> ppo_epochs x minibatches of updates -> metrics ->
checkpoint.

Simplifications, on purpose:
- The policy stays in eval mode (dropout off) for generation *and* updates, so with one epoch and
  one minibatch the behaviour log-probs are exactly the first forward's detached log-probs and no
  extra forward pass is spent on them.
- Log-probs use the sampling temperature (logits / T), like the sampler that produced the tokens.
- FSPO's `drift="kl"` centre is the mean over the micro-batch being processed (the whole batch when
  micro_batch_size = 0).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from fairalign.algos import (PreferenceGroupNormalizer, aggregate, compute_advantages,
                             compute_policy_loss, kl_penalty)
from fairalign.diagnostics import clip_rate_metrics
from fairalign.envs import compute_rewards
from fairalign.models import load_policy
from fairalign.rollout import HFGenerationEngine, sequence_logprobs
from fairalign.train import checkpoint as ckpt
from fairalign.train.config import Config, ConfigError, dump_yaml
from fairalign.train.data import PromptSampler
from fairalign.train.dialogue_rollout import rollout_dialogues
from fairalign.train.dist import Dist
from fairalign.train.logging import Progress, RunLogger, truncate_after_step
from fairalign.train.setup import (loss_hparams, lr_lambda, resolve_device, seed_everything, task_from_config,
                                   trim_padding)


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite updates); a checkpoint was written."""


class Trainer:
    def __init__(self, cfg: Config, *, run_dir: str | Path | None = None, resume: bool = False,
                 dist: Dist | None = None, progress: bool | None = None):
        self.cfg = cfg
        self.dist = dist or Dist.from_env(cfg.dist_strategy)
        self.run_dir = Path(run_dir or cfg.output_dir)
        self.show_progress = cfg.log.progress if progress is None else progress
        seed_everything(cfg.seed)
        self.task = task_from_config(cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if not torch.cuda.is_available():
            # transformers' save_pretrained imports deepspeed when it is installed; on a CPU-only machine its
            # accelerator auto-detection then prints a WARNING. Naming the CPU accelerator (what it would
            # detect anyway) keeps run output clean.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.device = resolve_device(cfg.device)
        self.dtype_ctx = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) \
            if cfg.precision == "bf16" else contextlib.nullcontext
        self.step = 0
        self.consecutive_skips = 0
        self.sft_done = cfg.sft.steps == 0  # the supervised warm-up (sft.*) runs once, before step 1
        start_ckpt = None
        if resume:
            ckpts = ckpt.list_checkpoints(self.run_dir)
            if not ckpts:
                raise ConfigError(f"--resume: no complete checkpoint under '{self.run_dir / 'checkpoints'}'")
            self.step, start_ckpt = ckpts[-1]
        self.model, self.tokenizer = self._load_model(start_ckpt)
        self.model.to(self.device)
        self.model.eval()
        self.model = self.dist.prepare_model(self.model)  # FSDP2: sharded in place (before the optimizer)
        self.ref_model = self._load_reference() if cfg.algo.beta > 0 else None
        self.engine = self._make_engine()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        total_updates = cfg.steps * cfg.algo.ppo_epochs * cfg.algo.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, total_updates))
        self.optimizer = self.dist.prepare_optimizer(self.model, self.optimizer)  # DeepSpeed: ZeRO engine
        self.normalizer = (PreferenceGroupNormalizer(min_count=cfg.algo.pgrpo_min_count,
                                                     eps=cfg.algo.pgrpo_eps, decay=cfg.algo.pgrpo_decay)
                           if cfg.algo.advantage == "pgrpo" else None)
        self.skipped_prompts = self._check_prompt_lengths()
        self.sampler = PromptSampler(len(self.task.train_examples), cfg.seed)
        self.dialogue = self.task.info.get("dialogue")  # RLPA: options of the multi-turn rollout
        self.hparams = loss_hparams(cfg)
        if start_ckpt is not None:
            self._restore(start_ckpt)
        # data position and P-GRPO statistics after the last *completed* step (what a checkpoint saves)
        self._data_state = self.sampler.state_dict()
        self._norm_state = self.normalizer.state_dict() if self.normalizer is not None else None
        self.logger = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))
            if resume:
                truncate_after_step(self.run_dir / "metrics.jsonl", self.step)
                truncate_after_step(self.run_dir / "samples.jsonl", self.step)
            self.logger = RunLogger(self.run_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb,
                                    config=None)

    # ------------------------------------------------------------------ setup
    def _load_model(self, start_ckpt: Path | None):
        cfg = self.cfg
        model, tok = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code,
                                 allow_download=cfg.allow_download)
        if cfg.lora.enabled:
            try:
                import peft
            except ImportError:
                raise ConfigError("lora.enabled=true needs peft: pip install 'fairalign[lora]'") from None
            if start_ckpt is not None:
                model = peft.PeftModel.from_pretrained(model, str(start_ckpt / "model"), is_trainable=True)
            else:
                targets = cfg.lora.target_modules
                targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
                model = peft.get_peft_model(model, peft.LoraConfig(
                    r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                    target_modules=targets, task_type="CAUSAL_LM"))
        elif start_ckpt is not None:
            from safetensors.torch import load_file

            state = {}
            for f in sorted((start_ckpt / "model").glob("*.safetensors")):
                state.update(load_file(str(f)))
            missing, unexpected = model.load_state_dict(state, strict=False)
            tied = {k for k in missing if "lm_head" in k}
            if set(missing) - tied or unexpected:
                raise ConfigError(f"--resume: checkpoint '{start_ckpt}' does not match model '{cfg.model}'")
            if hasattr(model, "tie_weights"):
                model.tie_weights()
        return model, tok

    def _load_reference(self):
        if self.cfg.lora.enabled:
            return None  # the reference is the base model: the adapter is disabled for ref log-probs
        ref, _ = load_policy(self.cfg.model, trust_remote_code=self.cfg.trust_remote_code,
                             allow_download=self.cfg.allow_download)
        ref.eval().requires_grad_(False).to(self.device)
        return self.dist.prepare_model(ref)  # FSDP2: the reference is sharded too

    def _make_engine(self):
        r = self.cfg.rollout
        if r.engine == "vllm":
            from fairalign.rollout.vllm_engine import make_vllm_engine

            return make_vllm_engine(self.model, self.tokenizer, r, precision=self.cfg.precision, seed=self.cfg.seed,
                                    trust_remote_code=self.cfg.trust_remote_code, world_size=self.dist.world,
                                    completion_prefix=self.task.info.get("completion_prefix", ""))
        return HFGenerationEngine(self.model, self.tokenizer, max_new_tokens=r.max_new_tokens,
                                  temperature=r.temperature, top_p=r.top_p, chat_template=r.chat_template,
                                  completion_prefix=self.task.info.get("completion_prefix", ""))

    def _check_prompt_lengths(self) -> int:
        """Apply `on_long_prompt` to training prompts that leave no room for the response."""
        cfg = self.cfg
        limit = cfg.max_prompt_tokens
        if limit <= 0:
            context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None) or 10**9
            limit = context - cfg.rollout.max_new_tokens
        if limit <= 0:
            raise ConfigError(f"rollout.max_new_tokens ({cfg.rollout.max_new_tokens}) leaves no room for a prompt "
                              f"in the model's context")
        examples = self.task.train_examples
        lengths = []
        for s in range(0, len(examples), 256):
            texts, templated = self.engine.render_prompts([ex["prompt"] for ex in examples[s:s + 256]])
            ids = self.tokenizer(texts, add_special_tokens=not templated)["input_ids"]
            lengths += [len(x) for x in ids]
        too_long = [i for i, n in enumerate(lengths) if n > limit]
        if not too_long:
            return 0
        if cfg.on_long_prompt == "error":
            i = too_long[0]
            sources = (self.task.info or {}).get("train_sources")
            where = sources[i] if sources else f"task '{self.task.name}': training example {i}"
            raise ValueError(f"{where}: prompt has {lengths[i]} tokens, more than the {limit} allowed "
                             f"({len(too_long)} such prompts; set on_long_prompt=skip to drop them or raise "
                             f"max_prompt_tokens)")
        keep = set(range(len(examples))) - set(too_long)
        self.task.train_examples = [ex for i, ex in enumerate(examples) if i in keep]
        if not self.task.train_examples:
            raise ValueError(f"every training prompt is longer than {limit} tokens")
        return len(too_long)

    def _restore(self, path: Path) -> None:
        st = ckpt.load_training_state(path)
        self.dist.load_optimizer_state(self.model, self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        ts = st["trainer_state"]
        self.sampler.load_state_dict(ts["data"])
        if self.normalizer is not None:
            if ts.get("normalizer") is None:
                raise ConfigError("--resume: the checkpoint has no P-GRPO state but algo.advantage=pgrpo")
            self.normalizer.load_state_dict(ts["normalizer"])
        self.consecutive_skips = ts.get("consecutive_skips", 0)
        self.sft_done = ts.get("sft_done", True)
        ckpt.set_rng_state(ts["rng"], st["torch_rng"])

    # ------------------------------------------------------------------ one step
    def _columns(self, examples: list[dict], G: int) -> dict:
        keys = [k for k in examples[0] if k != "prompt"]
        return {k: [ex.get(k) for ex in examples for _ in range(G)] for k in keys}

    def _logp_temperature(self) -> float:
        t = self.cfg.rollout.temperature
        return t if t > 0 else 1.0

    @torch.no_grad()
    def _logprobs_no_grad(self, model, batch, micro: int) -> torch.Tensor:
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32)
        B = batch.response_ids.shape[0]
        for s in range(0, B, micro):
            idx = torch.arange(s, min(B, s + micro))
            p_ids, p_mask, r_ids, r_mask, rlen = trim_padding(batch, idx)
            with self.dtype_ctx():
                lp, _ = sequence_logprobs(model, p_ids, p_mask, r_ids, r_mask, with_entropy=False,
                                          temperature=self._logp_temperature())
            out[idx, :rlen] = lp.float()
        return out

    def _ref_logprobs(self, batch, micro: int) -> torch.Tensor:
        if self.ref_model is not None:
            return self._logprobs_no_grad(self.ref_model, batch, micro)
        with self.model.disable_adapter():  # LoRA: the base model is the reference
            return self._logprobs_no_grad(self.model, batch, micro)

    def train_step(self) -> dict:
        cfg, r, a = self.cfg, self.cfg.rollout, self.cfg.algo
        t_start = time.perf_counter()
        step = self.step + 1
        if hasattr(self.engine, "sync_weights"):  # vLLM serves a copy: push the weights the updates produced
            self.engine.sync_weights(self.model)
        t_sync = time.perf_counter()
        # 1-2. prompts, generation and rewards (single-turn tasks, or whole dialogues for RLPA)
        ex_idx = self.dist.shard(self.sampler.take(r.prompts_per_step))
        examples = [self.task.train_examples[i] for i in ex_idx]
        seed = cfg.seed * 1_000_003 + step * 101 + self.dist.rank
        if self.dialogue is not None:
            batch, totals, per_reward, n_errors, gen_s = rollout_dialogues(self, examples, seed)
        else:
            prompts = [ex["prompt"] for ex in examples]
            groups = [ex.get(cfg.group_column, "all") for ex in examples]
            with self.dtype_ctx():
                batch = self.engine.generate(prompts, generations=r.generations, groups=groups,
                                             generator_seed=seed)
            gen_s = time.perf_counter() - t_sync
            columns = self._columns(examples, r.generations)
            totals, per_reward, n_errors = compute_rewards(self.task.rewards, batch.prompts, batch.completions,
                                                           columns, on_error=cfg.on_reward_error)
        rewards = totals.float().to(batch.response_ids.device)  # [B], on the policy's device
        t_rew = time.perf_counter()
        # 3. advantages (whole prompt groups live on one rank; P-GRPO stats are merged across ranks)
        if self.normalizer is not None:
            adv = self.dist.pgrpo_advantages(self.normalizer, rewards, batch.groups, batch.index)
        elif a.advantage == "reinforce_pp_baseline":
            adv = self.dist.reinforce_pp_advantages(rewards, batch.index)
        else:
            adv = compute_advantages(a.advantage, rewards, batch.index)
        adv = adv.float()
        # 4. behaviour / reference log-probs (only when they are not the first forward's own)
        B = batch.response_ids.shape[0]
        micro = a.micro_batch_size or B
        on_policy = a.ppo_epochs == 1 and a.minibatches == 1
        old_logp = None if on_policy else self._logprobs_no_grad(self.model, batch, micro)
        ref_logp = self._ref_logprobs(batch, micro) if a.beta > 0 else None
        t_lp = time.perf_counter()
        # 5. updates
        upd = self._update(batch, adv, old_logp, ref_logp, micro)
        t_upd = time.perf_counter()
        # 6. metrics
        self.step = step
        self._data_state = self.sampler.state_dict()
        self._norm_state = self.normalizer.state_dict() if self.normalizer is not None else None
        m = {"step": step}
        lengths = batch.lengths.float()
        m.update(self.dist.mean_metrics({
            "reward/mean": rewards.mean().item(), "reward/std": rewards.std().item() if B > 1 else 0.0,
            **{f"reward/{k}": v.float().mean().item() for k, v in per_reward.items()},
            "response_length/mean": lengths.mean().item(),
            "truncated_frac": batch.truncated.float().mean().item(),
            "advantage/mean": adv.mean().item(), "advantage/std": adv.std().item() if B > 1 else 0.0,
        }))
        m["response_length/max"] = self.dist.max_metric(lengths.max().item())
        m["reward/errors"] = self.dist.sum_metric(float(n_errors))
        m["data/skipped_long_prompts"] = self.skipped_prompts
        for g, val in self.dist.group_means(batch.groups, rewards).items():
            m[f"reward/group/{g}"] = val
        m.update(upd)
        if self.normalizer is not None:
            for g, (n, mean, std) in self.normalizer.stats().items():
                m[f"pgrpo/{g}/mean"] = mean
                m[f"pgrpo/{g}/std"] = std
        m["lr"] = self.scheduler.get_last_lr()[0]
        step_s = time.perf_counter() - t_start
        n_tokens = self.dist.sum_metric(float(batch.lengths.sum().item()))
        if hasattr(self.engine, "sync_weights"):
            m["time/weight_sync_s"] = t_sync - t_start
        m.update({"time/generate_s": gen_s, "time/reward_s": t_rew - t_sync - gen_s,
                  "time/logprob_s": t_lp - t_rew, "time/update_s": t_upd - t_lp,
                  "step_s": step_s, "tokens_per_s": n_tokens / step_s})
        if self.dist.is_main and self.logger is not None:
            self.logger.log(m)
            k = min(cfg.log.samples_per_step, B)
            self.logger.log_samples(step, [
                {"group": str(batch.groups[i]), "prompt": batch.prompts[i], "completion": batch.completions[i],
                 "reward": float(rewards[i]), "advantage": float(adv[i]),
                 **{f"reward/{n}": float(v[i]) for n, v in per_reward.items()}} for i in range(k)])
        return m

    def _update(self, batch, adv, old_logp, ref_logp, micro: int) -> dict:
        cfg, a = self.cfg, self.cfg.algo
        B = batch.response_ids.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
        params = [p for p in self.model.parameters() if p.requires_grad]
        acc = {"loss": 0.0, "clip_frac": 0.0, "approx_kl": 0.0, "entropy": 0.0, "kl": 0.0, "tok": 0.0,
               "mm_sum": 0.0, "mm_max": 0.0, "mm_tok": 0.0}
        clip_lengths, clip_flags, clip_adv = [], [], []
        grad_norms, skipped = [], 0
        for _epoch in range(a.ppo_epochs):
            order = torch.randperm(B, generator=gen) if a.minibatches > 1 else torch.arange(B)
            for mb in torch.tensor_split(order, a.minibatches):
                mb = mb.sort().values
                mb_tokens = self.dist.sum_metric(float(batch.response_mask[mb].sum()))
                mb_seqs = self.dist.sum_metric(float(len(mb)))
                self.optimizer.zero_grad(set_to_none=True)
                mb_loss = 0.0
                mics = torch.split(mb, micro)
                for k_mic, mic in enumerate(mics):
                    p_ids, p_mask, r_ids, r_mask, rlen = trim_padding(batch, mic)
                    with self.dtype_ctx():
                        logp, ent = sequence_logprobs(self.dist.for_training(self.model), p_ids, p_mask, r_ids, r_mask,
                                                      with_entropy=True, temperature=self._logp_temperature())
                    logp = logp.float()
                    old = logp.detach() if old_logp is None else old_logp[mic, :rlen]
                    if batch.engine_logp is not None and _epoch == 0:  # |engine − training-model| log-probs
                        gap = (batch.engine_logp[mic, :rlen].to(old.device) - old).abs()[r_mask.bool()]
                        acc["mm_sum"] += float(gap.sum())
                        acc["mm_tok"] += gap.numel()
                        acc["mm_max"] = max(acc["mm_max"], float(gap.max()) if gap.numel() else 0.0)
                    loss, stats = compute_policy_loss(a.loss, logp, old, adv[mic], r_mask, agg=a.agg,
                                                      global_tokens=mb_tokens, global_seqs=mb_seqs,
                                                      **self.hparams)
                    if ref_logp is not None:
                        kl = kl_penalty(logp, ref_logp[mic, :rlen], kind=a.kl)
                        kl_term = aggregate(kl, r_mask, a.agg, horizon=self.hparams.get("horizon"),
                                            global_tokens=mb_tokens, global_seqs=mb_seqs)
                        loss = loss + a.beta * kl_term
                        acc["kl"] += float((kl.detach() * r_mask).sum())
                    self.dist.backward(loss, self.model, sync=k_mic == len(mics) - 1)  # FSDP2: reduce once
                    mb_loss += float(loss.detach())
                    ntok = float(r_mask.sum())
                    acc["tok"] += ntok
                    acc["clip_frac"] += stats["clip_frac"] * ntok
                    acc["approx_kl"] += stats["approx_kl"] * ntok
                    acc["entropy"] += float((ent.detach().float() * r_mask).sum())
                    lens = r_mask.sum(1)
                    clipped = stats["clipped"]
                    if clipped.dim() == 1:  # sequence-level loss: one flag per sequence
                        clip_lengths.append(lens)
                        clip_flags.append(clipped)
                        clip_adv.append(adv[mic])
                    else:                   # token-level loss: one flag per response token
                        rm = r_mask.bool()
                        clip_lengths.append(lens[:, None].expand_as(rm)[rm])
                        clip_flags.append(clipped[rm])
                        clip_adv.append(adv[mic][:, None].expand_as(rm)[rm])
                mb_loss = self.dist.sum_metric(mb_loss)  # global: every rank makes the same skip decision
                acc["loss"] += mb_loss
                self.dist.sync_gradients(self.model)
                gn = self.dist.clip_grad_norm(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
                if not (math.isfinite(mb_loss) and torch.isfinite(gn)):
                    skipped += 1
                    self.consecutive_skips += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.consecutive_skips >= cfg.max_skipped_updates:
                        self.save_checkpoint()
                        raise TrainingError(
                            f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                            f"(step {self.step + 1}); a resumable checkpoint is in {self.run_dir / 'checkpoints'}")
                    continue
                self.consecutive_skips = 0
                grad_norms.append(float(gn))
                self.optimizer.step()
                self.scheduler.step()
        n_updates = a.ppo_epochs * a.minibatches
        tok = max(self.dist.sum_metric(acc["tok"]), 1.0)  # token means over all ranks' tokens
        out = {"loss": acc["loss"] / n_updates,
               **{k: self.dist.sum_metric(acc[k]) / tok for k in ("clip_frac", "approx_kl", "entropy")},
               "grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
               "skipped_updates": self.dist.sum_metric(float(skipped))}
        if ref_logp is not None:
            out["kl"] = self.dist.sum_metric(acc["kl"]) / max(self.dist.sum_metric(acc["tok"]), 1.0)  # global token mean
        if batch.engine_logp is not None:
            out["rollout/logprob_mismatch"] = (self.dist.sum_metric(acc["mm_sum"])
                                               / max(self.dist.sum_metric(acc["mm_tok"]), 1.0))
            out["rollout/logprob_mismatch_max"] = self.dist.max_metric(acc["mm_max"])
        lengths, flags, advs = (torch.cat(clip_lengths), torch.cat(clip_flags), torch.cat(clip_adv))
        lengths, flags, advs = self.dist.gather_clip_stats(lengths, flags, advs)
        out.update(clip_rate_metrics(lengths, flags, advs, edges=cfg.log.length_bins))
        return out

    # ------------------------------------------------------------------ checkpoints and the loop
    def trainer_state(self) -> dict:
        return {"step": self.step, "data": self._data_state,
                "normalizer": self._norm_state,
                "consecutive_skips": self.consecutive_skips, "sft_done": self.sft_done}

    def save_checkpoint(self) -> Path | None:
        # FSDP2: gather the full model and optimizer state (collectives: every rank; None under DDP)
        model_state = self.dist.full_model_state(self.model)
        optim_state = self.dist.full_optimizer_state(self.model, self.optimizer)
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        model = self.dist.unwrap(self.model)
        path = ckpt.save_checkpoint(self.run_dir, self.step, model=model, optimizer=self.optimizer,
                                    scheduler=self.scheduler, trainer_state=self.trainer_state(),
                                    config_yaml=dump_yaml(self.cfg), keep_last=self.cfg.keep_last,
                                    model_state=model_state, optimizer_state=optim_state)
        if not self.cfg.lora.enabled:
            self.tokenizer.save_pretrained(path / "model")
        self.dist.barrier()
        return path

    def save_final_model(self) -> Path | None:
        state = self.dist.full_model_state(self.model)  # FSDP2: gathered on every rank; None under DDP
        if not self.dist.is_main:
            return None
        final = self.run_dir / "final"
        tmp = self.run_dir / ".tmp-final"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        self.dist.unwrap(self.model).save_pretrained(tmp, safe_serialization=True,
                                                     **({} if state is None else {"state_dict": state}))
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def train(self, stop_after: int | None = None) -> list[dict]:
        """Run until cfg.steps (or `stop_after` more steps); returns this call's metric rows."""
        cfg = self.cfg
        rows = []
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        if not self.sft_done:
            from fairalign.train.sft import run_sft_warmup

            run_sft_warmup(self)
            self.sft_done = True
            if cfg.steps > 0:
                self.save_checkpoint()  # step 0: a resumed run does not repeat the warm-up
        bar = Progress(cfg.steps, start=self.step, enabled=self.show_progress and self.dist.is_main)
        try:
            while self.step < end:
                m = self.train_step()
                rows.append(m)
                bar.update(self.step, m)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save_checkpoint()
        finally:
            bar.close()
        if self.step >= cfg.steps:
            self.save_checkpoint()
            self.save_final_model()
        if self.logger is not None:
            self.logger.close()
        return rows
