"""`fairalign config --keys`: every dotted key with its one-line doc (the field's metadata), and what the
method registries know (the method names; which method owns a hyperparameter, with its default)."""
from __future__ import annotations

import dataclasses
import typing

from fairalign.algos import ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY
from fairalign.config.methods import estimator_keys, loss_keys
from fairalign.config.schema import Config


def field_docs() -> dict[str, str]:
    """Dotted key -> its one-line doc."""
    return _registry_docs(_field_docs(Config, ""))


def _field_docs(cls, prefix: str) -> dict[str, str]:
    docs: dict[str, str] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            docs.update(_field_docs(hints[f.name], prefix + f.name + "."))
        else:
            docs[prefix + f.name] = f.metadata["doc"]
    return docs


def _registry_docs(docs: dict[str, str]) -> dict[str, str]:
    """Fill in what the method registries know: the method names, and which method each
    hyperparameter key belongs to with its default."""
    docs["algo.loss"] = docs["algo.loss"].replace("{losses}", " | ".join(POLICY_LOSS_REGISTRY))
    docs["algo.advantage"] = docs["algo.advantage"].replace("{estimators}", " | ".join(ESTIMATOR_REGISTRY))
    for key, owners in loss_keys().items():
        defaults = ", ".join(f"{n} {POLICY_LOSS_REGISTRY[n].hparams[key]!r}" for n in owners)
        docs[f"algo.{key}"] += f" [loss: {defaults}]"
    for key, (name, hp) in estimator_keys().items():
        if f"algo.{key}" in docs:
            docs[f"algo.{key}"] += f" [advantage: {name} {ESTIMATOR_REGISTRY[name].hparams[hp]!r}]"
    return docs
