"""Resolve a user's own code named in a config: "pkg.module:name" or "path/to/file.py:name".

Used for reward functions (`task_reward`), policy losses (`algo.loss`) and advantage estimators
(`algo.advantage`). Every failure is one ValueError that names the spec and says what is wrong.
Simplification: a file is imported once per path (cached in sys.modules under a name derived from
its absolute path), so editing it during a run has no effect.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any
from fairalign.errors import ConfigError


def is_user_spec(value: Any) -> bool:
    """True for "module:name" / "file.py:name" strings (registered names never contain ':')."""
    return isinstance(value, str) and ":" in value


def _import_file(path: str, spec: str, what: str):
    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise ConfigError(f"bad {what} {spec!r}: file {path!r} does not exist")
    name = "fairalign_user_" + "".join(c if c.isalnum() else "_" for c in full)
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"bad {what} {spec!r}: importing {path!r} failed: {type(e).__name__}: {e}") from e
    return module


def load_callable(spec: str, what: str) -> Any:
    """The object named by `spec`; `what` names it in errors (e.g. "config key 'algo.loss'")."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"bad {what} {spec!r}: use 'module:function' or 'path/to/file.py:function'")
    where, fname = spec.strip().rsplit(":", 1)
    if not where or not fname.isidentifier():
        raise ConfigError(f"bad {what} {spec!r}: expected 'module:function' with a function name after the last ':'")
    if where.endswith(".py"):
        module = _import_file(where, spec, what)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ConfigError(f"bad {what} {spec!r}: cannot import module {where!r} ({e})") from e
    obj = getattr(module, fname, None)
    if obj is None:
        raise ConfigError(f"bad {what} {spec!r}: module {where!r} has no attribute {fname!r}")
    if not callable(obj):
        raise ConfigError(f"bad {what} {spec!r}: {fname!r} is a {type(obj).__name__}, not a function or class")
    return obj
