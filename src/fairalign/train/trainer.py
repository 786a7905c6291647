"""The trainer: a recipe over four stages that fill one `RolloutBatch` per step (docs/architecture.md).

    1. rollout      pool = rollout_stage.sample(step)   task.rollout(engine, examples, G, seed) per round:
                    responses + rewards (task-owned), rollout.* options (overlong penalty, dynamic sampling)
    2. advantages   pool.advantages = estimator(rewards, index, groups, dist)   (registered, may hold state);
                    batch = rollout_stage.training_batch(pool): the groups trained on, train_mask.
                    An estimator that requires a critic's values (gae) runs after the selection, on the
                    batch's values, and also returns the critic's targets (batch.returns)
    3. log-probs    batch.old_logp / batch.ref_logp                      (behaviour once, before any update)
    4. updates      update(batch): ppo_epochs x minibatches optimizer steps (update.py)
No line here names a loss, an estimator, an engine, a critic kind or a task: the parts come from
build.py (config -> parts), config/methods.py, critic.py and the task. Drivers hook in through callbacks
(`TrainerCallback`: after every step, at the end).

Simplifications, on purpose:
- With a single update per batch the behaviour log-probs are the first update's own forward (the policy
  stays in eval mode, so they are equal), and no extra pass is spent on them.
- A step stops in one of three ways, each leaving a resumable checkpoint of the last completed step:
  `max_skipped_updates` non-finite updates in a row (TrainingError, exit 1), a task's external service
  that keeps failing (an EnvironmentFault in the rollout: TrainingError, exit 1; the failed step leaves
  no trace, so a resume replays it identically), SIGTERM / Ctrl-C (StopRequested, exit 128 + signal).
"""
from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fairalign.config import Config, dump_yaml
from fairalign.config.methods import resolve_estimator, resolve_policy_loss
from fairalign.config.paths import absolute_paths
from fairalign.config.task import task_from_config
from fairalign.dist import Dist, from_env
from fairalign.errors import ConfigError, EnvironmentFault, StopRequested, TrainingError
from fairalign.train import checkpoint as ckpt
from fairalign.train.build import (
    adamw,
    build_policy,
    configure_process,
    lora_config,
    lr_schedule,
    open_run_dir,
    seed_everything,
    training_examples,
)
from fairalign.train.critic import build_critic
from fairalign.train.data import PromptSampler
from fairalign.train.logging import Progress, RunLogger, truncate_after_step
from fairalign.train.reference import load_reference, save_reference
from fairalign.train.rollout_stage import RolloutStage
from fairalign.train.signals import StopRequest
from fairalign.train.update import PolicyUpdate
from fairalign.train.update_stats import sequence_advantages


class TrainerCallback:
    """Hooks for whoever drives a run (`fairalign compare`, a notebook). Every method does nothing by
    default; override the ones you need. They run on every rank."""

    def on_step_end(self, trainer: "Trainer", metrics: dict) -> None:
        """After step `trainer.step` finished (its metrics logged; a checkpoint, if due, is written next)."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After `train()` returns normally (the run finished, or `stop_after` steps were done)."""


