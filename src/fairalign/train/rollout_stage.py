"""Stage 1 of a training step: the task's rollout, with DAPO's reward shaping and dynamic sampling as
options that work for every task (the task's own `rollout` is called unchanged, once per round).

    stage = RolloutStage(cfg, task, examples, engine, sampler, dist, estimator)   # examples: the training prompts
    pool = stage.sample(step)              # every prompt group sampled this step, rewards filled
    pool.advantages = estimator(pool.rewards, pool.index, pool.groups, dist)  # stage 2 (the trainer)
    batch = stage.training_batch(pool)     # the groups this rank trains on, train_mask set
    stage.metrics                          # reward/frac_zero_std, dynamic/*, loss/masked_frac

Options (rollout.* keys; formulas in docs/algorithms.md, "DAPO's dynamic sampling and overlong shaping"):
- overlong_buffer_frac, overlong_penalty: DAPO's soft overlong penalty on the response length in tokens,
  added to each sample's reward and logged as the reward part `overlong`;
- mask_truncated: completions that hit max_new_tokens without EOS get zero loss weight (their
  rewards still count in their group's advantages);
- dynamic_sampling = advantage | reward: a prompt group is *informative* when one of the rows it
  trains on has a non-zero advantage (advantage; under mask_truncated a truncated row does not
  count) or when its rewards do not all tie (reward, DAPO's literal rule). Rounds of prompts_per_step new
  prompts are sampled until the step has `target` informative groups or dynamic_max_extra_rounds
  extra rounds are spent; `target` = the number of groups the first round gave (prompts_per_step for
  a single-turn task, prompts_per_step x turns for RLPA).

Simplifications (fairalign's choices):
- The estimator is called once, on every group sampled in the step (trained on or not), so P-GRPO's
  history holds every reward the policy produced; a batch-scoped estimator whitens over all of them.
  The `advantage` criterion asks the estimator round by round, on that round's groups, with its
  pre-step state, and restores that state (a `state_dict` round trip) — for prompt-group and
  preference-history estimators these are exactly the advantages the step then uses.
- The first `target` informative groups in the step's global order (round, then rank, then the
  task's batch order) are trained on; informative groups beyond it are dropped (their prompts are
  used up, as in DAPO). If the cap is hit with fewer, the earliest uninformative groups fill the
  batch up to `target` with zero loss weight, so every rank keeps an equal share and the update is
  the one on the informative groups alone (the loss normalizers count only weighted rows).
- The training groups are split over the ranks in contiguous shares of that global order. The
  batch, and so the step, is the same for any process count when the task's batch lists its groups
  prompt by prompt (the single-turn default); RLPA lists them turn by turn (and seeds its dialogues
  per rank), so there the order, not the mechanism, depends on the process count.
- The penalty is added after the task's rollout: it changes the training reward, not which RLPA
  candidate continues a dialogue.
"""
from __future__ import annotations

import copy

import torch

from fairalign.algos import (
    group_order,
    overlong_penalty,
    select_groups,
    tied_groups,
    zero_groups,
)
from fairalign.errors import ConfigError
from fairalign.rollout import RolloutBatch, concat_batches

OVERLONG_PART = "overlong"


def preview_advantages(estimator, rewards, index, groups, collectives) -> torch.Tensor:
    """The estimator's advantages for these rows, leaving its state as it was (a collective when
    the estimator's own call is)."""
    state = copy.deepcopy(estimator.state_dict())
    adv = estimator(rewards, index, groups, collectives)
    estimator.load_state_dict(state)
    return adv


def split_contiguous(items: list, parts: int) -> list[list]:
    """`items` in `parts` contiguous shares whose sizes differ by at most one (larger shares first)."""
    q, rem = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        n = q + (1 if k < rem else 0)
        out.append(items[start:start + n])
        start += n
    return out


