"""Loading a `Config`: defaults <- a YAML file or preset dict <- dotted `KEY=VALUE` overrides (values parsed
as YAML scalars), then validated (validate.py). Every mistake is a `ConfigError` of one line naming the key,
and the file when the mistake is in a config file (`my_run.yaml: unknown config key ...`).

A config file may write a key nested (`algo: {loss: fspo}`) or dotted (`algo.loss: fspo`), as KEY=VALUE
does; the same key given both ways is an error. Free-form mappings (`task_options`, `algo.loss_args`) merge
key by key at any depth, so `task_options.user_options.base_url=U task_options.user_options.model=M`
keeps both; keys inside them are taken as written (a dot there is part of the key).

`dump_yaml(cfg, defaults_as_comments=True)` (what `fairalign config` prints) adds, after each method
hyperparameter left at null, the value the chosen loss or estimator uses for it (`c_low: null  # fspo
uses 0.02`): the file still loads to the same config, and switching the loss later does not leave a
hyperparameter that belongs to another loss behind.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from fairalign.algos import ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY
from fairalign.config.methods import estimator_keys, loss_keys
from fairalign.config.schema import Config
from fairalign.config.validate import validate
from fairalign.errors import ConfigError


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _all_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, prefix + f.name + ".")
        elif tp is dict:
            keys.append(prefix + f.name + ".*")
        else:
            keys.append(prefix + f.name)
    return keys


def _unknown_key_error(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; run `fairalign config --keys` for the list"
    return ConfigError(f"unknown config key '{key}'{hint}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' may not be null (expected {base.__name__})")
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return str(value)
    if base is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return [value]  # a single value where a list is expected (e.g. one task_reward)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return list(value)
    return value


def _put(out: dict, key: str, value: Any, prefix: str) -> None:
    """out[key] = value, merging mappings; a leaf given twice is an error naming its dotted key."""
    if key not in out:
        out[key] = value
    elif isinstance(out[key], dict) and isinstance(value, dict):
        for k, v in value.items():
            _put(out[key], str(k), v, f"{prefix}{key}.")
    else:
        raise ConfigError(f"config key '{prefix}{key}' is given twice (nested and as a dotted key); keep one")


def expand_dotted(data: dict, prefix: str = "") -> dict:
    """`{"algo.loss": "fspo", "steps": 5}` -> `{"algo": {"loss": "fspo"}, "steps": 5}` (one level: the keys
    of the mapping given; the nested sections are expanded when they are applied)."""
    out: dict = {}
    for k, v in copy.deepcopy(data).items():
        head, *rest = str(k).split(".")
        _put(out, head, nest(".".join(rest), v) if rest else v, prefix)
    return out


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in expand_dotted(data, prefix).items():
        key = prefix + str(k)
        if k not in names:
            raise _unknown_key_error(key)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, k), v, key + ".")
        elif tp is dict:
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' expects a mapping, got {v!r}")
            setattr(obj, k, merge_mappings(getattr(obj, k), v))
        else:
            setattr(obj, k, _coerce(key, v, tp))


def merge_mappings(old: dict, new: dict) -> dict:
    """`new` merged into a copy of `old` key by key, at any depth (a mapping meets a mapping: merged)."""
    out = dict(old)
    for k, v in new.items():
        out[k] = merge_mappings(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def check_override_keys(keys: list[str]) -> None:
    """A ConfigError when one KEY=VALUE names a mapping and another one of its keys (which would win
    depends on their order)."""
    for a in keys:
        for b in keys:
            if b.startswith(a + "."):
                raise ConfigError(f"KEY=VALUE sets both '{a}' and '{b}' (a key inside it): give '{a}' as one "
                                  f"mapping or its keys one by one, not both")


def parse_override(text: str) -> tuple[str, Any]:
    """'algo.loss=fspo' -> ('algo.loss', 'fspo'); the value is parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not KEY=VALUE")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def nest(key: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_yaml(path: str | Path) -> dict:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file '{p}': {e.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{p}'{where} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, got {type(data).__name__}")
    return data


def build_config(base: dict | None = None, overrides: list[str] | None = None, *,
                 source: str | Path | None = None) -> Config:
    """Defaults <- base dict (from YAML or a preset) <- dotted overrides; validated. `source`: the config
    file `base` was read from; a mistake in it (an unknown key, a bad value the overrides do not
    replace) names the file."""
    cfg = Config()
    if base:
        try:
            _apply(cfg, base)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}" if source else str(e)) from None
    parsed = [parse_override(ov) for ov in overrides or []]
    check_override_keys([k for k, _ in parsed])
    for key, value in parsed:
        _apply(cfg, nest(key, value))
    try:
        validate(cfg)
    except ConfigError as e:
        if source and _invalid_alone(base, str(e)):
            raise ConfigError(f"{source}: {e}") from None
        raise
    return cfg


def _invalid_alone(base: dict | None, message: str) -> bool:
    """True when the file's settings alone fail validation with this message (the mistake is the file's)."""
    cfg = Config()
    _apply(cfg, base or {})
    try:
        validate(cfg)
    except ConfigError as e:
        return str(e) == message
    return False


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config, *, defaults_as_comments: bool = False) -> str:
    """The config as YAML; with `defaults_as_comments`, each algo.* hyperparameter left at null is followed
    by the value the chosen loss / estimator uses (`  c_low: null  # fspo uses 0.02`)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    if not defaults_as_comments:
        return text
    used = method_defaults(cfg)
    section, lines = None, []
    for line in text.splitlines():
        if not line.startswith(" "):
            section = line.split(":")[0]
        m = re.match(r"^  (\w+): null$", line)
        if section == "algo" and m and m.group(1) in used:
            method, value = used[m.group(1)]
            line += f"  # {method} uses {yaml.safe_dump([value], default_flow_style=True).strip()[1:-1]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def method_defaults(cfg: Config) -> dict[str, tuple[str, Any]]:
    """algo.* key -> (method, value) for the keys left at None that the chosen built-in loss or estimator
    fills with its registered default (a default of None is left out: it means "off")."""
    a, out = cfg.algo, {}
    if a.loss in POLICY_LOSS_REGISTRY:
        hp = POLICY_LOSS_REGISTRY[a.loss].hparams
        out.update({k: (a.loss, hp[k]) for k in loss_keys() if k in hp and hp[k] is not None})
    for key, (name, hp_name) in estimator_keys().items():
        if name == a.advantage and name in ESTIMATOR_REGISTRY:
            value = ESTIMATOR_REGISTRY[name].hparams[hp_name]
            if value is not None:
                out[key] = (name, value)
    return {k: v for k, v in out.items() if getattr(a, k, None) is None}
