"""vLLM rollout engine (optional GPU extra `fairalign[vllm]`), colocated with the trainer.

UNTESTED ON A GPU in this release: no GPU was available while it was written; it follows vLLM
0.33's documented API and only its CPU tests (a fake `LLM`, tests/test_vllm_engine.py) have run.

- Prompts: rendered, tokenized and left-padded by `GenerationEngineBase` (the same code as the
  transformers engine, so both see byte-identical prompt ids) and passed to `LLM.generate` as
  token ids (`{"prompt_token_ids": [...]}`, vLLM's `TokensPrompt`), never as text.
- Sampling: one `SamplingParams` per prompt with `n=G`, temperature, top-p, `max_tokens`,
  `logprobs=0` (the sampled token's log-prob) and a per-prompt seed drawn from `generator_seed`
  (vLLM seeds the G children `seed + j`). Greedy (temperature 0) asks for one sample and repeats
  it G times (vLLM rejects `n > 1` when greedy; G greedy samples are identical anyway). The stop
  set is exactly `eos_token_ids` (`stop_token_ids=` with `ignore_eos=True`), as in the
  transformers engine. The LLM is built with `logprobs_mode="processed_logprobs"`, so the engine's
  log-probs are those of the distribution it sampled from (logits / T; renormalized to the top-p
  nucleus when top_p < 1).
- Batch: the same `RolloutBatch` as the transformers engine; a row ends at its first EOS
  (included), `truncated` marks rows without an EOS (vLLM's finish_reason "length"; when the last
  allowed token is the EOS, vLLM says "length" but the row is not truncated, as in the
  transformers engine). The engine's own log-probs go to `engine_logp` (a diagnostic only: the
  trainer's behaviour log-probs stay those of the training model).
- Weight sync (`sync_weights(model)`, called by the trainer before every rollout, so after the
  previous step's optimizer updates and any warm-up): every parameter, with its Hugging Face name,
  goes in one call into the model runner's `load_weights` through
  `LLM.collective_rpc` (the pattern of vLLM's RLHF examples); the engine core runs in this process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set), so tensors are passed by reference, not
  serialized. LoRA: the adapter is saved to a temporary folder and used through a new
  `LoRARequest` id per sync (no merge: the base weights in vLLM never change, and the adapter
  files are small). After every sync the prefix cache is reset (its KV entries came from the old
  weights).
Simplifications: one GPU, tensor parallel size 1; dense models (quantized or fused-MoE weights may
need vLLM's layerwise reload, not used here); vLLM's sleep mode is not used (its KV cache stays
allocated during updates; `gpu_memory_utilization` bounds it).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import torch

from fairalign.rollout.batch import RolloutBatch
from fairalign.rollout.engine_base import GenerationEngineBase, Sampling
from fairalign.rollout.logprobs import unwrap

INSTALL_HINT = "pip install 'fairalign[vllm]'"
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
VLLM_MAX_TEMPERATURE = 2.0  # vLLM's SamplingParams rejects larger temperatures


def check_vllm_available() -> None:
    """Raise one line when vLLM is not installed or no CUDA GPU is visible (never a silent fallback)."""
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL_HINT} "
                         "(on a machine with a CUDA GPU), or use rollout.engine=hf")
    if not torch.cuda.is_available():
        raise ValueError("rollout.engine=vllm needs a CUDA GPU and none is visible (torch.cuda.is_available() "
                         "is False); use rollout.engine=hf")


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _load_weights_on_worker(worker, weights: list[tuple[str, torch.Tensor]]):
    """Runs on each vLLM worker (via `collective_rpc`): copy HF-named tensors into its model."""
    loaded = worker.model_runner.model.load_weights(weights=weights)
    return None if loaded is None else len(loaded)


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF-named weights of the model vLLM serves: the model's own, or a PEFT model's base weights
    (LoRA tensors dropped, `.base_layer` removed from the names)."""
    model = unwrap(model, through_peft=False)
    if not _is_peft(model):
        return dict(model.state_dict())
    state = {}
    for name, tensor in model.get_base_model().state_dict().items():
        if "lora_" in name:
            continue
        if "modules_to_save" in name or "original_module" in name:
            raise ValueError(f"rollout.engine=vllm does not support PEFT modules_to_save (parameter '{name}')")
        state[name.replace(".base_layer.", ".")] = tensor
    return state


