"""The advantage-estimator protocol: one object per run, registered by name, that turns a step's
rewards into advantages and may keep state across steps.

    est = build_estimator("pgrpo", min_count=8)
    adv = est(rewards [N], index [N], groups [N], collectives)      # -> [N]
    est.state_dict() / est.load_state_dict(state)                   # saved in every checkpoint
    est.metrics()                                                    # {"pgrpo/history_frac": ..., ...}

Each estimator declares its *scope*, i.e. what it must see to be exact:
- `prompt_group`: the samples of each prompt (grpo, dr_grpo, rloo). A trainer keeps a prompt's
  generations on one rank, so no communication is needed.
- `batch`: the whole global batch (reinforce_pp_baseline whitens over it, batch_joint normalizes
  every reward by its mean and std, whatever the prompt or preference group). Rewards are gathered
  from every rank through `collectives`, the estimate is computed on the global batch, and each
  rank keeps its own rows.
- `preference_history`: running statistics per preference group (pgrpo). Advantages use the state
  from before the step; then every rank folds the whole global batch into it, in rank order, so
  every rank holds the state one process would hold.

Per-token inputs: an estimator declares the ones it needs in `requires` (registry.ESTIMATOR_INPUTS):
`"values"` (a critic's V(s_t) [N, T]) and `"mask"` (the response mask [N, T]). A trainer passes each as
a keyword argument and calls `advantages_and_targets`, which returns (advantages, value targets):
    adv, returns = est.advantages_and_targets(rewards, index, groups, collectives, values=V, mask=m)
An estimator that requires `values` returns `(advantages [N, T], returns [N, T])` from `estimate`
and the critic is trained towards `returns` (gae); every other estimator returns advantages [N] (or
[N, T]) and the targets are None. Token advantages [N, T] go to the policy loss as they are.

`collectives` is any object with `rank`, `world` and `all_gather_objects(obj) -> [obj per rank]`
(fairalign's `Dist` is one; `LOCAL` is the one-process identity). That is all the cross-rank work an
estimator may do; a trainer never names an estimator.

A user's own estimator: subclass `AdvantageEstimator` (any scope, may hold state), or a plain
function `fn(rewards, index, groups=...) -> advantages` (prompt-group scope, stateless), selected by
`algo.advantage=module:function` or `file.py:function`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ._validate import check_name, check_rewards_index
from .advantages import batch_joint, dr_grpo, grpo, reinforce_pp_baseline, rloo
from .gae import compute_gae, last_token_rewards, masked_moments, whiten_with_moments
from .pgrpo import PreferenceGroupNormalizer
from .registry import ESTIMATOR_REGISTRY, register_estimator


class _Local:
    """Collectives of a single process."""
    rank, world = 0, 1

    @staticmethod
    def all_gather_objects(obj: Any) -> list:
        return [obj]


LOCAL = _Local()


class AdvantageEstimator:
    """Base class. Subclasses implement `estimate`; stateful ones also the state methods."""
    name = "custom"
    scope = "prompt_group"
    requires: tuple[str, ...] = ()  # per-token inputs (registry.ESTIMATOR_INPUTS), passed as keywords

    def __call__(self, rewards: torch.Tensor, index: torch.Tensor, groups: Sequence, collectives=LOCAL,
                 **inputs):
        """Advantages [N] for this rank's rewards [N] (prompt index [N], preference group per sample);
        with `values` required: (advantages [N, T], returns [N, T])."""
        missing = [k for k in self.requires if inputs.get(k) is None]
        extra = sorted(set(inputs) - set(self.requires))
        if missing or extra:
            raise ValueError(f"advantage estimator {self.name!r} requires the inputs {list(self.requires)}; "
                             f"missing {missing}, unexpected {extra}")
        return self.estimate(rewards, index, list(groups), collectives, **inputs)

    def advantages_and_targets(self, rewards, index, groups, collectives=LOCAL, **inputs):
        """(advantages [N] or [N, T], value targets [N, T] or None): how a trainer calls any estimator."""
        out = self(rewards, index, groups, collectives, **inputs)
        if "values" not in self.requires:
            return out, None
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"advantage estimator {self.name!r} requires values, so it must return "
                             f"(advantages, returns), got {type(out).__name__}")
        return out

    def estimate(self, rewards, index, groups, collectives) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        """Plain (JSON-able) state to checkpoint; None = stateless."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            raise ValueError(f"advantage estimator {self.name!r} is stateless but the checkpoint holds "
                             f"estimator state")

    def metrics(self) -> dict[str, float]:
        """Metrics about the last call, logged with the step."""
        return {}


