"""RLPA with TRL: train a policy to learn about a simulated user over a multi-turn dialogue, inside
TRL 1.16's GRPOTrainer (fairalign's FSPO loss and P-GRPO advantages keyed by the user's profile group).

    python examples/trl_rlpa.py --model tiny --max-steps 2 --output-dir runs/trl-rlpa
    python examples/trl_rlpa.py --model Qwen/Qwen2.5-0.5B-Instruct --max-steps 200 --output-dir runs/trl-rlpa

--model takes fairalign's model names (`tiny`, `smollm2-135m-instruct`), a local model folder, or a
hub name already in the local Hugging Face cache (nothing is downloaded). Each generation batch plays
--dialogues dialogues of --max-turns turns with --num-generations candidates per turn; it is used for
two optimizer steps (steps_per_generation=2), so the second one is off-policy and FSPO's clip band
acts. TRL writes its state (trainer_state.json, logs) and the model into --output-dir.
What is not supported (vLLM sampling, among others) is listed in docs/integrations.md.
"""
import argparse
import os

import torch

from fairalign.envs.rlpa import get_profiles, load_profiles_jsonl
from fairalign.integrations.trl import (RLPA_REWARD_FUNCS, FairGRPOConfig, FairGRPOTrainer, rlpa_dataset,
                                        rlpa_rollout_func)
from fairalign.models import load_policy


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="fairalign model name, local folder, or cached hub name")
    p.add_argument("--max-steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--output-dir", required=True, help="TRL's output folder (trainer_state.json, model)")
    p.add_argument("--max-turns", type=int, default=3, help="assistant turns per dialogue (default 3)")
    p.add_argument("--num-generations", type=int, default=4, help="candidates per turn (default 4)")
    p.add_argument("--dialogues", type=int, default=4, help="dialogues per generation batch (default 4)")
    p.add_argument("--max-completion-length", type=int, default=96, help="tokens per turn (default 96)")
    p.add_argument("--profiles", help="a JSONL file of user profiles (default: fairalign's built-in 2700)")
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL marks rollout_func as experimental
    model, tokenizer = load_policy(a.model)
    profiles = load_profiles_jsonl(a.profiles) if a.profiles else get_profiles("train")
    rows = a.dialogues * a.max_turns * a.num_generations  # one generation batch, per process
    if rows % 2:
        raise SystemExit("trl_rlpa.py: --dialogues x --max-turns x --num-generations must be even "
                         "(the batch is split into 2 optimizer steps)")
    args = FairGRPOConfig(
        output_dir=a.output_dir,
        fair_loss="fspo",
        pgrpo_group_column="rlpa_group",  # the rollout writes each dialogue's profile group here
        per_device_train_batch_size=rows // 2,
        steps_per_generation=2,
        gradient_accumulation_steps=1,
        num_generations=a.num_generations,
        max_completion_length=a.max_completion_length,
        max_steps=a.max_steps,
        learning_rate=a.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # TRL defaults to bf16, which needs a GPU
        seed=a.seed,
    )
    trainer = FairGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        args=args,
        reward_funcs=RLPA_REWARD_FUNCS,
        train_dataset=rlpa_dataset(profiles),
        rollout_func=rlpa_rollout_func(max_turns=a.max_turns),
    )
    trainer.train()
    trainer.save_model()
    trainer.save_state()  # trainer_state.json in output_dir
    return trainer


if __name__ == "__main__":
    trainer = main()
