"""The tiny random test policy: a 2-layer Qwen2 (hidden 64) with a ~1k-token byte-level BPE tokenizer.

Everything is built locally in about a second: the tokenizer is trained on a small built-in English
corpus (plus generated arithmetic lines); the weights are random and seeded, with init std 0.2 so
next-token distributions are not flat. The tokenizer uses exactly the pipeline that
`transformers.Qwen2Tokenizer` rebuilds from vocab + merges (NFC, Qwen2's pre-tokenizer regex,
byte-level), so `AutoTokenizer.from_pretrained(folder)` encodes identically.
Special tokens: `<|endoftext|>` (0, also pad), `<|im_start|>` (1), `<|im_end|>` (2, eos).
Simplifications: the model is untrained, so its text is noise; it exists to make tests fast.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from fairalign.models.cache import atomic_folder, models_cache_dir, save_model_files

TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_VOCAB_SIZE = 1024
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2's pre-tokenizer regex (the pattern transformers' Qwen2Tokenizer hard-codes).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A helpful assistant answers the question clearly.
What is the capital of France? The capital of France is Paris. Berlin is the capital of Germany.
Please write a short poem about the sea. The waves roll in and out under a silver moon.
I like to read books about history, science and art. My favourite subject at school was music.
She works as a teacher in a small town near the mountains, and she enjoys hiking on weekends.
He is a software engineer who lives in a big city; he likes cooking, running and board games.
Tell me about yourself. I am a language model, and I try to give short, useful and honest answers.
How are you today? I am fine, thank you. Hello! Hi there. Good morning, good evening, good night.
Can you recommend a movie for a rainy afternoon? A calm drama or a funny cartoon would be nice.
Reinforcement learning trains a policy to maximise reward. Each response gets a score, and the
policy moves toward responses that score above the average of their group.
Short answers and long answers should be treated fairly; clipping should not depend on length.
The user prefers concise replies. The user prefers detailed replies with examples and steps.
Age, gender, interests, education, personality, occupation, marital status, family, location.
Let me think step by step. First, add the numbers. Then check the result. The answer is below.
Water boils at one hundred degrees. The sun rises in the east and sets in the west.
Thank you very much! You're welcome. Sorry, I don't know. Yes, no, maybe, always, never.
"""


def _corpus_lines(seed: int) -> list[str]:
    """The built-in corpus plus deterministic arithmetic and list lines (seeded)."""
    rng = random.Random(seed)
    lines = _CORPUS.splitlines()
    for _ in range(400):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? {a} + {b} = {a + b}.")
    words = " ".join(lines).split()
    for _ in range(200):
        lines.append(" ".join(rng.choice(words) for _ in range(12)))
    return lines


def _train_tokenizer(seed: int):
    """Train the byte-level BPE; returns a `Qwen2Tokenizer` built from its vocab and merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus_lines(seed), trainer=trainer)
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Qwen2Tokenizer(
        vocab=dict(spec["vocab"]),
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def build_tiny_model(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny random Qwen2 + tokenizer into `path` (atomically); return `path`.

    Deterministic given `seed` (weights and tokenizer). An existing complete folder is reused.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    if (path / "config.json").is_file() and (path / "tokenizer_config.json").is_file():
        return path
    if path.exists() and not any(path.iterdir()):
        path.rmdir()
    with atomic_folder(path) as tmp:
        tok = _train_tokenizer(seed)
        eos_id = tok.convert_tokens_to_ids("<|im_end|>")
        pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
        config = Qwen2Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            initializer_range=0.2,  # peakier than the usual 0.02, so outputs depend visibly on inputs
            bos_token_id=None,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config)
        model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id)
        save_model_files(model, tmp)  # not save_pretrained: it skips non-zero ranks of a distributed run
        tok.save_pretrained(tmp)
    return path


def tiny_model_path(seed: int = 0) -> Path:
    """The cached tiny model folder `<cache>/models/tiny-<seed>`, built on first use."""
    return build_tiny_model(models_cache_dir() / f"tiny-{seed}", seed=seed)
