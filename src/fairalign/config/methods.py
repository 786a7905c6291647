"""From a config to the two method objects a step uses: the policy loss and the advantage estimator.

Both come from the registries in `fairalign.algos` (built-in names) or from the user's code
(`module:function` / `file.py:function`). This is the only place that maps config keys to method
hyperparameters; the trainer calls the returned objects and never names a method.

Config keys and hyperparameters:
- a loss hyperparameter has the config key `algo.<name>` (clip_low, c_low, drift, ...) when it is
  a field of AlgoConfig, and can always be given as `algo.loss_args.<name>`; `None` = the loss's
  registered default;
- an estimator hyperparameter has the key `algo.<prefix><name>` (P-GRPO: `algo.pgrpo_min_count`);
- `algo.critic` goes with an estimator that requires a critic's values (`requires` has "values": gae):
  one without the other is an error;
- a key that belongs to another method than the chosen one is an error — unless it holds that
  method's registered default, which changes nothing (configs written by earlier versions list
  every key with its default).
A user loss is called as `fn(logp, old_logp, advantages, mask, agg=, global_tokens=, global_seqs=,
horizon=, **loss_args) -> (loss, stats)`; one that sets `fn.unclipped = True` is also called with
`clip=False` for its unclipped importance-weighted variant (`log.grad_cosine`). A user estimator is an
`AdvantageEstimator` subclass or `fn(rewards, index, groups=) -> advantages`.
"""
from __future__ import annotations

import dataclasses


from fairalign.algos import (
    ESTIMATOR_REGISTRY,
    POLICY_LOSS_REGISTRY,
    build_estimator,
    compute_policy_loss,
)
from fairalign.algos.estimators import AdvantageEstimator
from fairalign.config.schema import AlgoConfig
from fairalign.errors import ConfigError
from fairalign.userspec import is_user_spec, load_callable

_ALGO_FIELDS = {f.name for f in dataclasses.fields(AlgoConfig)}


def loss_keys() -> dict[str, list[str]]:
    """AlgoConfig field -> registered losses that take it as a hyperparameter."""
    out: dict[str, list[str]] = {}
    for spec in POLICY_LOSS_REGISTRY.values():
        for hp in spec.hparams:
            if hp in _ALGO_FIELDS:
                out.setdefault(hp, []).append(spec.name)
    return out


def estimator_keys() -> dict[str, tuple[str, str]]:
    """AlgoConfig field -> (estimator, hyperparameter) for every registered estimator's hyperparameters."""
    out = {}
    for spec in ESTIMATOR_REGISTRY.values():
        for hp in spec.hparams:
            out[spec.config_prefix + hp] = (spec.name, hp)
    return out


def loss_hparams(a: AlgoConfig) -> dict:
    """The chosen built-in loss's hyperparameters (defaults filled), or a user loss's loss_args."""
    if is_user_spec(a.loss):
        for key in loss_keys():
            value = getattr(a, key)
            if value is not None:
                raise ConfigError(f"config key 'algo.{key}' is a hyperparameter of the built-in loss(es) "
                                  f"{', '.join(loss_keys()[key])}; a user loss ('{a.loss}') takes its "
                                  f"hyperparameters from algo.loss_args.*")
        return dict(a.loss_args)
    spec = POLICY_LOSS_REGISTRY[a.loss]
    hp = dict(spec.hparams)
    for key, owners in loss_keys().items():
        value = getattr(a, key)
        if value is None:
            continue
        if key in spec.hparams:
            hp[key] = value
        else:
            raise ConfigError(f"config key 'algo.{key}' does not apply to algo.loss={a.loss} (it is a "
                              f"hyperparameter of {', '.join(owners)}); remove it or choose that loss")
    for key, value in a.loss_args.items():
        if key not in spec.hparams:
            raise ConfigError(f"config key 'algo.loss_args.{key}' is not a hyperparameter of loss '{a.loss}'; "
                              f"valid: {', '.join(spec.hparams) or '(none)'}")
        hp[key] = value
    return hp


def estimator_hparams(a: AlgoConfig) -> dict:
    """The chosen estimator's hyperparameters set in the config (its own defaults fill the rest)."""
    chosen = {}
    for key, (name, hp) in estimator_keys().items():
        value = getattr(a, key, None)
        if value is None:
            continue
        if name == a.advantage:
            chosen[hp] = value
        else:
            raise ConfigError(f"config key 'algo.{key}' does not apply to algo.advantage={a.advantage} "
                              f"(it is a hyperparameter of {name}); remove it or choose that estimator")
    return chosen


