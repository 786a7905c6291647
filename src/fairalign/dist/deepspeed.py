"""DeepSpeed ZeRO-2 / ZeRO-3 for `dist_strategy=deepspeed`: what `DeepSpeedDist` calls (the contract
is in base.py's docstring).

fairalign keeps its own training loop. The trainer's torch AdamW is handed to `deepspeed.initialize`
(`zero_allow_untested_optimizer`); DeepSpeed then owns the fp32 master weights, the gradient partitions
and the AdamW moment partitions, and `ZeroOptimizer` is what the trainer calls its optimizer.
- Forward: the training forward runs through the engine (DeepSpeed's backward bookkeeping starts in
  `engine.forward`); rollout, old and reference log-prob passes call the module (no backward). Under
  ZeRO-3 a forward is a collective (DeepSpeed's module hooks gather each layer's weights), so
  `DeepSpeedDist.all_ranks` is `all_true` and every rank makes the same forward calls.
- Backward: `loss * world`. DeepSpeed averages gradients over ranks; fairalign's per-rank loss is
  already its share of the global loss, so the product turns the average into the SUM. The config has
  gradient_accumulation_steps=1 (no 1/gas scaling); the minibatch's last micro-batch is marked as the
  accumulation boundary, and its backward completes the gradient partitions.
- Clipping: the global L2 norm is taken before the step with the functions DeepSpeed's own step uses;
  the step clips with `clip_grad` = optim.grad_clip (torch's clip_grad_norm_ formula) and skips the
  update by itself when the norm is not finite.
- State: AdamW's state is created up front (zeros, step 0: what AdamW's first step would create), so
  the full moments can be gathered (`safe_get_full_optimizer_state`) and set
  (`safe_set_full_optimizer_state`) at any time; checkpoints use the 1-process format.
- First use on a CPU: DeepSpeed compiles a small C++ op with torch's extension builder, which waits,
  silently and forever, while a `lock` file left by a build that was killed exists. `import_deepspeed`
  warns (one line each) about such locks older than STALE_LOCK_S; it deletes nothing, since a lock that
  old could still belong to a slow build in another process.
Written and tested against deepspeed==0.19.8 (constraints.txt). Lines marked "internal" use
DeepSpeed attributes that are not public API.
"""
from __future__ import annotations

import glob
import os
import sys
import time
from typing import Callable

import torch

from fairalign.dist.base import Dist
from fairalign.errors import ConfigError


STALE_LOCK_S = 600  # a CPU build of DeepSpeed's op takes about a minute


def stale_build_locks(now: float | None = None) -> list[tuple[str, float]]:
    """(path, age in s) of torch extension build locks older than STALE_LOCK_S. The build folder is
    $TORCH_EXTENSIONS_DIR/NAME, or the default root's ACCELERATOR/NAME (e.g. py311_cpu/deepspeed_shm_comm)."""
    from torch.utils.cpp_extension import get_default_build_root

    now = time.time() if now is None else now
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    found = []
    locks = glob.glob(os.path.join(root, "*", "lock")) + glob.glob(os.path.join(root, "*", "*", "lock"))
    for path in sorted(set(locks)):
        try:
            age = now - os.path.getmtime(path)
        except OSError:  # released meanwhile
            continue
        if age > STALE_LOCK_S:
            found.append((path, age))
    return found


def import_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise ConfigError("dist_strategy=deepspeed needs the deepspeed package: pip install "
                         "'fairalign[deepspeed]'") from None
    for path, age in stale_build_locks():
        print(f"fairalign: warning: {path} is {age / 60:.0f} min old; a torch extension build that was killed "
              f"leaves it, and DeepSpeed's next build of that op waits for it forever: delete it unless another "
              f"process is compiling", file=sys.stderr, flush=True)
    return deepspeed


