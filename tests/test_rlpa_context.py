"""The RLPA task option `context: recent`: the policy sees the system prompt, the last `context_turns`
exchanges and its latest turn written out whole with the profile it last stated in a well-formed turn;
the user, the judge's repeat gate and the rewards still see the whole dialogue; the warm-up's oracle
demonstrations, the trainer's rollout and the evaluation all use the same context."""
import json

import pytest

from fairalign.envs.rlpa import POLICY_SYSTEM_PROMPT, DialogueBatch, get_profiles, run_dialogues
from fairalign.envs.rlpa.oracle import oracle_demonstrations
from fairalign.envs.rlpa.task import make_task


def _turn(profile: dict, reply: str) -> str:
    return f"<profile>{json.dumps(profile)}</profile>\n<response>{reply}</response>"


REPLIES = ["Hi! Where do you live?", "Nice. What do you do for work?", "broken turn, no tags",
           "Cool. How old are you?", "Thanks. Do you have any hobbies?"]
STATED = [{"Location": "x"}, {"Location": "x", "Occupation": "y"}, None, {"Age": "z"}, {}]


def _play(context: str, turns: int = 5, context_turns: int = 2):
    """Dialogues whose policy says REPLIES[t] with profile STATED[t] (None: a malformed turn); returns the
    prompts the policy saw at each turn and the run."""
    seen = []

    def policy(prompts, G):
        t = len(seen)
        seen.append(prompts)
        text = REPLIES[t] if STATED[t] is None else _turn(STATED[t], REPLIES[t])
        return [[text] for _ in prompts]
    run = run_dialogues(policy, get_profiles("test")[:2], max_turns=turns, seed=3, context=context,
                        context_turns=context_turns)
    return seen, run


def test_recent_context_is_the_last_exchanges_with_the_last_stated_profile():
    full, run_full = _play("full")
    recent, run_recent = _play("recent")
    system = {"role": "system", "content": POLICY_SYSTEM_PROMPT}
    assert recent[0] == full[0] == [[system, {"role": "user", "content": "Hello"}]] * 2  # turn 1: nothing to drop
    h = run_full.transcripts[0]  # Hello, A1, U1, A2, U2, A3, U3, A4, U4, A5
    # turn 2: the whole (short) history, A1 written out whole with the profile it stated
    assert recent[1][0] == [system, h[0], {"role": "assistant", "content": _turn(STATED[0], REPLIES[0]).replace(
        json.dumps(STATED[0]), json.dumps(STATED[0], ensure_ascii=False))}, h[2]]
    # turn 3: Hello dropped; A1 as the user saw it (reply only), A2 whole
    assert recent[2][0] == [system, h[1], h[2], {"role": "assistant", "content": _turn(STATED[1], REPLIES[1])}, h[4]]
    # turn 4 follows a malformed turn 3: its visible text, with the profile stated at turn 2
    assert recent[3][0][-2] == {"role": "assistant", "content": _turn(STATED[1], "broken turn, no tags")}
    assert len(recent[3][0]) == 5 and recent[3][0][1] == h[3]
    # turn 5: the latest well-formed profile again
    assert recent[4][0][-2]["content"] == _turn(STATED[3], REPLIES[3])
    # the user and the judge saw the same dialogue under both contexts: identical records and rewards
    assert run_recent.records == run_full.records
    assert run_recent.transcripts == run_full.transcripts


def test_context_turns_sets_the_window_and_bad_values_are_rejected():
    recent, _ = _play("recent", context_turns=1)
    assert [len(p[0]) for p in recent] == [2, 3, 3, 3, 3]  # system + (Hello at turn 1 | A whole, U)
    with pytest.raises(ValueError, match="context must be one of full, recent"):
        DialogueBatch(get_profiles("test")[:1], context="last")
    with pytest.raises(ValueError, match="context_turns must be an integer >= 1"):
        DialogueBatch(get_profiles("test")[:1], context="recent", context_turns=0)
    with pytest.raises(ValueError, match="task option 'context'"):
        make_task(context="window")


def test_oracle_demonstrations_follow_the_context():
    profiles = get_profiles("train")[:3]
    demos = oracle_demonstrations(profiles, max_turns=4, seed=0, completion_prefix="<profile>", context="recent",
                                  context_turns=1)
    full = oracle_demonstrations(profiles, max_turns=4, seed=0, completion_prefix="<profile>")
    assert [d["completion"] for d in demos] == [d["completion"] for d in full]  # same dialogues, same turns
    late = [d for d in demos if d["turn"] == 4]
    for d in late:
        assert len(d["prompt"]) == 3  # system, the oracle's turn 3 whole, the user's answer
        assert d["prompt"][1]["role"] == "assistant" and d["prompt"][1]["content"].startswith("<profile>{")
    # the turn-3 whole turn in the turn-4 prompt is exactly the oracle's turn-3 output
    t3 = [d["completion"] for d in full if d["turn"] == 3]
    assert sorted(d["prompt"][1]["content"] for d in late) == sorted("<profile>" + c for c in t3)


def test_trainer_and_evaluation_use_the_context(tmp_path):
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    cfg = build_config({"model": "tiny", "task": "rlpa", "steps": 1, "seed": 0, "output_dir": str(tmp_path / "run"),
                        "task_options": {"max_turns": 4, "n_train": 8, "n_test": 2, "context": "recent",
                                         "context_turns": 1},
                        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 8},
                        "eval": {"examples": 2},
                        "log": {"tensorboard": False, "progress": False, "samples_per_step": 16}})
    tr = Trainer(cfg)
    tr.train()
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert max(len(s["prompt"]) for s in samples) == 3  # never more than system + one exchange
    assert any(s["prompt"][1]["role"] == "assistant" and s["prompt"][1]["content"].startswith("<profile>")
               for s in samples)
    res = tr.task.evaluate(tr.policy.engine, examples=2)
    assert res["settings"]["context"] == "recent" and res["settings"]["context_turns"] == 1
