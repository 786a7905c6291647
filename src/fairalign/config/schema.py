"""The run configuration: one tree of dataclasses, one documented field each (the doc is the field's
`metadata["doc"]`; `fairalign config --keys` prints them with what the method registries add), plus the
allowed values of the named choices. Loading (YAML + dotted KEY=VALUE) is load.py, checking validate.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Optional

from fairalign.algos import (
    AGG_MODES,
    ESTIMATOR_REGISTRY,
    KL_ESTIMATORS,
    POLICY_LOSS_REGISTRY,
)
from fairalign.algos.pgrpo import ZERO_STD_RULES
from fairalign.algos.policy_losses import FSPO_DRIFTS


def setting(default: Any, doc: str) -> Any:
    """A config field with its one-line doc as metadata; a list or dict default is copied per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class AlgoConfig:
    loss: str = setting("ppo", "policy loss: {losses} | module:function | file.py:function")
    agg: str = setting("token-mean", "loss aggregation: token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm")
    advantage: str = setting("grpo", "advantage estimator: {estimators} | module:function | file.py:function")
    clip_low: Optional[float] = setting(None, "lower clip ε (None = the loss's default)")
    clip_high: Optional[float] = setting(None, "upper clip ε (None = the loss's default)")
    dual_clip: Optional[float] = setting(None, "dual-clip constant c > 1 applied where A < 0 (None = off)")
    c_low: Optional[float] = setting(None, "lower band coefficient (log band μL − c_low·√L; None = the loss's default)")
    c_high: Optional[float] = setting(None, "upper band coefficient (log band μL + c_high·√L; None = the loss's default)")
    drift: Optional[str] = setting(None, "band centre μ: none (μ=0) | kl (token-mean log ratio of the whole minibatch); None = the loss's default")
    loss_args: dict = setting({}, "extra keyword arguments of the loss (a user loss's own hyperparameters, loss_args.NAME=VALUE)")
    horizon: Optional[int] = setting(None, "seq-mean-token-sum-norm: constant divisor (None = rollout.max_new_tokens)")
    beta: float = setting(0.0, "KL-to-reference coefficient (0 = no reference model is loaded); the reference is the policy RL starts from")
    kl: str = setting("k3", "KL estimator: k1 | k2 | k3")
    ppo_epochs: int = setting(1, "passes over each rollout batch")
    minibatches: int = setting(2, "optimizer steps per pass (the batch is split into this many parts); >= 2 updates per batch make the ratio leave 1")
    micro_batch_size: int = setting(0, "sequences per forward/backward (gradient accumulation); 0 = whole minibatch; never changes the algorithm")
    pgrpo_min_count: Optional[int] = setting(None, "samples a preference group needs before its running stats are used (None = the estimator's default)")
    pgrpo_eps: Optional[float] = setting(None, "added to the group std (None = the estimator's default)")
    pgrpo_decay: Optional[float] = setting(None, "forgetting factor in (0, 1] for non-stationary rewards (None = cumulative)")
    pgrpo_min_std: Optional[float] = setting(None, "zero-variance threshold: a group history with std <= this is degenerate (pgrpo_zero_std decides what happens; None = the estimator's default)")
    pgrpo_zero_std: Optional[str] = setting(None, "a degenerate history (std <= pgrpo_min_std): fallback (the sample gets its prompt group's GRPO statistics) | floor (the history's mean, divided by max(std, pgrpo_min_std)); None = the estimator's default")
    gamma: Optional[float] = setting(None, "GAE discount γ over response tokens, in [0, 1] (None = the estimator's default)")
    lam: Optional[float] = setting(None, "GAE λ in [0, 1] (None = the estimator's default)")
    whiten: Optional[bool] = setting(None, "GAE: whiten the advantages over the batch's response tokens (None = the estimator's default)")
    critic: str = setting("none", "learned value function (needed by algo.advantage=gae): none | head (a value head on the policy's shared trunk) | model (a separate value model built from the same model files)")
    vf_coef: float = setting(0.1, "critic: coefficient of the value loss (head: added to the policy loss; model: scales the value model's own loss)")
    value_clip: Optional[float] = setting(0.5, "critic: new values are clipped to the behaviour values ± this in the value loss (null = no clipping)")
    critic_lr: Optional[float] = setting(None, "critic: AdamW learning rate of the value head / value model (None = optim.lr)")


