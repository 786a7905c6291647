"""Data-parallel glue: one class per strategy, offering collectives and model/optimizer wrapping
only. No algorithm code lives here (advantage estimators do their cross-rank work through
`all_gather_objects`), and nothing is attached to the model.

`Dist.from_env(strategy)` (or `make_dist(rank, world, strategy, options)`) returns:
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
  accumulation boundary; clipping is DeepSpeed's own on the global norm. deepspeed_zero.py holds the
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

import os
from typing import Callable

import torch

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

    @staticmethod
    def from_env(strategy: str = "auto") -> "Dist":
        """The strategy's class for this process (see `make_dist`), from `dist_strategy` and the
        launcher's env vars; joins (or creates) the process group when WORLD_SIZE > 1."""
        strategy, options = resolve_strategy(strategy)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return make_dist(strategy=strategy, options=options)
        if strategy == "deepspeed":
            from fairalign.train.deepspeed_zero import import_deepspeed

            import_deepspeed()  # fail before the process group exists
        import torch.distributed as td

        if not td.is_initialized():  # launched by `accelerate launch` / torchrun: env:// rendezvous
            if torch.cuda.is_available():  # one GPU per process (NCCL needs it set before its first use)
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
            # CPU tensors (metrics, the model while it lives on CPU) go over gloo, CUDA tensors over NCCL
            td.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
        return make_dist(td.get_rank(), td.get_world_size(), strategy, options)

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
            raise ValueError(f"rollout.prompts_per_step ({len(items)}) must be divisible by the number "
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

    _all_gather_objects = all_gather_objects  # the former private name

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
        """End of the run: wait for every rank, then tear the process group down (a gloo group left
        to interpreter exit sometimes aborts the process, failing a finished run)."""
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


class DDPDist(Dist):
    """`ddp` with several processes: the base class's full replica per rank, gradients summed by
    `sync_gradients`."""

    def __init__(self, rank: int, world: int, options: dict | None = None):
        super().__init__(rank, world, "ddp", options)


class FSDP2Dist(Dist):
    """`fsdp2` with several processes: decoder layers and the root `fully_shard`-ed in place, the
    gradient reduce-scatter a SUM inside backward, full state dicts gathered for checkpoints."""

    def __init__(self, rank: int, world: int, options: dict | None = None):
        super().__init__(rank, world, "fsdp2", options)

    @property
    def all_ranks(self) -> Callable[[bool], bool]:
        return self.all_true  # every forward of a sharded model is a collective

    def prepare_model(self, model):
        """Shard each decoder layer, then the root, in place; the gradient reduction becomes a SUM.
        Call before building the optimizer (its parameters become sharded DTensors)."""
        if hasattr(model, "peft_config"):
            raise ValueError("lora.enabled=true is not supported with FSDP2 (dist_strategy=fsdp2): use DDP "
                             "(dist_strategy=ddp) for LoRA runs")
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = init_device_mesh(next(model.parameters()).device.type, (self.world,))
        reshard = self.options.get("reshard_after_forward", True)
        for layer in reversed(self._layers(model)):  # innermost first, if wrap classes nest
            fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)          # SUM, not FSDP's default mean over ranks
                module.set_force_sum_reduction_for_comms(True)  # a plain SUM collective (gloo has no PREMUL_SUM)
        return model

    def _layers(self, model) -> list:
        """The modules sharded one by one: FSDP_TRANSFORMER_CLS_TO_WRAP, else the model's
        `_no_split_modules` classes, else the blocks of the base model's ModuleList."""
        names = self.options.get("wrap_classes") or list(getattr(model, "_no_split_modules", None) or [])
        layers = [m for m in model.modules() if m is not model and type(m).__name__ in names]
        if layers or self.options.get("wrap_classes"):
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

    def full_model_state(self, model) -> dict:
        """The full state dict ({} off rank 0), without tied aliases (a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # tied weights (lm_head = embeddings) come back as separate copies: keep one name, as HF does
        unique = {n for n, _ in model.named_parameters()}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - unique
        return {k: v for k, v in sd.items() if k not in aliases}

    def full_optimizer_state(self, model, optimizer) -> dict:
        """The full optimizer state on rank 0 in `optimizer.state_dict()`'s own format (state keyed by
        parameter position), so checkpoints do not depend on the strategy ({} elsewhere; a collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(model, optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return {}
        pos = {name: i for i, name in enumerate(_param_names(model, optimizer))}
        return {"state": {pos[k]: v for k, v in sd["state"].items()},
                "param_groups": [{**g, "params": [pos[k] for k in g["params"]]} for g in sd["param_groups"]]}

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _param_names(model, optimizer)
        by_name = {"state": {names[i]: v for i, v in state["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
        for group, saved in zip(optimizer.param_groups, state["param_groups"]):  # hyperparameters verbatim
            group.update({k: v for k, v in saved.items() if k != "params"})      # (DCP turns tuples to lists)

    def backward(self, loss: torch.Tensor, model, sync: bool = True) -> None:
        """`sync=False` (a micro-batch that is not the minibatch's last) keeps the gradients unsharded
        and local; the last one reduce-scatters the accumulated sum."""
        model.set_requires_gradient_sync(sync)
        loss.backward()

    def sync_gradients(self, model) -> None:
        """Nothing to do: backward already reduce-scattered the SUM."""


class DeepSpeedDist(Dist):
    """`deepspeed` with several processes: ZeRO-2 or ZeRO-3 through `deepspeed.initialize`
    (deepspeed_zero.py); the model is handed over in `prepare_optimizer`."""

    def __init__(self, rank: int, world: int, options: dict | None = None):
        super().__init__(rank, world, "deepspeed", options)
        self.zero_stage = int(self.options.get("zero_stage", 2))
        self.zero = None  # the ZeroOptimizer that prepare_optimizer returned

    @property
    def all_ranks(self) -> Callable[[bool], bool]:
        return self.all_true if self.zero_stage == 3 else bool  # ZeRO-3: forwards gather weights (collectives)

    def _engine(self):
        if self.zero is None:
            raise RuntimeError("DeepSpeedDist: call prepare_optimizer before training or saving")
        return self.zero

    def prepare_model(self, model):
        """The model itself (the reference stays a replica; `prepare_optimizer` hands the policy over)."""
        if hasattr(model, "peft_config"):
            raise ValueError("lora.enabled=true is not supported with DeepSpeed (dist_strategy=deepspeed): use DDP "
                             "(dist_strategy=ddp) for LoRA runs")
        return model

    def prepare_optimizer(self, model, optimizer):
        """`deepspeed.initialize` on the model and its AdamW; returns the ZeroOptimizer that the trainer
        then uses as its optimizer (build the LR scheduler on the AdamW first: DeepSpeed keeps its
        param-group dicts)."""
        from fairalign.train.deepspeed_zero import initialize

        self.zero = initialize(model, optimizer, self.zero_stage, self.world)
        return self.zero

    def for_training(self, model):
        return self._engine().engine

    def full_model_state(self, model) -> dict:
        return self._engine().full_model_state(model)

    def full_optimizer_state(self, model, optimizer) -> dict:
        return self._engine().full_optimizer_state()

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        self._engine().load_full_optimizer_state(state)

    @property
    def backward_scale(self) -> int:
        return self.world  # DeepSpeed averages over ranks: the loss is multiplied by the world size

    def backward(self, loss: torch.Tensor, model, sync: bool = True) -> None:
        """Through the engine; `sync` marks the accumulation boundary."""
        self._engine().backward(loss, sync)

    def sync_gradients(self, model) -> None:
        """Nothing to do: DeepSpeed reduced the gradients in backward."""

    def clip_grad_norm(self, params, max_norm: float) -> torch.Tensor:
        """The global norm now; the clipping happens inside the next optimizer step (the same formula)."""
        return self._engine().grad_norm(max_norm)


_CLASSES = {"ddp": DDPDist, "fsdp2": FSDP2Dist, "deepspeed": DeepSpeedDist}


def make_dist(rank: int = 0, world: int = 1, strategy: str = "ddp", options: dict | None = None) -> Dist:
    """The `Dist` for `strategy` (a resolved name: ddp, fsdp2 or deepspeed) with `world` processes:
    the strategy's class, or the plain `Dist` for one process (nothing to shard or partition)."""
    if strategy not in _CLASSES:
        raise ValueError(f"unknown distributed strategy '{strategy}'; allowed: {', '.join(_CLASSES)}")
    if world <= 1:
        return Dist(rank, world, strategy, options)
    return _CLASSES[strategy](rank, world, options)


def _param_names(model, optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the positions of `state_dict()`)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
