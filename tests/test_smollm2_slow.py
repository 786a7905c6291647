"""Slow: a few real training steps of P-GRPO + FSPO on the embedded SmolLM2-135M (the demo's
model), checking the run is healthy end to end. Run with `make test-slow`."""
import json
import math

import pytest

from fairalign.config import build_config
from fairalign.train.trainer import Trainer


@pytest.mark.slow
def test_smollm2_trains_a_few_steps(tmp_path, user_model_cache):
    cfg = build_config({"model": "smollm2-135m", "task": "personas", "steps": 2, "seed": 0,
                        "output_dir": str(tmp_path / "run"),
                        "rollout": {"prompts_per_step": 2, "generations": 4, "max_new_tokens": 24},
                        "algo": {"loss": "fspo", "advantage": "pgrpo", "minibatches": 2},
                        "optim": {"lr": 2e-5},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg)
    rows = tr.train()
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= r["reward/mean"] <= 1.0
        assert math.isfinite(r["loss"]) and r["skipped_updates"] == 0
        assert 0 < r["response_length/mean"] <= 24
        assert r["entropy"] > 0
    # real text comes out, and the final model reloads as a plain HF folder
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert any(len(s["completion"].split()) >= 2 for s in samples)
    from fairalign.models import load_policy

    model, tok = load_policy(tmp_path / "run" / "final")
    assert model.config.model_type == "llama"
