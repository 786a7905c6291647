"""VLLMGenerationEngine on CPU with fake vLLM objects (no vLLM, no GPU needed).

The fakes mimic vLLM's offline API as the engine uses it: `LLM(**kwargs)`, `LLM.generate(prompts,
sampling_params, use_tqdm=, lora_request=)` returning RequestOutput-like objects
(`.outputs[j].token_ids / .logprobs / .finish_reason`, log-probs as `{token_id: Logprob}` dicts),
`LLM.collective_rpc(fn, args=)` calling `fn(worker, *args)`, `LLM.reset_prefix_cache()`, and a
`SamplingParams` that rejects `n > 1` when greedy, as vLLM's does. Reference batches come from the
transformers engine on the tiny model.
"""
import json
import sys
import types
from dataclasses import dataclass, field
from importlib.machinery import ModuleSpec

import pytest
import torch
from safetensors.torch import load_file

from fairalign.rollout import HFGenerationEngine, VLLMGenerationEngine
from fairalign.rollout import vllm_engine as ve
from fairalign.config import Config, build_config

PROMPTS = ["Hello there, how are you today?", [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "What is 2 + 3?"}],
           "Tell me a short story about the sea please."]
BATCH_FIELDS = ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "lengths", "truncated", "index")


# ---------------------------------------------------------------------------------------------- fakes
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list
    logprobs: list | None
    finish_reason: str
    text: str = ""


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list
    outputs: list


