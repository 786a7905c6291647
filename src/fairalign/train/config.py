"""The run configuration: one tree of dataclasses (one doc line per field), loaded from YAML or a
preset name and overridden with dotted `KEY=VALUE` pairs (values parsed as YAML scalars).

Every field's comment is its documentation (`fairalign config --help-keys` prints them). Validation
turns every mistake into a `ConfigError` with one line that names the key and the allowed values.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from fairalign.algos import AGG_MODES, ESTIMATOR_REGISTRY, KL_ESTIMATORS, POLICY_LOSS_REGISTRY
from fairalign.algos.policy_losses import FSPO_DRIFTS


class ConfigError(ValueError):
    """A bad key, value or name in the configuration (the CLI prints it as one line, exit code 2)."""


@dataclass
class AlgoConfig:
    loss: str = "ppo"                      # policy loss: {losses} | module:function | file.py:function
    agg: str = "token-mean"                # loss aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    advantage: str = "grpo"                # advantage estimator: {estimators} | module:function | file.py:function
    clip_low: Optional[float] = None      # lower clip ε (None = the loss's default)
    clip_high: Optional[float] = None     # upper clip ε (None = the loss's default)
    dual_clip: Optional[float] = None     # dual-clip constant c > 1 applied where A < 0 (None = off)
    c_low: Optional[float] = None         # lower band coefficient (log band μL − c_low·√L; None = the loss's default)
    c_high: Optional[float] = None        # upper band coefficient (log band μL + c_high·√L; None = the loss's default)
    drift: Optional[str] = None           # band centre μ: none (μ=0) | kl (token-mean log ratio of the whole minibatch); None = the loss's default
    loss_args: dict = field(default_factory=dict)  # extra keyword arguments of the loss (a user loss's own hyperparameters, loss_args.NAME=VALUE)
    horizon: Optional[int] = None         # seq-mean-token-sum-norm: constant divisor (None = rollout.max_new_tokens)
    beta: float = 0.0                      # KL-to-reference coefficient (0 = no reference model is loaded); the reference is the policy RL starts from
    kl: str = "k3"                         # KL estimator: k1 | k2 | k3
    ppo_epochs: int = 1                    # passes over each rollout batch
    minibatches: int = 2                   # optimizer steps per pass (the batch is split into this many parts); >= 2 updates per batch make the ratio leave 1
    micro_batch_size: int = 0              # sequences per forward/backward (gradient accumulation); 0 = whole minibatch; never changes the algorithm
    pgrpo_min_count: Optional[int] = None  # samples a preference group needs before its running stats are used (None = the estimator's default)
    pgrpo_eps: Optional[float] = None     # added to the group std (None = the estimator's default)
    pgrpo_decay: Optional[float] = None   # forgetting factor in (0, 1] for non-stationary rewards (None = cumulative)
    pgrpo_min_std: Optional[float] = None  # a group history with std <= this falls back to GRPO statistics (None = the estimator's default)
    gamma: Optional[float] = None          # GAE discount γ over response tokens, in [0, 1] (None = the estimator's default)
    lam: Optional[float] = None            # GAE λ in [0, 1] (None = the estimator's default)
    whiten: Optional[bool] = None          # GAE: whiten the advantages over the batch's response tokens (None = the estimator's default)
    critic: str = "none"                   # learned value function (needed by algo.advantage=gae): none | head (a value head on the policy's shared trunk) | model (a separate value model built from the same model files)
    vf_coef: float = 0.1                   # critic: coefficient of the value loss (head: added to the policy loss; model: scales the value model's own loss)
    value_clip: Optional[float] = 0.5      # critic: new values are clipped to the behaviour values ± this in the value loss (null = no clipping)
    critic_lr: Optional[float] = None      # critic: AdamW learning rate of the value head / value model (None = optim.lr)


@dataclass
class RolloutConfig:
    engine: str = "hf"                     # generation engine: hf (transformers generate) | vllm (GPU, optional extra)
    prompts_per_step: int = 4              # distinct prompts sampled per step
    generations: int = 4                   # responses sampled per prompt (the group size G)
    max_new_tokens: int = 64               # response length limit in tokens
    temperature: float = 1.0               # sampling temperature (0 = greedy)
    top_p: float = 1.0                     # nucleus sampling threshold in (0, 1]
    chat_template: str = "auto"            # auto (use the tokenizer's chat template if it has one) | none (raw prompt text)
    vllm_gpu_memory_utilization: float = 0.3  # engine=vllm: share of GPU memory vLLM may take (weights + KV cache), in (0, 1]
    vllm_enforce_eager: bool = False       # engine=vllm: no CUDA graphs (faster start, slower decoding)
    dynamic_sampling: str = "none"         # DAPO dynamic sampling: none | advantage (leave out prompt groups whose advantages under algo.advantage are all 0; sample more) | reward (leave out groups whose rewards all tie, whatever the estimator)
    dynamic_max_extra_rounds: int = 4      # dynamic sampling: at most this many extra generation rounds (prompts_per_step new prompts each) per step; then the step trains on the informative groups it has
    overlong_buffer_frac: float = 0.0      # DAPO soft overlong penalty: its buffer L_cache as a share of max_new_tokens (= L_max), in [0, 1]; the penalty ramps from 0 at L_max − L_cache to -overlong_penalty at L_max (0 = off)
    overlong_penalty: float = 1.0          # overlong penalty factor: a response of max_new_tokens tokens gets -overlong_penalty added to its reward
    mask_truncated: bool = False           # zero loss weight for completions that hit max_new_tokens without EOS (DAPO's overlong filtering)


@dataclass
class OptimConfig:
    lr: float = 1e-5                       # AdamW learning rate
    schedule: str = "constant"             # learning-rate schedule after warmup: constant | linear | cosine
    warmup_steps: int = 0                  # linear warmup over this many optimizer steps
    weight_decay: float = 0.0              # AdamW weight decay
    grad_clip: float = 1.0                 # max global gradient norm (0 = no clipping)
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas


@dataclass
class LoraConfig:
    enabled: bool = False                  # train a LoRA adapter (peft) instead of all weights
    r: int = 16                            # LoRA rank
    alpha: int = 32                        # LoRA alpha (scale = alpha / r)
    dropout: float = 0.0                   # LoRA dropout
    target_modules: str = "all-linear"     # peft target modules (a peft string or comma-separated module names)


@dataclass
class SFTConfig:
    steps: int = 0                         # supervised warm-up steps on the task's demonstrations before RL (0 = off; rlpa has oracle demonstrations)
    batch_size: int = 8                    # demonstrations per warm-up step (global, over all processes)
    lr: float = 5e-5                       # AdamW learning rate of the warm-up (its own optimizer, discarded after)


@dataclass
class EvalConfig:
    examples: int = 64                     # held-out examples used by `fairalign eval` and the demo (0 = all)
    temperature: float = 0.0               # held-out sampling temperature (0 = greedy)
    generations: int = 1                   # samples per held-out prompt
    batch_size: int = 32                   # prompts per generate call during evaluation


@dataclass
class LogConfig:
    samples_per_step: int = 4              # completions written to samples.jsonl per step
    tensorboard: bool = True               # write TensorBoard event files to <output_dir>/tb
    wandb: bool = False                    # also log to Weights & Biases (needs `pip install wandb`)
    progress: bool = True                  # live progress bar with ETA
    length_bins: Optional[list] = None    # clip-rate length-bin edges (None = powers of two)


@dataclass
class Config:
    model: str = "smollm2-135m"            # smollm2-135m (embedded default) | tiny (random test model) | local folder | hub name
    task: str = "personas"                 # built-in task (personas | arithmetic | rlpa) or a .jsonl/.parquet file
    task_reward: list = field(default_factory=list)          # reward functions "module:function" for a file task
    task_reward_weights: Optional[list] = None              # weights for task_reward (None = all 1)
    task_options: dict = field(default_factory=dict)         # options of a built-in task, e.g. task_options.n_train=256
    group_column: str = "group"            # dataset column holding the preference group
    output_dir: str = "runs/run"           # run directory (config, metrics, samples, checkpoints, plots)
    seed: int = 0                          # seed for data order, sampling and initialisation
    steps: int = 20                        # training steps (one rollout batch each)
    save_every: int = 0                    # checkpoint every N steps (0 = only at the end)
    keep_last: int = 2                     # checkpoints kept on disk
    precision: str = "fp32"                # fp32 | bf16 (autocast for forward passes)
    device: str = "auto"                   # where the policy lives: auto (the process's CUDA GPU when one is visible, else cpu) | cpu | cuda
    threads: int = 0                       # torch CPU threads per process (0 = torch's default, all cores; 1 is fastest on a shared/busy machine)
    dist_strategy: str = "auto"            # several processes: auto (fsdp2 / deepspeed under an accelerate FSDP v2 / DeepSpeed config, else ddp) | ddp (full replica per rank) | fsdp2 (weights, grads, optimizer state sharded) | deepspeed (ZeRO-2/3, stage from ACCELERATE_DEEPSPEED_ZERO_STAGE, default 2)
    trust_remote_code: bool = False        # allow custom model code from the model folder (off unless you trust it)
    allow_download: bool = False           # fetch a hub model that is not in the local Hugging Face cache
    max_prompt_tokens: int = 0             # longest prompt allowed in tokens (0 = model context − rollout.max_new_tokens)
    on_long_prompt: str = "error"          # a prompt longer than that: error (name the first one) | skip (drop and count)
    on_reward_error: str = "raise"         # a reward function that fails or returns NaN: raise | zero (score 0, count it)
    reward_timeout_s: float = 0.0          # limit in seconds on each call of a reward function; a call past it fails like a raising one (on_reward_error decides); 0 = no limit
    max_skipped_updates: int = 3           # stop after this many consecutive non-finite losses/gradients
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


# allowed values; the method names come from the registries in fairalign.algos (plus module:function)
CHOICES: dict[str, tuple[str, ...]] = {
    "algo.loss": tuple(POLICY_LOSS_REGISTRY),
    "algo.agg": tuple(AGG_MODES),
    "algo.advantage": tuple(ESTIMATOR_REGISTRY),
    "algo.drift": tuple(FSPO_DRIFTS),
    "algo.kl": tuple(KL_ESTIMATORS),
    "algo.critic": ("none", "head", "model"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.chat_template": ("auto", "none"),
    "rollout.dynamic_sampling": ("none", "advantage", "reward"),
    "optim.schedule": ("constant", "linear", "cosine"),
    "precision": ("fp32", "bf16"),
    "device": ("auto", "cpu", "cuda"),
    "on_reward_error": ("raise", "zero"),
    "on_long_prompt": ("error", "skip"),
}

# estimators that normalize within a prompt group (P-GRPO falls back to it): they need >= 2 generations
GROUP_ESTIMATORS = tuple(n for n, s in ESTIMATOR_REGISTRY.items() if s.scope in ("prompt_group", "preference_history"))


# ---------------------------------------------------------------------------------------------
# field documentation (parsed from the comments above, so the docs cannot drift from the code)

def field_docs() -> dict[str, str]:
    """Dotted key -> its one-line doc, read from this file's field comments."""
    import inspect
    import re

    docs: dict[str, str] = {}
    for cls, prefix in ((Config, ""), (AlgoConfig, "algo."), (RolloutConfig, "rollout."),
                        (OptimConfig, "optim."), (LoraConfig, "lora."), (SFTConfig, "sft."), (EvalConfig, "eval."),
                        (LogConfig, "log.")):
        for line in inspect.getsource(cls).splitlines():
            m = re.match(r"\s+(\w+):.*?#\s*(.+)$", line)
            if m:
                docs[prefix + m.group(1)] = m.group(2).strip()
    return _registry_docs(docs)