class VLLMGenerationEngine(GenerationEngineBase):
    """Sample G responses per prompt with a colocated vLLM `LLM`; same interface as `HFGenerationEngine`
    plus `sync_weights(model)`."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        sampling: Sampling | None = None,
        *,
        dtype: str = "float32",
        gpu_memory_utilization: float = 0.3,
        seed: int = 0,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        llm_kwargs: dict | None = None,
        llm_factory: Callable[..., Any] | None = None,
        vllm_module: Any = None,
        **settings,
    ):
        """`llm_factory(**kwargs)` builds the LLM (default `vllm.LLM`); `vllm_module` supplies
        `SamplingParams` and `LoRARequest` (default the installed `vllm`). Tests inject fakes for both."""
        if vllm_module is None:
            check_vllm_available()
            import vllm as vllm_module  # noqa: PLC0415 (optional dependency)
        super().__init__(tokenizer, getattr(model, "generation_config", None),
                         (sampling or Sampling()).with_(**settings))
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"rollout.vllm_gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if self.temperature > VLLM_MAX_TEMPERATURE:
            raise ValueError(f"rollout.temperature={self.temperature} is above vLLM's limit of {VLLM_MAX_TEMPERATURE}")
        self.model = model
        self._vllm = vllm_module
        policy = unwrap(model, through_peft=False)
        self.is_lora = _is_peft(policy)
        self._workdir = Path(tempfile.mkdtemp(prefix="fairalign-vllm-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._workdir), True)  # also at exit
        base_dir = self._workdir / "policy"
        self._save_base_model(policy, base_dir)
        kwargs = dict(model=str(base_dir), tokenizer=str(base_dir), dtype=dtype,
                      gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
                      trust_remote_code=trust_remote_code, logprobs_mode="processed_logprobs")
        if self.is_lora:
            peft_cfg = next(iter(policy.peft_config.values()))
            kwargs.update(enable_lora=True, max_lora_rank=int(peft_cfg.r), max_loras=1)
        kwargs.update(llm_kwargs or {})
        self.llm_kwargs = kwargs
        if llm_factory is None:
            # the engine core in this process: collective_rpc then hands tensors over by reference
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            llm_factory = vllm_module.LLM
        try:
            self.llm = llm_factory(**kwargs)
        except BaseException:
            self.close()
            raise
        self.weight_version = 0
        self.last_sync_s = 0.0
        self._lora_request = None
        if self.is_lora:  # vLLM holds the base weights; the current adapter goes in as LoRA version 1
            self.sync_weights(policy)

    # ---- construction and weight sync -------------------------------------------------------------
    def _save_base_model(self, policy: torch.nn.Module, folder: Path) -> None:
        """A plain Hugging Face folder of the weights vLLM starts from (the current policy, or the
        base model under a LoRA adapter) with the tokenizer."""
        if self.is_lora:
            base = policy.get_base_model()
            base.save_pretrained(folder, state_dict=base_state_dict(policy), safe_serialization=True)
        else:
            policy.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)

    def sync_weights(self, model: torch.nn.Module | None = None) -> None:
        """Push the policy's current weights into vLLM (the trainer calls it before every rollout, i.e.
        after the previous step's optimizer updates)."""
        policy = unwrap(model if model is not None else self.model, through_peft=False)
        start = time.perf_counter()
        version = self.weight_version + 1
        if self.is_lora:
            path = self._workdir / f"adapter-{version}"
            policy.save_pretrained(path, safe_serialization=True)  # PEFT: adapter config + weights only
            self._lora_request = self._vllm.LoRARequest(f"fairalign-policy-{version}", version, str(path))
            shutil.rmtree(self._workdir / f"adapter-{version - 1}", ignore_errors=True)  # already loaded
        else:
            weights = [(name, p.detach()) for name, p in policy.named_parameters()]
            self.llm.collective_rpc(_load_weights_on_worker, args=(weights,))
        self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
        self.weight_version = version
        self.last_sync_s = time.perf_counter() - start

    def close(self) -> None:
        """Delete the temporary model / adapter folders (also done when the engine is collected)."""
        self._cleanup()

    # ---- sampling ---------------------------------------------------------------------------------
    def _sampling_params(self, n: int, seed: int | None):
        kw = dict(n=n, max_tokens=self.max_new_tokens, logprobs=0, stop_token_ids=list(self.eos_token_ids),
                  ignore_eos=True, detokenize=False)
        if self.temperature == 0:
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=float(self.temperature), top_p=float(self.top_p), seed=seed)
            if self.top_k:
                kw.update(top_k=int(self.top_k))
        return self._vllm.SamplingParams(**kw)

    def generate(
        self,
        prompts: Sequence[Any],
        generations: int = 1,
        index: Sequence[int] | torch.Tensor | None = None,
        groups: Sequence[Hashable] | None = None,
        generator_seed: int | None = None,
    ) -> RolloutBatch:
        """Sample `generations` responses per prompt; B = len(prompts) * generations, one prompt's adjacent.

        `index` / `groups` are per prompt (default: positions / None) and repeated per generation.
        `generator_seed` makes sampling reproducible (up to vLLM's own determinism); without it a seed
        is drawn from torch's global RNG. `engine_logp` holds vLLM's log-prob of each sampled token.
        """
        self._check_generate_args(prompts, generations, index, groups)
        n, G = len(prompts), generations
        greedy = self.temperature == 0
        ids, mask = self.encode_prompts(prompts)  # [n, P]
        token_prompts = [{"prompt_token_ids": row[m].tolist()} for row, m in zip(ids, mask)]
        if generator_seed is None:
            generator_seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = torch.Generator().manual_seed(int(generator_seed))
        seeds = torch.randint(0, 2**62, (n,), generator=rng).tolist()  # vLLM seeds child j with seed + j
        params = [self._sampling_params(1 if greedy else G, None if greedy else seeds[i]) for i in range(n)]
        start = time.perf_counter()
        outputs = self.llm.generate(token_prompts, params, use_tqdm=False, lora_request=self._lora_request)
        elapsed = time.perf_counter() - start
        if len(outputs) != n:
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {n} prompts")
        rows = []  # (token ids, logprobs or None, truncated) per sample, one prompt's G adjacent
        eos = set(self.eos_token_ids)
        for out in outputs:
            samples = list(out.outputs) * G if greedy else list(out.outputs)
            if len(samples) != G:
                raise RuntimeError(f"vLLM returned {len(samples)} samples for a prompt, expected {G}")
            rows += [self._parse_sample(s, eos) for s in samples]
        device = next(self.model.parameters()).device
        B, R = n * G, max(len(r[0]) for r in rows)
        response_ids = torch.full((B, R), self.pad_token_id, dtype=torch.long)  # [B, R]
        response_mask = torch.zeros(B, R, dtype=torch.bool)  # [B, R]
        engine_logp = torch.zeros(B, R, dtype=torch.float32)  # [B, R]
        has_logp = all(r[1] is not None for r in rows)
        for b, (toks, logps, _) in enumerate(rows):
            response_ids[b, :len(toks)] = torch.tensor(toks, dtype=torch.long)
            response_mask[b, :len(toks)] = True
            if has_logp:
                engine_logp[b, :len(toks)] = torch.tensor(logps, dtype=torch.float32)
        truncated = torch.tensor([r[2] for r in rows], dtype=torch.bool)  # [B]
        tokens = float(response_mask.sum())
        self.last_stats = {"gen_time_s": elapsed, "gen_tokens": tokens,
                           "gen_tokens_per_s": tokens / max(elapsed, 1e-9)}
        return self._assemble_batch(
            prompts, G, index, groups, ids.to(device), mask.to(device), response_ids.to(device),
            response_mask.to(device), truncated.to(device),
            engine_logp=engine_logp.to(device) if has_logp else None)

    @staticmethod
    def _parse_sample(sample, eos: set[int]) -> tuple[list[int], list[float] | None, bool]:
        """One vLLM completion -> (token ids up to and including the first EOS, their log-probs, truncated)."""
        toks = [int(t) for t in sample.token_ids]
        if sample.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a sample with finish_reason={sample.finish_reason!r}")
        if not toks:
            raise RuntimeError(f"vLLM returned an empty sample (finish_reason={sample.finish_reason!r})")
        first_eos = next((t for t, tok in enumerate(toks) if tok in eos), None)
        if first_eos is not None:
            toks = toks[:first_eos + 1]
        logps = None
        if sample.logprobs is not None:
            if len(sample.logprobs) < len(toks):
                raise RuntimeError(f"vLLM returned {len(sample.logprobs)} log-prob entries for {len(toks)} tokens")
            # one {token_id: Logprob} dict per position; the sampled token is always in it
            logps = [float(getattr(step[tok], "logprob", step[tok])) for step, tok in zip(sample.logprobs, toks)]
        return toks, logps, first_eos is None


def make_vllm_engine(model, tokenizer, rollout_cfg, *, precision: str = "fp32", seed: int = 0,
                     trust_remote_code: bool = False, completion_prefix: str = "", world_size: int = 1,
                     llm_factory: Callable[..., Any] | None = None) -> VLLMGenerationEngine:
    """The trainer's vLLM engine from its rollout config; vLLM / CUDA availability is checked first."""
    check_vllm_available()
    if world_size != 1:
        raise ValueError(f"rollout.engine=vllm runs in one process only, not {world_size} (accelerate/torchrun); "
                         "launch one process or use rollout.engine=hf")
    if precision not in PRECISION_DTYPES:
        raise ValueError(f"precision={precision!r} has no vLLM dtype; allowed: {', '.join(PRECISION_DTYPES)}")
    r = rollout_cfg
    return VLLMGenerationEngine(
        model, tokenizer, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p,
        chat_template=r.chat_template, completion_prefix=completion_prefix, dtype=PRECISION_DTYPES[precision],
        gpu_memory_utilization=r.vllm_gpu_memory_utilization, seed=seed, enforce_eager=r.vllm_enforce_eager,
        trust_remote_code=trust_remote_code, llm_factory=llm_factory)
