"""Evaluating a policy on its task, for every task: the engine built from `eval.*` and `rollout.*`, then
`Task.evaluate` (held-out reward per preference group by default; RLPA's AL(k), AVG, N-IR, N-R²).
`fairalign eval`, `fairalign eval-dialogue`, the demo and `fairalign compare` all evaluate through
`evaluate_policy`, and find what to evaluate (a run's final/ or checkpoints/step-N, or a model name)
through `resolve_target`."""
from __future__ import annotations

import time
from pathlib import Path

from fairalign.config import Config, build_config, load_yaml
from fairalign.errors import ConfigError
from fairalign.rollout import HFGenerationEngine


def evaluation_engine(model, tokenizer, task, cfg: Config) -> HFGenerationEngine:
    """The generation engine of an evaluation: eval.temperature (top_p only when sampling), the rollout's
    max_new_tokens and chat template, the task's completion prefix."""
    e = cfg.eval
    return HFGenerationEngine(model, tokenizer, max_new_tokens=cfg.rollout.max_new_tokens, temperature=e.temperature,
                              top_p=cfg.rollout.top_p if e.temperature > 0 else 1.0,
                              chat_template=cfg.rollout.chat_template, completion_prefix=task.completion_prefix)


def evaluate_policy(model, tokenizer, task, cfg: Config, *, progress=None, parts=None) -> dict:
    """`task.evaluate` of the policy with the config's eval.* settings (model in eval mode meanwhile); the
    result gains `eval_s`, its wall time. `parts`: a store of finished parts (eval/partial.py) that a rerun
    after a fault does not redo. A remote service that keeps failing raises its EnvironmentFault (the
    commands turn it into one error line that says what is kept and how to go on)."""
    e = cfg.eval
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        res = task.evaluate(evaluation_engine(model, tokenizer, task, cfg), examples=e.examples,
                            generations=e.generations, seed=cfg.seed, batch_size=e.batch_size,
                            on_reward_error=cfg.on_reward_error, progress=progress, parts=parts)
    finally:
        model.train(was_training)
    res["eval_s"] = time.perf_counter() - t0
    return res


def resolve_target(target: str, overrides: list[str], checkpoint: int | None = None,
                   command: str = "eval") -> tuple[Config, str | None, Path | None]:
    """(config, weights folder or None, run directory or None) of what `fairalign eval TARGET` evaluates:
    a run directory (its config.yaml + overrides; its final/ model, or checkpoints/step-N with
    `checkpoint`), else a model name or folder (the defaults + overrides, `model=TARGET`)."""
    from fairalign.train.checkpoint import list_checkpoints

    run = Path(target)
    if (run / "config.yaml").is_file():
        cfg = build_config(load_yaml(run / "config.yaml"), overrides)
        if checkpoint is not None:
            found = dict(list_checkpoints(run))
            if checkpoint not in found:
                have = ", ".join(str(s) for s in sorted(found)) or "none"
                raise ConfigError(f"{command}: --checkpoint {checkpoint}: run '{target}' has no complete checkpoint "
                                  f"step-{checkpoint} (complete checkpoints: {have}; keep_last prunes older ones)")
            return cfg, str(found[checkpoint] / "model"), run
        if not (run / "final").is_dir():
            raise ConfigError(f"{command}: run '{target}' has no final model (is it finished? `--checkpoint N` "
                              f"evaluates one of its checkpoints)")
        return cfg, str(run / "final"), run
    if checkpoint is not None:
        raise ConfigError(f"{command}: --checkpoint needs a run directory; '{target}' has no config.yaml")
    if run.is_dir() and not (run / "config.json").is_file():
        raise ConfigError(f"{command}: '{target}' is neither a run directory (no config.yaml) nor a model folder "
                          f"(no config.json)")
    if target.startswith(("runs/", "./runs/")) and not run.exists():
        raise ConfigError(f"{command}: run directory '{target}' does not exist (a run writes it: `fairalign demo` "
                          f"writes runs/demo, `fairalign train` its output_dir)")
    if target.startswith(("./", "../", "/", "~")) and not run.expanduser().exists():
        raise ConfigError(f"{command}: '{target}' does not exist (neither a run directory nor a model folder)")
    return build_config({}, [*overrides, f"model={target}"]), None, None


def load_policy_for_eval(cfg: Config, weights: str | None):
    """(model, tokenizer) on the config's device: the base model with the run's weights or LoRA adapter."""
    from fairalign.models import load_trained, resolve_device

    model, tok = load_trained(cfg.model, weights, adapter=cfg.lora.enabled and weights is not None,
                              trust_remote_code=cfg.trust_remote_code, allow_download=cfg.allow_download)
    return model.to(resolve_device(cfg.device)), tok
