"""The optional LLM judge: verdict parsing, strictness (any failed criterion -> 0), dispatch."""

import json

import pytest

from fairalign.envs.rlpa import LLMJudge, RulesJudge, make_judge, parse_verdict

ALL_TRUE = {c: True for c in ("natural", "relevant", "consistent", "engaging", "informative")}


def test_parse_verdict_formats():
    assert parse_verdict(json.dumps(ALL_TRUE)) == ALL_TRUE
    wrapped = "Sure. ```json\n" + json.dumps({**ALL_TRUE, "engaging": False}) + "\n```"
    assert parse_verdict(wrapped) == {**ALL_TRUE, "engaging": False}
    lines = "natural: yes\nrelevant: yes\nconsistent: no\nengaging: pass\ninformative: 1"
    assert parse_verdict(lines) == {**ALL_TRUE, "consistent": False}
    assert parse_verdict('{"Natural": "true", "relevant": true, "consistent": true, "engaging": true, '
                         '"informative": true}') == ALL_TRUE
    missing = dict(ALL_TRUE)
    del missing["informative"]
    assert parse_verdict(json.dumps(missing)) is None
    assert parse_verdict("") is None and parse_verdict("I like it") is None


class _Scripted:
    def __init__(self, answers):
        self.answers, self.seen = list(answers), []

    def complete(self, convs):
        self.seen.extend(convs)
        return [self.answers.pop(0) for _ in convs]


def test_llm_judge_is_strict_and_batched():
    answers = [json.dumps(ALL_TRUE), json.dumps({**ALL_TRUE, "natural": False}), "no idea"]
    backend = _Scripted(answers)
    judge = LLMJudge(backend)
    hist = [{"role": "user", "content": "Hello"}]
    out = judge(["a", "b", "c"], [{"Age": ["30"]}, {}, {}], [hist] * 3)
    assert out == [1.0, 0.0, 0.0]
    assert len(backend.seen) == 3 and judge.last_details[2] is None
    prompt = backend.seen[0][0]["content"]
    assert '"Age": ["30"]' in prompt and "User: Hello" in prompt and "a" in prompt
    assert all(c in prompt for c in ALL_TRUE)
    assert judge([], [], []) == []


def test_make_judge_dispatch():
    assert isinstance(make_judge(), RulesJudge)
    assert make_judge({"backend": "rules", "max_sentences": 2}).max_sentences == 2
    fn = lambda r, p, h: [1.0] * len(r)  # noqa: E731
    assert make_judge(fn) is fn
    with pytest.raises(ValueError, match="judge backend must be one of rules, hf, openai"):
        make_judge("gpt4")