class SamplingParams:
    """Records its arguments; validates like vLLM (greedy needs n == 1, temperature in [0, 2])."""

    def __init__(self, **kw):
        self.kw = kw
        if kw.get("temperature", 1.0) < 1e-5 and kw.get("n", 1) > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {kw['n']}.")
        if not 0 <= kw.get("temperature", 1.0) <= 2:
            raise ValueError("temperature must be in [0, 2]")


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass
class FakeLLM:
    """Returns what `script(prompt_index, prompt_token_ids, params)` gives; records every call."""

    script: object = None
    kwargs: dict = field(default_factory=dict)
    calls: list = field(default_factory=list)
    events: list = field(default_factory=list)
    loaded: list = field(default_factory=list)

    def __post_init__(self):
        self.worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(
            model=types.SimpleNamespace(load_weights=self._load_weights)))

    def _load_weights(self, weights):
        self.loaded.append([(n, t.clone()) for n, t in weights])
        self.events.append("load_weights")
        return {n for n, _ in weights}

    def generate(self, prompts, sampling_params, use_tqdm=True, lora_request=None):
        self.calls.append({"prompts": prompts, "params": sampling_params, "lora_request": lora_request})
        self.events.append("generate")
        return [RequestOutput(str(i), p["prompt_token_ids"], self.script(i, p["prompt_token_ids"], sp))
                for i, (p, sp) in enumerate(zip(prompts, sampling_params))]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return [method(self.worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.events.append("reset_prefix_cache")


FAKE_VLLM = types.SimpleNamespace(SamplingParams=SamplingParams, LoRARequest=LoRARequest, LLM=None)


def make_engine(model, tok, script=None, **kw):
    """A VLLMGenerationEngine on a FakeLLM; returns (engine, fake)."""
    fake = FakeLLM(script)

    def factory(**llm_kwargs):
        fake.kwargs = llm_kwargs
        return fake

    eng = VLLMGenerationEngine(model, tok, llm_factory=factory, vllm_module=FAKE_VLLM, **kw)
    return eng, fake


def script_from(ref, G, extra_top=True, greedy=False):
    """Replay the reference batch: prompt i's G samples as vLLM would return them."""
    def script(i, prompt_ids, params):
        rows = range(i * G, i * G + (1 if greedy else G))
        outs = []
        for j, b in enumerate(rows):
            n = int(ref.lengths[b])
            toks = ref.response_ids[b, :n].tolist()
            lps = []
            for t, tok in enumerate(toks):
                step = {tok: Logprob(float(ref.old_logp[b, t]), rank=2)}
                if extra_top:  # a more likely token comes first in the dict: the engine must pick the sampled one
                    step = {(tok + 1) % 1000: Logprob(-0.01, rank=1), **step}
                lps.append(step)
            outs.append(CompletionOutput(j, toks, lps, "length" if bool(ref.truncated[b]) else "stop"))
        return outs
    return script


def assert_same_batch(a, b):
    for name in BATCH_FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.prompts == b.prompts and a.completions == b.completions and a.groups == b.groups


# ---------------------------------------------------------------------------------------------- batch
def test_batch_matches_transformers_engine(tiny_policy):
    model, tok = tiny_policy
    eos = list(range(0, 1000, 7))  # frequent stops: some rows end early, some hit max_new_tokens
    G = 3
    hf = HFGenerationEngine(model, tok, max_new_tokens=6, temperature=0.9, eos_token_id=eos)
    ref = hf.generate(PROMPTS, generations=G, index=[7, 3, 5], groups=["a", "b", "a"], generator_seed=4,
                      return_logprobs=True)
    assert ref.truncated.any() and not ref.truncated.all() and len(set(ref.lengths.tolist())) > 1
    eng, fake = make_engine(model, tok, script_from(ref, G), max_new_tokens=6, temperature=0.9, eos_token_id=eos)
    got = eng.generate(PROMPTS, generations=G, index=[7, 3, 5], groups=["a", "b", "a"], generator_seed=4)
    assert_same_batch(got, ref)
    assert torch.equal(got.engine_logp, ref.old_logp)  # the sampled token's entry, 0 on padding
    assert got.old_logp is None  # behaviour log-probs stay the trainer's
    # vLLM got the prompts as token ids, byte-identical to the transformers engine's
    sent = [p["prompt_token_ids"] for p in fake.calls[0]["prompts"]]
    assert sent == [ref.prompt_ids[i * G][ref.prompt_mask[i * G]].tolist() for i in range(3)]
    assert fake.calls[0]["lora_request"] is None


def test_greedy_asks_one_sample_and_repeats_it(tiny_policy):
    model, tok = tiny_policy
    hf = HFGenerationEngine(model, tok, max_new_tokens=5, temperature=0)
    ref = hf.generate(PROMPTS, generations=2, return_logprobs=True)
    eng, fake = make_engine(model, tok, script_from(ref, 2, greedy=True), max_new_tokens=5, temperature=0)
    got = eng.generate(PROMPTS, generations=2)  # FakeLLM's SamplingParams raise if n > 1 here
    assert_same_batch(got, ref)
    # the engine repeats sample 0's log-probs; the reference's second (identical) greedy row comes from another
    # row of a batched forward, which may differ from the first in the last bit on a busy CPU
    torch.testing.assert_close(got.engine_logp, ref.old_logp, rtol=0, atol=1e-6)
    assert torch.equal(got.engine_logp[::2], ref.old_logp[::2])  # the row it replays: exactly
    for sp in fake.calls[0]["params"]:
        assert sp.kw["n"] == 1 and sp.kw["temperature"] == 0.0 and "seed" not in sp.kw and "top_p" not in sp.kw


def test_sampling_params(tiny_policy):
    model, tok = tiny_policy

    def script(i, ids, sp):
        return [CompletionOutput(j, [5, 9], None, "length") for j in range(sp.kw["n"])]

    eng, fake = make_engine(model, tok, script, max_new_tokens=2, temperature=0.7, top_p=0.9, top_k=40)
    eng.generate(PROMPTS, generations=4, generator_seed=11)
    eng.generate(PROMPTS, generations=4, generator_seed=11)
    eng.generate(PROMPTS, generations=4, generator_seed=12)
    params = [[sp.kw for sp in c["params"]] for c in fake.calls]
    for kw in params[0]:
        assert kw["n"] == 4 and kw["temperature"] == 0.7 and kw["top_p"] == 0.9 and kw["top_k"] == 40
        assert kw["max_tokens"] == 2 and kw["logprobs"] == 0
        assert kw["stop_token_ids"] == eng.eos_token_ids == [tok.eos_token_id] and kw["ignore_eos"] is True
        assert kw["detokenize"] is False
    seeds = [kw["seed"] for kw in params[0]]
    # vLLM seeds prompt i's children seed_i + j (j < G): the ranges must not overlap
    assert all(abs(a - b) >= 4 for k, a in enumerate(seeds) for b in seeds[k + 1:])
    assert seeds == [kw["seed"] for kw in params[1]]  # same generator_seed, same seeds
    assert seeds != [kw["seed"] for kw in params[2]]
    eng.top_k = 0
    eng.generate(PROMPTS[:1], generations=2, generator_seed=1)
    assert "top_k" not in fake.calls[-1]["params"][0].kw


def test_eos_truncation_and_logprob_bookkeeping(tiny_policy):
    model, tok = tiny_policy
    E = tok.eos_token_id
    samples = [  # (token ids, finish_reason) as vLLM could return them for max_tokens=3
        ([11, 12, E], "stop"),
        ([11, 12, 13], "length"),
        ([14, E], "stop"),
        ([15, 16, E], "length"),  # the last allowed token is the EOS: vLLM says "length", not truncated
    ]

    def script(i, ids, sp):
        return [CompletionOutput(j, toks, [{t: Logprob(-(j + 1) - 0.1 * k)} for k, t in enumerate(toks)], fr)
                for j, (toks, fr) in enumerate(samples)]

    eng, _ = make_engine(model, tok, script, max_new_tokens=3)
    b = eng.generate(["hi"], generations=4, generator_seed=0)
    P = tok.pad_token_id
    assert b.response_ids.tolist() == [[11, 12, E], [11, 12, 13], [14, E, P], [15, 16, E]]
    assert b.response_mask.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]]
    assert b.lengths.tolist() == [3, 3, 2, 3] and b.truncated.tolist() == [False, True, False, False]
    expected = [[-1.0, -1.1, -1.2], [-2.0, -2.1, -2.2], [-3.0, -3.1, 0.0], [-4.0, -4.1, -4.2]]
    assert torch.allclose(b.engine_logp, torch.tensor(expected))
    assert b.completions == tok.batch_decode([s[0] for s in samples], skip_special_tokens=True)
    assert b.index.tolist() == [0, 0, 0, 0] and b.groups == [None] * 4


