"""The critic of PPO with GAE (`algo.critic`): what the trainer calls to get a batch's values, to train
the value function next to the policy, to checkpoint it and to log it. The trainer never names a kind.

    critic = build_critic(policy, cfg, horizon, checkpoint)   # NoCritic for algo.critic=none (every call a no-op)
    values, logp = critic.behaviour_pass(batch, micro)   # V(s_t) [B, R] before any update (head: + log-probs)
    per micro-batch: term = critic.policy_loss_term(...)  # head: vf_coef·value loss, joins the policy backward
                     critic.own_pass(...)                 # model: its own forward + backward (None: placeholder)
    per minibatch:   critic.zero_grad(); gn = critic.finish_minibatch(grad_clip); critic.step()
    critic.full_state() (a collective) -> critic.pt in the checkpoint;  critic.step_metrics(batch)

Kinds:
- `head`: `ValueHead` (Linear(H, 1)) on the policy's final hidden states. The value loss (× vf_coef) is
  added to the policy loss, so its gradient reaches the shared trunk through the policy's own backward;
  the behaviour pass gives the values and the behaviour log-probs in one forward. The head (H + 1
  parameters) is replicated on every rank under every strategy: its gradients are summed with one
  all-reduce per minibatch (divided first by the policy strategy's `backward_scale`, DeepSpeed's loss
  × world), clipped on their own norm and stepped by its own AdamW.
- `model`: `ValueModel` (the decoder trunk of a second copy of the policy's model files + a value head),
  trained by its own AdamW with its own backward after the policy's, wrapped by a second `Dist` of the
  policy's strategy (DDP replica, FSDP2 shards, DeepSpeed engine), so it is sharded like the policy.
  Every micro-batch of the update costs one forward + backward of it; placeholders keep ranks in step.
Both: learning rate `algo.critic_lr` (default optim.lr) with the policy's schedule, betas, weight decay
and grad_clip; the value loss is `compute_value_loss` with the policy's `agg` and global normalizers.
Metrics: critic/value_loss (mean over the step's updates), critic/value_clip_frac (share of response
tokens on the clipped branch, off-policy updates only — the first update cannot clip),
critic/explained_variance (1 − Var[G − V]/Var[G] of the behaviour values against the returns, over the
global batch), critic/values_mean, critic/returns_mean, critic/grad_norm.
Simplifications: the value model is fully trained (LoRA applies to the policy only); the critic is not
written to final/ (its weights are in every checkpoint).
"""
from __future__ import annotations

import torch

from fairalign.algos import (
    compute_value_loss,
    explained_variance_from_moments,
    masked_moments,
)
from fairalign.dist import make_dist
from fairalign.errors import ConfigError
from fairalign.train import checkpoint as ckpt
from fairalign.train.build import adamw, lr_schedule
from fairalign.train.policy import Policy, trim_padding


class NoCritic:
    """algo.critic=none: nothing to compute, train, save or log."""
    reads_policy_hidden = False

    def behaviour_pass(self, batch, micro):
        return None, None

    def policy_loss_term(self, batch, mic, *hidden, **_):
        return None

    def own_pass(self, batch, mic, *, sync, **_):
        return None

    def zero_grad(self):
        return None

    def finish_minibatch(self, grad_clip: float) -> torch.Tensor:
        return torch.zeros(())

    def step(self):
        return None

    def full_state(self):
        return None

    def step_metrics(self, batch) -> dict:
        return {}


