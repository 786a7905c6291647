"""Stage 4 of a step: ppo_epochs x minibatches optimizer steps of the policy loss (+ beta·KL, + the critic's
value loss) on one rollout batch, each minibatch in micro-batches. Returns the update metrics and the
streak of skipped updates; it never writes files or stops the run (the trainer decides).

Memory settings never change the algorithm:
- a minibatch is a set of rows drawn as a permutation of the *global* batch with the same generator on
  every rank (each rank keeps the rows it holds), so minibatches do not depend on the process count;
- every normalizer (tokens, sequences) and every whole-minibatch statistic a loss declares (FSPO
  drift="kl": the token-mean log ratio) is summed over all micro-batches and ranks;
- a rank with fewer micro-batches runs zero-weighted placeholder passes so collectives stay matched.
Behaviour log-probs (needed when ppo_epochs x minibatches > 1) come from one no-grad pass over every row
*outside* epoch 0's first minibatch (`later_rows`, run by the trainer); the first minibatch's rows take
theirs from its own forward, which is on-policy (nothing has been updated yet), so that pass is not run
twice. Sharded models run the pass over every row (equal forwards on every rank).
Simplifications, on purpose:
- A loss's whole-minibatch statistics cost one extra no-grad forward over the minibatch, except on the
  exactly on-policy first update (where ℓ ≡ 0).
- A non-finite forward, loss or gradient skips that optimizer step on every rank; the streak of skips is
  returned, and the update stops early (`halted`) once it reaches `max_skipped_updates`.
- `log.grad_cosine` (a diagnostic, off by default): on every minibatch that can clip (not the exactly
  on-policy first one, where the two gradients are equal), the cosine between the gradient of the
  clipped policy loss and of the same loss called with clip=False (its unclipped importance-weighted
  variant), both over the whole minibatch (all micro-batches and ranks), before gradient clipping, on the
  trainable parameters. Cost: one extra backward per micro-batch through the retained graph (two when
  the backward also carries a KL term or a value head's loss, whose gradients are left out) and two
  gradient-sized buffers; one process or DDP only (sharded strategies hold no full gradient).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fairalign.algos import BATCH_STATISTICS, aggregate, kl_penalty
from fairalign.errors import ConfigError
from fairalign.train.policy import Policy
from fairalign.train.update_stats import UpdateStats


@dataclass
class UpdateResult:
    metrics: dict        # the step's update metrics, reduced over ranks
    skip_streak: int     # consecutive skipped optimizer steps, carried over steps
    halted: bool = False  # the streak reached max_skipped_updates: the run must stop


class GradientCosine:
    """The gradients of the unclipped loss (and, when the backward carries other terms, of the clipped
    policy loss alone) over one minibatch's micro-batches, and their cosine (`log.grad_cosine`)."""

    def __init__(self, params: list, separate: bool):
        self.params = params
        self.unclipped = [torch.zeros_like(p) for p in params]  # Σ over micro-batches of ∇ unclipped loss
        # None: the backward's loss is the clipped policy loss, so the accumulated .grad is its gradient
        self.clipped = [torch.zeros_like(p) for p in params] if separate else None

    def _add(self, bufs: list, loss: torch.Tensor) -> None:
        grads = torch.autograd.grad(loss, self.params, retain_graph=True, allow_unused=True)
        for b, g in zip(bufs, grads):
            if g is not None:
                b.add_(g)

    def add(self, unclipped_loss: torch.Tensor, clipped_loss: torch.Tensor) -> None:
        """One micro-batch (before its own backward, which may then free the graph)."""
        self._add(self.unclipped, unclipped_loss)
        if self.clipped is not None:
            self._add(self.clipped, clipped_loss)

    def _global(self, bufs: list, dist, model) -> list:
        """`bufs` summed over ranks, through the strategy's own gradient all-reduce."""
        if dist.world == 1:
            return bufs
        saved = [p.grad for p in self.params]
        for p, b in zip(self.params, bufs):
            p.grad = b
        dist.sync_gradients(model)
        out = [p.grad for p in self.params]
        for p, g in zip(self.params, saved):
            p.grad = g
        return out

    def cosine(self, dist, model) -> float | None:
        """cos(∇ clipped, ∇ unclipped) of the minibatch after the policy's gradients were synced (a
        collective); None when the unclipped gradient is 0 (no direction to agree with), 0.0 when only the
        clipped one is (everything that mattered was clipped: no progress along the unclipped direction)."""
        gu = self._global(self.unclipped, dist, model)
        gc = (self._global(self.clipped, dist, model) if self.clipped is not None else
              [torch.zeros_like(p) if p.grad is None else p.grad for p in self.params])
        dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(gc, gu))
        nc = sum(float(a.double().square().sum()) for a in gc)
        nu = sum(float(b.double().square().sum()) for b in gu)
        if nu == 0.0:
            return None
        return 0.0 if nc == 0.0 else dot / math.sqrt(nc * nu)