def test_tokens_after_eos_are_dropped_and_bad_outputs_raise(tiny_policy):
    model, tok = tiny_policy
    E = tok.eos_token_id
    out = {"toks": [21, E, 22], "fr": "stop", "lp": True}

    def script(i, ids, sp):
        lps = [{t: Logprob(-1.0)} for t in out["toks"]] if out["lp"] else None
        return [CompletionOutput(0, out["toks"], lps, out["fr"])]

    eng, _ = make_engine(model, tok, script, max_new_tokens=3)
    b = eng.generate(["hi"])
    assert b.response_ids.tolist() == [[21, E]] and b.truncated.tolist() == [False]
    out["lp"] = False
    assert eng.generate(["hi"]).engine_logp is None  # no log-probs from the engine: no field
    out["fr"] = "abort"
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        eng.generate(["hi"])
    with pytest.raises(ValueError, match="generations=0"):
        eng.generate(["hi"], generations=0)


# ---------------------------------------------------------------------------------------------- construction and sync
def test_construction_saves_the_policy_and_passes_settings(fresh_tiny_policy):
    model, tok = fresh_tiny_policy
    with torch.no_grad():
        model.model.norm.weight.add_(0.25)  # vLLM must start from the current weights, not the model on disk
    eng, fake = make_engine(model, tok, dtype="bfloat16", gpu_memory_utilization=0.45, seed=9, enforce_eager=True)
    kw = fake.kwargs
    assert kw["dtype"] == "bfloat16" and kw["gpu_memory_utilization"] == 0.45 and kw["seed"] == 9
    assert kw["enforce_eager"] is True and kw["logprobs_mode"] == "processed_logprobs"
    assert "enable_lora" not in kw and kw["tokenizer"] == kw["model"]
    folder = eng._workdir / "policy"
    assert kw["model"] == str(folder) and (folder / "config.json").is_file()
    saved = {}
    for f in folder.glob("*.safetensors"):
        saved.update(load_file(str(f)))
    for name, p in model.named_parameters():
        assert torch.equal(saved[name], p.detach()), name
    assert (folder / "tokenizer_config.json").is_file()
    eng.close()
    assert not eng._workdir.exists()
    with pytest.raises(ValueError, match="vllm_gpu_memory_utilization must be in"):
        make_engine(model, tok, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="above vLLM's limit"):
        make_engine(model, tok, temperature=2.5)


def test_sync_weights_pushes_every_parameter(fresh_tiny_policy):
    model, tok = fresh_tiny_policy
    eng, fake = make_engine(model, tok)
    assert fake.loaded == [] and eng.weight_version == 0
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.01 * (i + 1))
    eng.sync_weights(model)
    (pushed,) = fake.loaded
    names = [n for n, _ in model.named_parameters()]
    assert [n for n, _ in pushed] == names and "lm_head.weight" not in names  # tied: vLLM ties it itself
    params = dict(model.named_parameters())
    assert all(torch.equal(t, params[n].detach()) for n, t in pushed)
    assert fake.events == ["load_weights", "reset_prefix_cache"] and eng.weight_version == 1
    wrapper = torch.nn.Module()  # a DDP-style wrapper: `.module` is unwrapped, names keep no prefix
    wrapper.module = model
    eng.sync_weights(wrapper)
    assert [n for n, _ in fake.loaded[1]] == names and eng.weight_version == 2


