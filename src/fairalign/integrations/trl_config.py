"""`FairGRPOConfig`: TRL's `GRPOConfig` plus the fields that select fairalign's methods, and the checks
that refuse every TRL setting the integration cannot honour (docs/integrations.md).

Fields (all optional; unset = stock TRL behaviour):
    fair_loss           a fairalign policy loss by name (ppo | gspo | fspo | cispo, or one a user registered)
    fair_loss_kwargs    its hyperparameters, e.g. {"c_low": 0.02}; unset keys take the registry's defaults
    fair_agg            fairalign's loss aggregation (token-mean | seq-mean-token-mean | ...)
    fair_length_edges   length-bin edges of the clip-rate metrics (None = powers of two)
    pgrpo_group_column  dataset column holding the preference group -> P-GRPO advantages (None = TRL's)
    pgrpo_min_count, pgrpo_eps, pgrpo_decay, pgrpo_min_std, pgrpo_zero_std   the P-GRPO estimator's hyperparameters
    fair_is_band_high, fair_is_band_low, fair_is_band_drift   a sqrt(L) band for TRL's vLLM importance-
                        sampling correction (trl_is.py): keep a completion iff -low*sqrt(L) <= D - mu*L <=
                        high*sqrt(L) for its summed train-inference log mismatch D (mu: "kl" = the batch's
                        token-mean mismatch, "none" = 0); high None = TRL's own rule
Choices and defaults come from fairalign's registries (`POLICY_LOSS_REGISTRY`, `ESTIMATOR_REGISTRY`,
`AGG_MODES`), never from a copied list.

Every bad value is one `ConfigError` line naming the field. A TRL field that fair_loss / P-GRPO would
override is an error when it holds anything but TRL's own default (read from `GRPOConfig`, so a new TRL
default cannot make the check lie). Simplifications: the checks run in `__post_init__`, i.e. once, on
the values the config was built with; a field changed afterwards is checked again when the trainer
is built (it calls `check_fair_fields` without repeating the warning).
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from fairalign.algos import AGG_MODES, ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY, build_estimator, compute_policy_loss
from fairalign.errors import ConfigError

BAND_DRIFTS = ("kl", "none")  # fair_is_band_drift: centre the band at the batch's mean mismatch, or at 0
_PGRPO = ESTIMATOR_REGISTRY["pgrpo"].hparams  # min_count, eps, decay, min_std, zero_std -> default
_TRL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}

# TRL fields that fair_loss replaces -> what to do instead
_LOSS_OWNED = {
    "loss_type": "fair_loss replaces TRL's loss; choose the aggregation with fair_agg",
    "importance_sampling_level": "the ratio is the fair_loss's own (gspo/fspo are sequence-level)",
    "epsilon": "put the clip range in fair_loss_kwargs (ppo/gspo/cispo: clip_low, clip_high; fspo: c_low, c_high)",
    "epsilon_high": "put the clip range in fair_loss_kwargs (ppo/gspo/cispo: clip_low, clip_high; fspo: c_low, c_high)",
    "delta": "TRL's two-sided clip is not part of fairalign's losses (fair_loss_kwargs dual_clip is the dual clip)",
    "top_entropy_quantile": "the high-entropy token mask is not supported with fair_loss",
    "entropy_coef": "the entropy bonus is not supported with fair_loss",
    "use_adaptive_entropy": "the entropy bonus is not supported with fair_loss",
    "off_policy_mask_threshold": "the off-policy sequence mask is not supported with fair_loss",
}
# TRL fields that P-GRPO replaces -> why
_PGRPO_OWNED = {
    "scale_rewards": "P-GRPO normalizes by each preference group's reward history",
    "multi_objective_aggregation": "P-GRPO normalizes the weighted sum of the rewards (TRL's sum_then_normalize)",
}


def _fail(msg: str):
    raise ConfigError(f"FairGRPOConfig: {msg}")


def _names(keys) -> str:
    return ", ".join(repr(k) for k in keys)


def _refuse_changed(args, owned: dict, setting: str) -> None:
    """ConfigError for the first TRL field in `owned` that is not at TRL's default."""
    for name, why in owned.items():
        if getattr(args, name) != _TRL_DEFAULTS[name]:
            _fail(f"{name}={getattr(args, name)!r} cannot be honoured with {setting}: {why} "
                  f"(leave {name} at TRL's default {_TRL_DEFAULTS[name]!r})")


def resolved_loss_hparams(args) -> dict:
    """The fair_loss's hyperparameters: registry defaults updated with fair_loss_kwargs."""
    spec = POLICY_LOSS_REGISTRY[args.fair_loss]
    return {**spec.hparams, **(args.fair_loss_kwargs or {})}


