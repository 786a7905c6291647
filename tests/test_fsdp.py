"""FSDP2 sharded data parallelism on CPU (gloo, tiny model, 2 processes).

- `resolve_strategy`: how `dist_strategy` and accelerate's FSDP_* variables select a strategy, and the
  one-line errors for FSDP1, a DeepSpeed launcher with dist_strategy=fsdp2 and unsupported FSDP options
  (DeepSpeed itself: test_deepspeed.py).
- Collectives: `fairalign.dist.from_env` gives `FSDP2Dist`, whose sharding attaches nothing to the model; with
  its `all_ranks` a sharded model makes the same forward calls on every rank even when the ranks' data
  would make them differ (the decode loop's stop, the prompt-sharing log-prob path); results equal an
  unsharded copy of the model, and the summed gradients equal the unsharded sum.
- Training: 2 FSDP2 processes give the same loss, clipped gradients, updated parameters, P-GRPO state
  and checkpoint files as 1 process on the same global batch (a replay engine makes the sampled
  responses independent of the split, as in test_distributed.py).
- Resume across process counts: the 2-process checkpoint resumes in 1 process and the 1-process
  checkpoint in 2 FSDP2 processes; the loaded state equals the checkpoint, numbering continues, and
  both continuations end at the same parameters.
"""
import json
import os
import shutil
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from fairalign.dist import resolve_strategy
from replay_support import assert_loaded_equals_checkpoint, run_ranks, write_worker

TIMEOUT = 150  # a collective mismatch hangs: run_ranks kills the launcher and every rank
# EXIT_NOTE: the worker scripts end with os._exit(0) after their last collective and result file:
# with torch 2.13, a process holding FSDP2-sharded tensors sometimes aborts in a gloo destructor at
# interpreter exit ("terminate called without an active exception"), even after
# destroy_process_group; that is teardown, not a result of the test.


def _launch(script, args, nproc: int, tmp_path) -> None:
    done = run_ranks(script, args, nproc, TIMEOUT)
    ranks = [x for x in done.stderr.splitlines() if x.startswith("[rank") and "Error" in x]
    assert done.returncode == 0, "\n".join(ranks[-6:]) + "\n" + done.stderr[-3000:]


# ---------------------------------------------------------------------------------------- strategy

def test_strategy_from_config_and_accelerate_env():
    assert resolve_strategy("auto", {}) == ("ddp", {})
    assert resolve_strategy("fsdp2", {}) == ("fsdp2", {})
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false",
           "FSDP_TRANSFORMER_CLS_TO_WRAP": "Qwen2DecoderLayer, LlamaDecoderLayer",
           "FSDP_OFFLOAD_PARAMS": "false", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
    strategy, options = resolve_strategy("auto", env)
    assert strategy == "fsdp2"
    assert options == {"reshard_after_forward": False, "wrap_classes": ["Qwen2DecoderLayer", "LlamaDecoderLayer"]}
    assert resolve_strategy("fsdp2", env)[0] == "fsdp2"


