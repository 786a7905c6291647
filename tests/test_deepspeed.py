"""DeepSpeed ZeRO-2 / ZeRO-3 data parallelism on CPU (gloo, tiny model, 2 processes).

- `resolve_strategy`: how `dist_strategy=deepspeed` and accelerate's ACCELERATE_DEEPSPEED_* variables (also
  from the shipped configs/accelerate/deepspeed_zero{2,3}.yaml) select it, and the one-line errors for
  what fairalign does not implement (no deepspeed needed).
- Training (needs deepspeed, else skipped): 2 processes under ZeRO-2 and under ZeRO-3 give the same loss,
  global gradient norm (clipping active), parameters after every optimizer step, P-GRPO state and
  checkpoint files (weights and AdamW moments, 1-process format) as 1 process on the same global batch
  (a replay engine makes the sampled responses independent of the split, as in test_fsdp.py). A
  skipped update (NaN loss) leaves the weights alone and leaves no gradient behind.
- Resume across process counts: a ZeRO-3 checkpoint resumes in 1 process, a 1-process checkpoint in 2
  ZeRO-2 processes; the loaded state equals the checkpoint and both continuations end at the same point.
"""
import json
import os
import shutil
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from fairalign.dist import Dist, make_dist, resolve_strategy
from replay_support import assert_loaded_equals_checkpoint, write_worker
from test_fsdp import _launch

DS_ENV = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
          "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "1", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "none",
          "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "none", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
          "ACCELERATE_MIXED_PRECISION": "no"}


# ---------------------------------------------------------------------------------------- strategy

