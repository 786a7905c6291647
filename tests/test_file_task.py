"""Tasks from your own .jsonl/.parquet files with "module:function" rewards."""
import json
import sys
import textwrap

import pytest

from fairalign.envs import compute_rewards, collate_columns, get_task, load_reward_function

REWARDS_PY = textwrap.dedent("""
    def keyword_hit(prompts, completions, keyword, **kwargs):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return [1.0 if k in t else 0.0 for t, k in zip(texts, keyword)]

    def length_pen(prompts, completions, **kwargs):
        return [-0.01 * len(c if isinstance(c, str) else c[-1]["content"]) for c in completions]

    NOT_A_FUNCTION = 3
""")


def _write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


@pytest.fixture
def reward_file(tmp_path):
    p = tmp_path / "my_rewards.py"
    p.write_text(REWARDS_PY)
    return str(p)


def test_jsonl_task_with_file_rewards_end_to_end(tmp_path, reward_file):
    rows = [{"prompt": f"Say {w}", "keyword": w, "group": "a" if i % 3 else "b"}
            for i, w in enumerate(["cat", "dog", "sun", "sea", "sky", "owl", "elk", "fox", "ant", "bee"])]
    path = _write_jsonl(tmp_path / "data.jsonl", rows)
    t = get_task(path, reward_funcs=[f"{reward_file}:keyword_hit", f"{reward_file}:length_pen"],
                 reward_weights=[1.0, 2.0])
    assert t.name == "data" and len(t.train_examples) == 9 and len(t.test_examples) == 1
    assert [(r.name, r.weight) for r in t.rewards] == [("keyword_hit", 1.0), ("length_pen", 2.0)]
    exs = t.train_examples[:2]
    comps = [f"a {exs[0]['keyword']}", "nothing"]
    totals, per, _ = compute_rewards(t.rewards, [e["prompt"] for e in exs], comps, collate_columns(exs))
    assert per["keyword_hit"].tolist() == [1.0, 0.0]
    assert totals.tolist() == pytest.approx([1.0 - 2 * 0.01 * 5, 0.0 - 2 * 0.01 * 7])


def test_module_spec_and_chat_prompts(tmp_path, monkeypatch):
    (tmp_path / "user_reward_mod_abc.py").write_text(REWARDS_PY)
    monkeypatch.syspath_prepend(str(tmp_path))
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a pet"}]
    path = _write_jsonl(tmp_path / "chat.jsonl", [{"prompt": chat, "keyword": "cat", "split": "train"},
                                                  {"prompt": chat, "keyword": "dog", "split": "test"}])
    t = get_task(path, reward_funcs=["user_reward_mod_abc:keyword_hit"])
    assert [e["keyword"] for e in t.train_examples] == ["cat"] and [e["keyword"] for e in t.test_examples] == ["dog"]
    assert "split" not in t.train_examples[0] and t.train_examples[0]["group"] == "all"
    totals, _, _ = compute_rewards(t.rewards, [chat, chat], ["a cat", "a dog"], {"keyword": ["cat", "cat"]})
    assert totals.tolist() == [1.0, 0.0]
    sys.modules.pop("user_reward_mod_abc", None)


def test_seeded_split_is_deterministic_disjoint_and_90_10(tmp_path, reward_file):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}"} for i in range(50)])
    spec = [f"{reward_file}:length_pen"]
    a, b, c = (get_task(path, seed=s, reward_funcs=spec) for s in (0, 0, 1))
    ids = lambda exs: [e["prompt"] for e in exs]  # noqa: E731
    assert ids(a.test_examples) == ids(b.test_examples) and ids(a.test_examples) != ids(c.test_examples)
    assert len(a.test_examples) == 5 and len(a.train_examples) == 45
    assert set(ids(a.train_examples)).isdisjoint(ids(a.test_examples))
    assert set(ids(a.train_examples)) | set(ids(a.test_examples)) == {f"q{i}" for i in range(50)}
    t = get_task(tmp_path / "d.jsonl", reward_funcs=spec, test_fraction=0.2)  # a pathlib.Path works too
    assert len(t.test_examples) == 10


def test_group_column(tmp_path, reward_file):
    path = _write_jsonl(tmp_path / "g.jsonl", [{"prompt": "x", "persona": "p1"}, {"prompt": "y", "persona": 2}])
    t = get_task(path, reward_funcs=[f"{reward_file}:length_pen"], group_column="persona", test_fraction=0)
    assert [e["group"] for e in t.train_examples] == ["p1", 2]
    bad = _write_jsonl(tmp_path / "g2.jsonl", [{"prompt": "x", "persona": "p1"}, {"prompt": "y"}])
    with pytest.raises(ValueError, match=r"g2.jsonl: line 2: missing the group column 'persona'"):
        get_task(bad, reward_funcs=[f"{reward_file}:length_pen"], group_column="persona")


