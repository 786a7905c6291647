"""Where fairalign caches converted and generated models, and how a folder is written atomically.

The root is `$FAIRALIGN_CACHE` if set, else `~/.cache/fairalign`; models live under `<root>/models/`.
A model folder is built in a temporary sibling directory and renamed into place, so a folder that
exists is always complete (two processes racing both build, one rename wins, the other is discarded).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    """`$FAIRALIGN_CACHE` if set, else `~/.cache/fairalign` (not created here)."""
    env = os.environ.get("FAIRALIGN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fairalign"


def models_cache_dir() -> Path:
    """`<cache_root>/models`."""
    return cache_root() / "models"


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `final`; on success rename it to `final`.

    If `final` appeared meanwhile (another process won the race), the temporary folder is discarded.
    On an exception the temporary folder is removed and `final` is left untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache folder should not be
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model_files(model, folder: Path) -> None:
    """Write a Hugging Face model folder's config, generation config and weights (safetensors) from
    *this* process. (transformers' `save_pretrained` writes nothing on ranks other than 0 once
    torch.distributed is initialized, so a cache folder built by rank 1 of a `--num-processes 2` run
    would hold only the tokenizer.) Tied weights are stored once, as transformers does."""
    from safetensors.torch import save_file

    folder = Path(folder)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    seen, state = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype)
        if key in seen:  # a tied alias (lm_head = embed_tokens)
            continue
        seen[key] = name
        state[name] = tensor.detach().cpu().contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