def test_strategy_from_config_and_accelerate_env():
    assert resolve_strategy("deepspeed", {}) == ("deepspeed", {"zero_stage": 2})
    assert resolve_strategy("deepspeed", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == ("deepspeed", {"zero_stage": 3})
    assert resolve_strategy("auto", {"ACCELERATE_USE_DEEPSPEED": "true"}) == ("deepspeed", {"zero_stage": 2})
    assert resolve_strategy("auto", DS_ENV) == ("deepspeed", {"zero_stage": 3})
    assert resolve_strategy("deepspeed", DS_ENV) == ("deepspeed", {"zero_stage": 3})
    assert resolve_strategy("auto", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) == ("ddp", {})  # no USE flag


@pytest.mark.parametrize("configured,extra,needle", [
    ("auto", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, "ACCELERATE_DEEPSPEED_ZERO_STAGE=1 is not supported"),
    ("auto", {"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"},
     "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE=cpu is not supported"),
    ("auto", {"ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": "nvme"}, "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE=nvme"),
    ("auto", {"ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}, "ACCELERATE_DEEPSPEED_ZERO3_INIT=true"),
    ("auto", {"ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, "ACCELERATE_DEEPSPEED_CONFIG_FILE=ds.json"),
    ("auto", {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS=4"),
    ("auto", {"ACCELERATE_GRADIENT_CLIPPING": "1.0"}, "ACCELERATE_GRADIENT_CLIPPING=1.0"),
    ("auto", {"ACCELERATE_MIXED_PRECISION": "bf16"}, "ACCELERATE_MIXED_PRECISION=bf16"),
    ("fsdp2", {}, "'dist_strategy' is 'fsdp2' but the launcher's accelerate config selects DeepSpeed"),
    ("auto", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "both set"),
])
def test_strategy_errors_are_one_line(configured, extra, needle):
    with pytest.raises(ValueError) as e:
        resolve_strategy(configured, {**DS_ENV, **extra})
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("stage", [2, 3])
def test_shipped_deepspeed_configs_select_deepspeed(stage):
    """The env vars accelerate derives from configs/accelerate/deepspeed_zero{2,3}.yaml."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    root = os.path.join(os.path.dirname(__file__), "..")
    path = os.path.join(root, "configs", "accelerate", f"deepspeed_zero{stage}.yaml")
    args = launch_command_parser().parse_args(["--config_file", path, "-m", "fairalign", "train"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.use_deepspeed
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as `accelerate launch`
    _cmd, env = prepare_deepspeed_cmd_env(args)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert resolve_strategy("auto", env) == ("deepspeed", {"zero_stage": stage})


def test_one_process_is_plain_and_missing_package_is_one_line(monkeypatch):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    d = make_dist(0, 1, "deepspeed", {"zero_stage": 3})  # one process: nothing to partition
    assert type(d) is Dist and d.strategy == "deepspeed" and d.all_ranks is bool
    assert d.prepare_optimizer(model, opt) is opt and d.for_training(model) is model
    from fairalign.dist.deepspeed import import_deepspeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import fails as if not installed
    with pytest.raises(ValueError) as e:
        import_deepspeed()
    assert "pip install 'fairalign[deepspeed]'" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- training

WORKER = textwrap.dedent('''
    import copy, os, sys, torch
    from replay_support import fairalign_attrs, replay_engine
    from fairalign.config import build_config
    from fairalign.dist import DeepSpeedDist
    from fairalign.train.trainer import Trainer

    out, tag, run_dir, steps, resume = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    cfg = build_config({"model": "tiny", "task": "personas", "steps": steps, "seed": 5, "output_dir": run_dir,
                        "dist_strategy": "deepspeed", "keep_last": 3,
                        "rollout": {"prompts_per_step": 4, "generations": 3, "max_new_tokens": 10},
                        "algo": {"loss": "fspo", "advantage": "pgrpo", "pgrpo_min_count": 2, "micro_batch_size": 2,
                                 "minibatches": 2, "ppo_epochs": 2, "beta": 0.05},
                        "optim": {"lr": 1e-3, "grad_clip": 0.05, "warmup_steps": 3},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg, resume=resume)
    eng = tr.engine
    V = tr.model.config.vocab_size
    zero = tr.dist.zero if isinstance(tr.dist, DeepSpeedDist) else None

    def full_params():   # a collective under DeepSpeed
        if zero is None:
            return {n: p.detach().clone() for n, p in tr.model.named_parameters()}
        from deepspeed.utils import safe_get_full_fp32_param
        return {n: safe_get_full_fp32_param(p).detach().clone() for n, p in tr.model.named_parameters()}

    eng.generate = replay_engine(eng, V)
    res = {"zero": zero is not None, "world": tr.dist.world, "attrs": fairalign_attrs(tr.model),
           "stage": None if zero is None else tr.dist.zero_stage}
    if zero is not None and res["stage"] == 3:   # really partitioned: this rank holds a slice of the weights
        emb = tr.model.get_input_embeddings().weight
        res["partitioned"] = emb.ds_tensor.numel() < emb.ds_numel
    if resume:   # the state the resumed run starts from
        optim = tr.dist.full_optimizer_state(tr.model, tr.optimizer)          # None in 1 process
        res["loaded"] = {"step": tr.step, "data": tr.sampler.state_dict(), "pgrpo": tr.estimator.state_dict(),
                         "params": full_params(),
                         "optim": copy.deepcopy(tr.optimizer.state_dict() if optim is None else optim)}
    norms, after = [], []
    real_clip, real_step = tr.dist.clip_grad_norm, tr.optimizer.step
    def clip_and_record(*a, **k):
        gn = real_clip(*a, **k)
        norms.append(float(gn))
        return gn
    def step_and_record(*a, **k):
        real_step(*a, **k)
        after.append(full_params())
    tr.dist.clip_grad_norm, tr.optimizer.step = clip_and_record, step_and_record
    rows = tr.train()
    tr.dist.clip_grad_norm, tr.optimizer.step = real_clip, real_step
    res.update(rows=[{k: v for k, v in r.items() if not k.startswith(("time/", "step_s", "tokens_per_s"))}
                     for r in rows],
               norms=norms, after=after, params=full_params(), pgrpo=tr.estimator.state_dict())
    if not resume:   # a skipped update, then a good one: the skip must leave nothing behind
        params = [p for p in tr.model.parameters() if p.requires_grad]
        before = full_params()
        ids = torch.tensor([[11, 12, 13, 14]])
        logits = tr.dist.for_training(tr.model)(input_ids=ids).logits.float()
        tr.dist.backward(logits.sum() * float("nan"), tr.model, sync=True)
        res["nan_norm"] = float(tr.dist.clip_grad_norm(params, 1.0))
        tr.optimizer.zero_grad(set_to_none=True)
        res["after_skip_unchanged"] = all(torch.equal(before[n], v) for n, v in full_params().items())
        logits = tr.dist.for_training(tr.model)(input_ids=ids).logits.float()
        tr.dist.backward(logits.pow(2).mean() / tr.dist.world, tr.model, sync=True)  # ranks' shares sum to 1 loss
        res["good_norm"] = float(tr.dist.clip_grad_norm(params, 1.0))
        tr.optimizer.step()
        res["after_good"] = full_params()
    torch.save(res, f"{out}/{tag}-rank{tr.dist.rank}.pt")
    tr.dist.close()
    os._exit(0)   # see EXIT_NOTE in test_fsdp.py
''')


def _launch_ds(script, args, nproc, tmp, stage):
    os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] = str(stage)  # read by resolve_strategy in the ranks
    try:
        _launch(script, args, nproc, tmp)
    finally:
        del os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"]


@pytest.fixture(scope="module")
def two_step_runs(tmp_path_factory, tiny_model_dir):  # tiny_model_dir: built before the ranks start
    """1 process, 2 ZeRO-2 and 2 ZeRO-3 processes, 2 steps each on the same replayed global batches."""
    pytest.importorskip("deepspeed")
    tmp = tmp_path_factory.mktemp("deepspeed")
    script = tmp / "worker.py"
    write_worker(script, WORKER)
    _launch_ds(script, [tmp, "single", tmp / "run-single", 2, 0], 1, tmp, 2)
    for stage in (2, 3):
        _launch_ds(script, [tmp, f"zero{stage}", tmp / f"run-zero{stage}", 2, 0], 2, tmp, stage)
    return tmp


def _load(tmp, name):
    return torch.load(tmp / f"{name}.pt", weights_only=False)


def _close(a: dict, b: dict, atol=1e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_equal_one(two_step_runs, stage):
    tmp = two_step_runs
    one, r0, r1 = _load(tmp, "single-rank0"), _load(tmp, f"zero{stage}-rank0"), _load(tmp, f"zero{stage}-rank1")
    assert not one["zero"] and r0["zero"] and r0["stage"] == stage and r0["world"] == 2
    assert one["attrs"] == r0["attrs"] == r1["attrs"] == []   # ZeRO-3 too: nothing attached to the model
    if stage == 3:
        assert r0["partitioned"] and r1["partitioned"]
    for a, b in zip(one["rows"], r0["rows"]):
        for key in ("loss", "reward/mean", "clip_frac", "kl", "grad_norm", "skipped_updates"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key  # float32 sums in another order
        assert a["grad_norm"] > 0.05   # clipping is active, so the norm must be the global one
    # 2 steps x 2 epochs = 4 optimizer steps: the same global norms and the same weights after each
    assert len(one["norms"]) == len(r0["norms"]) == len(one["after"]) == len(r0["after"]) == 8  # 2x2x2 updates
    assert r0["norms"] == pytest.approx(one["norms"], rel=1e-4) and r1["norms"] == r0["norms"]
    for a, b, c in zip(one["after"], r0["after"], r1["after"]):
        _close(a, b)
        _close(b, c, atol=0, rtol=0)
    assert r0["pgrpo"] == r1["pgrpo"]
    assert r0["pgrpo"]["groups"] == one["pgrpo"]["groups"]
    for key in ("n", "mean", "m2"):
        assert r0["pgrpo"][key] == pytest.approx(one["pgrpo"][key], abs=1e-9)
    # a NaN loss: non-finite norm, weights untouched; the next update sees only its own gradient
    for res in (one, r0, r1):
        assert res["nan_norm"] != res["nan_norm"] and res["after_skip_unchanged"]
    assert r0["good_norm"] == pytest.approx(one["good_norm"], rel=1e-4)
    _close(one["after_good"], r0["after_good"])
    # the checkpoint and final folder are written in the 1-process format
    single, multi = tmp / "run-single", tmp / f"run-zero{stage}"
    for sub in ("final/model.safetensors", "checkpoints/step-2/model/model.safetensors"):
        _close(load_file(str(single / sub)), load_file(str(multi / sub)))
    assert json.loads((multi / "final" / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    oa = torch.load(single / "checkpoints/step-2/optimizer.pt", weights_only=True)
    ob = torch.load(multi / "checkpoints/step-2/optimizer.pt", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        assert oa["state"][i].keys() == ob["state"][i].keys()
        for k in oa["state"][i]:
            torch.testing.assert_close(ob["state"][i][k], oa["state"][i][k], atol=1e-6, rtol=1e-4)


def test_checkpoint_resumes_with_another_process_count(two_step_runs, tmp_path):
    tmp = two_step_runs
    script = tmp / "worker.py"
    for src, dst, nproc, stage in (("run-zero3", "zero3-then-1", 1, 3), ("run-single", "single-then-zero2", 2, 2)):
        shutil.copytree(tmp / src, tmp_path / dst)
        _launch_ds(script, [tmp_path, dst, tmp_path / dst, 3, 1], nproc, tmp_path, stage)
    a, b = _load(tmp_path, "zero3-then-1-rank0"), _load(tmp_path, "single-then-zero2-rank0")
    assert (a["world"], a["zero"], b["world"], b["zero"], b["stage"]) == (1, False, 2, True, 2)
    assert_loaded_equals_checkpoint(a, tmp / "run-zero3" / "checkpoints" / "step-2")
    assert_loaded_equals_checkpoint(b, tmp / "run-single" / "checkpoints" / "step-2")
    for name in ("zero3-then-1", "single-then-zero2"):
        run = tmp_path / name
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert steps == [1, 2, 3]
        assert (run / "checkpoints" / "step-3" / "COMPLETE").exists()
    assert [r["step"] for r in a["rows"]] == [r["step"] for r in b["rows"]] == [3]
    # replayed sampling: both continuations see the same step-3 batch, so they end at the same point
    assert a["rows"][0]["loss"] == pytest.approx(b["rows"][0]["loss"], abs=1e-5)
    _close(a["params"], b["params"])
    assert a["pgrpo"]["groups"] == b["pgrpo"]["groups"]
    for key in ("n", "mean", "m2"):
        assert a["pgrpo"][key] == pytest.approx(b["pgrpo"][key], abs=1e-9)


def test_a_stale_extension_build_lock_is_named_before_it_can_hang(tmp_path, monkeypatch, capsys):
    """A build killed mid-compile leaves `lock`; torch's next build of that op waits for it forever, in
    silence. import_deepspeed names an old one (both folder layouts) and leaves a fresh one alone."""
    pytest.importorskip("deepspeed")
    from fairalign.dist.deepspeed import STALE_LOCK_S, import_deepspeed

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    old = tmp_path / "deepspeed_shm_comm" / "lock"
    fresh = tmp_path / "py311_cpu" / "other_op" / "lock"
    for lock in (old, fresh):
        lock.parent.mkdir(parents=True)
        lock.write_text("")
    t = time.time() - STALE_LOCK_S - 60
    os.utime(old, (t, t))
    import_deepspeed()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"fairalign: warning: {old} is 11 min old; a torch extension build that was killed leaves it, "
                     "and DeepSpeed's next build of that op waits for it forever: delete it unless another process "
                     "is compiling"]
    assert old.exists() and fresh.exists()  # nothing deleted
