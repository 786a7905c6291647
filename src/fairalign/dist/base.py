"""Data-parallel glue: one class per strategy, offering collectives and model/optimizer wrapping
only. No algorithm code lives here (advantage estimators do their cross-rank work through
`all_gather_objects`), and nothing is attached to the model.

`fairalign.dist.from_env(strategy)` (or `make_dist(rank, world, strategy, options)`) returns:
- `Dist` for one process (any strategy: nothing to shard): every collective is the identity and the
  model, optimizer and checkpoints are used as they are. The base class also holds what every
  strategy shares: `rank`, `world`, `is_main`, `shard`, the collectives (`all_gather_objects`,
  `sum_metric`, `max_metric`, `mean_metrics`, `group_means`, `all_true`, `barrier`, `close`) and the
  default wrapping, a full replica per rank whose gradients `sync_gradients` all-reduces (DDP).
  `rank`, `world`, `all_gather_objects` and `sum_metric` are the collectives object that advantage
  estimators receive.
- `DDPDist` (`ddp`, several processes): that default: every rank a full replica, one gradient
  all-reduce (SUM) per minibatch.
- `FSDP2Dist` (`fsdp2`; an accelerate FSDP config of version 2 selects it): each decoder layer and
  then the root are `fully_shard`-ed (parameters, gradients and AdamW state split over the ranks); the
  gradient reduce-scatter is a SUM (divide factor 1) and happens inside backward, on the minibatch's
  last micro-batch only; checkpoints gather full state dicts.
- `DeepSpeedDist` (`deepspeed`, ZeRO stage 2 or 3 from `ACCELERATE_DEEPSPEED_ZERO_STAGE`, default 2;
  an accelerate DeepSpeed config selects it): `prepare_optimizer` hands the model and the trainer's
  AdamW to `deepspeed.initialize` and returns a facade whose `step` / `zero_grad` go through the
  engine; training forwards run through the engine (`for_training`); backward scales each loss by the
  world size (DeepSpeed averages over ranks) and marks the minibatch's last micro-batch as the
  accumulation boundary; clipping is DeepSpeed's own on the global norm. deepspeed.py holds the
  DeepSpeed-specific code.
Several processes are started by `accelerate launch` or torchrun (RANK / WORLD_SIZE / MASTER_ADDR); the
process group is gloo, plus NCCL for CUDA tensors when a GPU is visible. Prompts are sharded so a
prompt's generations stay on one rank; each rank's loss is its share of the global loss, so every
strategy's gradient reduction is a SUM and one optimizer step equals the single-process step on the
same global batch. Checkpoints are in the 1-process format whatever the strategy. Only rank 0 writes.
Forward counts: where a forward pass is a collective (FSDP2, ZeRO-3) every rank must make the same
forward calls, so code whose number of forwards depends on its own data (the decode loop's stop, the
log-prob pass's prompt-sharing path) asks `dist.all_ranks(flag)` (passed as the `all_ranks=` keyword of
`HFGenerationEngine` and `sequence_logprobs`); elsewhere `all_ranks` is `bool`, the local flag.
Simplifications: `sync_gradients` all-reduces one flat copy of the gradients (no bucketing, no overlap
with backward); FSDP2 and DeepSpeed gather full state dicts for every checkpoint.
Not supported, with a one-line error: FSDP1, LoRA with FSDP2 or DeepSpeed, DeepSpeed offload / config files.
"""
from __future__ import annotations

from typing import Callable

import torch

from fairalign.errors import ConfigError


