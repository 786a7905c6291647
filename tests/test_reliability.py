"""Bad data and bad numbers: long prompts (error naming the line, or skip and count), reward
functions that fail (stop naming the function, or score 0 and count), non-finite losses (skip the
update, then stop with a resumable checkpoint after K in a row)."""
import json

import pytest
import torch

from fairalign.config import methods as methods_mod
from fairalign.train.checkpoint import list_checkpoints
from fairalign.config import build_config
from fairalign.train.trainer import Trainer
from fairalign.errors import TrainingError

BASE = {"model": "tiny", "steps": 2, "seed": 0,
        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 6},
        "log": {"tensorboard": False, "progress": False}}


def _file_task(tmp_path, prompts, reward_body="return [float(len(c)) for c in completions]"):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "split": "train" if i else "test"}) + "\n"
                            for i, p in enumerate(["held out"] + prompts)))
    mod = tmp_path / "rw.py"
    mod.write_text(f"import math\ndef my_reward(prompts, completions, **kw):\n    {reward_body}\n")
    return {"task": str(data), "task_reward": [f"{mod}:my_reward"]}


def _cfg(tmp_path, extra, overrides=()):
    base = {**BASE, **extra, "output_dir": str(tmp_path / "run")}
    return build_config(base, list(overrides))


def test_long_prompt_is_an_error_naming_the_line(tmp_path):
    prompts = ["short one", "word " * 400, "another short"]
    cfg = _cfg(tmp_path, _file_task(tmp_path, prompts), ["max_prompt_tokens=64"])
    with pytest.raises(ValueError, match=r"data.jsonl: line 3: prompt has \d+ tokens, more than the 64 allowed"):
        Trainer(cfg)


def test_long_prompt_skip_drops_and_counts(tmp_path):
    prompts = ["short one", "word " * 400, "another short", "word " * 300]
    cfg = _cfg(tmp_path, _file_task(tmp_path, prompts), ["max_prompt_tokens=64", "on_long_prompt=skip"])
    tr = Trainer(cfg)
    assert len(tr.train_examples) == 2
    rows = tr.train()
    assert rows[0]["data/skipped_long_prompts"] == 2


def test_nan_reward_stops_with_the_function_name(tmp_path):
    cfg = _cfg(tmp_path, _file_task(tmp_path, ["a", "b", "c"], "return [math.nan] * len(completions)"))
    with pytest.raises(ValueError, match="my_reward"):
        Trainer(cfg).train()


def test_nan_reward_zero_mode_counts_and_trains(tmp_path):
    cfg = _cfg(tmp_path, _file_task(tmp_path, ["a", "b", "c"], "return [math.nan] * len(completions)"),
               ["on_reward_error=zero"])
    rows = Trainer(cfg).train()
    assert rows[0]["reward/errors"] == 4
    assert rows[0]["reward/mean"] == 0.0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_non_finite_loss_skips_then_stops_with_checkpoint(tmp_path, monkeypatch):
    real = methods_mod.compute_policy_loss

    def nan_loss(*a, **k):
        loss, stats = real(*a, **k)
        return loss * float("nan"), stats

    cfg = _cfg(tmp_path, {"task": "personas", "steps": 5}, ["max_skipped_updates=2", "algo.minibatches=1"])
    tr = Trainer(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    monkeypatch.setattr(methods_mod, "compute_policy_loss", nan_loss)
    row = tr.train_step()
    assert row["skipped_updates"] == 1
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())  # no NaN update
    with pytest.raises(TrainingError, match="2 consecutive updates had a non-finite loss"):
        tr.train_step()
    assert list_checkpoints(tmp_path / "run"), "a resumable checkpoint must be written before stopping"
    monkeypatch.setattr(methods_mod, "compute_policy_loss", real)
    tr2 = Trainer(cfg, resume=True)
    tr2.train()
    assert tr2.step == 5
