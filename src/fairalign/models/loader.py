"""Load a policy (model + tokenizer) by name: the embedded default, the tiny test model, a folder, a hub name.

Names: "smollm2-135m" (alias "smollm2-135m-instruct"): the embedded SmolLM2-135M-Instruct, converted
once from its GGUF; "tiny" or "tiny-<seed>": the random test model; an existing local folder; else a
hub name, loaded with `local_files_only=True` unless `allow_download=True`.
The tokenizer comes back with `padding_side="left"` and a pad token (eos if it had none).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from fairalign.errors import ConfigError
from fairalign.models.default import default_model_path
from fairalign.models.tiny import tiny_model_path

DEFAULT_MODEL_NAMES = ("smollm2-135m", "smollm2-135m-instruct")
BUILTIN_MODEL_NAMES = ("smollm2-135m", "tiny")  # what an error lists (aliases: smollm2-135m-instruct, tiny-<seed>)
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
_TINY = re.compile(r"^tiny(?:-(\d+))?$")


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or one of the names float32/fp32, bfloat16/bf16, float16/fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype={dtype!r} is not supported; choose one of {sorted(_DTYPES)} or a torch.dtype")


def resolve_model_path(name: str | Path) -> Path | str:
    """Map a model name to a local folder (Path) or, for a hub name, return the name unchanged (str)."""
    if isinstance(name, Path):
        if not name.is_dir():
            raise ConfigError(f"model folder {name} does not exist")
        return name
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"model name={name!r} is invalid; use one of {list(DEFAULT_MODEL_NAMES)}, 'tiny', "
            "'tiny-<seed>', a local folder or a hub name"
        )
    if name.lower() in DEFAULT_MODEL_NAMES:
        return default_model_path()
    tiny = _TINY.match(name)
    if tiny:
        return tiny_model_path(int(tiny.group(1) or 0))
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model folder {name} does not exist")
    return name


def load_policy(
    name: str | Path,
    *,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    allow_download: bool = False,
):
    """Load `(model, tokenizer)` for `name` (see module doc) on `device` in `dtype`.

    Hub names are looked up in the local Hugging Face cache only, unless `allow_download=True`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # fairalign shows its own progress; keep stderr readable
    torch_dtype = parse_dtype(dtype)
    where = resolve_model_path(name)
    if isinstance(where, Path) and not (where / "config.json").is_file():
        raise ConfigError(f"model folder {where} has no config.json: it is not a Hugging Face model folder "
                                f"(give the folder that holds config.json, the weights and the tokenizer)")
    local_only = isinstance(where, Path) or not allow_download
    kwargs = dict(trust_remote_code=trust_remote_code, local_files_only=local_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch_dtype, **kwargs)
    except (OSError, ValueError) as err:
        if isinstance(where, Path):
            raise ConfigError(f"model folder {where} cannot be loaded: {type(err).__name__}: "
                              f"{' '.join(str(err).split())[:300]}") from err
        if isinstance(where, str) and not allow_download:
            raise ConfigError(
                f"model {name!r} is neither a built-in name ({', '.join(BUILTIN_MODEL_NAMES)}), a local folder, "
                f"nor in the local hub cache; give one of those, or set allow_download=true (Python: "
                f"allow_download=True) to fetch it from the hub") from err
        raise
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    return model, tokenizer


def resolve_device(name: str) -> torch.device:
    """`device` config value -> the torch device this process uses (its own GPU under torchrun)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is 'cuda' but no CUDA GPU is visible (use device=auto or cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def load_weights(model, path: str | Path, what: str) -> None:
    """Copy the safetensors weights at `path` (a file, or a folder of *.safetensors) into `model`; a tied
    lm_head may be absent. A ConfigError naming `what` when they do not fit the model."""
    from safetensors.torch import load_file

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{what}: no *.safetensors weights in '{path}'")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if {k for k in missing if "lm_head" not in k} or unexpected:
        raise ConfigError(f"{what}: the weights in '{path}' do not fit this model")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_trained(base_model: str | Path, weights: str | Path | None = None, *, adapter: bool = False,
                 trainable: bool = False, trust_remote_code: bool = False, allow_download: bool = False):
    """`(model, tokenizer)` of a trained policy, the one place that knows how a run stores one:
    `base_model` (a name load_policy knows) with, on top, nothing (`weights=None`), a LoRA adapter folder
    (`adapter=True`: a peft `PeftModel`, `trainable` or frozen), or full weights (a run's final/ or
    checkpoints/step-N/model folder, or a safetensors file) copied in."""
    model, tok = load_policy(base_model, trust_remote_code=trust_remote_code, allow_download=allow_download)
    if weights is None:
        return model, tok
    if adapter:
        try:
            import peft
        except ImportError:
            raise ConfigError("lora.enabled=true needs peft: pip install 'fairalign[lora]'") from None
        return peft.PeftModel.from_pretrained(model, str(weights), is_trainable=trainable), tok
    load_weights(model, weights, f"model '{base_model}'")
    return model, tok