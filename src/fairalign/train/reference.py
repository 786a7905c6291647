"""The KL reference model: a frozen copy of the policy that RL starts from (as in TRL and verl).

- No supervised warm-up: the reference is the configured model itself (`cfg.model`); with LoRA it
  is the base model, reached by disabling the adapter (no second copy in memory).
- After the warm-up (`sft.steps > 0`): the reference is the policy *after* the warm-up. Its weights
  are written once to `<run_dir>/reference/` (the full state dict, or just the adapter with LoRA,
  merged into a copy of the base model when loaded), so a resumed run compares against the same
  model. Costs one more copy of the weights (fp32: 4 bytes per parameter) on disk and in memory.
Simplification: the reference lives on every rank as a full replica unless the strategy shards it
(`dist.prepare_model`).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from fairalign.errors import ConfigError
from fairalign.models import load_policy, load_weights
from fairalign.train.policy import Policy

REFERENCE_DIR = "reference"
_FILE = "model.safetensors"


def _state_to_save(policy: Policy, lora: bool) -> dict[str, torch.Tensor] | None:
    """The policy's weights as the reference needs them (rank 0; a collective under FSDP2)."""
    model = policy.dist.unwrap(policy.model)
    if lora:
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    full = policy.dist.full_model_state(policy.model)
    return model.state_dict() if full is None else full


def save_reference(policy: Policy, run_dir: Path, lora: bool) -> None:
    """Write the current policy (its LoRA adapter when `lora`) as the run's reference (atomic: temp folder,
    then rename)."""
    state = _state_to_save(policy, lora)
    if policy.dist.is_main:
        from safetensors.torch import save_file

        final = run_dir / REFERENCE_DIR
        tmp = run_dir / f".tmp-{REFERENCE_DIR}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp / _FILE))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    policy.dist.barrier()


def load_reference(policy: Policy, cfg, run_dir: Path, from_run: bool, lora_config=None):
    """The reference model (eval mode, frozen, on the policy's device), or None when it is the
    LoRA base model reached through `disable_adapter`. `from_run`: load the run's saved reference."""
    if not from_run and cfg.lora.enabled:
        return None
    ref, _ = load_policy(cfg.model, trust_remote_code=cfg.trust_remote_code, allow_download=cfg.allow_download)
    if from_run:
        path = Path(run_dir) / REFERENCE_DIR / _FILE
        if not path.is_file():
            raise ConfigError(f"--resume: '{path}' (the KL reference saved after the warm-up) is missing")
        if cfg.lora.enabled:  # the adapter's state, merged into a copy of the base model
            import peft
            from safetensors.torch import load_file

            ref = peft.get_peft_model(ref, lora_config)
            peft.set_peft_model_state_dict(ref, load_file(str(path)))
            ref = ref.merge_and_unload()
        else:
            load_weights(ref, path, f"the KL reference of model '{cfg.model}'")
    ref.eval().requires_grad_(False).to(policy.device)
    return policy.dist.prepare_model(ref)