def _registry_docs(docs: dict[str, str]) -> dict[str, str]:
    """Fill in what the method registries know: the method names, and which method each
    hyperparameter key belongs to with its default."""
    from fairalign.train.methods import estimator_keys, loss_keys

    docs["algo.loss"] = docs["algo.loss"].replace("{losses}", " | ".join(POLICY_LOSS_REGISTRY))
    docs["algo.advantage"] = docs["algo.advantage"].replace("{estimators}", " | ".join(ESTIMATOR_REGISTRY))
    for key, owners in loss_keys().items():
        defaults = ", ".join(f"{n} {POLICY_LOSS_REGISTRY[n].hparams[key]!r}" for n in owners)
        docs[f"algo.{key}"] += f" [loss: {defaults}]"
    for key, (name, hp) in estimator_keys().items():
        if f"algo.{key}" in docs:
            docs[f"algo.{key}"] += f" [advantage: {name} {ESTIMATOR_REGISTRY[name].hparams[hp]!r}]"
    return docs


# ---------------------------------------------------------------------------------------------
# building a Config from dicts

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


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = prefix + str(k)
        if k not in names:
            raise _unknown_key_error(key)
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, k), v, key + ".")
        elif tp is dict:
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' expects a mapping, got {v!r}")
            setattr(obj, k, {**getattr(obj, k), **v})
        else:
            setattr(obj, k, _coerce(key, v, tp))


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