class Dist:
    """One process, and what every strategy shares: the collectives (the identity when `world` is 1)
    and the default wrapping, a full replica per rank (DDP)."""

    def __init__(self, rank: int = 0, world: int = 1, strategy: str = "ddp", options: dict | None = None):
        self.rank = rank
        self.world = world
        self.strategy = strategy            # the resolved `dist_strategy` (kept with one process too)
        self.options = dict(options or {})  # resolve_strategy's options (FSDP2's, DeepSpeed's zero_stage)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def all_ranks(self) -> Callable[[bool], bool]:
        """The `all_ranks=` argument of `HFGenerationEngine` and `sequence_logprobs`: flag -> whether it
        holds on every rank, for code whose number of forward calls depends on its data. Forwards are
        local here, so it is the local flag (`bool`); strategies whose forwards are collectives return
        `all_true`."""
        return bool

    # ------------------------------------------------------------------ model (default: a full replica)
    def prepare_model(self, model):
        """The model to train (or the KL reference), ready before the optimizer is built: here itself."""
        return model

    def prepare_optimizer(self, model, optimizer):
        """The optimizer the trainer steps: here `optimizer` itself."""
        return optimizer

    def for_training(self, model):
        """What the training forward (the one followed by `backward`) calls: here the model."""
        return model

    def unwrap(self, model):
        return model

    def full_model_state(self, model) -> dict | None:
        """The full state dict on rank 0 ({} elsewhere; a collective, call on every rank), or None when
        the model's own state dict is already full (here)."""
        return None

    def full_optimizer_state(self, model, optimizer) -> dict | None:
        """The full optimizer state on rank 0 in `optimizer.state_dict()`'s format, keyed by parameter
        position ({} elsewhere; a collective), or None when `optimizer.state_dict()` is full (here)."""
        return None

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a full `optimizer.state_dict()`-format state (every rank passes the same one)."""
        optimizer.load_state_dict(state)

    # ------------------------------------------------------------------ gradients
    backward_scale = 1  # what `backward` multiplies the loss by (so a module outside the strategy can undo it)

    def backward(self, loss: torch.Tensor, model, sync: bool = True) -> None:
        """`sync`: whether this is the minibatch's last micro-batch (the strategies that reduce inside
        backward reduce then); here a plain backward."""
        loss.backward()

    def sync_gradients(self, model) -> None:
        """Sum gradients over ranks (each rank's loss is already its share of the global loss): one
        all-reduce of the flattened gradients."""
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def clip_grad_norm(self, params, max_norm: float) -> torch.Tensor:
        """The global gradient norm, clipping to `max_norm` (inf: no clipping)."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    # ------------------------------------------------------------------ data
    def shard(self, items: list) -> list:
        """This rank's contiguous share of `items` (all ranks pass the same list)."""
        if self.world == 1:
            return items
        if len(items) % self.world:
            raise ConfigError(f"rollout.prompts_per_step ({len(items)}) must be divisible by the number "
                             f"of processes ({self.world})")
        k = len(items) // self.world
        return items[self.rank * k:(self.rank + 1) * k]

    # ------------------------------------------------------------------ collectives
    def all_gather_objects(self, obj) -> list:
        """Every rank's `obj` (any picklable value), in rank order; `[obj]` with one process. A collective."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def all_true(self, flag: bool) -> bool:
        """True iff `flag` is true on every rank (a collective)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item())

    def sum_metric(self, x: float) -> float:
        """`x` summed over ranks (a collective)."""
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t)

    def max_metric(self, x: float) -> float:
        """The largest `x` over ranks (a collective)."""
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t)

    def mean_metrics(self, metrics: dict) -> dict:
        """Mean over ranks (every rank holds the same number of samples)."""
        if self.world == 1:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def std_metrics(self, values: dict) -> dict:
        """{name: the sample std (n - 1) of the 1-D tensor over every rank's values} (a collective;
        0.0 with fewer than 2 values in all). Not a mean of per-rank stds."""
        keys = sorted(values)
        rows = []
        for k in keys:
            x = values[k].detach().double().reshape(-1).cpu()
            rows.append([float(x.numel()), float(x.sum()), float((x * x).sum())])
        t = torch.tensor(rows, dtype=torch.float64).reshape(len(keys), 3)
        if self.world > 1:
            torch.distributed.all_reduce(t)
        out = {}
        for k, (n, s1, s2) in zip(keys, t.tolist()):
            var = (s2 - s1 * s1 / n) / (n - 1) if n > 1 else 0.0
            out[k] = max(var, 0.0) ** 0.5
        return out

    def group_means(self, groups: list, rewards: torch.Tensor) -> dict:
        """Mean reward per preference group over every rank's samples."""
        pairs = [(str(g), float(r)) for g, r in zip(groups, rewards.tolist())]
        pairs = [p for part in self.all_gather_objects(pairs) for p in part]
        sums: dict[str, list[float]] = {}
        for g, r in pairs:
            sums.setdefault(g, []).append(r)
        return {g: sum(v) / len(v) for g, v in sorted(sums.items())}

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """End of the run (finished, or stopped by a signal at the step every rank agreed on): wait for
        every rank, then tear the process group down (a gloo group left to interpreter exit sometimes
        aborts the process, failing a finished run). `python -m fairalign` then ends the rank without
        interpreter teardown (`process_group_closed`)."""
        global _closed_here
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
            _closed_here = True


_closed_here = False  # set by Dist.close() once this process's process group is torn down


def process_group_closed() -> bool:
    """Whether `Dist.close()` tore this process's process group down (a rank of a launched run whose
    run ended and saved everything)."""
    return _closed_here


class DDPDist(Dist):
    """`ddp` with several processes: the base class's full replica per rank, gradients summed by
    `sync_gradients`."""

    def __init__(self, rank: int, world: int, options: dict | None = None):
        super().__init__(rank, world, "ddp", options)


def _param_names(model, optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the positions of `state_dict()`)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