def test_lora_uses_a_new_adapter_request_per_sync(fresh_tiny_policy):
    peft = pytest.importorskip("peft")
    model, tok = fresh_tiny_policy
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
    eng, fake = make_engine(model, tok, script=lambda i, ids, sp: [CompletionOutput(0, [5], None, "length")])
    kw = fake.kwargs
    assert kw["enable_lora"] is True and kw["max_lora_rank"] == 8 and kw["max_loras"] == 1
    saved = {}
    for f in (eng._workdir / "policy").glob("*.safetensors"):
        saved.update(load_file(str(f)))
    assert not any("lora_" in k or "base_layer" in k for k in saved)
    assert all(torch.equal(saved[k], plain[k]) for k in saved) and set(saved) <= set(plain)
    assert "model.layers.0.self_attn.q_proj.weight" in saved
    eng.generate(["hi"])
    first = fake.calls[-1]["lora_request"]
    assert first.lora_int_id == 1 and (eng._workdir / "adapter-1" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    eng.sync_weights(model)
    eng.generate(["hi"])
    second = fake.calls[-1]["lora_request"]
    assert second.lora_int_id == 2 and second.lora_name != first.lora_name
    assert not (eng._workdir / "adapter-1").exists()
    adapter = load_file(str(eng._workdir / "adapter-2" / "adapter_model.safetensors"))
    expected = peft.get_peft_model_state_dict(model)  # the adapter as PEFT names it on disk
    assert set(adapter) == set(expected) and all(torch.equal(adapter[k], expected[k]) for k in adapter)
    lora_b = [k for k in adapter if "lora_B" in k]
    assert lora_b and all(torch.equal(adapter[k], torch.full_like(adapter[k], 0.5)) for k in lora_b)  # 0 + 0.5
    assert fake.loaded == []  # LoRA never goes through load_weights
    assert json.loads((eng._workdir / "adapter-2" / "adapter_config.json").read_text())["r"] == 8


# ---------------------------------------------------------------------------------------------- errors
def _no_vllm(monkeypatch):
    real = ve.importlib.util.find_spec
    monkeypatch.setattr(ve.importlib.util, "find_spec", lambda name, *a, **k: None if name == "vllm"
                        else real(name, *a, **k))


def test_missing_vllm_is_one_clear_line(monkeypatch, tiny_policy):
    model, tok = tiny_policy
    _no_vllm(monkeypatch)
    bad = Config().rollout
    bad.vllm_gpu_memory_utilization = 7.0  # the install check comes first
    for call in (lambda: ve.make_vllm_engine(model, tok, bad), lambda: VLLMGenerationEngine(model, tok)):
        with pytest.raises(ValueError, match=r"pip install 'fairalign\[vllm\]'") as err:
            call()
        assert "\n" not in str(err.value)


def test_no_cuda_is_one_clear_line(monkeypatch, tiny_policy):
    model, tok = tiny_policy
    monkeypatch.setattr(ve.importlib.util, "find_spec", lambda name, *a, **k: ModuleSpec(name, None))
    monkeypatch.setattr(ve.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU and none is visible") as err:
        ve.make_vllm_engine(model, tok, Config().rollout)
    assert "\n" not in str(err.value)


def test_one_process_only(monkeypatch, tiny_policy):
    model, tok = tiny_policy
    monkeypatch.setattr(ve, "check_vllm_available", lambda: None)
    with pytest.raises(ValueError, match="runs in one process only, not 2"):
        ve.make_vllm_engine(model, tok, Config().rollout, world_size=2)


def test_trainer_reports_missing_vllm(monkeypatch, tmp_path):
    from fairalign.train.trainer import Trainer

    _no_vllm(monkeypatch)
    cfg = build_config({"model": "tiny", "task": "personas", "output_dir": str(tmp_path / "run"),
                        "rollout": {"engine": "vllm"}, "log": {"tensorboard": False, "progress": False}})
    with pytest.raises(ValueError, match=r"fairalign\[vllm\]"):
        Trainer(cfg)


# ---------------------------------------------------------------------------------------------- trainer hook
class HFBackedLLM:
    """A stand-in for vLLM that, like vLLM, serves its *own copy* of the weights: it loads the folder
    the engine saved, samples with the transformers engine's sampler, and updates its copy only
    through `load_weights`. Its log-probs are logits / T, like vLLM's processed_logprobs."""

    instances: list = []

    def __init__(self, **kwargs):
        from fairalign.models import load_policy

        self.kwargs = kwargs
        self.model, self.tok = load_policy(kwargs["model"])
        self.model.eval()
        self.worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=self))
        self.syncs = 0
        HFBackedLLM.instances.append(self)

    def load_weights(self, weights):
        missing, unexpected = self.model.load_state_dict(dict(weights), strict=False)
        assert not unexpected and all("lm_head" in k for k in missing)
        self.syncs += 1
        return {n for n, _ in weights}

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return [method(self.worker, *args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        pass

    def generate(self, prompts, sampling_params, use_tqdm=True, lora_request=None):
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, sampling_params)):
            kw = sp.kw
            sampler = HFGenerationEngine(self.model, self.tok, max_new_tokens=kw["max_tokens"],
                                         temperature=kw["temperature"], top_p=kw.get("top_p", 1.0),
                                         eos_token_id=kw["stop_token_ids"])
            ids = torch.tensor([p["prompt_token_ids"]])
            gen = torch.Generator().manual_seed(kw.get("seed") or 0)
            r_ids, r_mask, trunc, logp = sampler.sample(ids, torch.ones_like(ids, dtype=torch.bool), gen,
                                                        kw["n"], return_logprobs=True)
            comps = []
            for j in range(kw["n"]):
                toks = r_ids[j][r_mask[j]].tolist()
                comps.append(CompletionOutput(j, toks, [{t: Logprob(float(logp[j, k]))} for k, t in enumerate(toks)],
                                              "length" if bool(trunc[j]) else "stop"))
            outs.append(RequestOutput(str(i), p["prompt_token_ids"], comps))
        return outs