@pytest.mark.parametrize("rows,pattern", [
    (['{"prompt": "a"}', '{"prompt": "b"}', '{"prompt": "c",}'], r"bad.jsonl: line 3: invalid JSON"),
    (['{"prompt": "a"}', "", '{"text": "b"}'], r"bad.jsonl: line 3: missing the 'prompt' column \(columns: text\)"),
    (['{"prompt": "   "}'], r"bad.jsonl: line 1: 'prompt' is empty"),
    (['{"prompt": 42}'], r"bad.jsonl: line 1: 'prompt' must be a string or a list of chat messages, got int"),
    (['{"prompt": []}'], r"bad.jsonl: line 1: 'prompt' is an empty list of messages"),
    (['{"prompt": [{"role": "robot", "content": "x"}]}'], r"bad.jsonl: line 1: 'prompt' message 0 must be"),
    (['[1, 2]'], r"bad.jsonl: line 1: must be a JSON object, got list"),
    (['{"prompt": "a", "split": "dev"}'], r"bad.jsonl: line 1: 'split' must be 'train' or 'test', got 'dev'"),
    (['{"prompt": "a", "group": [1]}'], r"bad.jsonl: line 1: group column 'group' must be a string or an integer"),
    ([""], r"has no rows"),
])
def test_file_errors_name_file_and_line(tmp_path, reward_file, rows, pattern):
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=pattern) as e:
        get_task(path, reward_funcs=[f"{reward_file}:length_pen"])
    assert "\n" not in str(e.value)


def test_path_and_reward_spec_errors(tmp_path, reward_file):
    good = _write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="task file not found"):
        get_task(str(tmp_path / "missing.jsonl"), reward_funcs=["persona"])
    (tmp_path / "x.csv").write_text("prompt\na\n")
    with pytest.raises(ValueError, match="must end in .jsonl or .parquet"):
        get_task(str(tmp_path / "x.csv"), reward_funcs=["persona"])
    with pytest.raises(ValueError, match="needs reward functions"):
        get_task(good)
    for spec, pattern in [("nocolon", r"bad reward function spec 'nocolon': use 'module:function'"),
                          ("no_such_module_xyz:f", r"cannot import module 'no_such_module_xyz'"),
                          ("os.path:no_such_function", r"module 'os.path' has no attribute 'no_such_function'"),
                          (f"{reward_file}:NOT_A_FUNCTION", r"'NOT_A_FUNCTION' is a int, not a function"),
                          ("missing_file.py:f", r"file 'missing_file.py' does not exist"),
                          ("os:", r"expected 'module:function'")]:
        with pytest.raises(ValueError, match=pattern):
            get_task(good, reward_funcs=[spec])
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ValueError, match=r"bad reward function spec .*: importing .*broken.py' failed: RuntimeError: boom"):
        load_reward_function(f"{broken}:f")


def test_unreadable_file(tmp_path, reward_file):
    p = tmp_path / "latin.jsonl"
    p.write_bytes(b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match="cannot read task file"):
        get_task(str(p), reward_funcs=[f"{reward_file}:length_pen"])


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, reward_file, monkeypatch):
    p = tmp_path / "d.parquet"
    p.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ValueError, match=r"needs pyarrow: pip install pyarrow"):
        get_task(str(p), reward_funcs=[f"{reward_file}:length_pen"])


def test_parquet_roundtrip(tmp_path, reward_file):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    chat = [{"role": "user", "content": "hi"}]
    table = pa.Table.from_pylist([{"prompt": "plain", "keyword": "a", "split": "train"},
                                  {"prompt": "other", "keyword": "b", "split": "test"}])
    pq.write_table(table, tmp_path / "d.parquet")
    t = get_task(str(tmp_path / "d.parquet"), reward_funcs=[f"{reward_file}:keyword_hit"])
    assert [e["prompt"] for e in t.train_examples] == ["plain"] and t.test_examples[0]["keyword"] == "b"
    pq.write_table(pa.Table.from_pylist([{"prompt": chat}, {"prompt": None}]), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"c.parquet: row 2: 'prompt' must be a string"):
        get_task(str(tmp_path / "c.parquet"), reward_funcs=[f"{reward_file}:keyword_hit"])
