"""Checkpoints: written atomically (temp folder, fsync, rename), pruned to `keep_last`, and read
back for an exact resume.

Layout of `checkpoints/step-N/`: `model/` (HF folder or LoRA adapter, safetensors),
`optimizer.pt`, `scheduler.pt`, `rng.pt` (torch RNG), `trainer_state.json` (step, data position,
P-GRPO normalizer, python/numpy RNG, skip counter), `config.yaml`, and `COMPLETE` written last.
A folder without `COMPLETE` is never used. Every `torch.load` uses `weights_only=True`.
The files do not depend on the process count or strategy: a sharded (FSDP2) run passes its gathered
full model / optimizer state (`model_state`, `optimizer_state`), written in the 1-process format.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_RE = re.compile(r"^step-(\d+)$")


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    return x


def set_rng_state(state: dict, torch_state: torch.Tensor | None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if torch_state is not None:
        torch.set_rng_state(torch_state)


def save_checkpoint(run_dir: Path, step: int, *, model, optimizer, scheduler, trainer_state: dict,
                    config_yaml: str, keep_last: int, model_state: dict | None = None,
                    optimizer_state: dict | None = None) -> Path:
    """Write checkpoints/step-<step>/ atomically and prune old ones. Returns the final path.
    `model_state` / `optimizer_state` (full state dicts) replace the model's and optimizer's own."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    extra = {} if model_state is None else {"state_dict": model_state}
    model.save_pretrained(tmp / "model", safe_serialization=True, **extra)
    torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    state = dict(trainer_state)
    state["rng"] = rng_state()
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / "COMPLETE").write_text(str(step))
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. the final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    prune(ckpt_root, keep_last)
    return final


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = CKPT_RE.match(p.name)
        if m and (p / "COMPLETE").exists():
            out.append((int(m.group(1)), p))
    return sorted(out)


def prune(ckpt_root: Path, keep_last: int) -> None:
    ckpts = list_checkpoints(ckpt_root.parent)
    for _step, path in ckpts[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for p in ckpt_root.iterdir():  # leftovers of an interrupted write
        if p.name.startswith(".tmp-step-"):
            shutil.rmtree(p, ignore_errors=True)


def load_training_state(path: Path) -> dict:
    """Everything but the model weights: optimizer, scheduler, rng, trainer_state."""
    path = Path(path)
    return {
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True),
        "torch_rng": torch.load(path / "rng.pt", weights_only=True)["torch"],
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
    }
