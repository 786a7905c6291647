"""The default rollout engine: batched sampling with a plain transformers model and its KV cache.

Prompts are rendered (chat template or raw text), tokenized once, left-padded, pre-filled once (a long
prefix all of them share, such as a task's system prompt, once for all: shared_prefix.py), and
their KV cache repeated G times (generations of one prompt adjacent). Decoding is our own loop over
`model(...)` with the KV cache, `logits_to_keep=1`, explicit position ids (correct under left
padding) and a `torch.Generator`, so a seed reproduces a batch exactly without touching the global
RNG. A row stops at its first EOS; the rest of the row is padding. `truncated` marks rows with no
EOS within `max_new_tokens`.
On a CPU the loop runs packed linear weights and a growing KV cache (decode_kernels.py), and finished
rows leave the KV cache once an eighth of its rows are done (every row still draws its uniform, so the
random stream, and the samples, do not depend on it); `cpu_kernels=False` runs the plain forwards.
Simplifications: with a sharded model, finished rows stay until every process's rows are done (the
`all_ranks` argument, see logprobs.py); prompts longer than `max_prompt_length` keep their last tokens.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Hashable, Sequence

import torch

from fairalign.rollout.batch import RolloutBatch
from fairalign.rollout.decode_kernels import growing_cache, packed_linears
from fairalign.rollout.engine_base import GenerationEngineBase, Sampling, decode_completions  # noqa: F401 (re-exported)
from fairalign.rollout.logprobs import gather_logprobs, supports_logits_to_keep
from fairalign.rollout.shared_prefix import common_prefix_len, prefill_split, split_prefix


def filter_logits(logits: torch.Tensor, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf: [N, V] -> [N, V]."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # [N, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [N, V]
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # [N, V]; the top token always stays
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of `probs` [B, V] (rows sum to ~1, zeros allowed) -> token ids [B].

    Inverse-CDF sampling: one uniform per row, located in the row's cumulative sum. Exact (a token
    with probability 0 is never drawn: its cumulative sum equals its predecessor's) and, on CPU,
    several times cheaper than `torch.multinomial` at vocabulary size 49k (benchmarks/sampling.py).
    """
    cdf = probs.cumsum(-1)  # [B, V]
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)  # first token whose cdf exceeds u
    over = idx >= probs.shape[1]  # u < total almost surely; rounding can put it past the end
    if bool(over.any()):  # then take the row's last token with probability > 0
        last = probs.shape[1] - 1 - (probs[over] > 0).flip(-1).int().argmax(-1)
        idx = idx.masked_scatter(over, last)
    return idx