class _Critic(NoCritic):
    def __init__(self, policy: Policy, cfg, horizon: int | None, module: torch.nn.Module, dist, checkpoint):
        a = cfg.algo
        self.policy, self.horizon, self.dist, self.kind = policy, horizon, dist, a.critic
        self.vf_coef, self.value_clip, self.agg = a.vf_coef, a.value_clip, a.agg
        state = None
        if checkpoint is not None:
            state = ckpt.load_component(checkpoint, "critic")
            if state is None:
                raise ConfigError(f"--resume: checkpoint '{checkpoint}' holds no critic (critic.pt) but "
                                  f"algo.critic={a.critic}")
            module.load_state_dict(state["model"])
        module.to(policy.device)
        module.eval()  # like the policy: dropout off for the behaviour pass and the updates
        self.module = dist.prepare_model(module)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        opt = adamw(self.params, a.critic_lr or cfg.optim.lr, cfg)
        self.scheduler = lr_schedule(opt, cfg)
        self.optimizer = dist.prepare_optimizer(self.module, opt)
        if state is not None:
            dist.load_optimizer_state(self.module, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self._reset()

    def _reset(self):
        self.sums = {"loss": 0.0, "clipped": 0.0, "tokens": 0.0}
        self.minibatches, self.grad_norms = 0, []

    # ------------------------------------------------------------------ the value loss of a micro-batch
    def _value_loss(self, values, batch, mic, r_mask, rlen, *, on_policy, global_tokens, global_seqs):
        rows = mic.to(values.device)
        loss, stats = compute_value_loss(values, batch.returns[rows, :rlen], batch.values[rows, :rlen], r_mask,
                                         self.value_clip, self.agg, horizon=self.horizon,
                                         global_tokens=global_tokens, global_seqs=global_seqs)
        self.sums["loss"] += float(loss.detach())
        if not on_policy:
            self.sums["clipped"] += float(stats["clipped"].sum())
            self.sums["tokens"] += float(r_mask.sum())
        return loss

    # ------------------------------------------------------------------ per minibatch
    def zero_grad(self):
        self.optimizer.zero_grad(set_to_none=True)

    def finish_minibatch(self, grad_clip: float) -> torch.Tensor:
        """Reduce the gradients over ranks and clip them; the global norm (a collective)."""
        self.dist.sync_gradients(self.module)
        gn = self.dist.clip_grad_norm(self.params, grad_clip if grad_clip > 0 else float("inf"))
        self.minibatches += 1
        self.grad_norms.append(float(gn))
        return gn

    def step(self):
        self.optimizer.step()
        self.scheduler.step()

    # ------------------------------------------------------------------ checkpoints and metrics
    def full_state(self) -> dict | None:
        """{"kind", "model", "optimizer", "scheduler"} on rank 0 in the 1-process format, None elsewhere
        (a collective: gathers sharded state)."""
        model_state = self.dist.full_model_state(self.module)
        optim_state = self.dist.full_optimizer_state(self.module, self.optimizer)
        if not self.policy.dist.is_main:
            return None
        return {"kind": self.kind,
                "model": self.module.state_dict() if model_state is None else model_state,
                "optimizer": self.optimizer.state_dict() if optim_state is None else optim_state,
                "scheduler": self.scheduler.state_dict()}

    def step_metrics(self, batch) -> dict:
        """The step's critic metrics over every rank (a collective)."""
        d = self.policy.dist
        m = batch.response_mask.to(batch.values.device)
        local = torch.cat([masked_moments(batch.returns - batch.values, m), masked_moments(batch.returns, m),
                           masked_moments(batch.values, m)]).tolist()
        parts = d.all_gather_objects(local) if d.world > 1 else [local]
        mom = [sum(p[k] for p in parts) for k in range(9)]
        s = {k: d.sum_metric(v) for k, v in self.sums.items()}
        out = {"critic/value_loss": s["loss"] / max(self.minibatches, 1),
               "critic/explained_variance": explained_variance_from_moments(mom[0:3], mom[3:6]),
               "critic/returns_mean": mom[4] / max(mom[3], 1.0), "critic/values_mean": mom[7] / max(mom[6], 1.0),
               "critic/grad_norm": sum(self.grad_norms) / len(self.grad_norms) if self.grad_norms else float("nan")}
        if s["tokens"] > 0:
            out["critic/value_clip_frac"] = s["clipped"] / s["tokens"]
        self._reset()
        return out


class HeadCritic(_Critic):
    """A value head on the policy's shared trunk (see the module docstring)."""
    reads_policy_hidden = True

    def __init__(self, policy: Policy, cfg, horizon, checkpoint):
        from fairalign.models.value import ValueHead

        hidden = policy.dist.unwrap(policy.model).config.hidden_size
        d = policy.dist
        super().__init__(policy, cfg, horizon, ValueHead(hidden, seed=cfg.seed), make_dist(d.rank, d.world, "ddp"),
                         checkpoint)

    @torch.no_grad()
    def behaviour_pass(self, batch, micro):
        """(values [B, R], behaviour log-probs [B, R]) from one no-grad forward of the policy."""
        pol = self.policy
        values = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=pol.device)  # [B, R]
        logp = torch.zeros_like(values)
        for mic in torch.split(torch.arange(len(batch)), micro):
            lp, _, r_mask, rlen, hidden = pol.forward(pol.model, batch, mic, with_entropy=False, with_hidden=True)
            rows = mic.to(pol.device)
            logp[rows, :rlen] = lp.to(pol.device)
            values[rows, :rlen] = (self.module(hidden) * r_mask.to(hidden.device)).to(pol.device)
        return values, logp

    def policy_loss_term(self, batch, mic, hidden, *, r_mask, rlen, **norm):
        values = self.module(hidden)  # [b, R'], gradient into the head and the shared trunk
        return self.vf_coef * self._value_loss(values, batch, mic, r_mask, rlen, **norm)

    def finish_minibatch(self, grad_clip: float) -> torch.Tensor:
        scale = self.policy.dist.backward_scale
        for p in self.params:  # a rank with only placeholder passes has no gradient: it adds zeros
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif scale != 1:
                p.grad.div_(scale)
        return super().finish_minibatch(grad_clip)


