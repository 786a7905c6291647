"""Load a policy: the embedded default (SmolLM2-135M-Instruct), the tiny test model, a folder or hub name;
a trained run's weights or LoRA adapter on top (`load_trained`); the device a config names."""
from fairalign.models.cache import cache_root, models_cache_dir
from fairalign.models.default import default_model_path, gguf_path
from fairalign.models.loader import (BUILTIN_MODEL_NAMES, DEFAULT_MODEL_NAMES, load_policy, load_trained, load_weights,
                                     parse_dtype, resolve_device, resolve_model_path)
from fairalign.models.tiny import build_tiny_model, tiny_model_path

__all__ = [
    "BUILTIN_MODEL_NAMES",
    "DEFAULT_MODEL_NAMES",
    "build_tiny_model",
    "cache_root",
    "default_model_path",
    "gguf_path",
    "load_policy",
    "load_trained",
    "load_weights",
    "models_cache_dir",
    "parse_dtype",
    "resolve_device",
    "resolve_model_path",
    "tiny_model_path",
]
