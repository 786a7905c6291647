"""GPU-only defects, caught directly on the tiny model (`pytest -m gpu`; scripts/gpu_check.sh runs it).

Every test is marked `gpu` (deselected by the default addopts) and skipped when CUDA is not
available. They check what a CPU run cannot: the behaviour and reference log-probs and the
advantages live on the GPU (a known defect allocated the log-probs on the CPU, so every GPU run
with ppo_epochs > 1 or beta > 0 failed at step 1), LoRA's base-model reference, bf16 autocast,
FSPO drift=kl with P-GRPO, the SFT warm-up, finite metrics with no skipped update, and that a
checkpoint written on CUDA resumes on the CPU with the same weights, estimator state and data order.

Debugging aid only: `GPU_CHECK_DEVICE=cpu pytest -m gpu tests/test_gpu.py` runs the same tests on
the CPU (the checks then expect CPU tensors and the resume is CPU -> CPU). That checks the test code
itself, not a GPU.
"""
import json
import math
import os
import shutil

import pytest
import torch

from fairalign.algos import ESTIMATOR_REGISTRY, LOCAL, build_estimator
from fairalign.config import build_config
from fairalign.train.policy import Policy
from fairalign.train.trainer import Trainer

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FAST = {"model": "tiny", "task": "personas", "steps": 1, "seed": 5, "device": DEVICE,
        "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 8},
        "log": {"tensorboard": False, "progress": False}}


def _cfg(tmp_path, name="run", **sections):
    """FAST with `sections` merged in (a dict merges into its section; anything else replaces)."""
    d = json.loads(json.dumps(FAST))
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) and k != "task_options" else v
    d["output_dir"] = str(tmp_path / name)
    return build_config(d)


def _on_device(t: torch.Tensor) -> bool:
    return t.device.type == DEVICE


class _Spy:
    """Records what `Policy.logprobs` returns, and every batch the task's rollout returns."""

    def __init__(self, monkeypatch, trainer: Trainer):
        self.logprobs: list[torch.Tensor] = []
        self.batches = []
        real_lp = Policy.logprobs
        spy = self

        def logprobs_no_grad(self_, model, batch, micro):
            out = real_lp(self_, model, batch, micro)
            spy.logprobs.append(out)
            return out

        monkeypatch.setattr(Policy, "logprobs", logprobs_no_grad)
        real_rollout = trainer.task.rollout

        def rollout(*args, **kwargs):
            batch = real_rollout(*args, **kwargs)
            spy.batches.append(batch)
            return batch

        monkeypatch.setattr(trainer.task, "rollout", rollout)


