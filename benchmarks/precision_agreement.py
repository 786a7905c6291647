"""How far `precision=bf16` moves the numbers a training step uses, against fp32 (a benchmark script).

Samples the demo's first rollout shape (8 personas training prompts x 4 samples, 48 new tokens,
temperature 1) in fp32, then computes the responses' token log-probs with the same weights twice: in
fp32 and under bf16 autocast (what `precision=bf16` runs). Prints the absolute differences of token
log-probs (mean, 99th percentile, max over response tokens), of sequence log-probs (summed over a
response), and the spread of the per-token ratio exp(logp_bf16 − logp_fp32), which is what a PPO-style
ratio would see if one side ran in bf16 and the other in fp32 (within a bf16 run both sides are bf16).

    PYTHONPATH=src .venv/bin/python benchmarks/precision_agreement.py [--model smollm2-135m] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def agreement(model, tokenizer, prompts: list, generations: int, max_new_tokens: int, seed: int = 0) -> dict:
    """The fp32 vs bf16-autocast differences described in the module docstring, as a dict."""
    import torch

    from fairalign.rollout import HFGenerationEngine, sequence_logprobs

    batch = HFGenerationEngine(model, tokenizer, max_new_tokens=max_new_tokens, temperature=1.0).generate(
        prompts, generations=generations, generator_seed=seed)
    args = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    with torch.no_grad():
        lp32, _ = sequence_logprobs(model, *args)  # [B, R]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp16, _ = sequence_logprobs(model, *args)
    mask = batch.response_mask.bool()
    d = (lp16.float() - lp32)[mask]  # [N] per response token
    seq = ((lp16.float() - lp32) * mask).sum(1)  # [B]
    ratio = torch.exp(d)
    return {"tokens": int(mask.sum()), "rows": len(batch),
            "token_abs_mean": float(d.abs().mean()), "token_abs_p99": float(d.abs().quantile(0.99)),
            "token_abs_max": float(d.abs().max()), "sequence_abs_mean": float(seq.abs().mean()),
            "sequence_abs_max": float(seq.abs().max()),
            "ratio_outside_0.8_1.2": float(((ratio < 0.8) | (ratio > 1.2)).float().mean()),
            "ratio_p1_p99": [float(ratio.quantile(0.01)), float(ratio.quantile(0.99))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import torch

    from fairalign.envs import get_task
    from fairalign.models import load_policy

    torch.set_num_threads(a.threads)
    model, tok = load_policy(a.model)
    model.eval()
    prompts = [ex["prompt"] for ex in get_task("personas").train_examples[:8]]
    print(json.dumps({"model": a.model, **agreement(model, tok, prompts, 4, 48, a.seed)}, indent=1))


if __name__ == "__main__":
    main()