@dataclass
class RolloutConfig:
    engine: str = setting("hf", "generation engine: hf (transformers generate) | vllm (GPU, optional extra)")
    prompts_per_step: int = setting(4, "distinct prompts sampled per step")
    generations: int = setting(4, "responses sampled per prompt (the group size G)")
    max_new_tokens: int = setting(64, "response length limit in tokens")
    temperature: float = setting(1.0, "sampling temperature (0 = greedy)")
    top_p: float = setting(1.0, "nucleus sampling threshold in (0, 1]")
    chat_template: str = setting("auto", "auto (use the tokenizer's chat template if it has one) | none (raw prompt text)")
    vllm_gpu_memory_utilization: float = setting(0.3, "engine=vllm: share of GPU memory vLLM may take (weights + KV cache), in (0, 1]")
    vllm_enforce_eager: bool = setting(False, "engine=vllm: no CUDA graphs (faster start, slower decoding)")
    dynamic_sampling: str = setting("none", "DAPO dynamic sampling: none | advantage (leave out prompt groups whose advantages under algo.advantage are all 0; sample more) | reward (leave out groups whose rewards all tie, whatever the estimator)")
    dynamic_max_extra_rounds: int = setting(4, "dynamic sampling: at most this many extra generation rounds (prompts_per_step new prompts each) per step; then the step trains on the informative groups it has")
    overlong_buffer_frac: float = setting(0.0, "DAPO soft overlong penalty: its buffer L_cache as a share of max_new_tokens (= L_max), in [0, 1]; the penalty ramps from 0 at L_max − L_cache to -overlong_penalty at L_max (0 = off)")
    overlong_penalty: float = setting(1.0, "overlong penalty factor: a response of max_new_tokens tokens gets -overlong_penalty added to its reward")
    mask_truncated: bool = setting(False, "zero loss weight for completions that hit max_new_tokens without EOS (DAPO's overlong filtering)")


@dataclass
class OptimConfig:
    lr: float = setting(1e-5, "AdamW learning rate")
    schedule: str = setting("constant", "learning-rate schedule after warmup: constant | linear | cosine")
    warmup_steps: int = setting(0, "linear warmup over this many optimizer steps")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    grad_clip: float = setting(1.0, "max global gradient norm (0 = no clipping)")
    betas: list = setting([0.9, 0.999], "AdamW betas")


@dataclass
class LoraConfig:
    enabled: bool = setting(False, "train a LoRA adapter (peft) instead of all weights")
    r: int = setting(16, "LoRA rank")
    alpha: int = setting(32, "LoRA alpha (scale = alpha / r)")
    dropout: float = setting(0.0, "LoRA dropout")
    target_modules: str = setting("all-linear", "peft target modules (a peft string or comma-separated module names)")


@dataclass
class SFTConfig:
    steps: int = setting(0, "supervised warm-up steps on the task's demonstrations before RL (0 = off; rlpa has oracle demonstrations)")
    batch_size: int = setting(8, "demonstrations per warm-up step (global, over all processes)")
    lr: float = setting(5e-5, "AdamW learning rate of the warm-up (its own optimizer, discarded after)")


@dataclass
class EvalConfig:
    examples: int = setting(64, "held-out examples used by `fairalign eval` and the demo (0 = all)")
    temperature: float = setting(0.0, "held-out sampling temperature (0 = greedy)")
    generations: int = setting(1, "samples per held-out prompt")
    batch_size: int = setting(32, "prompts per generate call during evaluation")


