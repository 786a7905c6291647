"""The two method registries: policy losses and advantage estimators, each entry registered with a
decorator that also declares its hyperparameters and their defaults.

Everything that names a method — the config's allowed values and defaults, `fairalign config
--keys`, the trainer — reads these registries; nothing keeps a hand-copied list.

    @register_policy_loss("fspo", c_low=0.02, c_high=0.03, drift="none", dual_clip=None,
                          batch_stats=lambda hp: ("mean_log_ratio",) if hp["drift"] == "kl" else ())
    def fspo(logp, old_logp, advantages, mask, *, c_low, c_high, drift, dual_clip, mean_log_ratio=None): ...

A loss may need statistics of the *whole* minibatch being optimized (FSPO's drift: the token-mean
log ratio), which no micro-batch can compute on its own. It declares their names (`batch_stats`,
a function of its resolved hyperparameters); `BATCH_STATISTICS` defines each as a ratio of two
sums over (ℓ = logp − old_logp, mask), so a trainer can accumulate them over micro-batches and
ranks and pass the global value to every micro-batch's call as a keyword argument.

Simplifications: names are plain strings; re-registering a name replaces the entry (so a user can
override a built-in on purpose); hyperparameter values are checked by the functions themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class PolicyLossSpec:
    name: str
    fn: Callable  # fn(logp [B,T], old_logp [B,T], advantages [B], mask [B,T], **hparams) -> (loss_mat [B,T], stats)
    hparams: dict[str, Any]  # hyperparameter -> default
    doc: str = ""  # one line
    batch_stats: Callable[[dict], tuple[str, ...]] = field(default=lambda hp: ())
    # check(**hparams): raises ValueError "<name> must ..." for a bad value; the loss calls it, and so does a
    # config's validation, so each hyperparameter is checked by one function
    check: Callable[..., None] = field(default=lambda **hp: None)
    unclipped: bool = False  # fn accepts clip=False: the same importance-weighted loss with no band (log.grad_cosine)


@dataclass(frozen=True)
class EstimatorSpec:
    name: str
    cls: type  # an AdvantageEstimator subclass; cls(**hparams) builds one
    hparams: dict[str, Any]
    scope: str  # "prompt_group" | "batch" | "preference_history"
    doc: str = ""
    config_prefix: str = ""  # config keys of its hyperparameters: algo.<prefix><hparam>
    requires: tuple[str, ...] = ()  # per-token inputs beyond the rewards (ESTIMATOR_INPUTS)


POLICY_LOSS_REGISTRY: dict[str, PolicyLossSpec] = {}
ESTIMATOR_REGISTRY: dict[str, EstimatorSpec] = {}
ESTIMATOR_SCOPES = ("prompt_group", "batch", "preference_history")
# what an estimator may declare in `requires`; a trainer passes each as a keyword argument
ESTIMATOR_INPUTS = {
    "values": "a critic's values V(s_t) [N, T] of the states the responses were sampled in; an estimator that "
              "requires them returns (advantages, returns) and the critic is trained towards `returns`",
    "mask": "the response mask [N, T] (bool)",
}


def _first_line(fn) -> str:
    return ((fn.__doc__ or "").strip().splitlines() or [""])[0]


def register_policy_loss(name: str, *, batch_stats: Callable[[dict], tuple[str, ...]] | None = None,
                         check: Callable[..., None] | None = None, unclipped: bool = False, **hparams: Any):
    """Decorator: register `fn` as policy loss `name` with these hyperparameter defaults; `check(**hparams)`
    validates their values (a ValueError naming the hyperparameter); `unclipped`: `fn` also takes
    `clip=False`, the same importance-weighted loss with no clip band (the gradient-cosine diagnostic)."""
    def deco(fn):
        unknown = [s for s in (batch_stats(dict(hparams)) if batch_stats else ()) if s not in BATCH_STATISTICS]
        if unknown:
            raise ValueError(f"policy loss {name!r}: unknown batch statistic(s) {unknown}; "
                             f"known: {', '.join(BATCH_STATISTICS)}")
        POLICY_LOSS_REGISTRY[name] = PolicyLossSpec(name, fn, dict(hparams), _first_line(fn),
                                                    batch_stats or (lambda hp: ()), check or (lambda **hp: None),
                                                    bool(unclipped))
        return fn
    return deco


def register_estimator(name: str, *, scope: str, config_prefix: str = "", requires: tuple[str, ...] = (),
                       **hparams: Any):
    """Class decorator: register an AdvantageEstimator subclass as estimator `name`; `requires` names
    the per-token inputs it needs (ESTIMATOR_INPUTS)."""
    if scope not in ESTIMATOR_SCOPES:
        raise ValueError(f"estimator {name!r}: scope must be one of {ESTIMATOR_SCOPES}, got {scope!r}")
    unknown = [r for r in requires if r not in ESTIMATOR_INPUTS]
    if unknown:
        raise ValueError(f"estimator {name!r}: unknown input(s) {unknown}; known: {', '.join(ESTIMATOR_INPUTS)}")

    def deco(cls):
        cls.name, cls.scope, cls.requires = name, scope, tuple(requires)
        ESTIMATOR_REGISTRY[name] = EstimatorSpec(name, cls, dict(hparams), scope, _first_line(cls),
                                                 config_prefix, tuple(requires))
        return cls
    return deco


# ------------------------------------------------------------------ minibatch statistics
def _mean_log_ratio_sums(ell: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask.to(ell.dtype)
    return (ell.detach() * m).sum(), m.sum()  # Σ ℓ·m, Σ m


# name -> fn(ell [B,T], mask [B,T]) -> (numerator, denominator); the statistic is Σnum / Σden over the
# whole minibatch (all micro-batches, all ranks); 0 when the denominator is 0
BATCH_STATISTICS: dict[str, Callable] = {"mean_log_ratio": _mean_log_ratio_sums}
