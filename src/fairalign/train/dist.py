"""Data-parallel glue. `Dist` is the one place the trainer talks to other processes.

One process: every method is the identity. Several processes (started by `accelerate launch`
or torchrun, which export RANK / WORLD_SIZE / MASTER_ADDR; the process group is gloo, plus NCCL for
CUDA tensors when a GPU is visible): prompts are sharded so a prompt's generations stay on one rank, the loss uses global token/sequence counts so each rank's
loss is its share of the full-batch loss, gradients are summed (all-reduce) once per minibatch —
so one optimizer step equals the single-process step on the same global batch — every rank folds
the whole step's rewards into its P-GRPO statistics (identical state on every rank), and metrics
are reduced. Only rank 0 writes files.

Two strategies (`dist_strategy`, or the launcher: an accelerate FSDP config of version 2 selects
FSDP2): `ddp`, every rank holds a full replica and `sync_gradients` all-reduces; `fsdp2`, each decoder
layer and then the root are `fully_shard`-ed (parameters, gradients and AdamW state split over the
ranks), the gradient reduce-scatter is a SUM (divide factor 1: the losses are already shares of the
global loss) and happens inside backward, on the last micro-batch only. Forward passes are then
collectives: `prepare_model` puts `all_true` on the model so data-dependent forward counts are
agreed across ranks (see rollout/logprobs.py `all_ranks`), and checkpoints gather full state dicts
(the same files as a 1-process run, so any process count can resume them).
`deepspeed` (ZeRO stage 2 or 3, `ACCELERATE_DEEPSPEED_ZERO_STAGE`, default 2; an accelerate DeepSpeed
config selects it): `prepare_optimizer` hands the model and the trainer's AdamW to `deepspeed.initialize`
and returns a facade whose `step` / `zero_grad` go through the engine; training forwards run through the
engine (`for_training`), backward scales each loss by the world size (DeepSpeed averages over ranks;
fairalign's losses are already shares of the global loss, so this makes the reduction a SUM) and marks
the minibatch's last micro-batch as the accumulation boundary; clipping is DeepSpeed's own on the global
norm. deepspeed_zero.py holds the DeepSpeed-specific code.
Not supported, with a one-line error: FSDP1, LoRA with FSDP2 or DeepSpeed, DeepSpeed offload / config files.
"""
from __future__ import annotations

import os

import torch

from fairalign.rollout.logprobs import ALL_RANKS_ATTR

STRATEGIES = ("auto", "ddp", "fsdp2", "deepspeed")


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def resolve_strategy(configured: str = "auto", env=None) -> tuple[str, dict]:
    """The strategy to use and its options (FSDP2's, or DeepSpeed's `zero_stage`), from `dist_strategy`
    and the launcher's env vars (`accelerate launch` exports ACCELERATE_USE_FSDP, FSDP_VERSION and FSDP_*,
    or ACCELERATE_USE_DEEPSPEED and ACCELERATE_DEEPSPEED_*, from its config)."""
    env = os.environ if env is None else env
    if configured not in STRATEGIES:
        raise ValueError(f"config key 'dist_strategy' has unknown value '{configured}'; allowed: "
                         f"{', '.join(STRATEGIES)}")
    options: dict = {}
    launcher = None
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")) and _true(env.get("ACCELERATE_USE_FSDP")):
        raise ValueError("ACCELERATE_USE_DEEPSPEED and ACCELERATE_USE_FSDP are both set: pick one accelerate config")
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")) or configured == "deepspeed":
        from fairalign.train.deepspeed_zero import deepspeed_options

        options = deepspeed_options(env)
        launcher = "deepspeed" if _true(env.get("ACCELERATE_USE_DEEPSPEED")) else None
    if _true(env.get("ACCELERATE_USE_FSDP")):
        version = env.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise ValueError(f"FSDP version {version} (FSDP_VERSION) is not supported by fairalign: use FSDP2 "
                             f"(fsdp_version: 2, configs/accelerate/fsdp2.yaml) or DDP")
        for var in ("FSDP_OFFLOAD_PARAMS", "FSDP_ACTIVATION_CHECKPOINTING"):
            if _true(env.get(var)):
                raise ValueError(f"{var}=true is not supported by fairalign's FSDP2 mode: set it to false "
                                 f"in the accelerate config")
        policy = env.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
        if policy != "TRANSFORMER_BASED_WRAP":
            raise ValueError(f"FSDP_AUTO_WRAP_POLICY={policy} is not supported by fairalign: use "
                             f"TRANSFORMER_BASED_WRAP (each decoder layer is sharded)")
        reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
        if reshard not in ("true", "false"):
            raise ValueError(f"FSDP_RESHARD_AFTER_FORWARD={reshard} must be true or false with FSDP2")
        options["reshard_after_forward"] = reshard == "true"
        classes = [c.strip() for c in env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "").split(",") if c.strip()]
        if classes:
            options["wrap_classes"] = classes
        launcher = "fsdp2"
    if configured == "auto":
        return launcher or "ddp", options
    if launcher is not None and configured != launcher:
        flag = "DeepSpeed (ACCELERATE_USE_DEEPSPEED)" if launcher == "deepspeed" else "FSDP2 (ACCELERATE_USE_FSDP)"
        raise ValueError(f"config key 'dist_strategy' is '{configured}' but the launcher's accelerate config "
                         f"selects {flag}: set dist_strategy={launcher} or auto")
    return configured, options


