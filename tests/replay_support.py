"""Shared by the data-parallel tests (DDP, FSDP2, DeepSpeed): a replay "engine" that makes sampling
identical for any process count, a writer for worker scripts that can import this module, a launcher
that runs them in 1 process or N torch.distributed.run ranks and kills every rank on a timeout, the
check that a resumed trainer holds exactly what its checkpoint saved, and the check that `Dist`
attached nothing to a model."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent


def write_worker(path: Path, source: str) -> Path:
    """Write a worker script whose first line puts this tests folder on sys.path."""
    path.write_text(f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r})\n" + source)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant. torch.distributed.run starts each rank in a session of its own,
    so killing the launcher's process group leaves the ranks alive, holding the output pipes open."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]  # listed before any kill re-parents them
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def run_ranks(script: Path, args, nproc: int, timeout: float) -> subprocess.CompletedProcess:
    """Run `script *args` in 1 process (nproc=1) or under torch.distributed.run with `nproc` ranks, one
    thread each, and return its output. A collective mismatch hangs: after `timeout` seconds the
    launcher and every rank are killed and the test fails with the output so far."""
    cmd = [sys.executable, str(script), *map(str, args)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *cmd[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        try:
            _out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            err = "(the output pipes stayed open after every process was killed)"
        pytest.fail(f"{' '.join(cmd[-4:])}: no result after {timeout} s (ranks out of step?)\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def replay_engine(engine, vocab_size: int, width: int = 10, truncation: bool = False):
    """A drop-in for `engine.generate`: each (prompt, j) gets responses of 2..`width` tokens derived from
    a hash of the prompt text, so every rank and process count sees the same samples. `truncation`:
    a response of `width` tokens counts as truncated (no EOS within max_new_tokens = width)."""
    from fairalign.rollout import RolloutBatch

    def generate(prompts, generations=1, groups=None, generator_seed=None, **kw):
        ids, mask = engine.encode_prompts(prompts)
        rows, masks = [], []
        for p in prompts:
            for j in range(generations):
                h = int(hashlib.sha256(f"{p}|{j}".encode()).hexdigest(), 16)
                g = torch.Generator().manual_seed(h % (2**31))
                rows.append(torch.randint(10, vocab_size, (width,), generator=g))
                masks.append(torch.arange(width) < 2 + h % (width - 1))  # response length 2..width
        R, M = torch.stack(rows), torch.stack(masks)
        return RolloutBatch(prompt_ids=ids.repeat_interleave(generations, 0),
                            prompt_mask=mask.repeat_interleave(generations, 0),
                            response_ids=R, response_mask=M, lengths=M.sum(1),
                            truncated=(M.sum(1) == width) if truncation else torch.zeros(len(R), dtype=torch.bool),
                            prompts=[p for p in prompts for _ in range(generations)],
                            completions=[f"reply {int(r.sum())} " * int(m.sum()) for r, m in zip(R, M)],
                            index=torch.arange(len(prompts)).repeat_interleave(generations),
                            groups=[x for x in groups for _ in range(generations)])
    return generate


def assert_loaded_equals_checkpoint(res: dict, ckpt: Path) -> None:
    """`res["loaded"]` (step, data position, P-GRPO state, parameters, optimizer state right after
    resuming) equals what checkpoint folder `ckpt` (step 2) holds."""
    from safetensors.torch import load_file

    loaded = res["loaded"]
    ts = json.loads((ckpt / "trainer_state.json").read_text())
    assert loaded["step"] == ts["step"] == 2
    assert loaded["data"] == ts["data"]
    assert loaded["pgrpo"] == ts["estimator"]
    weights = load_file(str(ckpt / "model" / "model.safetensors"))
    for name, value in weights.items():
        assert torch.equal(loaded["params"][name], value), name
    saved = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert loaded["optim"]["param_groups"] == saved["param_groups"]
    for i, st in saved["state"].items():
        for k, v in st.items():
            assert torch.equal(loaded["optim"]["state"][i][k], v), (i, k)


def fairalign_attrs(model) -> list[str]:
    """Instance attributes fairalign put on `model` (none: `Dist` wraps, it does not decorate)."""
    return sorted(k for k in vars(model) if k.startswith("fairalign"))