class _GroupFunction(AdvantageEstimator):
    """A stateless function of (rewards, index), exact per prompt group."""
    fn: Callable = staticmethod(grpo)

    def estimate(self, rewards, index, groups, collectives):
        return self.fn(rewards, index)


@register_estimator("grpo", scope="prompt_group")
class GRPO(_GroupFunction):
    """(r − mean_g)/(std_g + 1e-6) within each prompt group (sample std)."""
    fn = staticmethod(grpo)


@register_estimator("dr_grpo", scope="prompt_group")
class DrGRPO(_GroupFunction):
    """r − mean_g within each prompt group (Dr. GRPO)."""
    fn = staticmethod(dr_grpo)


@register_estimator("rloo", scope="prompt_group")
class RLOO(_GroupFunction):
    """r_i − mean of the other samples of its prompt group (RLOO)."""
    fn = staticmethod(rloo)


def _gather(collectives, rewards: torch.Tensor, *extra: list) -> tuple[list, int]:
    """Every rank's (rewards, *extra) in rank order, and where this rank's rows start."""
    parts = collectives.all_gather_objects((rewards.tolist(), *extra))
    start = sum(len(p[0]) for p in parts[:collectives.rank])
    return parts, start


@register_estimator("reinforce_pp_baseline", scope="batch")
class ReinforcePPBaseline(AdvantageEstimator):
    """r − mean_g, then whitened over the whole global batch (REINFORCE++ with baseline)."""

    def estimate(self, rewards, index, groups, collectives):
        if collectives.world == 1:
            return reinforce_pp_baseline(rewards, index)
        parts, start = _gather(collectives, rewards, index.tolist())
        offset = 1 + max(max(p[1]) for p in parts)  # prompt ids made globally unique
        all_r = torch.tensor([x for p in parts for x in p[0]], dtype=rewards.dtype)
        all_i = torch.tensor([x + k * offset for k, p in enumerate(parts) for x in p[1]], dtype=torch.long)
        adv = reinforce_pp_baseline(all_r, all_i)
        return adv[start:start + rewards.numel()].to(rewards.device)


@register_estimator("batch_joint", scope="batch")
class BatchJoint(AdvantageEstimator):
    """(r − mean_B)/(std_B + 1e-6) over the step's whole global batch, prompts and preference groups mixed."""

    def __init__(self):
        self.last = (0.0, 0.0)  # (mean, sample std) of the last global batch

    def estimate(self, rewards, index, groups, collectives):
        if collectives.world == 1:
            all_r = rewards.detach().to(torch.float64).cpu()  # [N]
            adv, start = batch_joint(rewards, index), 0
        else:
            parts, start = _gather(collectives, rewards)
            all_r = torch.tensor([x for p in parts for x in p[0]], dtype=torch.float64)  # [N_global]
            adv = batch_joint(all_r, torch.zeros(all_r.numel(), dtype=torch.long))
            adv = adv[start:start + rewards.numel()].to(rewards.dtype).to(rewards.device)
        self.last = (float(all_r.mean()) if all_r.numel() else 0.0,
                     float(all_r.std(unbiased=True)) if all_r.numel() > 1 else 0.0)
        return adv

    def metrics(self):
        return {"batch_joint/mean": self.last[0], "batch_joint/std": self.last[1]}


@register_estimator("pgrpo", scope="preference_history", config_prefix="pgrpo_",
                    min_count=8, eps=1e-6, decay=None, min_std=1e-3, zero_std="fallback")
class PGRPO(AdvantageEstimator):
    """(r − mean_p)/(std_p + eps) against each preference group's reward history (P-GRPO)."""

    def __init__(self, min_count: int = 8, eps: float = 1e-6, decay: float | None = None, min_std: float = 1e-3,
                 zero_std: str = "fallback"):
        self.normalizer = PreferenceGroupNormalizer(min_count=min_count, eps=eps, decay=decay, min_std=min_std,
                                                    zero_std=zero_std)

    def estimate(self, rewards, index, groups, collectives):
        if collectives.world == 1:
            return self.normalizer(rewards, groups, index)
        adv = self.normalizer(rewards, groups, index, update=False)  # the pre-step state, same on every rank
        parts, _ = _gather(collectives, rewards, list(groups))
        self.normalizer.update(torch.tensor([x for p in parts for x in p[0]], dtype=torch.float64),
                               [g for p in parts for g in p[1]])
        return adv

    def state_dict(self):
        return self.normalizer.state_dict()

    def load_state_dict(self, state):
        if state is None:
            raise ValueError("the checkpoint has no P-GRPO state but algo.advantage=pgrpo")
        self.normalizer.load_state_dict(state)

    def metrics(self):
        out = {"pgrpo/history_frac": self.normalizer.last_history_frac}
        for g, (_n, mean, std) in self.normalizer.stats().items():
            out[f"pgrpo/{g}/mean"] = mean
            out[f"pgrpo/{g}/std"] = std
        return out


