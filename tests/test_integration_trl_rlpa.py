"""RLPA through TRL 1.16's GRPOTrainer (fairalign.integrations.trl_rlpa), on CPU with the tiny model.

Most tests play the dialogues with a scripted sampler in place of TRL's `_generate_single_turn`
(the one call that samples), so the rewards are known by hand: candidate 0 of every prompt is the
oracle's turn (it restates exactly the items the rules user revealed and asks a new question: profile
F1 = 2k/(k+n) with k revealed of n items, response 1) and candidate 1 is malformed (0, 0). Everything
else is TRL's: its sampler, rollout_func plumbing, rewards, advantages, loss and checkpoints.
The resume test and the example script use the tiny model's own sampling.
"""
import difflib
import json
import random
import re
import runpy
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from fairalign.algos import PreferenceGroupNormalizer  # noqa: E402
from fairalign.envs.rlpa import Profile, get_profiles, parse_turn, profile_group  # noqa: E402
from fairalign.envs.rlpa.oracle import oracle_turn  # noqa: E402
from fairalign.envs.rlpa.rewards import questions  # noqa: E402
from fairalign.errors import ConfigError  # noqa: E402
from fairalign.integrations.trl import (RLPA_REWARD_FUNCS, FairGRPOConfig, FairGRPOTrainer, rlpa_dataset,  # noqa: E402
                                        rlpa_profile_reward, rlpa_rollout_func)
from test_integration_trl import _args, _dataset, model_dir  # noqa: E402,F401
from fake_openai import USER_REPLY, FakeOpenAI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROFILES = [p for p in get_profiles("train") if profile_group(p) in ("health", "tech")][:16]  # groups recur
G, T = 2, 2  # candidates per prompt, turns per dialogue: 8 rows per generation batch = 2 dialogues