@pytest.mark.parametrize("configured,env,needle", [
    ("auto", {"ACCELERATE_USE_FSDP": "true"}, "FSDP version 1 (FSDP_VERSION) is not supported"),
    ("auto", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "use FSDP2"),
    ("fsdp2", {"ACCELERATE_USE_DEEPSPEED": "true"}, "selects DeepSpeed (ACCELERATE_USE_DEEPSPEED)"),
    ("ddp", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "'dist_strategy' is 'ddp'"),
    ("auto", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"},
     "FSDP_OFFLOAD_PARAMS=true"),
    ("auto", {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP"},
     "FSDP_AUTO_WRAP_POLICY=SIZE_BASED_WRAP"),
    ("zero3", {}, "'dist_strategy' has unknown value 'zero3'"),
])
def test_strategy_errors_are_one_line(configured, env, needle):
    with pytest.raises(ValueError, match=None) as e:
        resolve_strategy(configured, env)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_layers_to_shard(tiny_policy):
    from fairalign.dist import FSDP2Dist

    model, _ = tiny_policy
    decoder = list(model.model.layers)
    assert len(decoder) == 2
    d = FSDP2Dist(0, 2)
    assert [id(m) for m in d._layers(model)] == [id(m) for m in decoder]      # _no_split_modules
    d.options["wrap_classes"] = ["Qwen2MLP"]
    assert [id(m) for m in d._layers(model)] == [id(layer.mlp) for layer in decoder]
    d.options["wrap_classes"] = ["NoSuchLayer"]
    with pytest.raises(ValueError, match="FSDP_TRANSFORMER_CLS_TO_WRAP=NoSuchLayer: no such module"):
        d._layers(model)
    saved, model._no_split_modules = model._no_split_modules, None   # fallback: the base model's ModuleList
    try:
        assert [id(m) for m in FSDP2Dist(0, 2)._layers(model)] == [id(m) for m in decoder]
    finally:
        model._no_split_modules = saved


def test_shipped_fsdp2_config_selects_fsdp2():
    """The env vars accelerate derives from configs/accelerate/fsdp2.yaml resolve to FSDP2."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    root = os.path.join(os.path.dirname(__file__), "..")
    args = launch_command_parser().parse_args(
        ["--config_file", os.path.join(root, "configs", "accelerate", "fsdp2.yaml"), "-m", "fairalign", "train"])
    args, *_ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert resolve_strategy("auto", env) == ("fsdp2", {"reshard_after_forward": True})


# ---------------------------------------------------------------------------------------- collectives

COLLECTIVES = textwrap.dedent('''
    import copy, os, sys, torch
    import torch.distributed as td
    from replay_support import fairalign_attrs
    from fairalign.models import load_policy
    from fairalign.rollout import HFGenerationEngine, sequence_logprobs
    from fairalign.dist import FSDP2Dist, from_env

    dist = from_env("fsdp2")   # joins the torchrun group (gloo)
    assert type(dist) is FSDP2Dist and dist.world == 2 and dist.all_ranks == dist.all_true
    rank = dist.rank
    model, tok = load_policy(sys.argv[1])
    model.eval()
    ref = copy.deepcopy(model)
    assert dist.prepare_model(model) is model
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "DTensor"
    assert fairalign_attrs(model) == [], fairalign_attrs(model)   # wrapped in place, nothing attached
    agree = {"all_ranks": dist.all_ranks}   # the ranks agree on data-dependent forward counts

    # 1. decoding: rank 0 stops after its first token, rank 1 runs to max_new_tokens
    prompt = ["Tell me about the sea.", "What is the capital of France?"][rank]
    probe = HFGenerationEngine(ref, tok, max_new_tokens=8, temperature=0, chat_template="none").generate([prompt])
    toks = probe.response_ids[0].tolist()
    eos = toks[0] if rank == 0 else next(t for t in range(3, 1000) if t not in toks)
    want = HFGenerationEngine(ref, tok, max_new_tokens=8, temperature=0, chat_template="none",
                              eos_token_id=eos).generate([prompt], generations=2)
    got = HFGenerationEngine(model, tok, max_new_tokens=8, temperature=0, chat_template="none",
                             eos_token_id=eos, **agree).generate([prompt], generations=2)
    assert want.lengths.tolist() == ([1, 1] if rank == 0 else [8, 8]), want.lengths
    assert got.lengths.tolist() == want.lengths.tolist()
    R = want.response_ids.shape[1]
    assert torch.equal(got.response_ids[:, :R][want.response_mask], want.response_ids[want.response_mask])

    # 2. log-probs + backward: rank 0's rows share a prompt (2 forwards alone), rank 1's do not (1)
    batch = HFGenerationEngine(ref, tok, max_new_tokens=5, temperature=1.0, chat_template="none").generate(
        ["Hello there.", "Hello there."] if rank == 0 else ["Good morning.", "Water boils."],
        generator_seed=rank)
    args = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    lp_ref, _ = sequence_logprobs(ref, *args)
    lp, _ = sequence_logprobs(model, *args, **agree)
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
    lp_ref.sum().backward()
    lp.sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        g = q.grad.clone()
        td.all_reduce(g)  # the unsharded model's gradient of the SUM of both ranks' losses
        torch.testing.assert_close(p.grad.full_tensor(), g, atol=1e-5, rtol=1e-4, msg=name)
    td.barrier()
    td.destroy_process_group()
    os._exit(0)   # see EXIT_NOTE
''')


def test_sharded_model_keeps_ranks_in_step(tmp_path, tiny_model_dir):
    """Also: `fairalign.dist.from_env` gives `FSDP2Dist`, whose `prepare_model` attaches nothing to the model."""
    script = tmp_path / "collectives.py"
    write_worker(script, COLLECTIVES)
    _launch(script, [tiny_model_dir], 2, tmp_path)


# ---------------------------------------------------------------------------------------- training

WORKER = textwrap.dedent('''
    import copy, json, os, sys, torch
    from replay_support import fairalign_attrs, replay_engine
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    out, tag, run_dir, steps, resume = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
    cfg = build_config({"model": "tiny", "task": "personas", "steps": steps, "seed": 5, "output_dir": run_dir,
                        "dist_strategy": "fsdp2", "keep_last": 3,
                        "rollout": {"prompts_per_step": 4, "generations": 3, "max_new_tokens": 10},
                        "algo": {"loss": "fspo", "advantage": "pgrpo", "pgrpo_min_count": 2, "micro_batch_size": 2,
                                 "minibatches": 2, "ppo_epochs": 2, "beta": 0.05},
                        "optim": {"lr": 1e-3, "grad_clip": 0.05},
                        "log": {"tensorboard": False, "progress": False}})
    tr = Trainer(cfg, resume=resume)
    eng = tr.engine
    V = tr.model.config.vocab_size
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t   # DTensor shard -> whole tensor

    eng.generate = replay_engine(eng, V)
    res = {"cls": type(tr.dist).__name__, "world": tr.dist.world,
           "attrs": fairalign_attrs(tr.model) + fairalign_attrs(tr.ref_model)}
    if resume:   # the state the resumed run starts from (gathered: collectives on every rank)
        optim = tr.dist.full_optimizer_state(tr.model, tr.optimizer)        # None in 1 process
        res["loaded"] = {"step": tr.step, "data": tr.sampler.state_dict(), "pgrpo": tr.estimator.state_dict(),
                         "params": {n: full(p).detach().clone() for n, p in tr.model.named_parameters()},
                         "optim": copy.deepcopy(tr.optimizer.state_dict() if optim is None else optim)}
    grads = []
    real_step = tr.optimizer.step
    def step_and_record(*a, **k):
        grads.append({n: full(p.grad).clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        return real_step(*a, **k)
    tr.optimizer.step = step_and_record
    rows = tr.train()
    res.update(rows=[{k: v for k, v in r.items() if not k.startswith(("time/", "step_s", "tokens_per_s"))}
                     for r in rows],
               grads=grads, params={n: full(p).detach().clone() for n, p in tr.model.named_parameters()},
               pgrpo=tr.estimator.state_dict())
    torch.save(res, f"{out}/{tag}-rank{tr.dist.rank}.pt")
    tr.dist.close()
    os._exit(0)   # see EXIT_NOTE
''')


@pytest.fixture(scope="module")
def two_step_runs(tmp_path_factory, tiny_model_dir):  # tiny_model_dir: built before the ranks start
    """1 process and 2 FSDP2 processes, 2 steps each on the same replayed global batches."""
    tmp = tmp_path_factory.mktemp("fsdp")
    script = tmp / "worker.py"
    write_worker(script, WORKER)
    _launch(script, [tmp, "single", tmp / "run-single", 2, 0], 1, tmp)
    _launch(script, [tmp, "fsdp", tmp / "run-fsdp", 2, 0], 2, tmp)
    return tmp


def _load(tmp, name):
    return torch.load(tmp / f"{name}.pt", weights_only=False)


def test_fsdp2_two_processes_equal_one(two_step_runs):
    tmp = two_step_runs
    one, r0, r1 = _load(tmp, "single-rank0"), _load(tmp, "fsdp-rank0"), _load(tmp, "fsdp-rank1")
    assert (one["cls"], r0["cls"], r1["cls"]) == ("Dist", "FSDP2Dist", "FSDP2Dist")
    assert one["attrs"] == r0["attrs"] == r1["attrs"] == []
    for a, b in zip(one["rows"], r0["rows"]):
        for key in ("loss", "reward/mean", "clip_frac", "kl", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key  # float32 sums in another order
        assert a["grad_norm"] > 0.05   # clipping is active, so the norm must be the global one
    # 2 steps x 2 epochs = 4 optimizer steps; gradients after clipping, summed over ranks
    assert len(one["grads"]) == len(r0["grads"]) == len(r1["grads"]) == 8  # 2 steps x 2 epochs x 2 minibatches
    for g1, g0, gr1 in zip(one["grads"], r0["grads"], r1["grads"]):
        assert g1.keys() == g0.keys()
        for name in g1:
            torch.testing.assert_close(g0[name], g1[name], atol=1e-5, rtol=1e-4, msg=name)
            torch.testing.assert_close(gr1[name], g0[name], atol=0, rtol=0)
    for name, p in one["params"].items():
        torch.testing.assert_close(r0["params"][name], p, atol=1e-5, rtol=1e-4, msg=name)
    assert r0["pgrpo"] == r1["pgrpo"]
    assert r0["pgrpo"]["groups"] == one["pgrpo"]["groups"]
    for key in ("n", "mean", "m2"):
        assert r0["pgrpo"][key] == pytest.approx(one["pgrpo"][key], abs=1e-9)
    # the checkpoint and final folder are written in the 1-process format
    for sub in ("final/model.safetensors", "checkpoints/step-2/model/model.safetensors"):
        a, b = load_file(str(tmp / "run-single" / sub)), load_file(str(tmp / "run-fsdp" / sub))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)
    cfg = json.loads((tmp / "run-fsdp" / "final" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"]
    oa = torch.load(tmp / "run-single/checkpoints/step-2/optimizer.pt", weights_only=True)
    ob = torch.load(tmp / "run-fsdp/checkpoints/step-2/optimizer.pt", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ob["state"][i][k], oa["state"][i][k], atol=1e-6, rtol=1e-4)


def test_checkpoint_resumes_with_another_process_count(two_step_runs, tmp_path):
    tmp = two_step_runs
    script = tmp / "worker.py"
    for src, dst, nproc in (("run-fsdp", "fsdp-then-1", 1), ("run-single", "single-then-fsdp", 2)):
        shutil.copytree(tmp / src, tmp_path / dst)
        _launch(script, [tmp_path, dst, tmp_path / dst, 3, 1], nproc, tmp_path)
    a, b = _load(tmp_path, "fsdp-then-1-rank0"), _load(tmp_path, "single-then-fsdp-rank0")
    assert (a["world"], a["cls"], b["world"], b["cls"]) == (1, "Dist", 2, "FSDP2Dist")
    assert_loaded_equals_checkpoint(a, tmp / "run-fsdp" / "checkpoints" / "step-2")
    assert_loaded_equals_checkpoint(b, tmp / "run-single" / "checkpoints" / "step-2")
    for name in ("fsdp-then-1", "single-then-fsdp"):
        run = tmp_path / name
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert steps == [1, 2, 3]
        assert (run / "checkpoints" / "step-3" / "COMPLETE").exists()
    assert [r["step"] for r in a["rows"]] == [r["step"] for r in b["rows"]] == [3]
    # replayed sampling: both continuations see the same step-3 batch, so they end at the same point
    assert a["rows"][0]["loss"] == pytest.approx(b["rows"][0]["loss"], abs=1e-5)
    for name, p in a["params"].items():
        torch.testing.assert_close(b["params"][name], p, atol=1e-5, rtol=1e-4, msg=name)
    assert a["pgrpo"]["groups"] == b["pgrpo"]["groups"]
    for key in ("n", "mean", "m2"):
        assert a["pgrpo"][key] == pytest.approx(b["pgrpo"][key], abs=1e-9)