class ModelCritic(_Critic):
    """A separate value model from the policy's model files (see the module docstring)."""

    def __init__(self, policy: Policy, cfg, horizon, checkpoint):
        from fairalign.models import load_policy
        from fairalign.models.value import ValueModel

        d = policy.dist
        lm, _ = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code, allow_download=cfg.allow_download)
        module = ValueModel.from_causal_lm(lm, seed=cfg.seed)
        super().__init__(policy, cfg, horizon, module, make_dist(d.rank, d.world, d.strategy, d.options), checkpoint)

    def _values(self, model, batch, mic):
        from fairalign.rollout.values import sequence_values

        p_ids, p_mask, r_ids, r_mask, rlen = trim_padding(batch, mic)
        with self.policy.autocast():
            values = sequence_values(model, p_ids, p_mask, r_ids, r_mask)  # [b, R']
        return values, r_mask.to(values.device), rlen

    @torch.no_grad()
    def behaviour_pass(self, batch, micro):
        """(values [B, R], None): the value model's no-grad pass."""
        values = torch.zeros(batch.response_ids.shape, dtype=torch.float32, device=self.policy.device)  # [B, R]
        for mic in torch.split(torch.arange(len(batch)), micro):
            v, _, rlen = self._values(self.module, batch, mic)
            values[mic.to(self.policy.device), :rlen] = v.to(self.policy.device)
        return values, None

    def own_pass(self, batch, mic, *, sync, r_mask=None, rlen=None, **norm):
        """The value model's forward + backward on `mic` (None: a zero-weighted placeholder pass)."""
        model = self.dist.for_training(self.module)
        if mic is None:
            values, _, _ = self._values(model, batch, torch.zeros(1, dtype=torch.long))
            self.dist.backward(values.sum() * 0.0, self.module, sync=sync)
            return None
        values, r_mask, rlen = self._values(model, batch, mic)
        loss = self._value_loss(values, batch, mic, r_mask, rlen, **norm)
        self.dist.backward(self.vf_coef * loss, self.module, sync=sync)
        return None


def build_critic(policy: Policy, cfg, horizon: int | None, checkpoint=None):
    """The critic `algo.critic` names (its value loss aggregated with the policy loss's `horizon`);
    `checkpoint` (a step folder) restores it exactly. Building it leaves the global torch RNG as it was
    (the run samples the same with and without a critic)."""
    kinds = {"none": None, "head": HeadCritic, "model": ModelCritic}
    cls = kinds[cfg.algo.critic]
    if cls is None:
        return NoCritic()
    with torch.random.fork_rng(devices=[]):
        return cls(policy, cfg, horizon, checkpoint)