def check_methods(a: AlgoConfig) -> None:
    """Config-time checks: known names, hyperparameters that belong to the chosen methods, and
    estimator hyperparameter values (one ConfigError naming the key)."""
    for key, registry in (("loss", POLICY_LOSS_REGISTRY), ("advantage", ESTIMATOR_REGISTRY)):
        value = getattr(a, key)
        if not is_user_spec(value) and value not in registry:
            raise ConfigError(f"config key 'algo.{key}' has unknown value '{value}'; allowed: "
                              f"{', '.join(registry)}, or module:function / file.py:function")
    hp = loss_hparams(a)
    if not is_user_spec(a.loss):
        try:
            POLICY_LOSS_REGISTRY[a.loss].check(**hp)  # the loss's own check of its values
        except ValueError as e:
            name, rest = str(e).split(" ", 1)
            raise ConfigError(f"config key 'algo.{name}' {rest}") from None
    if not is_user_spec(a.advantage):
        spec = ESTIMATOR_REGISTRY[a.advantage]
        chosen = estimator_hparams(a)
        for hp, value in chosen.items():
            try:
                build_estimator(a.advantage, **{hp: value})
            except (ValueError, TypeError) as e:
                raise ConfigError(f"config key 'algo.{spec.config_prefix}{hp}': {e}") from None
        try:  # values that are valid alone but not together
            build_estimator(a.advantage, **chosen)
        except (ValueError, TypeError) as e:
            keys = ", ".join(f"'algo.{spec.config_prefix}{hp}'" for hp in chosen)
            raise ConfigError(f"config keys {keys}: {e}") from None
        check_critic(a, spec.requires)


def check_critic(a: AlgoConfig, requires: tuple[str, ...]) -> None:
    """A critic exactly when the estimator uses its values (ConfigError naming algo.critic)."""
    if "values" in requires and a.critic == "none":
        raise ConfigError(f"config key 'algo.critic' is 'none' but algo.advantage={a.advantage} needs a critic's "
                          f"values: set algo.critic=head (value head on the policy) or model (separate value model)")
    if "values" not in requires and a.critic != "none":
        raise ConfigError(f"config key 'algo.critic' is '{a.critic}' but algo.advantage={a.advantage} does not use "
                          f"values: set algo.advantage=gae or algo.critic=none")


class PolicyLoss:
    """The configured loss as one callable; `batch_stats` names the whole-minibatch statistics it needs;
    `unclipped`: whether it can be called with clip=False (its unclipped importance-weighted variant)."""

    def __init__(self, a: AlgoConfig, horizon: int | None):
        self.hparams = loss_hparams(a)
        self.agg, self.horizon = a.agg, horizon
        if is_user_spec(a.loss):
            self.fn = load_callable(a.loss, "config key 'algo.loss'")
            self.name, self.batch_stats = a.loss, tuple(getattr(self.fn, "batch_stats", ()))
            self.unclipped = getattr(self.fn, "unclipped", False) is True
        else:
            self.fn, self.name = None, a.loss
            self.batch_stats = tuple(POLICY_LOSS_REGISTRY[a.loss].batch_stats(self.hparams))
            self.unclipped = POLICY_LOSS_REGISTRY[a.loss].unclipped

    def __call__(self, logp, old_logp, advantages, mask, *, global_tokens, global_seqs, batch_stats=None,
                 clip: bool = True):
        """(scalar loss, stats); logp/old_logp/mask [B, T], advantages [B]; clip=False: the unclipped variant."""
        if not clip and not self.unclipped:
            raise ValueError(f"loss {self.name} has no unclipped variant")
        if self.fn is None:
            return compute_policy_loss(self.name, logp, old_logp, advantages, mask, self.agg, horizon=self.horizon,
                                       global_tokens=global_tokens, global_seqs=global_seqs,
                                       batch_stats=batch_stats, clip=clip, **self.hparams)
        extra = {k: v for k, v in (batch_stats or {}).items() if k in self.batch_stats}
        if not clip:
            extra["clip"] = False
        out = self.fn(logp, old_logp, advantages, mask, agg=self.agg, global_tokens=global_tokens,
                      global_seqs=global_seqs, horizon=self.horizon, **extra, **self.hparams)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise ValueError(f"loss {self.name} must return (loss, stats dict), got {type(out).__name__}")
        return out


def resolve_policy_loss(cfg) -> PolicyLoss:
    horizon = (cfg.algo.horizon or cfg.rollout.max_new_tokens) if cfg.algo.agg == "seq-mean-token-sum-norm" else None
    return PolicyLoss(cfg.algo, horizon)


def resolve_estimator(cfg) -> AdvantageEstimator:
    a = cfg.algo
    if is_user_spec(a.advantage):
        est = build_estimator(load_callable(a.advantage, "config key 'algo.advantage'"))
        check_critic(a, tuple(est.requires))
        return est
    return build_estimator(a.advantage, **estimator_hparams(a))