class Dist:
    def __init__(self, rank: int = 0, world: int = 1, strategy: str = "ddp", fsdp_options: dict | None = None):
        self.rank = rank
        self.world = world
        self.strategy = strategy
        self.fsdp = strategy == "fsdp2" and world > 1  # one process: nothing to shard
        self.deepspeed = strategy == "deepspeed" and world > 1
        self.fsdp_options = dict(fsdp_options or {})  # resolve_strategy's options (DeepSpeed: zero_stage)
        self.zero = None  # DeepSpeed: the ZeroOptimizer that prepare_optimizer returned

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(strategy: str = "auto") -> "Dist":
        strategy, options = resolve_strategy(strategy)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Dist(strategy=strategy)
        if strategy == "deepspeed":
            from fairalign.train.deepspeed_zero import import_deepspeed

            import_deepspeed()  # fail before the process group exists
        import torch.distributed as td

        if not td.is_initialized():  # launched by `accelerate launch` / torchrun: env:// rendezvous
            if torch.cuda.is_available():  # one GPU per process (NCCL needs it set before its first use)
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            # CPU tensors (metrics, the model while it lives on CPU) go over gloo, CUDA tensors over NCCL
            td.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        return Dist(rank=td.get_rank(), world=td.get_world_size(), strategy=strategy, fsdp_options=options)

    # ------------------------------------------------------------------ model
    def prepare_model(self, model):
        """DDP: the model itself. FSDP2: shard each decoder layer, then the root, in place; the
        gradient reduction becomes a SUM; the model gets the `all_true` hook. Call before building
        the optimizer (its parameters become sharded DTensors)."""
        if self.deepspeed and hasattr(model, "peft_config"):
            raise ValueError("lora.enabled=true is not supported with DeepSpeed (dist_strategy=deepspeed): use DDP "
                             "(dist_strategy=ddp) for LoRA runs")
        if not self.fsdp:
            return model  # DeepSpeed: prepare_optimizer hands the model over (the reference stays a replica)
        if hasattr(model, "peft_config"):
            raise ValueError("lora.enabled=true is not supported with FSDP2 (dist_strategy=fsdp2): use DDP "
                             "(dist_strategy=ddp) for LoRA runs")
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = init_device_mesh(next(model.parameters()).device.type, (self.world,))
        reshard = self.fsdp_options.get("reshard_after_forward", True)
        for layer in reversed(self._layers(model)):  # innermost first, if wrap classes nest
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)          # SUM, not FSDP's default mean over ranks
                module.set_force_sum_reduction_for_comms(True)  # a plain SUM collective (gloo has no PREMUL_SUM)
        setattr(model, ALL_RANKS_ATTR, self.all_true)
        return model

    def prepare_optimizer(self, model, optimizer):
        """DeepSpeed: `deepspeed.initialize` on the model and its AdamW; returns the ZeroOptimizer that
        the trainer then uses as its optimizer (build the LR scheduler on the AdamW first: DeepSpeed
        keeps its param-group dicts). ZeRO-3 gives the model the `all_true` hook. Otherwise: `optimizer`."""
        if not self.deepspeed:
            return optimizer
        from fairalign.train.deepspeed_zero import initialize

        stage = int(self.fsdp_options.get("zero_stage", 2))
        self.zero = initialize(model, optimizer, stage, self.world)
        if stage == 3:
            setattr(model, ALL_RANKS_ATTR, self.all_true)
        return self.zero

    def for_training(self, model):
        """What the training forward (the one followed by `backward`) calls: DeepSpeed's engine, else
        the model."""
        return self.zero.engine if self.zero is not None else model

    def _layers(self, model) -> list:
        """The modules sharded one by one: FSDP_TRANSFORMER_CLS_TO_WRAP, else the model's
        `_no_split_modules` classes, else the blocks of the base model's ModuleList."""
        names = self.fsdp_options.get("wrap_classes") or list(getattr(model, "_no_split_modules", None) or [])
        layers = [m for m in model.modules() if m is not model and type(m).__name__ in names]
        if layers or self.fsdp_options.get("wrap_classes"):
            if not layers:
                raise ValueError(f"FSDP_TRANSFORMER_CLS_TO_WRAP={','.join(names)}: no such module in "
                                 f"{type(model).__name__}")
            return layers
        base = getattr(model, "base_model", model)
        layers = [m for child in base.children() if isinstance(child, torch.nn.ModuleList) for m in child]
        if not layers:
            raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard with FSDP2: "
                             f"set fsdp_transformer_layer_cls_to_wrap in the accelerate config")
        return layers

    def all_true(self, flag: bool) -> bool:
        """True iff `flag` is true on every rank (a collective)."""
        if self.world == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item())

    def full_model_state(self, model) -> dict | None:
        """FSDP2: the full state dict on rank 0 ({} elsewhere; a collective, call on every rank).
        DDP: None (the model's own state dict is already full)."""
        if self.zero is not None:
            return self.zero.full_model_state(model)
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # tied weights (lm_head = embeddings) come back as separate copies: keep one name, as HF does
        unique = {n for n, _ in model.named_parameters()}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - unique
        return {k: v for k, v in sd.items() if k not in aliases}

    def full_optimizer_state(self, model, optimizer) -> dict | None:
        """FSDP2: the full optimizer state on rank 0 in `optimizer.state_dict()`'s own format (state
        keyed by parameter position), so checkpoints do not depend on the strategy ({} elsewhere; a
        collective). DDP: None."""
        if self.zero is not None:
            return self.zero.full_optimizer_state()
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(model, optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return {}
        pos = {name: i for i, name in enumerate(_param_names(model, optimizer))}
        return {"state": {pos[k]: v for k, v in sd["state"].items()},
                "param_groups": [{**g, "params": [pos[k] for k in g["params"]]} for g in sd["param_groups"]]}

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        """Load a full `optimizer.state_dict()`-format state (every rank passes the same one)."""
        if self.zero is not None:
            self.zero.load_full_optimizer_state(state)
            return
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _param_names(model, optimizer)
        by_name = {"state": {names[i]: v for i, v in state["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
        for group, saved in zip(optimizer.param_groups, state["param_groups"]):  # hyperparameters verbatim
            group.update({k: v for k, v in saved.items() if k != "params"})      # (DCP turns tuples to lists)

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

    def close(self) -> None:
        """End of the run: wait for every rank, then tear the process group down (a gloo group left
        to interpreter exit sometimes aborts the process, failing a finished run)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

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
    def backward(self, loss: torch.Tensor, model, sync: bool = True) -> None:
        """FSDP2: `sync=False` (a micro-batch that is not the minibatch's last) keeps the gradients
        unsharded and local; the last one reduce-scatters the accumulated sum. DeepSpeed: through the
        engine, `sync` marks the accumulation boundary."""
        if self.zero is not None:
            self.zero.backward(loss, sync)
            return
        if self.fsdp:
            model.set_requires_gradient_sync(sync)
        loss.backward()

    def sync_gradients(self, model) -> None:
        """Sum gradients over ranks: each rank's loss is already its share of the global loss.
        (FSDP2 and DeepSpeed already summed them in backward.)"""
        if self.world == 1 or self.fsdp or self.zero is not None:
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
        """The global gradient norm, clipping to `max_norm` (inf: no clipping). DeepSpeed: the norm
        now, the clipping inside the next optimizer step (the same formula)."""
        if self.zero is not None:
            return self.zero.grad_norm(max_norm)
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def unwrap(self, model):
        return model


def _param_names(model, optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the positions of `state_dict()`)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
