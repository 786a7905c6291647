"""The demo's before/after table claims only what held-out intervals support: each group's change is the
paired (same prompt, same seed) difference per held-out sample with its 95% t interval."""
import json

import pytest
from rich.console import Console

from fairalign.demo import paired_changes, run_demo

TINY = ["model=tiny", "steps=1", "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=6",
        "log.tensorboard=false", "log.progress=false", "threads=1"]


def test_paired_changes_by_hand():
    before = {"samples": [{"group": "a", "reward": 0.5}, {"group": "a", "reward": 0.0}, {"group": "b", "reward": 1.0}]}
    after = {"samples": [{"group": "a", "reward": 1.0}, {"group": "a", "reward": 0.5}, {"group": "b", "reward": 1.0}]}
    out = paired_changes(before, after)
    assert out["a"]["mean"] == pytest.approx(0.5) and out["a"]["n"] == 2 and out["a"]["ci95"] == pytest.approx([0.5, 0.5])
    assert out["b"] == {"mean": 0.0, "ci95": None, "n": 1, "sd": None, "p": None}
    # all: diffs 0.5, 0.5, 0 -> mean 1/3, sd = sqrt(1/12), t(0.975, 2) = 4.302653
    half = 4.302653 * (1 / 12) ** 0.5 / 3 ** 0.5
    assert out["all"]["mean"] == pytest.approx(1 / 3) and out["all"]["ci95"] == pytest.approx([1 / 3 - half, 1 / 3 + half],
                                                                                            rel=1e-5)
    with pytest.raises(ValueError, match="not the same held-out samples"):
        paired_changes(before, {"samples": after["samples"][:2]})


def test_demo_summary_holds_paired_intervals_and_the_group_sizes(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo([*TINY, f"output_dir={out}", "eval.examples=6", "eval.batch_size=6", "save_every=0"],
                       console=Console(file=open(tmp_path / "log.txt", "w"), width=200))
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    changes = saved["heldout_change"]
    groups = set(saved["heldout_reward_by_group_before"])
    assert set(changes) == groups | {"all"} and changes["all"]["n"] == 6
    assert saved["heldout_examples_by_group"] == {g: changes[g]["n"] for g in groups}
    for g in groups:
        diff = saved["heldout_reward_by_group_after"][g] - saved["heldout_reward_by_group_before"][g]
        assert changes[g]["mean"] == pytest.approx(diff)
    log = (tmp_path / "log.txt").read_text()
    assert "95% interval" in log and "held-out prompts of one training seed" in log