class ZeroOptimizer:
    """The trainer's optimizer under DeepSpeed. `step` and `zero_grad` go through the engine; the
    hyperparameters (`param_groups`, which the LR scheduler writes) are the client AdamW's own dicts."""

    def __init__(self, engine, client, groups: list[list], world: int):
        self.engine = engine            # deepspeed.DeepSpeedEngine
        self.zero = engine.optimizer    # DeepSpeed's ZeRO optimizer (owns the partitions)
        self.client = client            # the trainer's torch AdamW, now stepping the fp32 partitions
        self.params = [p for g in groups for p in g]  # the parameters in AdamW's original order
        self._group_sizes = [len(g) for g in groups]
        self.world = world
        self.pending = False            # gradients accumulated since the last step
        self._create_state()

    @property
    def param_groups(self) -> list:
        return self.client.param_groups

    def _flat_partitions(self) -> list:
        """This rank's fp32 master partitions, the tensors AdamW's state is keyed by (internal)."""
        flat = getattr(self.zero, "fp32_partitioned_groups_flat", None)  # ZeRO-3
        return list(flat if flat is not None else self.zero.single_partition_of_fp32_groups)  # ZeRO-1/2

    def _create_state(self) -> None:
        """AdamW's state as its first step would create it (step 0, zero moments), linked to
        DeepSpeed's per-parameter views, so full moments can be read or written before any step."""
        for flat in self._flat_partitions():
            if not self.client.state.get(flat):
                self.client.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                           "exp_avg_sq": torch.zeros_like(flat)}
                if self.client.param_groups[0].get("amsgrad"):
                    self.client.state[flat]["max_exp_avg_sq"] = torch.zeros_like(flat)
        if hasattr(self.zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2 (internal)
            self.zero._hp_optimizer_states_linked = False
            self.zero._lazy_init_hp_params_optimizer_state()

    def step_count(self) -> float:
        return float(self.client.state[self._flat_partitions()[0]]["step"])

    # ------------------------------------------------------------------ the trainer's calls
    def backward(self, loss: torch.Tensor, sync: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(sync)
        self.engine.backward(loss * self.world, scale_wrt_gas=False)
        self.pending = True

    def grad_norm(self, max_norm: float) -> torch.Tensor:
        """Global L2 norm of the accumulated gradients (NaN if not finite); the next `step` clips
        them to `max_norm` (no clipping when it is inf). A collective."""
        from deepspeed.runtime.utils import (
            combine_grad_norm_groups,
            is_invalid_grad_norm,
        )

        self.zero.clip_grad = max_norm if max_norm != float("inf") else 0.0  # what its step clips to (internal)
        if hasattr(self.zero, "_get_norm_groups"):                 # ZeRO-3 (internal)
            norm = combine_grad_norm_groups(self.zero._get_norm_groups())
        else:                                                     # ZeRO-1/2 (internal)
            norm = self.zero.scaled_global_norm()
        norm = torch.as_tensor(norm, dtype=torch.float32).detach().cpu() / float(self.zero.loss_scale)
        return torch.tensor(float("nan")) if is_invalid_grad_norm(norm) else norm

    def step(self) -> None:
        self.engine.step()
        self.pending = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gradients accumulated since the last step (a skipped update): the engine's step runs
        with AdamW's step disabled, which releases DeepSpeed's gradient partitions and leaves the
        weights and moments as they were."""
        if not self.pending:
            return
        self.client.step = lambda *args, **kwargs: None
        try:
            self.engine.step()
        finally:
            del self.client.step  # the class's step again
        self.pending = False

    def state_dict(self):
        raise RuntimeError("under DeepSpeed the optimizer state is partitioned: use Dist.full_optimizer_state")

    def load_state_dict(self, state):
        raise RuntimeError("under DeepSpeed the optimizer state is partitioned: use Dist.load_optimizer_state")

    # ------------------------------------------------------------------ full state (collectives)
    def full_model_state(self, model) -> dict:
        """Full fp32 weights on rank 0 ({} elsewhere), keyed as the model's state dict without tied
        aliases; buffers from the module itself."""
        from deepspeed.utils import safe_get_full_fp32_param

        full = {}
        for name, p in model.named_parameters():
            value = safe_get_full_fp32_param(p)
            if value is None:
                raise ValueError(f"parameter '{name}' is not trained: frozen parameters are not supported "
                                 f"with dist_strategy=deepspeed")
            full[name] = value.detach().cpu().clone()
        if self.engine.global_rank != 0:
            return {}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - set(full)
        return {k: full.get(k, v) for k, v in model.state_dict().items() if k not in aliases}

    def full_optimizer_state(self) -> dict:
        """AdamW's full state on rank 0 in `optimizer.state_dict()`'s format ({} elsewhere)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        step = self.step_count()
        keys = [k for k in self.client.state[self._flat_partitions()[0]] if k != "step"]
        state = {}
        for i, p in enumerate(self.params):
            moments = {k: safe_get_full_optimizer_state(p, k).detach().cpu().clone() for k in keys}
            state[i] = {"step": torch.tensor(step), **moments}
        if self.engine.global_rank != 0:
            return {}
        if step == 0:  # no update yet: AdamW has no state
            state = {}
        return {"state": state, "param_groups": self._groups()}

    def _groups(self) -> list:
        """AdamW's param groups with `params` as positions in the original order."""
        groups, start = [], 0
        for g, n in zip(self.client.param_groups, self._group_sizes):
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(start, start + n))})
            start += n
        return groups

    def load_full_optimizer_state(self, state: dict) -> None:
        """Load a full `optimizer.state_dict()`-format state (every rank passes the same one)."""
        from deepspeed.utils import safe_set_full_optimizer_state

        if len(state["param_groups"]) != len(self.client.param_groups):
            raise ValueError(f"optimizer state has {len(state['param_groups'])} parameter groups, the optimizer "
                             f"{len(self.client.param_groups)}")
        for group, saved in zip(self.client.param_groups, state["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
        if not state["state"]:
            return
        steps = {float(st["step"]) for st in state["state"].values()}
        if len(steps) != 1 or len(state["state"]) != len(self.params):
            raise ValueError("optimizer state: DeepSpeed needs one AdamW step count shared by every parameter")
        for i, p in enumerate(self.params):
            for k, v in state["state"][i].items():
                if k != "step":
                    safe_set_full_optimizer_state(p, v.to(torch.float32), k)
        step = steps.pop()
        for flat in self._flat_partitions():
            self.client.state[flat]["step"].fill_(step)


def initialize(model, optimizer, zero_stage: int, world: int) -> ZeroOptimizer:
    """Hand `model` and its AdamW to DeepSpeed (fp32, ZeRO `zero_stage`); the model keeps its mode."""
    deepspeed = import_deepspeed()
    groups = [list(g["params"]) for g in optimizer.param_groups]
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_allow_untested_optimizer": True, "zero_optimization": {"stage": zero_stage}}
    training = model.training
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    model.train(training)
    return ZeroOptimizer(engine, optimizer, groups, world)


class DeepSpeedDist(Dist):
    """`deepspeed` with several processes: ZeRO-2 or ZeRO-3 through `deepspeed.initialize`
    (this file); the model is handed over in `prepare_optimizer`."""

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
            raise ConfigError("lora.enabled=true is not supported with DeepSpeed (dist_strategy=deepspeed): use DDP "
                             "(dist_strategy=ddp) for LoRA runs")
        return model

    def prepare_optimizer(self, model, optimizer):
        """`deepspeed.initialize` on the model and its AdamW; returns the ZeroOptimizer that the trainer
        then uses as its optimizer (build the LR scheduler on the AdamW first: DeepSpeed keeps its
        param-group dicts)."""

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