def _assert_finite_metrics(m: dict):
    bad = {k: v for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, f"non-finite metrics: {bad}"
    assert m["skipped_updates"] == 0, "an update was skipped (non-finite loss or gradient)"
    assert math.isfinite(m["loss"])


def _assert_batch_on_device(spy: _Spy, *, old: bool, ref: bool):
    assert spy.batches, "the task's rollout was not called"
    batch = spy.batches[-1]
    assert _on_device(batch.advantages), f"advantages on {batch.advantages.device}"
    if old:
        assert batch.old_logp is not None
        assert _on_device(batch.old_logp), f"behaviour log-probs on {batch.old_logp.device}"
    if ref:
        assert batch.ref_logp is not None
        assert _on_device(batch.ref_logp), f"reference log-probs on {batch.ref_logp.device}"
    assert len(spy.logprobs) == int(old) + int(ref)
    for lp in spy.logprobs:
        assert _on_device(lp), f"Policy.logprobs returned a tensor on {lp.device}"
        assert lp.dtype == torch.float32
        assert lp.shape == batch.response_ids.shape
        assert torch.isfinite(lp).all()


def test_behaviour_and_reference_logprobs_live_on_the_device(tmp_path, monkeypatch):
    """ppo_epochs=2 and beta=0.1: old_logp and ref_logp are taken once, on the policy's device."""
    tr = Trainer(_cfg(tmp_path, algo={"ppo_epochs": 2, "minibatches": 2, "beta": 0.1}))
    assert all(_on_device(p) for p in tr.model.parameters())
    assert tr.ref_model is not None and all(_on_device(p) for p in tr.ref_model.parameters())
    spy = _Spy(monkeypatch, tr)
    m = tr.train_step()
    _assert_batch_on_device(spy, old=True, ref=True)
    _assert_finite_metrics(m)
    assert math.isfinite(m["kl"])
    assert m["clip/off_policy_updates"] == 3  # 2 epochs x 2 minibatches, the first is on-policy
    assert all(_on_device(p) for p in tr.model.parameters())


def test_lora_base_model_reference_on_the_device(tmp_path, monkeypatch):
    """LoRA without a warm-up: the reference is the base model (adapter disabled), on the device."""
    pytest.importorskip("peft")
    tr = Trainer(_cfg(tmp_path, lora={"enabled": True, "r": 4}, algo={"beta": 0.05, "ppo_epochs": 2}))
    assert tr.ref_model is None  # the adapter-disabled policy is the reference
    spy = _Spy(monkeypatch, tr)
    m = tr.train_step()
    _assert_batch_on_device(spy, old=True, ref=True)
    _assert_finite_metrics(m)
    assert math.isfinite(m["kl"])


def test_bf16_autocast_on_the_device(tmp_path, monkeypatch):
    """precision=bf16: log-probs come back float32 on the device, and every update is finite."""
    tr = Trainer(_cfg(tmp_path, precision="bf16", algo={"ppo_epochs": 2, "beta": 0.1}))
    spy = _Spy(monkeypatch, tr)
    m = tr.train_step()
    _assert_batch_on_device(spy, old=True, ref=True)
    _assert_finite_metrics(m)


def test_fspo_kl_drift_with_pgrpo_on_the_device(tmp_path):
    """FSPO drift=kl (an extra whole-minibatch forward) + P-GRPO (stateful, checkpointed as JSON)."""
    cfg = _cfg(tmp_path, steps=3, rollout={"prompts_per_step": 4},
               algo={"loss": "fspo", "drift": "kl", "advantage": "pgrpo", "pgrpo_min_count": 2})
    tr = Trainer(cfg)
    rows = tr.train()
    assert [r["step"] for r in rows] == [1, 2, 3]
    for m in rows:
        _assert_finite_metrics(m)
        assert "pgrpo/history_frac" in m  # often 0 here: the random model's rewards rarely vary in a group
    state = json.loads((tr.run_dir / "checkpoints" / "step-3" / "trainer_state.json").read_text())
    assert state["estimator"] is not None


@pytest.mark.parametrize("index_on_device", [False, True])
def test_every_estimator_takes_device_rewards(index_on_device):
    """Rewards on the device (as the trainer passes them) with the prompt index on the CPU (as a rollout
    builds it) or on the device: advantages come back on the rewards' device, and P-GRPO's history
    (kept on the CPU) is used once a group has min_count samples."""
    rewards = torch.tensor([0.0, 1.0, 0.5, 2.0, 1.0, 3.0, 0.2, 0.7], device=DEVICE)  # [N]
    index = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], device=DEVICE if index_on_device else "cpu")  # [N]
    groups = ["a", "b"] * 4
    for name in ESTIMATOR_REGISTRY:
        est = build_estimator(name, **({"min_count": 2} if name == "pgrpo" else {}))
        for _ in range(2):  # pgrpo: the second call normalizes by the first call's history
            adv = est(rewards, index, groups, LOCAL)
            assert _on_device(adv), f"{name}: advantages on {adv.device}"
            assert torch.isfinite(adv).all(), name
        if name == "pgrpo":
            assert est.metrics()["pgrpo/history_frac"] == 1.0
            json.dumps(est.state_dict())  # checkpointable as JSON (no device tensors in the state)


