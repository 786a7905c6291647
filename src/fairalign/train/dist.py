"""Data-parallel glue. `Dist` is the one place the trainer talks to other processes.

One process: every method is the identity. Several processes (started by `accelerate launch`,
which sets up torch.distributed through accelerate's `PartialState`): prompts are sharded so a
prompt's generations stay on one rank, the loss uses global token/sequence counts so each rank's
loss is its share of the full-batch loss, gradients are summed (all-reduce) once per minibatch —
so one optimizer step equals the single-process step on the same global batch — P-GRPO statistics
are merged exactly every step, and metrics are reduced. Only rank 0 writes files.
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
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Dist()
        from accelerate import PartialState

        state = PartialState()  # initialises the process group from accelerate's launch environment
        return Dist(rank=state.process_index, world=state.num_processes)

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
        """Advantages from the pre-batch statistics (identical on every rank); then the statistics
        of every rank's batch are merged in rank order, so all ranks hold identical state."""
        if self.world == 1:
            return normalizer(rewards, groups, index)
        from fairalign.algos import PreferenceGroupNormalizer

        before = normalizer.state_dict()
        adv = normalizer(rewards, groups, index)
        delta = PreferenceGroupNormalizer(min_count=normalizer.min_count, eps=normalizer.eps)
        delta(rewards, groups, index)
        merged = PreferenceGroupNormalizer(min_count=normalizer.min_count, eps=normalizer.eps)
        merged.load_state_dict(before)
        for sd in self._all_gather_objects(delta.state_dict()):
            other = PreferenceGroupNormalizer(min_count=normalizer.min_count, eps=normalizer.eps)
            other.load_state_dict(sd)
            merged.merge(other)
        normalizer.load_state_dict(merged.state_dict())
        return adv

    def reinforce_pp_advantages(self, rewards, index):
        from fairalign.algos import compute_advantages

        if self.world == 1:
            return compute_advantages("reinforce_pp_baseline", rewards, index)
        centred = compute_advantages("dr_grpo", rewards, index).double()
        t = torch.stack([centred.sum(), (centred ** 2).sum(), torch.tensor(float(centred.numel()))])
        torch.distributed.all_reduce(t)
        n = t[2]
        mean = t[0] / n
        var = (t[1] - n * mean ** 2) / (n - 1).clamp_min(1)
        return ((centred - mean) / (var.clamp_min(0).sqrt() + 1e-8)).float()

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