class Trainer:
    def __init__(self, cfg: Config, *, run_dir: str | Path | None = None, resume: bool = False,
                 overwrite: bool = False, dist: Dist | None = None, progress: bool | None = None, callbacks=()):
        self.cfg = cfg
        self.dist = dist or from_env(cfg.dist_strategy)
        self.run_dir = Path(run_dir or cfg.output_dir)
        self.show_progress = cfg.log.progress if progress is None else progress
        self.callbacks: list[TrainerCallback] = list(callbacks)
        seed_everything(cfg.seed)
        self.task = task_from_config(cfg)
        configure_process(cfg)
        self.consecutive_skips = 0
        self.sft_done = cfg.sft.steps == 0  # the supervised warm-up (sft.*) runs once, before step 1
        self.stopped_by: int | None = None  # the signal that came during the last step of train()
        self._lock, self.step, start_ckpt = open_run_dir(self.run_dir, self.dist, resume, overwrite=overwrite,
                                                         steps=cfg.steps)
        self.policy = build_policy(cfg, self.dist, self.task, start_ckpt)
        self.ref_model = None  # built once the policy RL starts from exists (after any warm-up): _setup_reference
        self.optimizer = adamw(self.policy.parameters(), cfg.optim.lr, cfg)
        self.scheduler = lr_schedule(self.optimizer, cfg)
        self.optimizer = self.dist.prepare_optimizer(self.model, self.optimizer)  # DeepSpeed: ZeRO engine
        loss = resolve_policy_loss(cfg)                 # stage 4: the registered (or user) policy loss
        self.estimator = resolve_estimator(cfg)         # stage 2: the registered (or user) estimator
        self.critic = build_critic(self.policy, cfg, loss.horizon, start_ckpt)  # NoCritic for none
        self.train_examples, self.skipped_prompts = training_examples(cfg, self.task, self.policy)
        self.sampler = PromptSampler(len(self.train_examples), cfg.seed)
        self.rollout_stage = RolloutStage(cfg, self.task, self.train_examples, self.engine, self.sampler,
                                          self.dist, self.estimator)
        self.update = PolicyUpdate(self.policy, self.optimizer, self.scheduler, loss, self.critic, cfg)
        if start_ckpt is not None:
            try:
                self._restore(start_ckpt)
            except (OSError, RuntimeError, KeyError, ValueError) as e:  # unreadable files of an unverified checkpoint
                raise ConfigError(f"--resume: checkpoint '{start_ckpt}' cannot be read ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
        # data position and estimator state after the last *completed* step (what a checkpoint saves)
        self._data_state = self.sampler.state_dict()
        self._estimator_state = self.estimator.state_dict()
        self.logger = self._open_logs(resume) if self.dist.is_main else None
        if self.sft_done:
            self._setup_reference(from_run=cfg.sft.steps > 0)

    # the policy's parts, by their usual names
    @property
    def model(self):
        return self.policy.model

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    @property
    def engine(self):
        return self.policy.engine

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def loss(self):
        """The policy loss the updates use (settable: a test or a driver may wrap it)."""
        return self.update.loss

    @loss.setter
    def loss(self, value) -> None:
        self.update.loss = value

    # ------------------------------------------------------------------ setup
    def header(self) -> str:
        """What `fairalign train` prints before the first step: the run in three lines."""
        cfg, r = self.cfg, self.cfg.rollout
        steps = f"steps {self.step + 1}-{cfg.steps} of {cfg.steps} (resumed)" if self.step else f"{cfg.steps} steps"
        warm = "" if self.sft_done else f", after a {cfg.sft.steps}-step supervised warm-up"
        return (f"fairalign train -> {self.run_dir}\n"
                f"  model {cfg.model}, task {cfg.task}, loss {cfg.algo.loss}, advantage {cfg.algo.advantage}\n"
                f"  {steps}, each {r.prompts_per_step} prompts x {r.generations} samples{warm}")

    def _open_logs(self, resume: bool) -> RunLogger:
        """config.yaml (relative file paths made absolute, so the run can be evaluated and resumed from any
        folder), and the logs (on resume cut back to the checkpoint's step)."""
        (self.run_dir / "config.yaml").write_text(dump_yaml(absolute_paths(self.cfg)))
        if resume:
            truncate_after_step(self.run_dir / "metrics.jsonl", self.step)
            truncate_after_step(self.run_dir / "samples.jsonl", self.step)
        return RunLogger(self.run_dir, tensorboard=self.cfg.log.tensorboard, wandb=self.cfg.log.wandb, config=None)

    def _setup_reference(self, from_run: bool) -> None:
        """The KL reference = the policy RL starts from: the configured model, or (after the warm-up)
        the warm-up's result, saved in the run directory so a resume uses the same one."""
        if self.cfg.algo.beta > 0:
            self.ref_model = load_reference(self.policy, self.cfg, self.run_dir, from_run,
                                            lora_config(self.cfg) if self.cfg.lora.enabled else None)

    def _restore(self, path: Path) -> None:
        st = ckpt.load_training_state(path)
        self.dist.load_optimizer_state(self.model, self.optimizer, st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        ts = st["trainer_state"]
        self.sampler.load_state_dict(ts["data"])
        try:
            self.estimator.load_state_dict(ts["estimator"])
        except ValueError as e:
            raise ConfigError(f"--resume: {e}") from None
        self.consecutive_skips = ts.get("consecutive_skips", 0)
        self.sft_done = ts.get("sft_done", True)
        ckpt.set_rng_state(ts["rng"], st["torch_rng"])

    # ------------------------------------------------------------------ one step
    def _ref_logprobs(self, batch, micro: int) -> torch.Tensor:
        if self.ref_model is not None:
            return self.policy.logprobs(self.ref_model, batch, micro)
        with self.model.disable_adapter():  # LoRA without a warm-up: the base model is the reference
            return self.policy.logprobs(self.model, batch, micro)

    def train_step(self) -> dict:
        """One RL step (rollout, advantages, update), its metrics; the sft.* warm-up first if it has not run
        (so driving the trainer step by step trains what `train()` trains)."""
        if not self.sft_done:
            self._warm_up()
        cfg, a = self.cfg, self.cfg.algo
        t_start = time.perf_counter()
        step = self.step + 1
        if hasattr(self.engine, "sync_weights"):  # an engine serving a copy: push the weights the updates produced
            self.engine.sync_weights(self.model)
        t_sync = time.perf_counter()
        # 1. rollout: responses and rewards, owned by the task (single-turn default, or e.g. RLPA dialogues);
        #    the rollout stage adds the rollout.* options: overlong penalty, dynamic sampling (more rounds)
        with self.policy.autocast():
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
        micro = a.micro_batch_size or len(batch)
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
            # the first minibatch's rows get theirs from its own (on-policy) forward in the update: NaN here
            later = self.update.later_rows(len(batch), step)  # [b]
            batch.old_logp = self.policy.logprobs(self.model, batch, micro, rows=later)  # [B, R]
        if a.beta > 0:
            batch.ref_logp = self._ref_logprobs(batch, micro)  # [B, R]
        t_lp = time.perf_counter()
        # 4. updates
        upd = self.update(batch, micro, step, self.consecutive_skips)
        self.consecutive_skips = upd.skip_streak
        if upd.halted:
            self.save_checkpoint()
            raise TrainingError(f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                                f"(step {step}); a resumable checkpoint is in {self.run_dir / 'checkpoints'}")
        t_upd = time.perf_counter()
        self.step = step
        self._data_state = self.sampler.state_dict()
        self._estimator_state = self.estimator.state_dict()
        m = self._step_metrics(batch, rewards, upd.metrics)
        step_s = time.perf_counter() - t_start
        n_tokens = self.dist.sum_metric(float(batch.lengths.sum().item()))
        if hasattr(self.engine, "sync_weights"):
            m["time/weight_sync_s"] = t_sync - t_start
        m.update({"time/generate_s": batch.generate_s, "time/reward_s": t_rew - t_sync - batch.generate_s,
                  "time/logprob_s": t_lp - t_rew, "time/update_s": t_upd - t_lp,
                  "step_s": step_s, "tokens_per_s": n_tokens / step_s})
        if self.dist.is_main and self.logger is not None:
            self.logger.log(m)
            adv = sequence_advantages(batch.advantages, batch.response_mask)  # [B]
            self.logger.log_samples(step, [
                {"group": str(batch.groups[i]), "index": int(batch.index[i]), "prompt": batch.prompts[i],
                 "completion": batch.completions[i],
                 "reward": float(rewards[i]), "advantage": float(adv[i]),
                 **{f"reward/{n}": float(v[i]) for n, v in batch.reward_parts.items()}}
                for i in range(min(cfg.log.samples_per_step, len(batch)))])
        return m

    def _step_metrics(self, batch, rewards: torch.Tensor, update_metrics: dict) -> dict:
        """The step's metrics over every rank (collectives), before the timings."""
        adv = sequence_advantages(batch.advantages, batch.response_mask)  # [B]
        lengths = batch.lengths.float()
        m = {"step": self.step}
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
        m.update(update_metrics)
        m.update(self.estimator.metrics())
        m.update(self.critic.step_metrics(batch))
        m["lr"] = self.scheduler.get_last_lr()[0]
        return m

    # ------------------------------------------------------------------ checkpoints
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

    # ------------------------------------------------------------------ the loop
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
                self._warm_up()
            bar = Progress(cfg.steps, start=self.step, enabled=self.show_progress and self.dist.is_main)
            try:
                while self.step < end:
                    if not self.dist.all_true(stop.signum is None):  # every rank stops at the same step
                        self._stop(stop)
                    m = self._guarded_step()
                    rows.append(m)
                    bar.update(self.step, m)
                    for cb in self.callbacks:
                        cb.on_step_end(self, m)
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
        for cb in self.callbacks:
            cb.on_train_end(self)
        return rows

    def _warm_up(self) -> None:
        """The sft.* warm-up, once; then the KL reference is its result, and checkpoint step-0 is written
        so a resumed run does not repeat it."""
        from fairalign.train.sft import run_sft_warmup

        run_sft_warmup(self.policy, self.task, self.cfg, self.run_dir, show_progress=self.show_progress)
        self.sft_done = True
        if self.cfg.algo.beta > 0:
            save_reference(self.policy, self.run_dir, self.cfg.lora.enabled)
            self._setup_reference(from_run=True)
        if self.cfg.steps > 0:
            self.save_checkpoint()

    def _guarded_step(self) -> dict:
        """One step; a task's external service that keeps failing during it (EnvironmentFault) leaves no
        trace of the step: the random state and data position are put back as they were, the last
        completed step is checkpointed, and a TrainingError names the fault and the resume command."""
        rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        try:
            return self.train_step()
        except EnvironmentFault as e:
            random.setstate(rng[0])
            np.random.set_state(rng[1])
            torch.set_rng_state(rng[2])
            self.sampler.load_state_dict(self._data_state)
            self.estimator.load_state_dict(self._estimator_state)
            self.save_checkpoint()
            raise TrainingError(f"step {self.step + 1} failed: {e}\ncheckpoint of step {self.step} written; once "
                                f"it works again, resume with: fairalign train --resume {self.run_dir}") from e

    def _stop(self, stop: StopRequest):
        self.save_checkpoint()
        name = stop.signal_name or "a signal on another rank"
        raise StopRequested(f"stopped by {name} after step {self.step}; resume with: fairalign train --resume "
                            f"{self.run_dir}", stop.signum or 15)