def test_rlpa_sft_warm_up_then_kl_on_the_device(tmp_path):
    """RLPA with the SFT warm-up: the warm-up trains on the device, the reference (the warm-up's result)
    is built there, and step 1's KL to it is finite."""
    cfg = _cfg(tmp_path, task="rlpa", task_options={"max_turns": 1, "n_train": 8},
               sft={"steps": 2, "batch_size": 4}, algo={"beta": 0.1})
    tr = Trainer(cfg)
    rows = tr.train()
    assert tr.ref_model is not None and all(_on_device(p) for p in tr.ref_model.parameters())
    sft = [json.loads(x) for x in (tr.run_dir / "sft_metrics.jsonl").read_text().splitlines() if x.strip()]
    assert len(sft) == 2
    assert all(math.isfinite(r["sft/loss"]) for r in sft)
    _assert_finite_metrics(rows[0])
    assert math.isfinite(rows[0]["kl"])


def _tag_optimizer_state_as_cuda(monkeypatch):
    """CPU debugging mode only: write optimizer.pt with its storages tagged cuda:0, as a CUDA run writes it."""
    import torch.serialization as ser

    real_save, real_tag = torch.save, ser.location_tag

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:0")
            try:
                return real_save(obj, f, *args, **kwargs)
            finally:
                monkeypatch.setattr(ser, "location_tag", real_tag)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("cuda_absent", [False, True], ids=["cpu", "cpu-only-machine"])
def test_checkpoint_written_on_the_device_resumes_on_the_cpu(tmp_path, monkeypatch, cuda_absent):
    """A checkpoint written by a CUDA run resumes with device=cpu: same weights, same estimator state,
    optimizer state on the CPU, and the same next-step prompts as the CUDA run that went on.
    cpu-only-machine: the resume runs as if CUDA were absent (torch.cuda.is_available() is False), as
    on a laptop the run directory was copied to; every torch.load must map CUDA storages to the CPU."""
    over = dict(steps=2, save_every=1, algo={"advantage": "pgrpo", "pgrpo_min_count": 2, "ppo_epochs": 2},
                optim={"lr": 1e-3})
    gpu_tr = Trainer(_cfg(tmp_path, "gpu", **over))
    with monkeypatch.context() as mp:
        if cuda_absent and DEVICE == "cpu":
            _tag_optimizer_state_as_cuda(mp)
        gpu_tr.train(stop_after=1)
    assert (tmp_path / "gpu" / "checkpoints" / "step-1" / "COMPLETE").exists()
    weights = {n: p.detach().cpu().clone() for n, p in gpu_tr.model.named_parameters()}
    estimator_state = json.loads(json.dumps(gpu_tr.estimator.state_dict()))
    shutil.copytree(tmp_path / "gpu", tmp_path / "cpu")

    gpu_spy = _Spy(monkeypatch, gpu_tr)
    gpu_rows = gpu_tr.train()  # step 2 on the device
    assert [r["step"] for r in gpu_rows] == [2]

    cpu_cfg = _cfg(tmp_path, "cpu", **over)
    cpu_cfg.device = "cpu"
    with monkeypatch.context() as mp:
        if cuda_absent:
            mp.setattr(torch.cuda, "is_available", lambda: False)
            mp.delenv("DS_ACCELERATOR", raising=False)  # the Trainer sets it when CUDA is absent
        cpu_tr = Trainer(cpu_cfg, resume=True)
    assert cpu_tr.step == 1
    assert cpu_tr.device.type == "cpu"
    for n, p in cpu_tr.model.named_parameters():
        assert p.device.type == "cpu", n
        assert torch.equal(p.detach(), weights[n]), n
    for st in cpu_tr.optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                assert v.device.type == "cpu", f"optimizer state '{k}' on {v.device}"
    assert json.loads(json.dumps(cpu_tr.estimator.state_dict())) == estimator_state

    cpu_spy = _Spy(monkeypatch, cpu_tr)
    cpu_rows = cpu_tr.train()  # step 2 on the CPU
    assert [r["step"] for r in cpu_rows] == [2]
    _assert_finite_metrics(cpu_rows[0])
    assert cpu_spy.batches[0].prompts == gpu_spy.batches[0].prompts
    assert list(cpu_spy.batches[0].groups) == list(gpu_spy.batches[0].groups)
    assert cpu_tr.sampler.state_dict() == gpu_tr.sampler.state_dict()