def _length_task(tmp_path) -> dict:
    """A file task whose reward (completion length) varies on the random model, so updates move weights."""
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say something about item {i}."}) + "\n" for i in range(8)))
    rewards = tmp_path / "len_reward.py"
    rewards.write_text("def char_length(prompts, completions, **kw):\n"
                       "    return [len(c) / 100.0 for c in completions]\n")
    return {"task": str(data), "task_reward": [f"{rewards}:char_length"]}


@pytest.mark.parametrize("skip_sync, epochs", [(False, 1), (True, 1), (False, 2)])
def test_trainer_syncs_weights_and_logs_the_mismatch(monkeypatch, tmp_path, skip_sync, epochs):
    from fairalign.train.trainer import Trainer

    fake = types.ModuleType("vllm")
    fake.__spec__ = ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams, fake.LoRARequest = HFBackedLLM, SamplingParams, LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(ve, "check_vllm_available", lambda: None)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "x")
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")  # restored (unset) after the test
    HFBackedLLM.instances = []
    cfg = build_config({"model": "tiny", **_length_task(tmp_path), "steps": 2, "seed": 1,
                        "output_dir": str(tmp_path / "run"), "optim": {"lr": 0.05}, "algo": {"ppo_epochs": epochs},
                        "rollout": {"engine": "vllm", "prompts_per_step": 2, "generations": 2, "max_new_tokens": 6},
                        "log": {"tensorboard": False, "progress": False}})
    trainer = Trainer(cfg)
    assert isinstance(trainer.engine, VLLMGenerationEngine)
    assert ve.os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    (llm,) = HFBackedLLM.instances
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["gpu_memory_utilization"] == 0.3
    if skip_sync:  # negative control: without the hook the served copy goes stale after step 1's update
        monkeypatch.setattr(trainer.engine, "sync_weights", lambda model: None)
    rows = trainer.train()
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert "rollout/logprob_mismatch" in r and "rollout/logprob_mismatch_max" in r
        assert r["rollout/logprob_mismatch"] <= r["rollout/logprob_mismatch_max"]
    assert rows[0]["rollout/logprob_mismatch_max"] < 1e-4  # same weights: float error only
    if skip_sync:
        assert llm.syncs == 0 and rows[1]["rollout/logprob_mismatch"] > 1e-3
    else:
        assert llm.syncs == 2 and rows[1]["rollout/logprob_mismatch_max"] < 1e-4
        assert all(r["time/weight_sync_s"] >= 0 for r in rows)
        served = dict(llm.model.named_parameters())
        # what vLLM serves now is exactly the policy synced before step 2 (step 2's update came after)
        assert any(not torch.equal(served[n], p.detach()) for n, p in trainer.model.named_parameters())