def _check_loss(args, warn: bool) -> None:
    if args.fair_loss not in POLICY_LOSS_REGISTRY:
        _fail(f"fair_loss={args.fair_loss!r} is not a fairalign policy loss; valid: {_names(POLICY_LOSS_REGISTRY)}")
    spec = POLICY_LOSS_REGISTRY[args.fair_loss]
    unknown = sorted(set(args.fair_loss_kwargs or {}) - set(spec.hparams))
    if unknown:
        _fail(f"fair_loss_kwargs {unknown} are not hyperparameters of fair_loss={args.fair_loss!r}; "
              f"valid: {_names(spec.hparams) or '(none)'}")
    if args.fair_agg not in AGG_MODES:
        _fail(f"fair_agg={args.fair_agg!r} is not a loss aggregation; valid: {_names(AGG_MODES)}")
    one = torch.zeros(1, 1)  # a one-token batch: the loss checks its hyperparameter values when called
    try:
        compute_policy_loss(args.fair_loss, one, one, torch.zeros(1), torch.ones(1, 1, dtype=torch.bool),
                            args.fair_agg, **resolved_loss_hparams(args))
    except ValueError as exc:
        _fail(f"fair_loss_kwargs={args.fair_loss_kwargs!r} for fair_loss={args.fair_loss!r}: {exc}")
    _refuse_changed(args, _LOSS_OWNED, f"fair_loss={args.fair_loss!r}")
    spg, ga = args.steps_per_generation, args.gradient_accumulation_steps
    if spg % ga:
        _fail(f"steps_per_generation={spg} must be a multiple of gradient_accumulation_steps={ga} with fair_loss "
              f"(each optimizer step's global token count must be known when it starts)")
    if warn and spg == ga and args.num_iterations == 1:
        warnings.warn(f"FairGRPOConfig: fair_loss={args.fair_loss!r} with steps_per_generation == "
                      f"gradient_accumulation_steps and num_iterations=1: every update is on-policy (ratio = 1), so "
                      f"every loss gives the same update and nothing is clipped; set steps_per_generation to a "
                      f"multiple >= 2 of gradient_accumulation_steps, or num_iterations >= 2", stacklevel=3)


def _check_edges(edges) -> None:
    ok = (isinstance(edges, (list, tuple)) and len(edges) >= 2
          and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in edges)
          and all(b > a for a, b in zip(edges, edges[1:])))
    if not ok:
        _fail(f"fair_length_edges must be >= 2 strictly increasing integers >= 0, got {edges!r}")


def _check_pgrpo(args) -> None:
    if not isinstance(args.pgrpo_group_column, str) or not args.pgrpo_group_column:
        _fail(f"pgrpo_group_column must be a dataset column name or None, got {args.pgrpo_group_column!r}")
    try:
        build_estimator("pgrpo", **pgrpo_hparams(args))
    except ValueError as exc:
        _fail(f"pgrpo_*: {exc}")
    _refuse_changed(args, _PGRPO_OWNED, f"pgrpo_group_column={args.pgrpo_group_column!r}")


def _check_is_band(args, warn: bool) -> None:
    for name in ("fair_is_band_high", "fair_is_band_low"):
        value = getattr(args, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0 or value == float("inf")):
            _fail(f"{name} must be a positive number or None, got {value!r}")
    if args.fair_is_band_drift not in BAND_DRIFTS:
        _fail(f"fair_is_band_drift={args.fair_is_band_drift!r} is not one of {_names(BAND_DRIFTS)}")
    if args.fair_is_band_high is None:
        for name, default in (("fair_is_band_low", None), ("fair_is_band_drift", "kl")):
            if getattr(args, name) != default:
                _fail(f"{name}={getattr(args, name)!r} has no effect without fair_is_band_high (the band's upper "
                      f"edge turns it on)")
        return
    if not args.vllm_importance_sampling_correction:
        _fail("fair_is_band_high replaces the rule of TRL's vLLM importance-sampling correction: it needs "
              "vllm_importance_sampling_correction=True")
    if args.vllm_importance_sampling_mode != "sequence_mask":
        _fail(f"vllm_importance_sampling_mode={args.vllm_importance_sampling_mode!r} cannot be honoured with "
              f"fair_is_band_high: the sqrt(L) band replaces TRL's sequence-level mask (leave "
              f"vllm_importance_sampling_mode='sequence_mask')")
    if warn and not args.use_vllm:
        warnings.warn("FairGRPOConfig: fair_is_band_high acts on TRL's vLLM importance-sampling correction, which "
                      "runs only with use_vllm=True (like TRL's vllm_importance_sampling_* fields)", stacklevel=3)


def pgrpo_hparams(args) -> dict:
    return {hp: getattr(args, f"pgrpo_{hp}") for hp in _PGRPO}