class PolicyUpdate:
    """The update of one rollout batch; built once per run from the policy, its optimizer and the loss."""

    def __init__(self, policy: Policy, optimizer, scheduler, loss, critic, cfg):
        self.policy, self.optimizer, self.scheduler = policy, optimizer, scheduler
        self.loss, self.critic, self.cfg = loss, critic, cfg
        if cfg.log.grad_cosine:
            if not getattr(loss, "unclipped", False):
                raise ConfigError(f"config key 'log.grad_cosine' needs a loss with an unclipped variant; "
                                  f"'{getattr(loss, 'name', loss)}' has none (a user loss declares one with "
                                  f"fn.unclipped = True and a clip=True keyword)")
            d = policy.dist
            if d.world > 1 and d.strategy != "ddp":
                raise ConfigError(f"config key 'log.grad_cosine' needs the full gradient on every rank: one "
                                  f"process or dist_strategy=ddp, not {d.strategy}")

    # ------------------------------------------------------------------ rows
    def minibatches(self, B: int, gen: torch.Generator) -> list[torch.Tensor]:
        """This rank's rows of each global minibatch (sorted)."""
        d, a = self.policy.dist, self.cfg.algo
        sizes = [B] if d.world == 1 else d.all_gather_objects(B)
        offset, total = sum(sizes[:d.rank]), sum(sizes)
        order = torch.randperm(total, generator=gen) if a.minibatches > 1 else torch.arange(total)
        out = []
        for mb in torch.tensor_split(order, a.minibatches):
            mine = mb[(mb >= offset) & (mb < offset + B)] - offset
            out.append(mine.sort().values)
        return out

    def minibatch_generator(self, step: int) -> torch.Generator:
        """The generator that draws step `step`'s minibatch permutations (the same on every rank)."""
        return torch.Generator().manual_seed(self.cfg.seed * 7919 + step - 1)

    def later_rows(self, B: int, step: int) -> torch.Tensor:
        """This rank's rows [b] that need behaviour log-probs before the update of step `step`: every row
        outside epoch 0's first minibatch, whose behaviour log-probs are that minibatch's own on-policy
        forward (`_own_behaviour`). Where forwards are collectives (sharded models), every row, so every
        rank makes the same forward calls."""
        if self.policy.dist.all_ranks is not bool:
            return torch.arange(B)
        first = self.minibatches(B, self.minibatch_generator(step))[0]
        keep = torch.ones(B, dtype=torch.bool)
        keep[first] = False
        return keep.nonzero().flatten()

    @staticmethod
    def _own_behaviour(batch, rows: torch.Tensor, logp: torch.Tensor | None, rlen: int) -> None:
        """Rows [b] whose behaviour log-probs are still missing (NaN, see `later_rows`) take this forward's
        `logp` [b, R'] (an on-policy forward: the policy has not changed since sampling), or 0 when `logp`
        is None (rows that carry no loss weight: the value is never used)."""
        old = batch.old_logp
        rows = rows.to(old.device)
        missing = torch.isnan(old[rows]).any(1)  # [b]
        if not bool(missing.any()):
            return
        r = rows[missing]
        old[r] = 0.0
        if logp is not None:
            old[r, :rlen] = logp.detach()[missing].to(old.device, old.dtype)

    def micro_batches(self, batch, mb: torch.Tensor, micro: int) -> list[torch.Tensor | None]:
        """The minibatch's micro-batches; None = a placeholder, so every rank runs as many forward /
        backward passes as the rank with the most (sharded models need matching collectives)."""
        mics: list = self.policy.forwards(batch, mb, micro)
        if self.policy.dist.world > 1:
            n = int(self.policy.dist.max_metric(float(len(mics))))
            mics += [None] * (n - len(mics))
        return mics

    @staticmethod
    def weighted(batch, rows: torch.Tensor, r_mask: torch.Tensor) -> torch.Tensor:
        """The response mask [b, R'] of `rows` without the rows that have no loss weight (train_mask)."""
        if batch.train_mask is None:
            return r_mask
        return r_mask & batch.train_mask[rows.to(batch.train_mask.device)].to(r_mask.device)[:, None]

    @torch.no_grad()
    def batch_stats(self, batch, mics: list, on_policy: bool) -> dict:
        """The whole-minibatch statistics the loss declared, summed over every micro-batch and rank."""
        if not self.loss.batch_stats:
            return {}
        if on_policy:  # nothing updated yet: ℓ ≡ 0
            return {name: 0.0 for name in self.loss.batch_stats}
        pol = self.policy
        sums = {name: [0.0, 0.0] for name in self.loss.batch_stats}
        for mic in mics:
            rows = torch.zeros(1, dtype=torch.long) if mic is None else mic
            logp, _, r_mask, rlen = pol.forward(pol.model, batch, rows, with_entropy=False)
            if mic is None:
                continue  # placeholder forward: counts nothing
            ell = logp - batch.old_logp[mic.to(pol.device), :rlen].to(logp.device)  # [b, R']
            r_mask = self.weighted(batch, mic, r_mask.to(logp.device))
            for name in sums:
                num, den = BATCH_STATISTICS[name](ell, r_mask)
                sums[name][0] += float(num)
                sums[name][1] += float(den)
        out = {}
        for name, (num, den) in sums.items():
            num, den = pol.dist.sum_metric(num), pol.dist.sum_metric(den)
            out[name] = num / den if den > 0 else 0.0
        return out

    # ------------------------------------------------------------------ the update
    def __call__(self, batch, micro: int, step: int, skip_streak: int) -> UpdateResult:
        """Update on `batch` (step number `step`, 1-based), `micro` rows per forward."""
        cfg, a, pol, d = self.cfg, self.cfg.algo, self.policy, self.policy.dist
        gen = self.minibatch_generator(step)
        params = pol.parameters()
        stats = UpdateStats()
        w = batch.train_mask  # [B] bool or None: rows with loss weight (the others count in no normalizer)
        for epoch in range(a.ppo_epochs):
            for mb in self.minibatches(len(batch), gen):  # mb: [b] this rank's rows of the minibatch
                on_policy = stats.updates + stats.skipped == 0  # no optimizer step on this batch yet: ratio ≡ 1
                weighted = batch.response_mask[mb] if w is None else batch.response_mask[mb] & w[mb, None]
                mb_tokens = d.sum_metric(float(weighted.sum()))  # global normalizers
                mb_seqs = d.sum_metric(float(len(mb) if w is None else w[mb].sum()))
                if mb_tokens == 0:  # no row of this minibatch has loss weight, on any rank: no update
                    if batch.old_logp is not None:
                        self._own_behaviour(batch, mb, None, 0)
                    continue
                mics = self.micro_batches(batch, mb, micro)
                norms = {"on_policy": on_policy, "global_tokens": mb_tokens, "global_seqs": mb_seqs}
                cos = None  # the diagnostic on updates that can clip (on_policy is the same on every rank)
                if cfg.log.grad_cosine and not on_policy:
                    cos = GradientCosine(params, batch.ref_logp is not None or self.critic.reads_policy_hidden)
                mb_loss = self._accumulate(batch, mics, epoch, stats, norms, self.batch_stats(batch, mics, on_policy),
                                           cos)
                mb_loss = d.sum_metric(mb_loss)  # global: every rank makes the same skip decision
                d.sync_gradients(pol.model)
                cosine = None if cos is None else cos.cosine(d, pol.model)  # before gradient clipping
                del cos
                gn = d.clip_grad_norm(params, cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf"))
                critic_gn = self.critic.finish_minibatch(cfg.optim.grad_clip)
                if not (math.isfinite(mb_loss) and torch.isfinite(gn) and torch.isfinite(critic_gn)):
                    stats.skipped += 1
                    skip_streak += 1
                    self.optimizer.zero_grad(set_to_none=True)
                    self.critic.zero_grad()
                    if skip_streak >= cfg.max_skipped_updates:
                        return UpdateResult({}, skip_streak, halted=True)
                    continue
                skip_streak = 0
                stats.loss += mb_loss
                stats.updates += 1
                stats.off_policy_updates += int(not on_policy)
                stats.grad_norms.append(float(gn))
                if cosine is not None:
                    stats.cosines.append(cosine)
                self.optimizer.step()
                self.scheduler.step()
                self.critic.step()
        metrics = stats.finish(d, cfg.log.length_bins, with_kl=batch.ref_logp is not None,
                               with_mismatch=batch.engine_logp is not None)
        return UpdateResult(metrics, skip_streak)

    def _accumulate(self, batch, mics: list, epoch: int, stats: UpdateStats, norms: dict, batch_stats: dict,
                    cos: GradientCosine | None = None) -> float:
        """Forward + backward of every micro-batch of one minibatch (gradients accumulate); the summed loss
        (NaN when a forward was not finite). `cos`: also accumulate the gradient-cosine diagnostic's gradients."""
        a, pol, d = self.cfg.algo, self.policy, self.policy.dist
        mb_tokens, mb_seqs, on_policy = norms["global_tokens"], norms["global_seqs"], norms["on_policy"]
        self.optimizer.zero_grad(set_to_none=True)
        self.critic.zero_grad()
        mb_loss = 0.0
        for k_mic, mic in enumerate(mics):
            last = k_mic == len(mics) - 1  # FSDP2: reduce once, on the last micro-batch
            model = d.for_training(pol.model)
            if mic is None:  # placeholder: a zero-weighted pass keeps the ranks' collectives matched
                logp, _, _, _ = pol.forward(model, batch, torch.zeros(1, dtype=torch.long), with_entropy=False)
                d.backward(logp.sum() * 0.0, pol.model, sync=last)
                self.critic.own_pass(batch, None, sync=last)
                continue
            rows = mic.to(pol.device)
            logp, ent, r_mask, rlen, *hidden = pol.forward(model, batch, mic, with_entropy=True,
                                                           with_hidden=self.critic.reads_policy_hidden)
            r_mask = self.weighted(batch, mic, r_mask.to(logp.device))  # [b, R']
            if on_policy and batch.old_logp is not None:
                self._own_behaviour(batch, mic, logp, rlen)
            old = logp.detach() if batch.old_logp is None else batch.old_logp[rows, :rlen]  # [b, R']
            if not bool(torch.isfinite(logp[r_mask]).all() & torch.isfinite(old[r_mask]).all()):
                # a numerical fault of the forward pass, not bad input: this optimizer step is skipped
                # (every rank still runs its backward so collectives stay matched)
                d.backward(torch.nan_to_num(logp).sum() * 0.0, pol.model, sync=last)
                self.critic.own_pass(batch, None, sync=last)
                mb_loss = float("nan")
                continue
            if batch.engine_logp is not None and epoch == 0:  # |engine − training-model| log-probs
                stats.add_mismatch((batch.engine_logp[rows, :rlen].to(old.device) - old).abs()[r_mask])
            adv = batch.advantages[rows]  # [b] or [b, R]
            adv = adv[:, :rlen] if adv.dim() == 2 else adv  # token advantages: [b, R']
            loss, loss_stats = self.loss(logp, old, adv, r_mask, global_tokens=mb_tokens,
                                         global_seqs=mb_seqs, batch_stats=batch_stats)
            if cos is not None:  # the same loss unclipped, on the same forward
                unclipped, _ = self.loss(logp, old, adv, r_mask, global_tokens=mb_tokens, global_seqs=mb_seqs,
                                         batch_stats=batch_stats, clip=False)
                cos.add(unclipped, loss)
            kl = None
            if batch.ref_logp is not None:
                kl = kl_penalty(logp, batch.ref_logp[rows, :rlen], kind=a.kl)  # [b, R']
                loss = loss + a.beta * aggregate(kl, r_mask, a.agg, horizon=self.loss.horizon,
                                                 global_tokens=mb_tokens, global_seqs=mb_seqs)
            # the critic: a value head's loss joins this backward (shared trunk); a value model runs its own
            term = self.critic.policy_loss_term(batch, mic, *hidden, r_mask=r_mask, rlen=rlen, **norms)
            d.backward(loss if term is None else loss + term, pol.model, sync=last)
            self.critic.own_pass(batch, mic, sync=last, r_mask=r_mask, rlen=rlen, **norms)
            mb_loss += float(loss.detach())
            stats.add(loss_stats, r_mask, ent, adv, off_policy=not on_policy, kl=kl)
        return mb_loss
