"""The rollout belongs to the task: the default `Task.rollout` (one generate call, then the task's
reward functions) matches the trainer's former inline code; RLPA overrides it with whole dialogues;
and a multi-turn task defined here, outside the library, trains through the unmodified Trainer."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import torch

from fairalign.envs import TASKS, RewardSpec, Task, collate_columns, compute_rewards, get_task, register_task
from fairalign.rollout import HFGenerationEngine, RolloutBatch, concat_batches


def _engine(policy, **kw):
    model, tok = policy
    return HFGenerationEngine(model, tok, **{"max_new_tokens": 6, **kw})


class SpyEngine:
    """Wraps an engine and records its generate calls (arguments and durations)."""

    def __init__(self, engine, delay: float = 0.0):
        self.engine, self.delay, self.calls = engine, delay, []
        self.completion_prefix, self.pad_token_id = engine.completion_prefix, engine.pad_token_id

    def generate(self, prompts, **kw):
        self.calls.append({"prompts": list(prompts), **kw})
        time.sleep(self.delay)
        return self.engine.generate(prompts, **kw)


def _trainer_columns(examples, G):
    """What Trainer._columns computed before the rollout moved into the task."""
    keys = [k for k in examples[0] if k != "prompt"]
    return {k: [ex.get(k) for ex in examples for _ in range(G)] for k in keys}


# ----------------------------------------------------------------------------- default (single-turn)
def test_default_rollout_matches_compute_rewards(tiny_policy):
    task = get_task("personas", n_train=12, n_test=4, seed=3)
    examples = task.train_examples[:3]
    spy = SpyEngine(_engine(tiny_policy), delay=0.01)
    batch = task.rollout(spy, examples, generations=2, seed=11)
    assert isinstance(batch, RolloutBatch) and len(batch) == 6
    assert len(spy.calls) == 1
    call = spy.calls[0]
    assert call["prompts"] == [ex["prompt"] for ex in examples] and call["generations"] == 2
    assert call["groups"] == [ex["group"] for ex in examples] and call["generator_seed"] == 11
    assert batch.groups == [ex["group"] for ex in examples for _ in range(2)]
    # the same completions scored the way the trainer scored them
    ref = compute_rewards(task.rewards, batch.prompts, batch.completions, _trainer_columns(examples, 2))
    assert batch.rewards.dtype == torch.float32 and batch.rewards.shape == (6,)
    assert batch.rewards.device == batch.response_ids.device
    assert torch.equal(batch.rewards, ref.totals)
    assert batch.reward_parts.keys() == ref.per_reward.keys()
    for k, v in ref.per_reward.items():
        assert torch.equal(batch.reward_parts[k], v)
    assert batch.reward_errors == 0
    assert batch.generate_s >= 0.01  # the generate call's wall time
    # the same seed gives the same batch (the rollout adds no randomness of its own)
    again = task.rollout(_engine(tiny_policy), examples, generations=2, seed=11)
    assert again.completions == batch.completions and torch.equal(again.rewards, batch.rewards)


def test_default_rollout_columns_groups_and_reward_errors(tiny_policy):
    seen = {}

    def needs_answer(prompts, completions, answer, **kw):
        seen["answer"] = list(answer)
        return [float(a == "x") for a in answer]

    def broken(prompts, completions, **kw):
        raise RuntimeError("boom")

    examples = [{"prompt": "Say x.", "answer": "x"}, {"prompt": "Say y.", "answer": "y", "extra": 1}]
    task = Task("t", examples, [], [RewardSpec("needs_answer", needs_answer), RewardSpec("broken", broken, 0.5)])
    with pytest.raises(ValueError, match="reward function 'broken' raised RuntimeError: boom"):
        task.rollout(_engine(tiny_policy), examples, 2, seed=0)
    batch = task.rollout(_engine(tiny_policy), examples, 2, seed=0, on_reward_error="zero")
    assert seen["answer"] == ["x", "x", "y", "y"]
    assert batch.groups == ["all"] * 4  # no "group" column
    assert batch.rewards.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert batch.reward_parts["broken"].tolist() == [0.0] * 4 and batch.reward_errors == 4
    assert collate_columns(examples, 2)["extra"] == [None, None, 1, 1]  # a column one example lacks


def test_default_rollout_rejects_no_examples(tiny_policy):
    with pytest.raises(ValueError, match="rollout needs at least one example"):
        get_task("personas", n_train=4, n_test=0).rollout(_engine(tiny_policy), [], 2, seed=0)


# ----------------------------------------------------------------------------- RLPA overrides it
def test_rlpa_rollout_plays_whole_dialogues(tiny_policy):
    task = get_task("rlpa", n_train=6, n_test=2, max_turns=2, seed=0)
    spy = SpyEngine(_engine(tiny_policy, completion_prefix="<profile>"))
    examples = task.train_examples[:3]
    batch = task.rollout(spy, examples, generations=2, seed=5)
    assert len(batch) == 3 * 2 * 2  # dialogues x turns x candidates
    assert [c["generator_seed"] for c in spy.calls] == [5 * 17, 5 * 17 + 1]
    assert all(c["generations"] == 2 and len(c["prompts"]) == 3 for c in spy.calls)
    assert spy.calls[0]["groups"] == [ex["group"] for ex in examples]
    # turn 2's prompts carry the history: the chosen turn-1 reply and the user's answer
    assert all(len(p) == len(q) + 2 for p, q in zip(spy.calls[1]["prompts"], spy.calls[0]["prompts"]))
    assert batch.index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # one prompt group per history
    assert batch.rewards.dtype == torch.float32 and ((0 <= batch.rewards) & (batch.rewards <= 2)).all()
    assert set(batch.reward_parts) == {"profile", "response", "format"}
    assert batch.reward_errors == 0 and batch.generate_s > 0
    db = task.last_dialogues
    assert db.turn == 2 and len(db.records) == 6 and db.completion_prefix == "<profile>"
    for k, rec in enumerate(db.records):  # turn by turn, dialogue by dialogue: the batch's rows in order
        assert rec["candidate_totals"] == pytest.approx(batch.rewards[2 * k:2 * k + 2].tolist())


# ----------------------------------------------------------------------------- a task of your own
def _count_reward(completions, target, **kw) -> list[float]:
    """1 for saying the target number, plus a little for every digit (so random text gets a spread)."""
    out = []
    for c, t in zip(completions, target):
        text = c if isinstance(c, str) else c[-1]["content"]
        out.append(float(str(t) in text) + 0.01 * sum(ch.isdigit() for ch in text) + 0.001 * len(text))
    return out


@dataclass
class CountingTask(Task):
    """A 2-turn counting game: the user says n, the assistant should say n + 1; the best of the G
    candidates continues, and the user then says n + 2. Every (history, candidate) pair is a sample."""
    turns: int = 2
    calls: list = field(default_factory=list)

    def rollout(self, engine, examples, generations, seed, *, on_reward_error="raise"):
        self.calls.append(len(examples))
        G = generations
        histories = [[{"role": "user", "content": str(ex["start"])}] for ex in examples]
        numbers = [ex["start"] for ex in examples]
        parts = []
        for turn in range(self.turns):
            t0 = time.perf_counter()
            b = engine.generate([list(h) for h in histories], generations=G,
                                groups=[ex["group"] for ex in examples], generator_seed=seed * 3 + turn)
            b.generate_s = time.perf_counter() - t0
            self.score(b, {"target": [n + 1 for n in numbers for _ in range(G)]}, on_reward_error=on_reward_error)
            for i in range(len(examples)):
                rows = b.rewards[i * G:(i + 1) * G]
                best = b.completions[i * G + int(rows.argmax())]
                numbers[i] += 2
                histories[i] += [{"role": "assistant", "content": best}, {"role": "user", "content": str(numbers[i])}]
            parts.append(b)
        return concat_batches(parts, engine.pad_token_id)


def make_counting_task(*, seed: int = 0, turns: int = 2) -> CountingTask:
    examples = [{"prompt": [{"role": "user", "content": str(n)}], "start": n, "group": "even" if n % 2 == 0 else "odd"}
                for n in range(1, 9)]
    return CountingTask("counting", examples, examples[:2], [RewardSpec("count", _count_reward)], turns=turns)


@pytest.fixture
def counting_task_registered():
    saved = dict(TASKS)
    register_task("counting-test", make_counting_task)
    yield
    TASKS.clear()
    TASKS.update(saved)


def test_counting_task_rollout_alone(tiny_policy, counting_task_registered):
    task = get_task("counting-test", turns=2)
    batch = task.rollout(_engine(tiny_policy), task.train_examples[:2], generations=3, seed=1)
    assert len(batch) == 2 * 2 * 3 and set(batch.reward_parts) == {"count"}
    assert batch.index.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert isinstance(batch.prompts[-1], list) and len(batch.prompts[-1]) == 3  # user, assistant, user


def test_multi_turn_task_trains_through_the_trainer(tmp_path, counting_task_registered):
    """Needs the trainer to call `task.rollout(engine, examples, G, seed)` (issue 10): until the
    trainer is wired, the task's rollout is never called and this test fails on `calls`."""
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    cfg = build_config({"model": "tiny", "task": "counting-test", "steps": 2, "seed": 0,
                        "output_dir": str(tmp_path / "run"), "task_options": {"turns": 2},
                        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 6},
                        "algo": {"advantage": "grpo", "loss": "ppo"},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg)
    rows = tr.train()
    assert [r["step"] for r in rows] == [1, 2]
    assert isinstance(tr.task, CountingTask) and tr.task.calls == [2, 2]  # the task's rollout ran each step
    assert "reward/count" in rows[0] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[0]["time/generate_s"] > 0
