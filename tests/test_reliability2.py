"""Reliability, round two (issue 12): preemption (SIGTERM / Ctrl-C) stops after the current step with a
checkpoint and an exact resume; damaged checkpoints are named and skipped; a failing disk leaves the
previous checkpoint intact; one live run per directory; plain progress lines when output is not a
terminal."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fairalign.train import checkpoint as ckpt
from fairalign.errors import ConfigError
from fairalign.config import build_config
from fairalign.train.trainer import Trainer
from fairalign.errors import TrainingError

SMALL = ["model=tiny", "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=6",
         "log.tensorboard=false", "seed=4"]
TIMING = ("step_s", "tokens_per_s", "time/")


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "fairalign", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _rows(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(next((run / "final").glob("*.safetensors"))))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    p = _cli("train", *SMALL, "steps=6", f"output_dir={run}")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    return run


def _wait_for_step(run, step, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        path = run / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= step:
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("the run did not reach the step in time")


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_stops_after_the_step_with_a_checkpoint_then_resume_is_exact(tmp_path, uninterrupted, sig, code,
                                                                           name):
    run = tmp_path / "run"
    p = _cli("train", *SMALL, "steps=6", f"output_dir={run}")
    _wait_for_step(run, 2, p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    assert p.returncode == code, err
    line = [x for x in err.splitlines() if x.startswith("stopped by")]
    assert len(line) == 1, err
    stopped = int(line[0].split("after step ")[1].split(";")[0])
    assert 2 <= stopped < 6
    assert f"stopped by {name} after step {stopped}; resume with: fairalign train --resume {run}" == line[0]
    assert (run / "checkpoints" / f"step-{stopped}" / "COMPLETE").exists()
    r = _cli("train", "--resume", str(run))
    out, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    assert _rows(run) == _rows(uninterrupted)
    a, b = _weights(run), _weights(uninterrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_second_ctrl_c_exits_at_once(tmp_path):
    from fairalign.train.signals import StopRequest

    # the handler in place before: Python's default_int_handler, or SIG_IGN when pytest was started in
    # the background by a non-interactive shell (which ignores SIGINT for its background jobs)
    before = signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    with stop.installed():
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    assert signal.getsignal(signal.SIGINT) is before  # restored


# ------------------------------------------------------------------ damaged checkpoints
def _two_checkpoints(tmp_path):
    cfg = build_config({"output_dir": str(tmp_path / "run"), "save_every": 1, "keep_last": 3}, SMALL + ["steps=3"])
    tr = Trainer(cfg, progress=False)
    tr.train(stop_after=2)
    return cfg, tmp_path / "run" / "checkpoints"


@pytest.mark.parametrize("damage", ["truncate", "delete", "flip"])
def test_damaged_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path, capsys, damage):
    cfg, root = _two_checkpoints(tmp_path)
    target = next((root / "step-2" / "model").glob("*.safetensors"))
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete":
        target.unlink()
    else:
        data = bytearray(target.read_bytes())
        data[-10] ^= 0xFF
        target.write_bytes(bytes(data))
    tr = Trainer(cfg, resume=True, progress=False)
    assert tr.step == 1
    err = capsys.readouterr().err
    assert f"checkpoint '{root / 'step-2'}' is damaged" in err and target.name in err
    assert f"resuming from '{root / 'step-1'}'" in err


def test_no_checkpoint_verifies_is_one_clear_error(tmp_path):
    cfg, root = _two_checkpoints(tmp_path)
    for step in (1, 2):
        (root / f"step-{step}" / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="no checkpoint under .* verifies"):
        Trainer(cfg, resume=True, progress=False)


def test_cli_resume_from_damaged_checkpoints_is_one_line(tmp_path):
    cfg, root = _two_checkpoints(tmp_path)
    for step in (1, 2):
        (root / f"step-{step}" / "trainer_state.json").write_text("{")
    p = _cli("train", "--resume", str(tmp_path / "run"))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("fairalign: error: ")


# ------------------------------------------------------------------ full disk
def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg, root = _two_checkpoints(tmp_path)
    real = torch.save

    def full(obj, f, *a, **kw):
        if "optimizer" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real(obj, f, *a, **kw)

    tr = Trainer(cfg, resume=True, progress=False)
    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(TrainingError, match="No space left on device") as e:
        tr.train()
    assert "optimizer.pt" in str(e.value) and "step-2" in str(e.value)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1, 2]
    assert ckpt.verify_checkpoint(root / "step-2") is None
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())
    monkeypatch.setattr(ckpt.torch, "save", real)
    rows = Trainer(cfg, resume=True, progress=False).train()  # space freed: resume works
    assert rows[-1]["step"] == 3


def test_disk_full_as_torch_reports_it_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """On a real full disk torch.save's zip writer raises RuntimeError (no errno), not OSError: the
    run must still stop with one line, remove its partial folder and keep the previous checkpoint."""
    cfg, root = _two_checkpoints(tmp_path)
    real, real_usage = torch.save, ckpt.shutil.disk_usage

    def full(obj, f, *a, **kw):
        if "optimizer" in str(f):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1026715072 vs 1026714964")
        return real(obj, f, *a, **kw)

    tr = Trainer(cfg, resume=True, progress=False)
    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=660 * 1024))
    with pytest.raises(TrainingError, match="No space left on device") as e:
        tr.train()
    assert "checkpoint step-3" in str(e.value) and "previous checkpoint step-2 is intact" in str(e.value)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "run")] == [1, 2]
    assert not any(p.name.startswith(".tmp") for p in root.iterdir())
    # with space left, the same RuntimeError is not a disk problem: it is raised as it is
    monkeypatch.setattr(ckpt.shutil, "disk_usage", real_usage)
    with pytest.raises(RuntimeError, match="inline_container"):
        Trainer(cfg, resume=True, progress=False).train()


def test_disk_full_while_writing_final_is_one_line(tmp_path, monkeypatch):
    cfg, root = _two_checkpoints(tmp_path)
    tr = Trainer(cfg, resume=True, progress=False)
    model = tr.dist.unwrap(tr.model)
    real_usage = ckpt.shutil.disk_usage

    real_save = model.save_pretrained

    def full(folder, *a, **kw):  # the checkpoint is written; then the disk fills while final/ is
        if ".tmp-final" in str(folder):
            ckpt.shutil.disk_usage = lambda p: real_usage(p)._replace(free=0)
            raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        return real_save(folder, *a, **kw)

    monkeypatch.setattr(model, "save_pretrained", full)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", real_usage)  # restored by monkeypatch afterwards
    with pytest.raises(TrainingError, match="cannot write the final model: No space left on device"):
        tr.train()
    assert not (tmp_path / "run" / ".tmp-final").exists() and not (tmp_path / "run" / "final").exists()


# ------------------------------------------------------------------ one run per directory
def test_second_run_on_a_live_directory_refuses(tmp_path):
    run = tmp_path / "run"
    p = _cli("train", *SMALL, "steps=200", "save_every=1", f"output_dir={run}")
    _wait_for_step(run, 2, p)
    q = _cli("train", *SMALL, "steps=2", f"output_dir={run}")
    _, err = q.communicate(timeout=300)
    p.kill()
    p.communicate()
    assert q.returncode == 2
    assert err.strip().splitlines()[-1].startswith(f"fairalign: error: output_dir '{run}' is in use by another "
                                                    f"fairalign run (pid {p.pid})")
    # the killed run's lock is stale: --resume works (steps = its newest checkpoint: it finishes at once)
    newest = max(int(c.name.split("-")[1]) for c in (run / "checkpoints").glob("step-*"))
    r = _cli("train", "--resume", str(run), f"steps={newest}")
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err


# ------------------------------------------------------------------ plain progress when not a terminal
def test_progress_is_plain_lines_when_output_is_not_a_terminal(tmp_path):
    p = _cli("train", *SMALL, "steps=3", f"output_dir={tmp_path / 'run'}", "log.progress=true")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    lines = [x for x in (out + err).splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"]
    assert "reward" in lines[0] and "s/step" in lines[0]


# ------------------------------------------------------------------ hung rewards
def _hanging_task(tmp_path, seconds):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "split": "train" if i else "test"}) + "\n"
                            for i in range(6)))
    mod = tmp_path / "slow.py"
    mod.write_text(f"import time\ndef slow(prompts, completions, **kw):\n    time.sleep({seconds})\n"
                   f"    return [1.0] * len(completions)\n"
                   f"def quick(prompts, completions, **kw):\n    return [0.5] * len(completions)\n")
    return [f"task={data}", f"task_reward=[{mod}:slow, {mod}:quick]"]


def test_hung_reward_stops_naming_the_function_and_the_limit(tmp_path):
    cfg = build_config({"output_dir": str(tmp_path / "run")},
                       SMALL + ["steps=1", "reward_timeout_s=0.3"] + _hanging_task(tmp_path, 30))
    t0 = time.time()
    with pytest.raises(ValueError, match=r"reward function 'slow' did not return within reward_timeout_s=0.3"):
        Trainer(cfg, progress=False).train()
    assert time.time() - t0 < 25


def test_hung_reward_scores_zero_when_on_reward_error_is_zero(tmp_path):
    cfg = build_config({"output_dir": str(tmp_path / "run")},
                       SMALL + ["steps=1", "reward_timeout_s=0.3", "on_reward_error=zero"] + _hanging_task(tmp_path, 30))
    row = Trainer(cfg, progress=False).train()[0]
    assert row["reward/errors"] == 4
    assert row["reward/slow"] == 0.0 and row["reward/quick"] == 0.5


def test_slow_reward_within_the_limit_is_fine(tmp_path):
    cfg = build_config({"output_dir": str(tmp_path / "run")},
                       SMALL + ["steps=1", "reward_timeout_s=20"] + _hanging_task(tmp_path, 0.05))
    row = Trainer(cfg, progress=False).train()[0]
    assert row["reward/slow"] == 1.0 and row["reward/errors"] == 0


def test_sigterm_under_two_processes_stops_every_rank_at_the_same_step(tmp_path):
    """The launcher forwards SIGTERM to both ranks; they agree on the stop step, one checkpoint is written
    for it, and the run resumes to the end. A fresh model cache: both ranks build the tiny model (a rank
    other than 0 used to write a folder without weights, since save_pretrained skips it)."""
    run = tmp_path / "run"
    env = {**os.environ, "FAIRALIGN_CACHE": str(tmp_path / "cache"), "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": os.pathsep.join([_teardown_hook(tmp_path), os.environ.get("PYTHONPATH", "")])}
    p = _cli("train", "--num-processes", "2", *SMALL, "steps=8", "rollout.prompts_per_step=2",
             f"output_dir={run}", env=env)
    _wait_for_step(run, 2, p, timeout=400)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=300)
    import re

    # the stopped ranks close their process group and skip interpreter teardown too
    assert "teardown of rank 0" not in err and "teardown of rank 1" not in err, out + err
    found = re.findall(r"stopped by SIGTERM after step (\d+); resume with", err)
    assert len(found) == 2, err  # one message per rank (the two may share a line), the same step on both
    steps = set(map(int, found))
    assert len(steps) == 1, found
    stopped = steps.pop()
    assert (run / "checkpoints" / f"step-{stopped}" / "COMPLETE").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == stopped
    r = _cli("train", "--resume", str(run), "--num-processes", "2", env=env)
    out, err = r.communicate(timeout=600)
    assert r.returncode == 0, out + err
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
    # the launcher and `fairalign train` end the normal way; the two ranks of the finished run skip interpreter
    # teardown (gloo's sometimes aborted a finished rank there: SIGABRT, and the launcher failed the run)
    assert "teardown of rank -" in err and "teardown of rank 0" not in err and "teardown of rank 1" not in err, err


def _teardown_hook(tmp_path) -> str:
    """A folder with a sitecustomize.py that prints 'teardown of rank R' (R from $RANK, '-' outside a launched
    rank) to stderr when the interpreter's teardown runs its atexit handlers."""
    folder = tmp_path / "teardown_hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "atexit.register(lambda: print(f\"teardown of rank {os.environ.get('RANK', '-')}\", file=sys.stderr))\n")
    return str(folder)
