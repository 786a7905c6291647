"""The trainer: a recipe over four stages that fill one `RolloutBatch` per step (docs/architecture.md).

    1. rollout      pool = rollout_stage.sample(step)   task.rollout(engine, examples, G, seed) per round:
                    responses + rewards (task-owned), rollout.* options (overlong penalty, dynamic sampling)
    2. advantages   pool.advantages = estimator(rewards, index, groups, dist)   (registered, may hold state);
                    batch = rollout_stage.training_batch(pool): the groups trained on, train_mask.
                    An estimator that requires a critic's values (gae) runs after the selection, on the
                    batch's values, and also returns the critic's targets (batch.returns)
    3. log-probs    batch.old_logp / batch.ref_logp                      (behaviour once, before any update)
    4. updates      ppo_epochs x minibatches optimizer steps of the registered policy loss (+ the critic's)
No line here names a loss, an estimator, a critic kind or a task: they come from train/methods.py,
train/critic.py and the task.

Simplifications, on purpose:
- The policy stays in eval mode (dropout off) for generation *and* updates, so the behaviour
  log-probs equal the first update's own forward; with a single update per batch no extra forward
  pass is spent on them.
- Log-probs use the sampling temperature (logits / T), like the sampler that produced the tokens.
- A loss's whole-minibatch statistics (FSPO drift="kl": the token-mean log ratio) cost one extra
  no-grad forward over the minibatch, except on the exactly on-policy first update (where ℓ ≡ 0).
- A non-finite forward, loss or gradient skips that optimizer step on every rank; after
  `max_skipped_updates` in a row a checkpoint is written and the run stops (TrainingError, exit 1).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch

from fairalign.algos import BATCH_STATISTICS, aggregate, kl_penalty
from fairalign.models import load_policy
from fairalign.rollout import HFGenerationEngine, sequence_logprobs
from fairalign.train import checkpoint as ckpt
from fairalign.train.config import Config, ConfigError, dump_yaml
from fairalign.train.critic import build_critic
from fairalign.train.data import PromptSampler
from fairalign.train.dist import Dist
from fairalign.train.logging import Progress, RunLogger, truncate_after_step
from fairalign.train.methods import resolve_estimator, resolve_policy_loss
from fairalign.train.reference import REFERENCE_DIR, load_reference, save_reference
from fairalign.train.rollout_stage import RolloutStage
from fairalign.train.run_lock import RunLock
from fairalign.train.signals import StopRequest, StopRequested
from fairalign.train.setup import lr_lambda, resolve_device, seed_everything, task_from_config, trim_padding
from fairalign.train.update_stats import UpdateStats, sequence_advantages


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
        self.stopped_by: int | None = None  # the signal that came during the last step of train()
        start_ckpt = None
        if self.dist.is_main:  # one live run per directory (a killed run's lock is released by the OS)
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"output_dir '{self.run_dir}' cannot be created: {e.strerror or e}") from None
            self._lock = RunLock(self.run_dir)
        if resume:
            if not ckpt.list_checkpoints(self.run_dir):
                raise ConfigError(f"--resume: no complete checkpoint under '{self.run_dir / 'checkpoints'}'")
            found = ckpt.newest_valid_checkpoint(
                self.run_dir, report=lambda msg: self.dist.is_main and print(f"fairalign: {msg}", file=sys.stderr))
            if found is None:
                raise ConfigError(f"--resume: no checkpoint under '{self.run_dir / 'checkpoints'}' verifies (each "
                                  f"has a damaged or missing file, named above); start a new run")
            self.step, start_ckpt = found
        self.model, self.tokenizer = self._load_model(start_ckpt)
        self.model.to(self.device)
        self.model.eval()
        self.model = self.dist.prepare_model(self.model)  # FSDP2: sharded in place (before the optimizer)
        self.ref_model = None  # built once the policy RL starts from exists (after any warm-up): _setup_reference
        self.engine = self._make_engine()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        total_updates = cfg.steps * cfg.algo.ppo_epochs * cfg.algo.minibatches
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, total_updates))
        self.optimizer = self.dist.prepare_optimizer(self.model, self.optimizer)  # DeepSpeed: ZeRO engine
        self.loss = resolve_policy_loss(cfg)            # stage 4: the registered (or user) policy loss
        self.estimator = resolve_estimator(cfg)         # stage 2: the registered (or user) estimator
        self.critic = build_critic(self, start_ckpt)    # algo.critic: the value function (NoCritic for none)
        self.skipped_prompts = self._check_prompt_lengths()
        self.sampler = PromptSampler(len(self.task.train_examples), cfg.seed)
        self.rollout_stage = RolloutStage(cfg, self.task, self.engine, self.sampler, self.dist, self.estimator)
        if start_ckpt is not None:
            try:
                self._restore(start_ckpt)
            except (OSError, RuntimeError, KeyError, ValueError) as e:  # unreadable files of an unverified checkpoint
                raise ConfigError(f"--resume: checkpoint '{start_ckpt}' cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        # data position and estimator state after the last *completed* step (what a checkpoint saves)
        self._data_state = self.sampler.state_dict()
        self._estimator_state = self.estimator.state_dict()
        self.logger = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))
            if resume:
                truncate_after_step(self.run_dir / "metrics.jsonl", self.step)
                truncate_after_step(self.run_dir / "samples.jsonl", self.step)
            self.logger = RunLogger(self.run_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb,
                                    config=None)
        if self.sft_done:
            self._setup_reference(from_run=cfg.sft.steps > 0)

    @property
    def normalizer(self):
        """The estimator's running-statistics object when it has one (P-GRPO's PreferenceGroupNormalizer),
        else None; kept for code written before the estimator protocol (use `trainer.estimator`)."""
        return getattr(self.estimator, "normalizer", None)

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
                model = peft.get_peft_model(model, self.lora_config())
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

    def lora_config(self):
        import peft

        lc = self.cfg.lora
        targets = lc.target_modules if lc.target_modules == "all-linear" else \
            [t.strip() for t in lc.target_modules.split(",")]
        return peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                               task_type="CAUSAL_LM")

    def _setup_reference(self, from_run: bool) -> None:
        """The KL reference = the policy RL starts from: the configured model, or (after the warm-up)
        the warm-up's result, saved in the run directory so a resume uses the same one."""
        if self.cfg.algo.beta > 0:
            self.ref_model = load_reference(self, from_run=from_run)

    def _make_engine(self):
        r = self.cfg.rollout
        if r.engine == "vllm":
            from fairalign.rollout.vllm_engine import make_vllm_engine

            return make_vllm_engine(self.model, self.tokenizer, r, precision=self.cfg.precision, seed=self.cfg.seed,
                                    trust_remote_code=self.cfg.trust_remote_code, world_size=self.dist.world,
                                    completion_prefix=self.task.info.get("completion_prefix", ""))
        return HFGenerationEngine(self.model, self.tokenizer, max_new_tokens=r.max_new_tokens,
                                  temperature=r.temperature, top_p=r.top_p, chat_template=r.chat_template,
                                  completion_prefix=self.task.info.get("completion_prefix", ""),
                                  all_ranks=self.dist.all_ranks)

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
        try:  # "normalizer": the key of checkpoints written before the estimator protocol
            self.estimator.load_state_dict(ts.get("estimator", ts.get("normalizer")))
        except ValueError as e:
            raise ConfigError(f"--resume: {e}") from None
        self.consecutive_skips = ts.get("consecutive_skips", 0)
        self.sft_done = ts.get("sft_done", True)
        ckpt.set_rng_state(ts["rng"], st["torch_rng"])

    # ------------------------------------------------------------------ one step
    def _logp_temperature(self) -> float:
        t = self.cfg.rollout.temperature
        return t if t > 0 else 1.0

    def _forward(self, model, batch, rows: torch.Tensor, with_entropy: bool, with_hidden: bool = False):
        """Token log-probs (and entropy) of `rows` of the batch: (logp [b, R'], ent, response mask [b, R'], R'),
        and with `with_hidden` the final hidden states [b, R', H] as a fifth item (a value head reads them)."""
        p_ids, p_mask, r_ids, r_mask, rlen = trim_padding(batch, rows)
        with self.dtype_ctx():
            out = sequence_logprobs(model, p_ids, p_mask, r_ids, r_mask, with_entropy=with_entropy,
                                    temperature=self._logp_temperature(), all_ranks=self.dist.all_ranks,
                                    with_hidden=with_hidden)
        return (out[0].float(), out[1], r_mask, rlen) + tuple(out[2:])

    @torch.no_grad()
    def _logprobs_no_grad(self, model, batch, micro: int) -> torch.Tensor:
        """[B, R] float32 token log-probs of the whole batch, on the policy's device (0 on padding)."""
        out = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.device)
        for mic in torch.split(torch.arange(len(batch)), micro):
            lp, _, _, rlen = self._forward(model, batch, mic, with_entropy=False)
            out[mic.to(self.device), :rlen] = lp.to(self.device)
        return out

    def _ref_logprobs(self, batch, micro: int) -> torch.Tensor:
        if self.ref_model is not None:
            return self._logprobs_no_grad(self.ref_model, batch, micro)
        with self.model.disable_adapter():  # LoRA without a warm-up: the base model is the reference
            return self._logprobs_no_grad(self.model, batch, micro)

    def train_step(self) -> dict:
        cfg, a = self.cfg, self.cfg.algo
        t_start = time.perf_counter()
        step = self.step + 1
        if hasattr(self.engine, "sync_weights"):  # vLLM serves a copy: push the weights the updates produced
            self.engine.sync_weights(self.model)
        t_sync = time.perf_counter()
        # 1. rollout: responses and rewards, owned by the task (single-turn default, or e.g. RLPA dialogues);
        #    the rollout stage adds the rollout.* options: overlong penalty, dynamic sampling (more rounds)
        with self.dtype_ctx():
            pool = self.rollout_stage.sample(step)  # every prompt group sampled this step
        t_rew = time.perf_counter()
        # 2. advantages: the registered estimator (whole prompt groups live on one rank; cross-rank work
        #    goes through the dist's collectives). An estimator without per-token inputs sees every sampled
        #    group (P-GRPO's history holds every reward), then the rollout stage picks the groups trained
        #    on; one that requires per-token inputs (a critic's values V(s_t) [B, R]: gae) gets them for the
        #    rows trained on only (a value head's pass also yields the behaviour log-probs).
        reuse = a.ppo_epochs * a.minibatches > 1  # behaviour log-probs are not the first update's own forward
        if not self.estimator.requires:
            pool.advantages = self.estimator(pool.rewards.float().to(self.device), pool.index, pool.groups,
                                             self.dist).float().to(self.device)  # [B_pool]
        batch = self.rollout_stage.training_batch(pool)  # this rank's share; train_mask: rows with loss weight
        rewards = batch.rewards.float().to(self.device)  # [B]
        B = len(batch)
        micro = a.micro_batch_size or B
        batch.values, logp = self.critic.behaviour_pass(batch, micro)
        batch.old_logp = logp if reuse else None
        if self.estimator.requires:
            mask = batch.response_mask.to(self.device)  # [B, R]
            if batch.train_mask is not None:  # rows without loss weight take no part in GAE's whitening
                mask = mask & batch.train_mask.to(self.device)[:, None]
            inputs = {"values": batch.values, "mask": mask}
            batch.advantages, batch.returns = self.estimator.advantages_and_targets(
                rewards, batch.index, batch.groups, self.dist, **{k: inputs[k] for k in self.estimator.requires})
            batch.advantages = batch.advantages.float().to(self.device)  # [B, R]
        # 3. behaviour / reference log-probs, once, before the first update (only when they are not the
        #    first update's own forward)
        if reuse and batch.old_logp is None:
            batch.old_logp = self._logprobs_no_grad(self.model, batch, micro)  # [B, R]
        if a.beta > 0:
            batch.ref_logp = self._ref_logprobs(batch, micro)  # [B, R]
        t_lp = time.perf_counter()
        # 4. updates
        upd = self._update(batch, micro)
        t_upd = time.perf_counter()
        # metrics
        self.step = step
        self._data_state = self.sampler.state_dict()
        self._estimator_state = self.estimator.state_dict()
        adv = sequence_advantages(batch.advantages, batch.response_mask)  # [B]
        m = {"step": step}
        lengths = batch.lengths.float()
        m.update(self.dist.mean_metrics({
            "reward/mean": rewards.mean().item(),
            **{f"reward/{k}": v.float().mean().item() for k, v in batch.reward_parts.items()},
            "response_length/mean": lengths.mean().item(),
            "truncated_frac": batch.truncated.float().mean().item(),
            "advantage/mean": adv.mean().item(),
        }))
        stds = self.dist.std_metrics({"reward/std": rewards, "advantage/std": adv})  # over all ranks' samples
        m["reward/std"], m["advantage/std"] = stds["reward/std"], stds["advantage/std"]
        m["response_length/max"] = self.dist.max_metric(lengths.max().item())
        m["reward/errors"] = self.dist.sum_metric(float(batch.reward_errors))
        m["data/skipped_long_prompts"] = self.skipped_prompts
        for g, val in self.dist.group_means(batch.groups, rewards).items():
            m[f"reward/group/{g}"] = val
        m.update(self.rollout_stage.metrics)
        m.update(upd)
        m.update(self.estimator.metrics())
        m.update(self.critic.step_metrics(batch))
        m["lr"] = self.scheduler.get_last_lr()[0]
        step_s = time.perf_counter() - t_start
        n_tokens = self.dist.sum_metric(float(batch.lengths.sum().item()))
        if hasattr(self.engine, "sync_weights"):
            m["time/weight_sync_s"] = t_sync - t_start
        m.update({"time/generate_s": batch.generate_s, "time/reward_s": t_rew - t_sync - batch.generate_s,
                  "time/logprob_s": t_lp - t_rew, "time/update_s": t_upd - t_lp,
                  "step_s": step_s, "tokens_per_s": n_tokens / step_s})
        if self.dist.is_main and self.logger is not None:
            self.logger.log(m)
            k = min(cfg.log.samples_per_step, B)
            self.logger.log_samples(step, [
                {"group": str(batch.groups[i]), "prompt": batch.prompts[i], "completion": batch.completions[i],
                 "reward": float(rewards[i]), "advantage": float(adv[i]),
                 **{f"reward/{n}": float(v[i]) for n, v in batch.reward_parts.items()}} for i in range(k)])
        return m

    def _minibatches(self, B: int, gen: torch.Generator) -> list[torch.Tensor]:
        """This rank's rows of each global minibatch (sorted). The permutation is drawn over the *global*
        batch with the same generator on every rank, and each rank keeps the rows it holds, so the
        minibatches are the same sets of samples whatever the process count."""
        a = self.cfg.algo
        sizes = [B] if self.dist.world == 1 else self.dist.all_gather_objects(B)
        offset, total = sum(sizes[:self.dist.rank]), sum(sizes)
        order = torch.randperm(total, generator=gen) if a.minibatches > 1 else torch.arange(total)
        out = []
        for mb in torch.tensor_split(order, a.minibatches):
            mine = mb[(mb >= offset) & (mb < offset + B)] - offset
            out.append(mine.sort().values)
        return out

    def _micro_batches(self, mb: torch.Tensor, micro: int) -> list[torch.Tensor | None]:
        """The minibatch's micro-batches; None = a placeholder, so every rank runs as many forward /
        backward passes as the rank with the most (sharded models need matching collectives)."""
        mics: list = list(torch.split(mb, micro)) if len(mb) else []
        if self.dist.world > 1:
            n = int(self.dist.max_metric(float(len(mics))))
            mics += [None] * (n - len(mics))
        return mics

    @staticmethod
    def _weighted(batch, rows: torch.Tensor, r_mask: torch.Tensor) -> torch.Tensor:
        """The response mask [b, R'] of `rows` without the rows that have no loss weight (train_mask)."""
        if batch.train_mask is None:
            return r_mask
        return r_mask & batch.train_mask[rows.to(batch.train_mask.device)].to(r_mask.device)[:, None]

    @torch.no_grad()
    def _batch_stats(self, batch, mics: list, on_policy: bool) -> dict:
        """The whole-minibatch statistics the loss declared (e.g. FSPO drift="kl": mean log ratio), summed
        over every micro-batch and rank so that no memory setting changes them."""
        if not self.loss.batch_stats:
            return {}
        if on_policy:  # nothing updated yet: ℓ ≡ 0
            return {name: 0.0 for name in self.loss.batch_stats}
        sums = {name: [0.0, 0.0] for name in self.loss.batch_stats}
        for mic in mics:
            logp, _, r_mask, rlen = self._forward(self.model, batch, torch.zeros(1, dtype=torch.long) if mic is None
                                                  else mic, with_entropy=False)
            if mic is None:
                continue  # placeholder forward: counts nothing
            ell = logp - batch.old_logp[mic.to(self.device), :rlen].to(logp.device)  # [b, R']
            r_mask = self._weighted(batch, mic, r_mask.to(logp.device))
            for name in sums:
                num, den = BATCH_STATISTICS[name](ell, r_mask)
                sums[name][0] += float(num)
                sums[name][1] += float(den)
        out = {}
        for name, (num, den) in sums.items():
            num, den = self.dist.sum_metric(num), self.dist.sum_metric(den)
            out[name] = num / den if den > 0 else 0.0
        return out

    def _update(self, batch, micro: int) -> dict:
        """ppo_epochs x minibatches optimizer steps of the policy loss (+ beta·KL) on one rollout batch."""
        cfg, a = self.cfg, self.cfg.algo
        B = len(batch)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
        params = [p for p in self.model.parameters() if p.requires_grad]
        stats = UpdateStats()
        w = batch.train_mask  # [B] bool or None: rows with loss weight (the others count in no normalizer)
        for epoch in range(a.ppo_epochs):
            for k_mb, mb in enumerate(self._minibatches(B, gen)):  # mb: [b] this rank's rows of the minibatch
                on_policy = stats.updates + stats.skipped == 0  # no optimizer step on this batch yet: ratio ≡ 1
                weighted = batch.response_mask[mb] if w is None else batch.response_mask[mb] & w[mb, None]
                mb_tokens = self.dist.sum_metric(float(weighted.sum()))  # global normalizers
                mb_seqs = self.dist.sum_metric(float(len(mb) if w is None else w[mb].sum()))
                if mb_tokens == 0:  # no row of this minibatch has loss weight, on any rank: no update
                    continue
                mics = self._micro_batches(mb, micro)
                batch_stats = self._batch_stats(batch, mics, on_policy)
                self.optimizer.zero_grad(set_to_none=True)
                self.critic.zero_grad()
                norms = {"on_policy": on_policy, "global_tokens": mb_tokens, "global_seqs": mb_seqs}
                mb_loss = 0.0
                for k_mic, mic in enumerate(mics):
                    last = k_mic == len(mics) - 1  # FSDP2: reduce once, on the last micro-batch
                    model = self.dist.for_training(self.model)
                    if mic is None:  # placeholder: a zero-weighted pass keeps the ranks' collectives matched
                        logp, _, _, _ = self._forward(model, batch, torch.zeros(1, dtype=torch.long), with_entropy=False)
                        self.dist.backward(logp.sum() * 0.0, self.model, sync=last)
                        self.critic.own_pass(batch, None, sync=last)
                        continue
                    rows = mic.to(self.device)
                    logp, ent, r_mask, rlen, *hidden = self._forward(model, batch, mic, with_entropy=True,
                                                                     with_hidden=self.critic.reads_policy_hidden)
                    r_mask = self._weighted(batch, mic, r_mask.to(logp.device))  # [b, R']
                    old = logp.detach() if batch.old_logp is None else batch.old_logp[rows, :rlen]  # [b, R']
                    if not bool(torch.isfinite(logp[r_mask]).all() & torch.isfinite(old[r_mask]).all()):
                        # a numerical fault of the forward pass, not bad input: this optimizer step is skipped
                        # (every rank still runs its backward so collectives stay matched)
                        self.dist.backward(torch.nan_to_num(logp).sum() * 0.0, self.model, sync=last)
                        self.critic.own_pass(batch, None, sync=last)
                        mb_loss = float("nan")
                        continue
                    if batch.engine_logp is not None and epoch == 0:  # |engine − training-model| log-probs
                        stats.add_mismatch((batch.engine_logp[rows, :rlen].to(old.device) - old).abs()[r_mask])
                    adv = batch.advantages[rows]  # [b] or [b, R]
                    adv = adv[:, :rlen] if adv.dim() == 2 else adv  # token advantages: [b, R']
                    loss, loss_stats = self.loss(logp, old, adv, r_mask, global_tokens=mb_tokens,
                                                 global_seqs=mb_seqs, batch_stats=batch_stats)
                    kl = None
                    if batch.ref_logp is not None:
                        kl = kl_penalty(logp, batch.ref_logp[rows, :rlen], kind=a.kl)  # [b, R']
                        loss = loss + a.beta * aggregate(kl, r_mask, a.agg, horizon=self.loss.horizon,
                                                         global_tokens=mb_tokens, global_seqs=mb_seqs)
                    # the critic: a value head's loss joins this backward (shared trunk); a value model runs its own
                    term = self.critic.policy_loss_term(batch, mic, *hidden, r_mask=r_mask, rlen=rlen, **norms)
                    self.dist.backward(loss if term is None else loss + term, self.model, sync=last)
                    self.critic.own_pass(batch, mic, sync=last, r_mask=r_mask, rlen=rlen, **norms)
                    mb_loss += float(loss.detach())
                    stats.add(loss_stats, r_mask, ent, adv, off_policy=not on_policy, kl=kl)
                mb_loss = self.dist.sum_metric(mb_loss)  # global: every rank makes the same skip decision
                self.dist.sync_gradients(self.model)
                gn = self.dist.clip_grad_norm(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
                critic_gn = self.critic.finish_minibatch(cfg.optim.grad_clip)
                if not (math.isfinite(mb_loss) and torch.isfinite(gn) and torch.isfinite(critic_gn)):
                    stats.skipped += 1
                    self.consecutive_skips += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    self.critic.zero_grad()
                    if self.consecutive_skips >= cfg.max_skipped_updates:
                        self.save_checkpoint()
                        raise TrainingError(
                            f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                            f"(step {self.step + 1}); a resumable checkpoint is in {self.run_dir / 'checkpoints'}")
                    continue
                self.consecutive_skips = 0
                stats.loss += mb_loss
                stats.updates += 1
                stats.off_policy_updates += int(not on_policy)
                stats.grad_norms.append(float(gn))
                self.optimizer.step()
                self.scheduler.step()
                self.critic.step()
        return stats.finish(self.dist, cfg.log.length_bins, with_kl=batch.ref_logp is not None,
                            with_mismatch=batch.engine_logp is not None)

    # ------------------------------------------------------------------ checkpoints and the loop
    def trainer_state(self) -> dict:
        return {"step": self.step, "data": self._data_state,
                "estimator": self._estimator_state,
                "consecutive_skips": self.consecutive_skips, "sft_done": self.sft_done}

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-N (rank 0). Every rank learns whether it worked: a failed write (full disk)
        stops every rank with the same TrainingError; the previous checkpoint is intact."""
        # FSDP2: gather the full model and optimizer state (collectives: every rank; None under DDP)
        model_state = self.dist.full_model_state(self.model)
        optim_state = self.dist.full_optimizer_state(self.model, self.optimizer)
        critic_state = self.critic.full_state()  # a collective; None without a critic and off rank 0
        path, error = None, None
        if self.dist.is_main:
            try:
                path = ckpt.save_checkpoint(self.run_dir, self.step, model=self.dist.unwrap(self.model),
                                            optimizer=self.optimizer, scheduler=self.scheduler,
                                            trainer_state=self.trainer_state(), config_yaml=dump_yaml(self.cfg),
                                            keep_last=self.cfg.keep_last, model_state=model_state,
                                            optimizer_state=optim_state,
                                            tokenizer=None if self.cfg.lora.enabled else self.tokenizer,
                                            extra=None if critic_state is None else {"critic": critic_state})
            except ckpt.CheckpointWriteError as e:
                error = str(e)
        if not self.dist.all_true(error is None):
            raise TrainingError(f"{error or 'rank 0 could not write the checkpoint'}; free space or fix the folder, "
                                f"then resume with: fairalign train --resume {self.run_dir}")
        return path

    def save_final_model(self) -> Path | None:
        state = self.dist.full_model_state(self.model)  # FSDP2: gathered on every rank; None under DDP
        if not self.dist.is_main:
            return None
        final = self.run_dir / "final"
        tmp = self.run_dir / ".tmp-final"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.dist.unwrap(self.model).save_pretrained(tmp, safe_serialization=True,
                                                         **({} if state is None else {"state_dict": state}))
            self.tokenizer.save_pretrained(tmp)
        except Exception as e:
            reason = ckpt.write_failure(e, tmp)
            if reason is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise TrainingError(f"cannot write the final model: {reason}; the last checkpoint is intact: free "
                                f"space, then resume with: fairalign train --resume {self.run_dir}") from e
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final

    def train(self, stop_after: int | None = None) -> list[dict]:
        """Run until cfg.steps (or `stop_after` more steps); returns this call's metric rows.
        SIGTERM / Ctrl-C: the current step finishes, every rank stops at the same step, a checkpoint is
        written and StopRequested is raised (the CLI exits 143 / 130). A signal during the last step
        lets the run finish normally and is left in `self.stopped_by` (the signal number, else None)."""
        cfg = self.cfg
        rows = []
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        stop = StopRequest()
        with stop.installed():
            if not self.sft_done:
                from fairalign.train.sft import run_sft_warmup

                run_sft_warmup(self)
                self.sft_done = True
                if cfg.algo.beta > 0:  # the KL reference is the policy RL starts from: the warm-up's result
                    save_reference(self)
                    self._setup_reference(from_run=True)
                if cfg.steps > 0:
                    self.save_checkpoint()  # step 0: a resumed run does not repeat the warm-up
            bar = Progress(cfg.steps, start=self.step, enabled=self.show_progress and self.dist.is_main)
            try:
                while self.step < end:
                    if not self.dist.all_true(stop.signum is None):  # every rank stops at the same step
                        self._stop(stop)
                    m = self.train_step()
                    rows.append(m)
                    bar.update(self.step, m)
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                        self.save_checkpoint()
                if self.step >= cfg.steps:
                    self.save_checkpoint()
                    self.save_final_model()
                elif not self.dist.all_true(stop.signum is None):
                    self._stop(stop)
            finally:
                bar.close()
        # a signal during the last step: the run finished and was saved; a driver of several runs
        # (fairalign compare) reads this to stop before the next one
        self.stopped_by = stop.signum
        if self.logger is not None:
            self.logger.close()
        return rows

    def _stop(self, stop: StopRequest):
        self.save_checkpoint()
        name = stop.signal_name or "a signal on another rank"
        raise StopRequested(f"stopped by {name} after step {self.step}; resume with: fairalign train --resume "
                            f"{self.run_dir}", stop.signum or 15)
