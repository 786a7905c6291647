"""Named presets: partial configs selected by name (`fairalign train fspo`), merged over defaults.

Each algorithm preset is the published recipe's *loss-side* settings; rollout sizes and the model
stay the defaults. Every loss preset reuses each rollout batch for at least two optimizer steps
(the default `algo.minibatches=2`, docs/training.md), so the importance ratio leaves 1 and the
losses really differ (tests/test_offpolicy_defaults.py checks every preset). Task presets
(`rlpa-smollm2-cpu`) are whole documented configs. Rollout-side parts of a recipe are included
when fairalign has them as options (DAPO's dynamic sampling, overlong penalty and truncation mask:
rollout.* keys, docs/algorithms.md).
"""
from __future__ import annotations

import copy

PRESETS: dict[str, dict] = {
    # GRPO (DeepSeekMath): token-level PPO clip 0.2, group-normalized advantages, token-mean.
    "grpo": {"algo": {"loss": "ppo", "advantage": "grpo", "agg": "token-mean"}},
    # DAPO: clip-higher (0.2 / 0.28), token-mean aggregation, dynamic sampling (prompt groups with
    # all-zero advantages left out, up to 4 extra rounds), the soft overlong penalty (a buffer of 20% of
    # max_new_tokens: the paper's 4096 of 20480) and truncated completions masked.
    "dapo": {"algo": {"loss": "ppo", "advantage": "grpo", "agg": "token-mean",
                      "clip_low": 0.2, "clip_high": 0.28},
             "rollout": {"dynamic_sampling": "advantage", "dynamic_max_extra_rounds": 4,
                         "overlong_buffer_frac": 0.2, "overlong_penalty": 1.0, "mask_truncated": True}},
    # Dr. GRPO: no std normalization, constant-horizon token sum.
    "dr_grpo": {"algo": {"loss": "ppo", "advantage": "dr_grpo", "agg": "seq-mean-token-sum-norm"}},
    # GSPO: sequence ratio on the mean log ratio, tiny band, sequence-mean aggregation.
    "gspo": {"algo": {"loss": "gspo", "advantage": "grpo", "agg": "seq-mean-token-mean"}},
    # FSPO: sequence ratio exp(sum), √L band (fairalign defaults c_low 0.02, c_high 0.03).
    "fspo": {"algo": {"loss": "fspo", "advantage": "grpo", "agg": "token-mean", "drift": "none"}},
    # CISPO (MiniMax-M1): clipped, stop-gradient IS weight times log-prob.
    "cispo": {"algo": {"loss": "cispo", "advantage": "grpo", "agg": "token-mean"}},
    # PPO with a learned critic (RLHF's PPO; what the RLPA paper trains with): a separate value model built
    # from the policy's model files, GAE (γ 1, λ 0.95) token advantages, the clipped token loss. The
    # critic-free clipped loss alone stays `algo.loss=ppo` (the grpo preset).
    "ppo": {"algo": {"loss": "ppo", "advantage": "gae", "critic": "model", "agg": "token-mean"}},
    # P-GRPO advantages with the GRPO loss.
    "pgrpo": {"algo": {"loss": "ppo", "advantage": "pgrpo", "agg": "token-mean"}},
    # P-GRPO advantages with the FSPO loss: fairalign's flagship combination.
    "pgrpo-fspo": {"algo": {"loss": "fspo", "advantage": "pgrpo", "agg": "token-mean", "drift": "none"}},
    # RLPA on a laptop CPU with the embedded SmolLM2-135M (docs/rlpa.md §8, study: docs/evidence/rlpa_cpu): a
    # supervised warm-up on 40 x 8 = 320 oracle turns (the 135M model cannot follow the turn contract on its
    # own; 80 turns left the profile F1 at ~15, 320 at ~45 in a pilot), then GRPO on 10-turn dialogues, 4
    # dialogues x 4 candidates per step, with a KL penalty to the warm-up (a pilot at lr 5e-5 without it lost
    # the profile). The policy sees the recent part of the dialogue with its last stated profile (context
    # "recent"), in training, the warm-up's demonstrations and evaluation alike.
    "rlpa-smollm2-cpu": {
        "model": "smollm2-135m", "task": "rlpa", "output_dir": "runs/rlpa-smollm2-cpu", "steps": 6,
        "task_options": {"max_turns": 10, "eval_turns": 10, "context": "recent", "context_turns": 2},
        # micro_batch_size 16: a minibatch's 80 sequences (system prompt + recent turns + up to 160 new tokens) in
        # 5 forwards; in one, a step's training passes went past 24 GB (memory only: the update is micro-batch invariant)
        "algo": {"loss": "ppo", "advantage": "grpo", "agg": "token-mean", "beta": 0.05, "micro_batch_size": 16},
        "rollout": {"prompts_per_step": 4, "generations": 4, "max_new_tokens": 160, "temperature": 0.8},
        "optim": {"lr": 2e-5},
        "sft": {"steps": 40, "batch_size": 8, "lr": 5e-5},
        "eval": {"examples": 64, "batch_size": 64},
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        from fairalign.errors import ConfigError

        raise ConfigError(f"unknown preset '{name}'; known presets: {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[name])


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict merge (extra wins)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
