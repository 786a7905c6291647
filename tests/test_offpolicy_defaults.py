"""Every method is exercised by default (issue 10 §C): loss presets reuse each rollout batch for at
least two optimizer steps, so the losses give different updates; clip metrics leave out the exactly
on-policy first update; clip rates per length bin and the LRE count sequences for every loss."""
import json

import pytest
import torch

from fairalign.algos import POLICY_LOSS_REGISTRY
from fairalign.config import build_config
from fairalign.config.presets import PRESETS, get_preset, merge
from fairalign.train.trainer import Trainer

FAST = {"model": "tiny", "task": "personas", "steps": 1, "seed": 5,
        "rollout": {"prompts_per_step": 2, "generations": 4, "max_new_tokens": 8},
        "optim": {"lr": 1e-2, "grad_clip": 0},
        "log": {"tensorboard": False, "progress": False}}

LOSS_PRESETS = sorted(n for n, p in PRESETS.items() if "task" not in p)


@pytest.mark.parametrize("preset", LOSS_PRESETS)
def test_every_loss_preset_reuses_each_rollout_batch(preset):
    cfg = build_config(get_preset(preset))
    assert cfg.algo.ppo_epochs * cfg.algo.minibatches >= 2, preset


def _train(tmp_path, preset, **algo):
    base = merge(merge(get_preset(preset), FAST), {"algo": algo})
    base["output_dir"] = str(tmp_path / f"{preset}-{len(list(tmp_path.iterdir()))}")
    tr = Trainer(build_config(base))
    m = tr.train()[0]
    return m, {n: p.detach().clone() for n, p in tr.model.named_parameters()}


def test_losses_give_different_updates_by_default(tmp_path):
    """With the presets' off-policy reuse the ratio leaves 1: grpo, gspo, fspo and cispo differ."""
    params = {p: _train(tmp_path, p)[1] for p in ("grpo", "gspo", "fspo", "cispo")}
    names = list(params)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same = all(torch.equal(params[a][k], params[b][k]) for k in params[a])
            assert not same, f"{a} and {b} gave bit-identical updates"


def test_clip_metrics_leave_out_the_on_policy_first_update(tmp_path):
    """minibatches=2, one epoch: only the second minibatch (half the sequences) can clip and is counted."""
    m, _ = _train(tmp_path, "gspo", ppo_epochs=1, minibatches=2)
    counted = sum(v for k, v in m.items() if k.startswith("clip_count/len/"))
    assert counted == 4  # 2 prompts x 4 generations / 2 minibatches
    assert m["clip/off_policy_updates"] == 1


@pytest.mark.parametrize("loss", sorted(POLICY_LOSS_REGISTRY))
def test_clip_rates_count_sequences_for_every_loss(tmp_path, loss):
    """The per-bin counts are sequences (not tokens) whatever the loss's clip granularity, and the
    clipped counts are at most the sequence counts."""
    m, _ = _train(tmp_path, "grpo", loss=loss, ppo_epochs=2, minibatches=1,
                  **({"agg": "seq-mean-token-mean"} if loss == "gspo" else {}))
    counts = {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("clip_count/len/")}
    clipped = {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("clip_clipped/len/")}
    assert sum(counts.values()) == 8  # epoch 2 only: 8 sequences
    assert set(clipped) == set(counts)
    for k in counts:
        assert 0 <= clipped[k] <= counts[k] + 1e-9
        assert m[f"clip_rate/len/{k}"] == pytest.approx(clipped[k] / counts[k])
    assert 0.0 <= m["lre"]


def test_demo_and_metrics_file_hold_the_counts_for_pooling(tmp_path):
    m, _ = _train(tmp_path, "fspo")
    run = next(p for p in tmp_path.iterdir() if p.name.startswith("fspo"))
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert any(k.startswith("clip_count/len/") for k in row)
    assert any(k.startswith("clip_clipped/len/") for k in row)
