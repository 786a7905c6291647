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