class RolloutStage:
    def __init__(self, cfg, task, examples: list[dict], engine, sampler, dist, estimator):
        self.cfg, self.task, self.examples, self.engine, self.sampler = cfg, task, examples, engine, sampler
        self.dist, self.estimator = dist, estimator
        if cfg.rollout.dynamic_sampling == "advantage" and estimator.requires:
            raise ConfigError(f"config key 'rollout.dynamic_sampling=advantage' needs advantages before the "
                              f"update, but algo.advantage={estimator.name} needs the critic's values of the "
                              f"rows trained on; use rollout.dynamic_sampling=reward")
        self.metrics: dict[str, float] = {}
        self._plan: dict = {}

    @property
    def dynamic(self) -> bool:
        return self.cfg.rollout.dynamic_sampling != "none"

    def _seed(self, step: int, round_k: int) -> int:
        # round 0 keeps the seed a step had before dynamic sampling existed
        return self.cfg.seed * 1_000_003 + step * 101 + self.dist.rank + round_k * 7_919_017

    def _rollout(self, step: int, round_k: int) -> RolloutBatch:
        r = self.cfg.rollout
        ex_idx = self.dist.shard(self.sampler.take(r.prompts_per_step))
        examples = [self.examples[i] for i in ex_idx]
        batch = self.task.rollout(self.engine, examples, r.generations, self._seed(step, round_k),
                                  on_reward_error=self.cfg.on_reward_error)
        if r.overlong_buffer_frac > 0:
            if OVERLONG_PART in batch.reward_parts:
                raise ConfigError(f"task {self.task.name!r} has a reward named {OVERLONG_PART!r}, the name of "
                                  f"rollout.overlong_buffer_frac's penalty; rename the reward function")
            pen = overlong_penalty(batch.lengths, r.max_new_tokens, r.overlong_buffer_frac * r.max_new_tokens,
                                   r.overlong_penalty)
            pen = pen.to(batch.rewards.device)  # [B]
            batch.rewards = batch.rewards + pen
            batch.reward_parts[OVERLONG_PART] = pen
        return batch

    def _informative(self, batch: RolloutBatch, tied: torch.Tensor) -> torch.Tensor:
        """[K] bool per group of the round (first-seen order)."""
        r = self.cfg.rollout
        if r.dynamic_sampling == "advantage":
            adv = preview_advantages(self.estimator, batch.rewards.float(), batch.index, batch.groups, self.dist)
            if r.mask_truncated:  # a row without loss weight gives no gradient whatever its advantage
                adv = adv.masked_fill(batch.truncated.bool().to(adv.device), 0.0)
            return ~zero_groups(adv, batch.index)
        return ~tied

    def sample(self, step: int) -> RolloutBatch:
        """Every group sampled in step `step` (one round, or more under dynamic sampling), rewards and
        reward parts filled, on this rank; the plan for `training_batch` is kept."""
        r = self.cfg.rollout
        rounds, local_rows, offset = [], [], 0
        entries, informative, tied_all, sizes = [], [], [], []  # per group of the step, global order
        target = n_inf = 0
        max_rounds = 1 + (r.dynamic_max_extra_rounds if self.dynamic else 0)
        for k in range(max_rounds):
            b = self._rollout(step, k)
            _, pos = group_order(b.index)  # [B] each row's group (first-seen order)
            pos = pos.cpu()
            tied = tied_groups(b.rewards, b.index)  # [K]
            inf = self._informative(b, tied) if self.dynamic else ~tied
            K = tied.numel()
            local_rows.append([torch.nonzero(pos == j).flatten() + offset for j in range(K)])
            counts = torch.bincount(pos, minlength=K).tolist()
            offset += len(b)
            rounds.append(b)
            for rank, (t, i, n) in enumerate(self.dist.all_gather_objects((tied.tolist(), inf.tolist(), counts))):
                entries += [(k, rank, j) for j in range(len(t))]
                tied_all += t
                informative += i
                sizes += n
            if k == 0:
                target = len(entries)
            n_inf = sum(informative)
            if n_inf >= target:
                break
        pool = rounds[0] if len(rounds) == 1 else concat_batches(rounds, self.engine.pad_token_id)
        self._plan = {"entries": entries, "informative": informative, "sizes": sizes, "target": target,
                      "local_rows": local_rows}
        m = {"reward/frac_zero_std": sum(tied_all) / len(tied_all)}
        if self.dynamic:
            total = self.dist.sum_metric(float(pool.rewards.double().sum()))
            m.update({"dynamic/rounds": float(len(rounds)), "dynamic/sampled_groups": float(len(entries)),
                      "dynamic/informative_groups": float(n_inf),
                      "dynamic/sampled_reward_mean": total / sum(sizes)})
        self.metrics = m
        return pool

    def training_batch(self, pool: RolloutBatch) -> RolloutBatch:
        """This rank's share of the groups the step trains on, advantages carried; `train_mask` is set
        under mask_truncated or dynamic sampling (None otherwise: every row is trained on)."""
        r, dist = self.cfg.rollout, self.dist
        weight = None if not r.mask_truncated else ~pool.truncated.bool()  # [B_pool]
        if not self.dynamic:
            pool.train_mask = weight
            return self._count_masked(pool)
        p = self._plan
        chosen, fillers = select_groups(p["informative"], p["target"])
        weight = torch.ones(len(pool), dtype=torch.bool, device=pool.lengths.device) if weight is None else weight
        for pos in fillers:
            k, rank, j = p["entries"][pos]
            if rank == dist.rank:
                weight[p["local_rows"][k][j].to(weight.device)] = False
        pool.train_mask = weight
        mine = [pos for pos in chosen if p["entries"][pos][1] == dist.rank]  # in global order
        rows = [p["local_rows"][p["entries"][pos][0]][p["entries"][pos][2]] for pos in mine]
        piece = pool.select(torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long))
        share = split_contiguous(chosen, dist.world)[dist.rank]
        if dist.world == 1:
            batch = piece
        else:  # every rank's chosen rows to every rank, then each keeps its contiguous share
            device = pool.response_ids.device
            pieces = [x for x in dist.all_gather_objects(piece.to("cpu")) if len(x)]
            full = concat_batches(pieces, self.engine.pad_token_id)
            start, where = 0, {}
            for rank in range(dist.world):  # rows of each chosen group inside `full`
                for pos in chosen:
                    if p["entries"][pos][1] == rank:
                        where[pos] = torch.arange(start, start + p["sizes"][pos])
                        start += p["sizes"][pos]
            batch = full.select(torch.cat([where[pos] for pos in share])).to(device)
        batch.generate_s, batch.reward_errors = pool.generate_s, pool.reward_errors
        kept = len(chosen) - len(fillers)
        self.metrics.update({"dynamic/kept_groups": float(kept), "dynamic/filler_groups": float(len(fillers)),
                             "dynamic/dropped_groups": float(len(p["entries"]) - kept)})
        return self._count_masked(batch)

    def _count_masked(self, batch: RolloutBatch) -> RolloutBatch:
        if batch.train_mask is not None:
            masked = self.dist.sum_metric(float((~batch.train_mask).sum()))
            self.metrics["loss/masked_frac"] = masked / self.dist.sum_metric(float(len(batch)))
        return batch
