"""Checkpoints: written atomically (temp folder, fsync, rename), pruned to `keep_last`, and read
back for an exact resume. Pruning keeps `step-0`, the supervised warm-up's result.

Layout of `checkpoints/step-N/`: `model/` (HF folder or LoRA adapter, safetensors),
`optimizer.pt`, `scheduler.pt`, `rng.pt` (torch RNG), `trainer_state.json` (step, data position,
advantage-estimator state, python/numpy RNG, skip counter), `critic.pt` (with `algo.critic`: the value
head / value model weights, its optimizer and scheduler; any `extra` component is `<name>.pt`),
`config.yaml`, `CHECKSUMS.json` (size and SHA-256 of every other file) and `COMPLETE` written last.
A folder without `COMPLETE` is never used; one whose files do not match their checksums is reported
as damaged and skipped for the previous one (`newest_valid_checkpoint`). Checkpoints written before checksums existed are trusted as they
are. Every `torch.load` uses `weights_only=True`.
An OSError while writing (a full disk, a read-only folder), or any error while the disk is full (torch's
zip writer reports ENOSPC as a RuntimeError), removes the partial temp folder and raises
`CheckpointWriteError` naming the path: the previous checkpoint is untouched.
The files do not depend on the process count or strategy: a sharded (FSDP2) run passes its gathered
full model / optimizer state (`model_state`, `optimizer_state`), written in the 1-process format.
"""
from __future__ import annotations

import hashlib
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
CHECKSUMS = "CHECKSUMS.json"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (the message names the path); the previous checkpoint is intact."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _checksums(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in (CHECKSUMS, "COMPLETE"):
            out[p.relative_to(folder).as_posix()] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    return out


def verify_checkpoint(path: Path) -> str | None:
    """None if the checkpoint's files match CHECKSUMS.json, else what is wrong (naming the file)."""
    path = Path(path)
    listed = path / CHECKSUMS
    if not listed.exists():
        return None  # written before checksums existed
    try:
        expected = json.loads(listed.read_text())
    except (OSError, json.JSONDecodeError):
        return f"{CHECKSUMS} is unreadable"
    for rel, want in expected.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want["size"]:
            return f"{rel} has {f.stat().st_size} bytes, expected {want['size']}"
        if _sha256(f) != want["sha256"]:
            return f"{rel} does not match its checksum"
    return None


def newest_valid_checkpoint(run_dir: Path, report=print) -> tuple[int, Path] | None:
    """The newest complete checkpoint whose files verify; each damaged one is reported in one line."""
    damaged = []
    for step, path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            if damaged:
                report(f"resuming from '{path}' (the newest checkpoint that verifies)")
            return step, path
        report(f"checkpoint '{path}' is damaged ({problem}); trying the previous one")
        damaged.append(path)
    return None


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
                    optimizer_state: dict | None = None, tokenizer=None, extra: dict | None = None) -> Path:
    """Write checkpoints/step-<step>/ atomically and prune old ones. Returns the final path.
    `model_state` / `optimizer_state` (full state dicts) replace the model's and optimizer's own;
    `extra` maps a component name to its state (tensors, numbers, lists, dicts), saved as `<name>.pt`."""
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}"
    try:
        return _write(ckpt_root, final, tmp, step, model=model, optimizer=optimizer, scheduler=scheduler,
                      trainer_state=trainer_state, config_yaml=config_yaml, keep_last=keep_last,
                      model_state=model_state, optimizer_state=optimizer_state, tokenizer=tokenizer,
                      extra=extra or {})
    except Exception as e:
        reason = write_failure(e, tmp)
        if reason is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        previous = [p.name for _s, p in list_checkpoints(run_dir)]
        kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"cannot write checkpoint {final.name}: {reason}; {kept}") from e


LOW_SPACE_BYTES = 256 * 2**20  # a write that fails with less free than this is taken for a full disk


def write_failure(e: BaseException, folder: Path) -> str | None:
    """'<reason> ('<path>')' when `e` is a failed write: any OSError, or an error of another type (torch's
    zip writer raises RuntimeError, safetensors its own error, neither with an errno) raised while the
    disk holding `folder` is (almost) full. None: not a write failure, re-raise it as it is."""
    if isinstance(e, OSError):
        return f"{e.strerror or e} ('{e.filename or folder}')"
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return None
    if free >= LOW_SPACE_BYTES:
        return None
    return f"No space left on device ('{folder}': {free / 2**20:.1f} MiB free; {type(e).__name__})"


def _write(ckpt_root, final, tmp, step, *, model, optimizer, scheduler, trainer_state, config_yaml, keep_last,
           model_state, optimizer_state, tokenizer, extra) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    full = {} if model_state is None else {"state_dict": model_state}
    model.save_pretrained(tmp / "model", safe_serialization=True, **full)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    for name, component in extra.items():
        torch.save(component, tmp / f"{name}.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    state = dict(trainer_state)
    state["rng"] = rng_state()
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    (tmp / "config.yaml").write_text(config_yaml)
    (tmp / CHECKSUMS).write_text(json.dumps(_checksums(tmp), indent=1))
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
    """Keep the newest `keep_last` checkpoints, and step-0 (the supervised warm-up's result, written
    only by a run with `sft.steps`: the warm-up-only policy is an arm of its own)."""
    ckpts = [c for c in list_checkpoints(ckpt_root.parent) if c[0] != 0]
    for _step, path in ckpts[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    for p in ckpt_root.iterdir():  # leftovers of an interrupted write
        if p.name.startswith(".tmp-step-"):
            shutil.rmtree(p, ignore_errors=True)


def load_component(path: Path, name: str) -> dict | None:
    """The `extra` component `name` saved with the checkpoint (None if it has none)."""
    f = Path(path) / f"{name}.pt"
    return torch.load(f, weights_only=True, map_location="cpu") if f.is_file() else None


def load_training_state(path: Path) -> dict:
    """Everything but the model weights: optimizer, scheduler, rng, trainer_state."""
    path = Path(path)
    return {
        # map_location: a checkpoint written on a GPU resumes on a machine without one
        "optimizer": torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"),
        "torch_rng": torch.load(path / "rng.pt", weights_only=True, map_location="cpu")["torch"],
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
    }