@dataclass
class LogConfig:
    samples_per_step: int = setting(4, "completions written to samples.jsonl per step")
    tensorboard: bool = setting(True, "write TensorBoard event files to <output_dir>/tb")
    wandb: bool = setting(False, "also log to Weights & Biases (needs `pip install wandb`)")
    progress: bool = setting(True, "live progress bar with ETA")
    length_bins: Optional[list] = setting(None, "clip-rate length-bin edges (None = powers of two)")
    grad_cosine: bool = setting(False, "diagnostic: on every off-policy minibatch, the cosine between the gradients of the clipped policy loss and of the same loss unclipped (one extra backward per micro-batch); logged as grad_cosine")


@dataclass
class Config:
    model: str = setting("smollm2-135m", "smollm2-135m (embedded default) | tiny (random test model) | local folder | hub name")
    task: str = setting("personas", "built-in task (personas | arithmetic | rlpa) or a .jsonl/.parquet file")
    task_reward: list = setting([], "reward functions \"module:function\" for a file task")
    task_reward_weights: Optional[list] = setting(None, "weights for task_reward (None = all 1)")
    task_options: dict = setting({}, "options of a built-in task, e.g. task_options.n_train=256")
    group_column: str = setting("group", "dataset column holding the preference group")
    output_dir: str = setting("runs/run", "run directory (config, metrics, samples, checkpoints, plots)")
    seed: int = setting(0, "seed for data order, sampling and initialisation")
    steps: int = setting(20, "training steps (one rollout batch each)")
    save_every: int = setting(0, "checkpoint every N steps (0 = only at the end)")
    keep_last: int = setting(2, "checkpoints kept on disk")
    precision: str = setting("fp32", "fp32 | bf16 (autocast for forward passes)")
    device: str = setting("auto", "where the policy lives: auto (the process's CUDA GPU when one is visible, else cpu) | cpu | cuda")
    threads: int = setting(0, "torch CPU threads per process (0 = torch's default, all cores; 1 is fastest on a shared/busy machine)")
    cpu_allocator: str = setting("keep", "keep: the process's C allocator (glibc, Linux) keeps freed memory for reuse instead of returning it to the system, so a step's large temporary tensors (logits, their gradients) do not page-fault in anew each time (docs/performance.md; the process's resident memory then stays near its peak) | system: the allocator's own defaults")
    dist_strategy: str = setting("auto", "several processes: auto (fsdp2 / deepspeed under an accelerate FSDP v2 / DeepSpeed config, else ddp) | ddp (full replica per rank) | fsdp2 (weights, grads, optimizer state sharded) | deepspeed (ZeRO-2/3, stage from ACCELERATE_DEEPSPEED_ZERO_STAGE, default 2)")
    trust_remote_code: bool = setting(False, "allow custom model code from the model folder (off unless you trust it)")
    allow_download: bool = setting(False, "fetch a hub model that is not in the local Hugging Face cache")
    max_prompt_tokens: int = setting(0, "longest prompt allowed in tokens (0 = model context − rollout.max_new_tokens)")
    on_long_prompt: str = setting("error", "a prompt longer than that: error (name the first one) | skip (drop and count)")
    on_reward_error: str = setting("raise", "a reward function that fails or returns NaN: raise | zero (score 0, count it)")
    reward_timeout_s: float = setting(0.0, "limit in seconds on each call of a reward function; a call past it fails like a raising one (on_reward_error decides); 0 = no limit")
    max_skipped_updates: int = setting(3, "stop after this many consecutive non-finite losses/gradients")
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
    "algo.pgrpo_zero_std": ZERO_STD_RULES,
    "algo.critic": ("none", "head", "model"),
    "rollout.engine": ("hf", "vllm"),
    "rollout.chat_template": ("auto", "none"),
    "rollout.dynamic_sampling": ("none", "advantage", "reward"),
    "optim.schedule": ("constant", "linear", "cosine"),
    "precision": ("fp32", "bf16"),
    "cpu_allocator": ("keep", "system"),
    "device": ("auto", "cpu", "cuda"),
    "on_reward_error": ("raise", "zero"),
    "on_long_prompt": ("error", "skip"),
}

# estimators that normalize within a prompt group (P-GRPO falls back to it): they need >= 2 generations
GROUP_ESTIMATORS = tuple(n for n, s in ESTIMATOR_REGISTRY.items() if s.scope in ("prompt_group", "preference_history"))