@pytest.fixture(autouse=True)
def _quiet_trl(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # TRL warns that rollout_func is experimental


def _oracle_sampler(trainer, rollout):
    """Stands in for TRL's `_generate_single_turn`: per prompt row (dialogue d = row // G, candidate
    g = row % G), the oracle's turn for g = 0 and a malformed turn for g = 1, as token ids + eos."""
    tok = trainer.processing_class
    rng = random.Random(0)
    asked: dict = {}

    def sample(prompt_ids, images, fields, num_generations):
        db = rollout.last_dialogues  # the dialogues being played
        out = []
        for row in range(len(prompt_ids)):
            d, g = divmod(row, num_generations)
            text = "no profile here"
            if g == 0:
                st = db.states[d]
                revealed = db.user.revealed(st)
                seen = asked.setdefault((id(db), d), set())
                text = oracle_turn(db.user.revealed_profile(st), rng, tuple(revealed[-1]) if revealed else None, seen)
                seen.update(questions(parse_turn(text).reply))
                text = text[len(rollout.completion_prefix):]
            out.append(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        return out, None

    return sample


def _record(trainer, rollout):
    """Per generation batch: the rows as the reward functions saw them, TRL's rewards per function,
    the advantages, and the dialogues (DialogueBatch) played."""
    rec = []
    calc, gen = trainer._calculate_rewards, trainer._generate_and_score_completions

    def calc_rec(inputs, *a):
        out = calc(inputs, *a)
        rec.append({"rows": [dict(x) for x in inputs], "rpf": out.clone(), "db": rollout.last_dialogues,
                    "train": trainer.model.training})
        return out

    def gen_rec(inputs):
        out = gen(inputs)
        rec[-1]["adv"] = out["advantages"].clone()
        return out

    trainer._calculate_rewards, trainer._generate_and_score_completions = calc_rec, gen_rec
    return rec


def _fair_trainer(model_dir, tmp_path, rollout, scripted=True, eval_dataset=None, **kw):
    args = _args(tmp_path, fair_loss="fspo", pgrpo_group_column="rlpa_group", pgrpo_min_count=2, **kw)
    tr = FairGRPOTrainer(model=str(model_dir), args=args, reward_funcs=RLPA_REWARD_FUNCS,
                         train_dataset=rlpa_dataset(PROFILES), eval_dataset=eval_dataset, rollout_func=rollout)
    if scripted:
        tr._generate_single_turn = _oracle_sampler(tr, rollout)
    return tr


def _hand_rewards(db):
    """[(profile F1, response)] per row of one batch, by hand from what the rules user revealed."""
    out = []
    for d, state in enumerate(db.states):
        n = len(db.profiles[d].items())
        for t in range(T):
            k = sum(len(items) for items in state.revealed_by_turn[:t])  # revealed before turn t + 1
            out += [(2 * k / (k + n), 1.0), (0.0, 0.0)]
    return out


def test_turns_are_prompt_groups_with_rlpa_rewards_and_pgrpo_groups(model_dir, tmp_path):
    rollout = rlpa_rollout_func(max_turns=T)
    tr = _fair_trainer(model_dir, tmp_path, rollout, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4,
                       eval_dataset=rlpa_dataset(PROFILES[:2]))
    rec = _record(tr, rollout)
    tr.train()
    evals = [b for b in rec if not b["train"]]
    rec = [b for b in rec if b["train"]]
    assert tr.state.global_step == 4 and len(rec) == 2  # 2 optimizer steps per generation batch of 8 rows
    # evaluation: one dialogue per batch of 4 rows, the same users every time, the training users differ by step
    assert len(evals) == 2 and evals[0]["db"].seed == evals[1]["db"].seed != rec[0]["db"].seed != rec[1]["db"].seed
    assert [r["rlpa_turn"] for r in evals[0]["rows"]] == [1, 1, 2, 2]
    assert sum(tr._pgrpo.state_dict()["n"]) == 16  # evaluation never moves P-GRPO's history
    assert any("eval_rlpa/format_ok" in h for h in tr.state.log_history)
    ref = PreferenceGroupNormalizer(min_count=2)
    overridden = 0  # rows whose own dataset profile is in another group than their dialogue's
    for batch in rec:
        rows, db = batch["rows"], batch["db"]
        assert [r["rlpa_dialogue"] for r in rows] == [0, 0, 0, 0, 1, 1, 1, 1]
        assert [r["rlpa_turn"] for r in rows] == [1, 1, 2, 2] * 2 and [r["rlpa_candidate"] for r in rows] == [0, 1] * 4
        assert [r["rlpa_chosen"] for r in rows] == [True, False] * 4  # the oracle's turn continues
        for b in range(2):  # dialogue b is played with the profile of the first row of its block
            first = rows[4 * b]["prompt"]
            assert db.profiles[b] == Profile.from_json(first)
            assert all(r["rlpa_profile"] == first for r in rows[4 * b:4 * b + 4])
            assert all(r["rlpa_group"] == profile_group(db.profiles[b]) for r in rows[4 * b:4 * b + 4])
        assert db.turn == T and [r["chosen"] for r in db.records] == [0] * (2 * T)
        want = torch.tensor(_hand_rewards(db))  # [8, 2]
        assert max(want[:, 0].tolist()) > 0  # turn 2 restates revealed items
        torch.testing.assert_close(batch["rpf"], want)  # TRL's rewards per function: profile F1, response
        assert [r["rlpa_total"] for r in rows] == pytest.approx(want.sum(1).tolist())
        groups = [r["rlpa_group"] for r in rows]
        overridden += sum(profile_group(Profile.from_json(r["prompt"])) != r["rlpa_group"] for r in rows)
        torch.testing.assert_close(batch["adv"], ref(want.sum(1), groups, torch.arange(8) // G).float(),
                                   rtol=1e-5, atol=1e-6)  # P-GRPO: one prompt group per (dialogue, turn)
    assert overridden > 0  # so P-GRPO must take the dialogue's group, not the row's
    logs = [h for h in tr.state.log_history if "rlpa/format_ok" in h]
    assert logs[1]["pgrpo/history_frac"] > 0  # the second batch is normalized by the groups' histories
    log = logs[0]
    first = rec[0]["rpf"].sum(1)
    assert log["rlpa/format_ok"] == 0.5 and log["rlpa/chosen_total/turn_1"] == 1.0
    assert log["rlpa/chosen_total/turn_2"] == pytest.approx(float(first[[2, 6]].mean()))
    assert log["rewards/rlpa_profile_reward/mean"] == pytest.approx(float(rec[0]["rpf"][:, 0].mean()))
    assert "pgrpo/history_frac" in log and any(k.startswith("clip_rate/len/") for h in tr.state.log_history for k in h)


def test_stock_grpo_trainer_normalizes_each_turns_candidates(model_dir, tmp_path):
    rollout = rlpa_rollout_func(max_turns=T)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=G,
                      max_completion_length=48, gradient_accumulation_steps=1, steps_per_generation=2, max_steps=2,
                      learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                      disable_tqdm=True, seed=0)
    tr = GRPOTrainer(model=str(model_dir), args=args, reward_funcs=RLPA_REWARD_FUNCS,
                     train_dataset=rlpa_dataset(PROFILES), rollout_func=rollout)
    tr._generate_single_turn = _oracle_sampler(tr, rollout)
    rec = _record(tr, rollout)
    tr.train()
    assert tr.state.global_step == 2 and len(rec) == 1
    total = rec[0]["rpf"].sum(1)  # [8]: oracle, malformed, oracle, malformed, ...
    for k in range(0, 8, G):  # TRL's GRPO advantage of a pair (r, 0): +-(r/2) / (std + 1e-4), std = r/sqrt(2)
        r = float(total[k])
        a = (r / 2) / (r / 2 ** 0.5 + 1e-4)
        assert rec[0]["adv"][k:k + G].tolist() == pytest.approx([a, -a], rel=1e-5)


def test_resume_plays_the_same_users(model_dir, tmp_path):
    """Checkpoint at the generation-batch boundary (step 2); the resumed run's second batch of dialogues
    (the tiny model's own sampling) and its P-GRPO state equal the uninterrupted run's."""
    played = {"full": [], "resumed": []}

    def trainer(into):
        rollout = rlpa_rollout_func(max_turns=T)

        def recording(prompts, tr):
            out = rollout(prompts, tr)
            db = rollout.last_dialogues
            into.append((db.transcripts(), [r["user_reply"] for r in db.records]))
            return out

        return _fair_trainer(model_dir, tmp_path, recording, scripted=False, max_completion_length=8,
                             save_strategy="steps", save_steps=2)

    tr = trainer(played["full"])
    tr.train()
    final = json.loads(json.dumps(tr._pgrpo.state_dict()))
    tr = trainer(played["resumed"])
    tr.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert len(played["full"]) == 2 and len(played["resumed"]) == 1
    assert played["resumed"][0] == played["full"][1]  # same profiles, user replies, policy turns
    assert played["full"][0][1] != played["full"][1][1]  # the two batches met different users
    assert json.loads(json.dumps(tr._pgrpo.state_dict())) == final


def test_openai_compatible_user(model_dir, tmp_path):
    with FakeOpenAI() as server:  # tests/fake_openai.py on 127.0.0.1
        user = {"backend": "openai", "base_url": server.url("user"), "model": "sim-user", "api_key_env": None}
        rollout = rlpa_rollout_func(max_turns=T, user=user)
        tr = _fair_trainer(model_dir, tmp_path, rollout, max_steps=2)
        tr.train()
    db = rollout.last_dialogues
    assert [h[2]["content"] for h in db.transcripts()] == [USER_REPLY] * 2
    assert len(server.requests) == 2  # one user reply per dialogue (none after the last turn)
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert any(str(v) in system for _, v in db.profiles[0].items())  # the user role-plays its profile


def test_bad_setups_are_one_line_errors(model_dir, tmp_path):
    for kw, named in (({"max_turns": 0}, "max_turns"), ({"user": "nope"}, "nope"), ({"group_by": "shoe"}, "shoe")):
        with pytest.raises(ConfigError, match=named):
            rlpa_rollout_func(**kw)
    with pytest.raises(ConfigError, match="multiple of 6"):  # 8 rows per batch, 3 turns x 2 candidates
        _fair_trainer(model_dir, tmp_path, rlpa_rollout_func(max_turns=3)).train()
    tr = _fair_trainer(model_dir, tmp_path, rlpa_rollout_func(max_turns=T))
    tr.use_vllm, tr._last_loaded_step = True, 0  # TRL's vLLM path (no weight sync at step 0)
    with pytest.raises(ConfigError, match="use_vllm"):
        tr.train()
    tr = _fair_trainer(model_dir, tmp_path, rlpa_rollout_func(max_turns=T))
    tr.tools = [len]
    with pytest.raises(ConfigError, match="tools"):
        tr.train()
    tr = _fair_trainer(model_dir, tmp_path, rlpa_rollout_func(max_turns=T))
    tr.reward_funcs, tr.reward_func_names = [torch.nn.Linear(1, 1)], ["my-reward-model"]
    with pytest.raises(ConfigError, match="my-reward-model"):
        tr.train()
    args = _args(tmp_path)
    tr = FairGRPOTrainer(model=str(model_dir), args=args, reward_funcs=RLPA_REWARD_FUNCS, train_dataset=_dataset(),
                         rollout_func=rlpa_rollout_func(max_turns=T))
    with pytest.raises(ConfigError, match="rlpa_dataset") as err:
        tr.train()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="rlpa_profile_f1"):
        rlpa_profile_reward(["x"], persona=["a"])
    with pytest.raises(ConfigError, match="Profile"):
        rlpa_dataset([{"Age": 3}])


def test_example_script_trains_two_steps(tmp_path, monkeypatch, tiny_model_dir):
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["trl_rlpa.py", "--model", "tiny", "--max-steps", "2", "--output-dir", str(out),
                                      "--max-turns", "2", "--num-generations", "2", "--dialogues", "2",
                                      "--max-completion-length", "8"])
    trainer = runpy.run_path(str(ROOT / "examples" / "trl_rlpa.py"), run_name="__main__")["trainer"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and trainer.state.global_step == 2
    logged = {k for h in state["log_history"] for k in h}
    assert {"rewards/rlpa_profile_reward/mean", "rewards/rlpa_response_reward/mean", "rlpa/format_ok",
            "pgrpo/history_frac"} <= logged


# ---------------------------------------------------------------------- docs/integrations.md
def _doc_scripts():
    text = (ROOT / "docs" / "integrations.md").read_text().split("\n## verl")[0]  # the TRL section
    scripts = dict(re.findall(r"```python title=(\S+)\n(.*?)```", text, re.S))
    (diff,) = re.findall(r"```diff title=rlpa_personas.py\n(.*?)```", text, re.S)
    return scripts["grpo_personas.py"], scripts["rlpa_personas.py"], diff


def test_doc_rlpa_diff_is_the_difference_between_the_scripts():
    stock, rlpa, diff = _doc_scripts()
    changes = [line for line in difflib.ndiff(stock.splitlines(), rlpa.splitlines()) if line[:2] in ("- ", "+ ")]
    assert [c[0] + c[2:] for c in changes] == diff.splitlines()


def test_doc_rlpa_script_trains(model_dir, tmp_path, monkeypatch):
    _, rlpa, _ = _doc_scripts()
    for old, new in (('"Qwen/Qwen2.5-0.5B-Instruct"', repr(str(model_dir))),
                     ("per_device_train_batch_size=8", "per_device_train_batch_size=4"),
                     ("num_generations=4", "num_generations=2"),
                     ("max_completion_length=128", "max_completion_length=8"),
                     ("max_steps=100", "max_steps=2"), ("max_turns=4", "max_turns=2")):
        assert old in rlpa
        rlpa = rlpa.replace(old, new)
    (tmp_path / "rlpa_personas.py").write_text(rlpa)
    monkeypatch.chdir(tmp_path)
    trainer = runpy.run_path(str(tmp_path / "rlpa_personas.py"))["trainer"]
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2 and "rlpa/chosen_total/turn_2" in logs[0] and "lre" in logs[1]