def check_fair_fields(args, warn: bool = True) -> None:
    """Raise ConfigError (one line, naming the field) for a bad or unhonourable combination; `warn`:
    also warn when fair_loss is set but every update is on-policy."""
    if isinstance(args.fair_loss_kwargs, str):
        try:
            args.fair_loss_kwargs = json.loads(args.fair_loss_kwargs)
        except json.JSONDecodeError:
            _fail(f"fair_loss_kwargs must be a dict or a JSON object string, got {args.fair_loss_kwargs!r}")
    if args.fair_loss_kwargs is not None and not isinstance(args.fair_loss_kwargs, dict):
        _fail(f"fair_loss_kwargs must be a dict or a JSON object string, got {args.fair_loss_kwargs!r}")
    if args.fair_loss is not None:
        _check_loss(args, warn)
    else:
        for name, default in (("fair_loss_kwargs", None), ("fair_agg", "token-mean"), ("fair_length_edges", None)):
            if getattr(args, name) not in (default, {}):
                _fail(f"{name}={getattr(args, name)!r} has no effect without fair_loss (set fair_loss, e.g. 'fspo')")
    if args.fair_length_edges is not None:
        _check_edges(args.fair_length_edges)
    _check_is_band(args, warn)
    if args.pgrpo_group_column is not None:
        _check_pgrpo(args)
    else:
        for hp, default in _PGRPO.items():
            if getattr(args, f"pgrpo_{hp}") != default:
                _fail(f"pgrpo_{hp}={getattr(args, f'pgrpo_{hp}')!r} has no effect without pgrpo_group_column "
                      f"(the dataset column that holds each prompt's preference group)")


@dataclass
class FairGRPOConfig(GRPOConfig):
    """GRPOConfig plus fairalign's policy losses, P-GRPO advantages and length-fairness metrics."""

    fair_loss: str | None = field(default=None, metadata={
        "help": f"fairalign policy loss ({', '.join(POLICY_LOSS_REGISTRY)}); None = TRL's own loss (loss_type)."})
    fair_loss_kwargs: dict | str | None = field(default=None, metadata={
        "help": "Hyperparameters of fair_loss as a dict (or a JSON string), e.g. {\"c_low\": 0.02, \"c_high\": 0.03} "
                "for fspo; unset keys take fairalign's defaults."})
    fair_agg: str = field(default="token-mean", metadata={
        "help": f"Loss aggregation with fair_loss ({', '.join(AGG_MODES)}); normalizers are global over each "
                "optimizer step (all micro-batches and processes)."})
    fair_length_edges: list[int] | None = field(default=None, metadata={
        "help": "Length-bin edges of the clip-rate metrics (clip_rate/len/<lo>-<hi>, lre); None = powers of two."})
    pgrpo_group_column: str | None = field(default=None, metadata={
        "help": "Dataset column with each prompt's preference group: P-GRPO advantages against that group's "
                "reward history. None = TRL's advantages."})
    pgrpo_min_count: int = field(default=_PGRPO["min_count"], metadata={
        "help": "Samples a preference group needs before its history is used (before: GRPO statistics)."})
    pgrpo_eps: float = field(default=_PGRPO["eps"], metadata={"help": "Added to the group's std."})
    pgrpo_decay: float | None = field(default=_PGRPO["decay"], metadata={
        "help": "Forgetting factor in (0, 1] per update of a group, for non-stationary rewards; None = cumulative."})
    pgrpo_min_std: float = field(default=_PGRPO["min_std"], metadata={
        "help": "Zero-variance threshold: a group history with std <= this is degenerate (see pgrpo_zero_std)."})
    pgrpo_zero_std: str = field(default=_PGRPO["zero_std"], metadata={
        "help": "A degenerate history: 'fallback' (GRPO statistics of the prompt group) or 'floor' (the history's "
                "mean, divided by max(std, pgrpo_min_std))."})

    fair_is_band_high: float | None = field(default=None, metadata={
        "help": "With vLLM: replace TRL's importance-sampling mask by a sqrt(L) band: keep a completion iff its summed "
                "train-inference log mismatch D <= fair_is_band_high * sqrt(L) (and >= -fair_is_band_low * sqrt(L)). "
                "None = TRL's rule."})
    fair_is_band_low: float | None = field(default=None, metadata={
        "help": "Lower edge of the sqrt(L) band (-fair_is_band_low * sqrt(L)); None = no lower edge."})
    fair_is_band_drift: str = field(default="kl", metadata={
        "help": "Centre of the sqrt(L) band: 'kl' = mu*L with mu the token-mean mismatch of the generation batch "
                "(vLLM sampling makes D drift as -KL*L), 'none' = 0."})

    def __post_init__(self):
        super().__post_init__()
        check_fair_fields(self)
