"""Load a policy: the embedded default (SmolLM2-135M-Instruct), the tiny test model, a folder or hub name."""
from fairalign.models.cache import cache_root, models_cache_dir
from fairalign.models.default import default_model_path, gguf_path
from fairalign.models.loader import DEFAULT_MODEL_NAMES, load_policy, parse_dtype, resolve_model_path
from fairalign.models.tiny import build_tiny_model, tiny_model_path

__all__ = [
    "DEFAULT_MODEL_NAMES",
    "build_tiny_model",
    "cache_root",
    "default_model_path",
    "gguf_path",
    "load_policy",
    "models_cache_dir",
    "parse_dtype",
    "resolve_model_path",
    "tiny_model_path",
]
