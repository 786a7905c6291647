"""FSDP2 (`dist_strategy=fsdp2`): each decoder layer, then the root, `fully_shard`-ed; the contract is in
base.py's docstring."""
from __future__ import annotations

from typing import Callable

import torch

from fairalign.dist.base import Dist, _param_names
from fairalign.errors import ConfigError


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
            raise ConfigError("lora.enabled=true is not supported with FSDP2 (dist_strategy=fsdp2): use DDP "
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
                raise ConfigError(f"FSDP_TRANSFORMER_CLS_TO_WRAP={','.join(names)}: no such module in "
                                 f"{type(model).__name__}")
            return layers
        base = getattr(model, "base_model", model)
        layers = [m for child in base.children() if isinstance(child, torch.nn.ModuleList) for m in child]
        if not layers:
            raise ConfigError(f"cannot find the decoder layers of {type(model).__name__} to shard with FSDP2: "
                             f"set fsdp_transformer_layer_cls_to_wrap in the accelerate config")
        return layers

    def full_model_state(self, model) -> dict:
        """The full state dict ({} off rank 0), without tied aliases (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # tied weights (lm_head = embeddings) come back as separate copies: keep one name, as HF does
        unique = {n for n, _ in model.named_parameters()}
        aliases = {n for n, _ in model.named_parameters(remove_duplicate=False)} - unique
        return {k: v for k, v in sd.items() if k not in aliases}

    def full_optimizer_state(self, model, optimizer) -> dict:
        """The full optimizer state on rank 0 in `optimizer.state_dict()`'s own format (state keyed by
        parameter position), so checkpoints do not depend on the strategy ({} elsewhere; a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        sd = get_optimizer_state_dict(model, optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return {}
        pos = {name: i for i, name in enumerate(_param_names(model, optimizer))}
        return {"state": {pos[k]: v for k, v in sd["state"].items()},
                "param_groups": [{**g, "params": [pos[k] for k in g["params"]]} for g in sd["param_groups"]]}

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

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