@register_estimator("gae", scope="batch", requires=("values", "mask"), gamma=1.0, lam=0.95, whiten=True)
class GAE(AdvantageEstimator):
    """GAE over response tokens from a critic's values, the reward on the last token (PPO; see gae.py)."""

    def __init__(self, gamma: float = 1.0, lam: float = 0.95, whiten: bool = True):
        if not isinstance(whiten, bool):
            raise ValueError(f"whiten must be true or false, got {whiten!r}")
        compute_gae(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), gamma, lam)  # checks gamma, lam
        self.gamma, self.lam, self.whiten = gamma, lam, whiten

    def estimate(self, rewards, index, groups, collectives, *, values, mask):
        token_rewards = last_token_rewards(rewards.to(values.dtype), mask)  # [N, T]
        adv, returns = compute_gae(token_rewards, values, mask, self.gamma, self.lam, whiten=False)  # [N, T]
        if self.whiten:  # over the valid tokens of the whole global batch
            moments = [float(x) for x in masked_moments(adv, mask)]
            parts = collectives.all_gather_objects(moments) if collectives.world > 1 else [moments]
            adv = whiten_with_moments(adv, mask, [sum(p[k] for p in parts) for k in range(3)])
        return adv, returns


class _UserFunction(AdvantageEstimator):
    def __init__(self, fn: Callable, label: str):
        self.fn, self.name = fn, label

    def estimate(self, rewards, index, groups, collectives):
        adv = self.fn(rewards, index, groups=groups)
        if not isinstance(adv, torch.Tensor) or adv.shape != rewards.shape:
            raise ValueError(f"advantage function {self.name} must return a tensor of shape "
                             f"{tuple(rewards.shape)}, got {getattr(adv, 'shape', type(adv).__name__)}")
        return adv


def build_estimator(name_or_obj: Any, **hparams) -> AdvantageEstimator:
    """An estimator instance: a registered name (hyperparameters checked against its declaration),
    an AdvantageEstimator subclass or instance, or a plain function (prompt-group scope)."""
    if isinstance(name_or_obj, AdvantageEstimator):
        return name_or_obj
    if isinstance(name_or_obj, type) and issubclass(name_or_obj, AdvantageEstimator):
        return name_or_obj(**hparams)
    if callable(name_or_obj):
        if hparams:
            raise ValueError(f"advantage function {name_or_obj!r} takes no hyperparameters, got {sorted(hparams)}")
        return _UserFunction(name_or_obj, getattr(name_or_obj, "__name__", repr(name_or_obj)))
    check_name(name_or_obj, ESTIMATOR_REGISTRY, "advantage estimator")
    spec = ESTIMATOR_REGISTRY[name_or_obj]
    unknown = sorted(set(hparams) - set(spec.hparams))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown} for estimator {name_or_obj!r}; "
                         f"valid: {', '.join(spec.hparams) or '(none)'}")
    return spec.cls(**{**spec.hparams, **hparams})


def compute_advantages(name: str, rewards: torch.Tensor, index: torch.Tensor, groups: Sequence | None = None,
                       **hparams) -> torch.Tensor:
    """Advantages [N] of the registered estimator `name`, freshly built (no history), for rewards [N] and
    prompt index [N] in one process; `groups`: the preference group of each sample (default: one group);
    `hparams`: the estimator's own hyperparameters. An estimator that needs per-token inputs (gae) is
    built with `build_estimator` and called with them."""
    est = build_estimator(name, **hparams)
    if est.requires:
        raise ValueError(f"advantage estimator {name!r} needs the per-token inputs {list(est.requires)}: use "
                         f"build_estimator({name!r}).advantages_and_targets(...)")
    check_rewards_index(rewards, index)
    return est(rewards, index, ["all"] * len(rewards) if groups is None else groups, LOCAL)
