"""The run configuration: schema.py (the dataclasses, a doc per field), load.py (YAML + dotted KEY=VALUE),
validate.py, docs.py (`fairalign config --keys`), methods.py (config -> policy loss and estimator),
presets.py (named configs) and task.py (config -> the task it names).

The names below load on first use (PEP 562): schema.py needs the method registries and so torch, which a
command that only lists presets (`fairalign train --help`) should not pay for."""
from __future__ import annotations

import importlib

_WHERE = {
    "field_docs": "docs",
    **{name: "load" for name in ("build_config", "dump_yaml", "load_yaml", "nest", "parse_override", "to_dict")},
    **{name: "schema" for name in ("AlgoConfig", "Config", "EvalConfig", "LogConfig", "LoraConfig", "OptimConfig",
                                   "RolloutConfig", "SFTConfig")},
    "validate": "validate",
}

__all__ = ["Config", "AlgoConfig", "RolloutConfig", "OptimConfig", "LoraConfig", "SFTConfig", "EvalConfig",
           "LogConfig", "build_config", "load_yaml", "dump_yaml", "to_dict", "parse_override", "nest", "validate",
           "field_docs"]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'fairalign.config' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"fairalign.config.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