class HFGenerationEngine(GenerationEngineBase):
    """Sample G responses per prompt from a transformers causal LM (the policy itself, no copy).

    Settings, EOS/pad resolution and the prompt side (`render_prompts`, `encode_prompts`) come from
    `GenerationEngineBase`, shared with the vLLM engine. `all_ranks`: flag -> whether it holds on every
    process sharing a sharded model (`Dist.all_ranks`), so decoding stops on every process at the same
    step; None: the model's forwards are local. `cpu_kernels` (default on): decode with packed linear
    weights and a growing KV cache, and drop finished rows from the cache (decode_kernels.py; the same
    samples up to float rounding); False runs the plain transformers forwards.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        sampling: Sampling | None = None,
        *,
        all_ranks: Callable[[bool], bool] | None = None,
        cpu_kernels: bool = True,
        **settings,
    ):
        super().__init__(tokenizer, getattr(model, "generation_config", None),
                         (sampling or Sampling()).with_(**settings))
        self.model = model
        self.all_ranks = all_ranks or bool
        self.cpu_kernels = cpu_kernels

    # ---- sampling ------------------------------------------------------------------------------
    def _next_token(self, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pick one token per row: logits [B, V] -> [B]."""
        if self.temperature == 0:
            return logits.argmax(-1)
        logits = filter_logits(logits.float() / self.temperature, self.top_p, self.top_k)
        probs = torch.softmax(logits, dim=-1)  # [B, V]
        return sample_categorical(probs, generator)

    @torch.no_grad()
    def sample(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        generator: torch.Generator,
        generations: int = 1,
        return_logprobs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Decode `generations` responses from each of n distinct left-padded prompts [n, P].

        The prompt is pre-filled once per distinct prompt and its KV cache repeated G times (when the
        cache supports `batch_repeat_interleave`). Rows are B = n * G, one prompt's adjacent.
        Returns response_ids [B, R], response_mask [B, R], truncated [B], and (if `return_logprobs`)
        the sampled tokens' log-probs [B, R] under softmax(logits / temperature) (temperature 1 when
        greedy), before top-p / top-k filtering, 0 where masked.
        """
        model = self.model
        n, P = prompt_ids.shape
        B = n * generations
        kernels = packed_linears(model, B) if self.cpu_kernels else contextlib.nullcontext(0)
        with kernels:
            return self._decode(prompt_ids, prompt_mask, generator, generations, return_logprobs, n, P, B)

    def _decode(self, prompt_ids, prompt_mask, generator, generations, return_logprobs, n, P, B):
        model = self.model
        device = prompt_ids.device
        eos = torch.tensor(self.eos_token_ids, device=device)
        keep = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
        cache = growing_cache(model) if self.cpu_kernels else None
        if cache is not None:
            keep["past_key_values"] = cache
        position = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # [n, P]
        c = common_prefix_len(prompt_ids, prompt_mask) if "logits_to_keep" in keep else 0
        if self.all_ranks(bool(c)):  # the prompts' shared prefix once, then their suffixes (shared_prefix.py)
            split = split_prefix(prompt_ids, prompt_mask, c)
            out = prefill_split(model, split, keep.pop("past_key_values", None), **keep)
            prompt_mask, position = split.mask, split.position  # [n, C + S]: the cache's layout
            P = prompt_mask.shape[1]
        else:
            out = model(
                input_ids=prompt_ids, attention_mask=prompt_mask.long(), position_ids=position,
                use_cache=True, **keep,
            )
        keep.pop("past_key_values", None)
        cache, last_logits = out.past_key_values, out.logits[:, -1:, :]  # last_logits [n, 1, V]
        if generations > 1:
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(generations)  # [n, ...] -> [B, ...], in place
                last_logits = last_logits.repeat_interleave(generations, dim=0)  # [B, 1, V]
            else:  # a cache we cannot repeat: pre-fill every row
                rep = lambda t: t.repeat_interleave(generations, dim=0)  # noqa: E731
                out = model(input_ids=rep(prompt_ids), attention_mask=rep(prompt_mask.long()),
                            position_ids=rep(position), use_cache=True, **keep)
                cache, last_logits = out.past_key_values, out.logits[:, -1:, :]
            prompt_mask, position = (t.repeat_interleave(generations, dim=0) for t in (prompt_mask, position))
        attn = torch.cat(
            [prompt_mask.long(), torch.ones(B, self.max_new_tokens, dtype=torch.long, device=device)], dim=1
        )  # [B, P + max_new]; grows by slicing
        next_pos = position[:, -1:] + 1  # [B, 1]
        done = torch.zeros(B, dtype=torch.bool, device=device)  # [B]
        # rows still in the cache (original row numbers): finished rows leave it when enough of them have
        # finished (forwards local to this process only: a sharded model needs equal forwards everywhere)
        live = torch.arange(B, device=device)  # [b]
        compact = self.cpu_kernels and self.all_ranks is bool and hasattr(cache, "batch_select_indices")
        logits = last_logits[:, -1, :]  # [B, V]
        tokens, alive, logps = [], [], []
        scale = self.temperature if self.temperature > 0 else 1.0
        for step in range(self.max_new_tokens):
            token = self._next_token(logits, generator)  # [B]; every row draws, so the random stream is
            token = token.masked_fill(done, self.pad_token_id)  # the same whichever rows are live
            tokens.append(token)
            if return_logprobs:
                logps.append(gather_logprobs(logits.float() / scale, token).masked_fill(done, 0.0))  # [B]
            alive.append(~done)
            done = done | torch.isin(token, eos)
            # a sharded model (FSDP2) decodes until every process's rows are done: equal forward calls
            if step == self.max_new_tokens - 1 or self.all_ranks(bool(done.all())):
                break
            if compact:
                finished = done[live]  # [b]
                if int(finished.sum()) * 8 >= len(live):  # an eighth of the cache's rows are done: drop them
                    keep_rows = (~finished).nonzero().flatten()
                    cache.batch_select_indices(keep_rows)
                    live, attn, next_pos = live[keep_rows], attn[keep_rows], next_pos[keep_rows]
            out = model(
                input_ids=token[live, None], attention_mask=attn[:, : P + step + 1], position_ids=next_pos,
                past_key_values=cache, use_cache=True, **keep,
            )
            cache = out.past_key_values
            step_logits = out.logits[:, -1, :]  # [b, V]
            if len(live) == B:
                logits = step_logits
            else:  # finished rows get any logits: their tokens are replaced by padding
                logits = step_logits.new_zeros(B, step_logits.shape[-1]).index_copy_(0, live, step_logits)
            next_pos = next_pos + 1
        response_ids = torch.stack(tokens, dim=1)  # [B, R]
        response_mask = torch.stack(alive, dim=1)  # [B, R]
        sample_logp = torch.stack(logps, dim=1) if return_logprobs else None  # [B, R]
        return response_ids, response_mask, ~done, sample_logp

    def generate(
        self,
        prompts: Sequence[Any],
        generations: int = 1,
        index: Sequence[int] | torch.Tensor | None = None,
        groups: Sequence[Hashable] | None = None,
        generator_seed: int | None = None,
        return_logprobs: bool = False,
    ) -> RolloutBatch:
        """Sample `generations` responses per prompt; B = len(prompts) * generations, one prompt's adjacent.

        `index` / `groups` are per prompt (default: positions / None) and repeated per generation.
        `generator_seed` makes sampling reproducible; without it a seed is drawn from torch's global RNG.
        `return_logprobs` fills `old_logp` with the sampling log-probs (see `sample`); they agree with
        `sequence_logprobs(..., temperature)` up to float error (KV-cached decode vs one forward).
        """
        self._check_generate_args(prompts, generations, index, groups)
        device = next(self.model.parameters()).device
        ids, mask = self.encode_prompts(prompts)  # [n, P]
        ids, mask = ids.to(device), mask.to(device)
        if generator_seed is None:
            generator_seed = int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator(device=device).manual_seed(int(generator_seed))
        was_training = self.model.training
        self.model.eval()
        start = time.perf_counter()
        try:
            response_ids, response_mask, truncated, sample_logp = self.sample(
                ids, mask, generator, generations, return_logprobs
            )
        finally:
            self.model.train(was_training)
        elapsed = time.perf_counter() - start
        lengths = response_mask.sum(1)  # [B]
        self.last_stats = {
            "gen_time_s": elapsed,
            "gen_tokens": float(lengths.sum()),
            "gen_tokens_per_s": float(lengths.sum()) / max(elapsed, 1e-9),
        }
        return self._assemble_batch(prompts, generations, index, groups, ids, mask, response_ids, response_mask,
                                    truncated, old_logp=sample_logp)
