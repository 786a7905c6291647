"""Data-parallel glue. `Dist` is the one place the trainer talks to other processes.

One process: every method is the identity. Several processes (started by `accelerate launch`
or torchrun, which export RANK / WORLD_SIZE / MASTER_ADDR; the process group is gloo on CPU and
NCCL on GPU): prompts are sharded so a
prompt's generations stay on one rank, the loss uses global token/sequence counts so each rank's
loss is its share of the full-batch loss, gradients are summed (all-reduce) once per minibatch —
so one optimizer step equals the single-process step on the same global batch — every rank folds
the whole step's rewards into its P-GRPO statistics (identical state on every rank), and metrics
are reduced. Only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch


class Dist:
    def __init__(self, rank: int = 0, world: int = 1):
        self.rank = rank
        self.world = world

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> "Dist":
        for var, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
            if os.environ.get(var, "").lower() in ("1", "true"):
                raise ValueError(f"{what} sharding is not supported by fairalign yet: launch with a DDP config "
                                 f"(configs/accelerate/multi_gpu_ddp.yaml) or torchrun")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Dist()
        import torch.distributed as td

        if not td.is_initialized():  # launched by `accelerate launch` / torchrun: env:// rendezvous
            td.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        return Dist(rank=td.get_rank(), world=td.get_world_size())

    # ------------------------------------------------------------------ data
    def shard(self, items: list) -> list:
        if self.world == 1:
            return items
        if len(items) % self.world:
            raise ValueError(f"rollout.prompts_per_step ({len(items)}) must be divisible by the number "
                             f"of processes ({self.world})")
        k = len(items) // self.world
        return items[self.rank * k:(self.rank + 1) * k]

    # ------------------------------------------------------------------ collectives
    def _all_gather_objects(self, obj) -> list:
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum_metric(self, x: float) -> float:
        if self.world == 1:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t)

    def max_metric(self, x: float) -> float:
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

    def group_means(self, groups: list, rewards: torch.Tensor) -> dict:
        pairs = [(str(g), float(r)) for g, r in zip(groups, rewards.tolist())]
        if self.world > 1:
            pairs = [p for part in self._all_gather_objects(pairs) for p in part]
        sums: dict[str, list[float]] = {}
        for g, r in pairs:
            sums.setdefault(g, []).append(r)
        return {g: sum(v) / len(v) for g, v in sorted(sums.items())}

    def gather_clip_stats(self, lengths, flags, advs):
        if self.world == 1:
            return lengths, flags, advs
        parts = self._all_gather_objects((lengths.tolist(), flags.tolist(), advs.tolist()))
        return (torch.tensor([x for p in parts for x in p[0]]), torch.tensor([x for p in parts for x in p[1]]),
                torch.tensor([x for p in parts for x in p[2]]))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    # ------------------------------------------------------------------ advantages needing the whole batch
    def pgrpo_advantages(self, normalizer, rewards, groups, index):
        """Advantages from the pre-batch statistics (identical on every rank); then every rank
        folds the *whole* global batch (gathered in rank order, i.e. prompt order) into its
        statistics, so all ranks hold the state a single process would hold, bit for bit."""
        if self.world == 1:
            return normalizer(rewards, groups, index)
        adv = normalizer(rewards, groups, index, update=False)
        parts = self._all_gather_objects((rewards.tolist(), list(groups)))
        all_r = torch.tensor([x for p in parts for x in p[0]], dtype=rewards.dtype)
        normalizer.update(all_r, [g for p in parts for g in p[1]])
        return adv

    def reinforce_pp_advantages(self, rewards, index):
        """REINFORCE++ whitens over the whole batch: gather every rank's rewards (prompt ids made
        globally unique), compute on the global batch, keep this rank's rows."""
        from fairalign.algos import compute_advantages

        if self.world == 1:
            return compute_advantages("reinforce_pp_baseline", rewards, index)
        parts = self._all_gather_objects((rewards.tolist(), index.tolist()))
        all_r = torch.tensor([x for p in parts for x in p[0]], dtype=rewards.dtype)
        offset = 1 + max(max(p[1]) for p in parts)
        all_i = torch.tensor([x + k * offset for k, p in enumerate(parts) for x in p[1]], dtype=torch.long)
        adv = compute_advantages("reinforce_pp_baseline", all_r, all_i)
        start = sum(len(p[0]) for p in parts[:self.rank])
        return adv[start:start + rewards.numel()]

    # ------------------------------------------------------------------ gradients
    def backward(self, loss: torch.Tensor, model) -> None:
        loss.backward()

    def sync_gradients(self, model) -> None:
        """Sum gradients over ranks: each rank's loss is already its share of the global loss."""
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

    def unwrap(self, model):
        return model
