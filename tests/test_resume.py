"""Exact resume after a crash: a run killed with SIGKILL after a checkpoint (or in the middle of
writing one) and resumed ends with the same parameters and the same metric lines (timings aside)
as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ARGS = ["grpo", "model=tiny", "task=personas", "steps=4", "save_every=2", "seed=3",
        "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=8",
        "optim.lr=1e-3", "log.progress=false", "log.tensorboard=false"]
TIMING = ("step_s", "tokens_per_s", "time/")


def _train(run: Path, *extra: str, resume: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "fairalign", "train"]
    args += ["--resume", str(run), *extra] if resume else [*ARGS, f"output_dir={run}", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _params(run: Path) -> dict:
    return load_file(str(run / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    res = _train(run)
    assert res.returncode == 0, res.stderr
    return run


def _assert_same(run: Path, reference: Path):
    assert _metrics(run) == _metrics(reference)
    a, b = _params(run), _params(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_sigkill_after_checkpoint_then_resume_is_exact(tmp_path, reference):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fairalign", "train", *ARGS, f"output_dir={run}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = run / "checkpoints" / "step-2" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the run never wrote its step-2 checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists()
    res = _train(run, resume=True)
    assert res.returncode == 0, res.stderr
    _assert_same(run, reference)
    steps = [r["step"] for r in _metrics(run)]
    assert steps == [1, 2, 3, 4]


CRASH_IN_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    real_save = torch.save
    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if "step-4" in str(f) and str(f).endswith("optimizer.pt"):
            os.kill(os.getpid(), signal.SIGKILL)   # die half-way through writing checkpoint step-4
    torch.save = save
    from fairalign.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, reference):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", CRASH_IN_WRITE, "train", *ARGS, f"output_dir={run}"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "step-2" in ckpts and "step-4" not in ckpts       # the torn write never became a checkpoint
    assert (run / "checkpoints" / "step-2" / "COMPLETE").exists()
    res = _train(run, resume=True)
    assert res.returncode == 0, res.stderr
    _assert_same(run, reference)


def test_resume_rejects_conflicting_config(tmp_path, reference):
    res = _train(reference, "algo.loss=fspo", resume=True)
    assert res.returncode == 2
    assert "'algo.loss' differs from the checkpoint" in res.stderr
    assert "Traceback" not in res.stderr


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    (run / "config.yaml").write_text("model: tiny\n")
    res = _train(run, resume=True)
    assert res.returncode == 2
    assert "no complete checkpoint" in res.stderr