def build_config(base: dict | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- base dict (from YAML or a preset) <- dotted overrides; validated."""
    cfg = Config()
    if base:
        _apply(cfg, base)
    for ov in overrides or []:
        key, value = parse_override(ov)
        _apply(cfg, nest(key, value))
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# validation

def _check_choice(key: str, value: str) -> None:
    allowed = CHOICES[key]
    if value is None or (key in ("algo.loss", "algo.advantage") and ":" in str(value)):
        return  # None: the method's default; module:function: checked by train/methods.py
    if value not in allowed:
        raise ConfigError(f"config key '{key}' has unknown value '{value}'; allowed: {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key '{key}' must be {bound}, got {value}")


CRITIC_KEYS = ("vf_coef", "value_clip", "critic_lr")  # what only a critic uses


def _check_critic_keys(a: AlgoConfig) -> None:
    _positive("algo.vf_coef", a.vf_coef)
    for key in ("value_clip", "critic_lr"):
        if getattr(a, key) is not None:
            _positive(f"algo.{key}", getattr(a, key))
    if a.critic == "none":
        defaults = AlgoConfig()
        for key in CRITIC_KEYS:
            if getattr(a, key) != getattr(defaults, key):
                raise ConfigError(f"config key 'algo.{key}' applies only to a critic, but algo.critic=none; "
                                  f"set algo.critic=head or model (with algo.advantage=gae) or remove it")


def validate(cfg: Config) -> None:
    for key in CHOICES:
        obj: Any = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        _check_choice(key, obj)
    a, r, o = cfg.algo, cfg.rollout, cfg.optim
    _positive("threads", cfg.threads, allow_zero=True)
    _positive("sft.steps", cfg.sft.steps, allow_zero=True)
    _positive("sft.batch_size", cfg.sft.batch_size)
    _positive("sft.lr", cfg.sft.lr)
    if not (cfg.steps == 0 and cfg.sft.steps > 0):  # steps=0 with a warm-up: a supervised-only run
        _positive("steps", cfg.steps)
    _positive("save_every", cfg.save_every, allow_zero=True)
    _positive("keep_last", cfg.keep_last)
    _positive("optim.lr", o.lr)
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    _positive("optim.grad_clip", o.grad_clip, allow_zero=True)
    _positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), got {o.betas}")
    _positive("rollout.prompts_per_step", r.prompts_per_step)
    _positive("rollout.generations", r.generations)
    _positive("rollout.max_new_tokens", r.max_new_tokens)
    _positive("rollout.temperature", r.temperature, allow_zero=True)
    if not 0 < r.top_p <= 1:
        raise ConfigError(f"config key 'rollout.top_p' must be in (0, 1], got {r.top_p}")
    _positive("rollout.dynamic_max_extra_rounds", r.dynamic_max_extra_rounds, allow_zero=True)
    if r.dynamic_sampling != "none" and r.generations < 2:
        raise ConfigError(f"config key 'rollout.generations' must be >= 2 for rollout.dynamic_sampling="
                          f"{r.dynamic_sampling} (a group of one has nothing to compare), got {r.generations}")
    if not 0 <= r.overlong_buffer_frac <= 1:
        raise ConfigError(f"config key 'rollout.overlong_buffer_frac' must be in [0, 1] (a share of "
                          f"rollout.max_new_tokens), got {r.overlong_buffer_frac}")
    _positive("rollout.overlong_penalty", r.overlong_penalty, allow_zero=True)
    if a.advantage in GROUP_ESTIMATORS and r.generations < 2:
        raise ConfigError(f"config key 'rollout.generations' must be >= 2 for the group estimator "
                          f"'{a.advantage}', got {r.generations}")
    for key in ("c_low", "c_high"):
        if getattr(a, key) is not None:
            _positive(f"algo.{key}", getattr(a, key))
    for key in ("clip_low", "clip_high"):
        v = getattr(a, key)
        if v is not None:
            _positive(f"algo.{key}", v, allow_zero=True)
    if a.clip_low is not None and a.clip_low >= 1:
        raise ConfigError(f"config key 'algo.clip_low' must be < 1, got {a.clip_low}")
    if a.dual_clip is not None and a.dual_clip <= 1:
        raise ConfigError(f"config key 'algo.dual_clip' must be > 1 (or null), got {a.dual_clip}")
    if a.horizon is not None:
        _positive("algo.horizon", a.horizon)
    _positive("algo.beta", a.beta, allow_zero=True)
    _positive("algo.ppo_epochs", a.ppo_epochs)
    _positive("algo.minibatches", a.minibatches)
    _positive("algo.micro_batch_size", a.micro_batch_size, allow_zero=True)
    batch = r.prompts_per_step * r.generations
    if a.minibatches > batch:
        raise ConfigError(f"config key 'algo.minibatches' ({a.minibatches}) exceeds the batch size "
                          f"prompts_per_step*generations = {batch}")
    _check_critic_keys(a)
    from fairalign.train.methods import check_methods

    check_methods(a)  # method names, hyperparameters that belong to them, estimator values, critic
    _positive("lora.r", cfg.lora.r)
    _positive("lora.alpha", cfg.lora.alpha)
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"config key 'lora.dropout' must be in [0, 1), got {cfg.lora.dropout}")
    _positive("eval.examples", cfg.eval.examples, allow_zero=True)
    _positive("eval.temperature", cfg.eval.temperature, allow_zero=True)
    _positive("eval.generations", cfg.eval.generations)
    _positive("eval.batch_size", cfg.eval.batch_size)
    _positive("log.samples_per_step", cfg.log.samples_per_step, allow_zero=True)
    _positive("max_skipped_updates", cfg.max_skipped_updates)
    _positive("reward_timeout_s", cfg.reward_timeout_s, allow_zero=True)
    _positive("max_prompt_tokens", cfg.max_prompt_tokens, allow_zero=True)
    if cfg.task_reward_weights is not None and len(cfg.task_reward_weights) != len(cfg.task_reward):
        raise ConfigError(f"config key 'task_reward_weights' has {len(cfg.task_reward_weights)} values "
                          f"for {len(cfg.task_reward)} task_reward functions")
    if cfg.log.length_bins is not None:
        edges = cfg.log.length_bins
        if len(edges) < 2 or any(not isinstance(e, int) for e in edges) or sorted(set(edges)) != list(edges):
            raise ConfigError(f"config key 'log.length_bins' must be >= 2 increasing integers, got {edges}")
