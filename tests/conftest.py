"""Shared test fixtures: an offline, private model cache and the tiny random policy.

At import time the suite goes offline (HF_HUB_OFFLINE=1) and points FAIRALIGN_CACHE at a private
temporary folder (inherited by subprocesses), so tests never touch a hub or the user's cache.
`tiny_model_dir` is built once per session into that cache as `models/tiny-0`, so
`load_policy("tiny")` is instant. The user's converted SmolLM2 (if any) is linked into the private
cache; the slow conversion test uses `user_model_cache` to point FAIRALIGN_CACHE back at the
user's cache (so the conversion happens at most once per machine).
Torch runs single-threaded unless OMP_NUM_THREADS is set (see below).
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run ~50x faster on one thread when cores are shared (OpenMP threads spin on a busy
# machine); subprocesses inherit it. Set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
USER_FAIRALIGN_CACHE = os.environ.get("FAIRALIGN_CACHE")
_SESSION_CACHE = tempfile.mkdtemp(prefix="fairalign-test-cache-")
os.environ["FAIRALIGN_CACHE"] = _SESSION_CACHE
# Reuse (read-only) the user's already-converted default model instead of converting it per session.
_USER_DEFAULT = (Path(USER_FAIRALIGN_CACHE).expanduser() if USER_FAIRALIGN_CACHE else
                 Path.home() / ".cache" / "fairalign") / "models" / "smollm2-135m-instruct"
if (_USER_DEFAULT / "config.json").is_file():
    os.makedirs(os.path.join(_SESSION_CACHE, "models"), exist_ok=True)
    os.symlink(_USER_DEFAULT, os.path.join(_SESSION_CACHE, "models", "smollm2-135m-instruct"))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """Path of the tiny random Qwen2 folder (seed 0), built once per session; read-only for tests."""
    from fairalign.models import tiny_model_path

    return tiny_model_path(0)


@pytest.fixture(scope="session")
def tiny_policy(tiny_model_dir):
    """(model, tokenizer) of the tiny model, shared by the session: do not modify (use fresh_tiny_policy)."""
    from fairalign.models import load_policy

    model, tokenizer = load_policy(tiny_model_dir)
    model.eval()
    return model, tokenizer


@pytest.fixture
def fresh_tiny_policy(tiny_model_dir):
    """A private (model, tokenizer) of the tiny model that a test may train or change."""
    from fairalign.models import load_policy

    return load_policy(tiny_model_dir)


@pytest.fixture
def user_model_cache(monkeypatch):
    """Point FAIRALIGN_CACHE back at the user's cache (for slow tests that need the real model)."""
    if USER_FAIRALIGN_CACHE:
        monkeypatch.setenv("FAIRALIGN_CACHE", USER_FAIRALIGN_CACHE)
    else:
        monkeypatch.delenv("FAIRALIGN_CACHE", raising=False)
    from fairalign.models import cache_root

    return cache_root()
