"""What every generation engine shares: its settings, the prompt side and the batch it returns.

`GenerationEngineBase` validates the sampling settings, resolves the EOS and pad ids, renders
prompts (chat template or raw text, plus `completion_prefix`), tokenizes and left-pads them, and
assembles the `RolloutBatch`. The transformers engine (`hf_engine.py`) and the vLLM engine
(`vllm_engine.py`) both derive from it, so for the same prompts they see byte-identical prompt
token ids and return the same batch structure; they differ only in how responses are sampled.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Hashable, Sequence

import torch

from fairalign.rollout.batch import RolloutBatch

CHAT_TEMPLATE_CHOICES = ("auto", "none")


@dataclass(frozen=True)
class Sampling:
    """How an engine samples, the one settings object every engine takes (engines also accept the fields as
    keyword arguments: `HFGenerationEngine(model, tok, max_new_tokens=32, temperature=0)`)."""
    max_new_tokens: int = 64
    temperature: float = 1.0       # 0 = greedy
    top_p: float = 1.0             # nucleus threshold in (0, 1]
    top_k: int = 0                 # 0 = off
    chat_template: str = "auto"    # auto (the tokenizer's, if any) | none (raw text) | a Jinja template
    max_prompt_length: int | None = None  # left-truncate longer prompts to this many tokens (None: keep)
    eos_token_id: int | Sequence[int] | None = None  # None: the tokenizer's and the generation config's
    completion_prefix: str = ""    # text pre-filled at the start of every response (part of the prompt)

    def with_(self, **settings) -> "Sampling":
        """A copy with `settings` replaced (a TypeError names an unknown one)."""
        return replace(self, **settings)


def decode_completions(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
    """Decode each row's masked response tokens, skipping special tokens: [B, R] -> B strings."""
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(response_ids.cpu(), response_mask.cpu())]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def _is_chat(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt)


class GenerationEngineBase:
    """Sampling settings, EOS/pad ids, prompt rendering/encoding and batch assembly (no sampling)."""

    def __init__(self, tokenizer, generation_config: Any, sampling: Sampling):
        s = sampling
        if s.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={s.max_new_tokens} must be >= 1")
        if s.temperature < 0:
            raise ValueError(f"temperature={s.temperature} must be >= 0 (0 means greedy)")
        if not 0.0 < s.top_p <= 1.0:
            raise ValueError(f"top_p={s.top_p} must be in (0, 1]")
        if s.top_k < 0:
            raise ValueError(f"top_k={s.top_k} must be >= 0 (0 disables it)")
        if s.chat_template not in CHAT_TEMPLATE_CHOICES and "{" not in s.chat_template:
            raise ValueError(
                f"chat_template={s.chat_template!r} is invalid; choose one of {list(CHAT_TEMPLATE_CHOICES)} "
                "or pass a Jinja template string"
            )
        if s.max_prompt_length is not None and s.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length={s.max_prompt_length} must be >= 1 or None")
        self.sampling = s
        max_new_tokens, temperature, top_p, top_k = s.max_new_tokens, s.temperature, s.top_p, s.top_k
        chat_template, max_prompt_length = s.chat_template, s.max_prompt_length
        eos_token_id, completion_prefix = s.eos_token_id, s.completion_prefix
        self.tokenizer = tokenizer
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.chat_template, self.max_prompt_length = chat_template, max_prompt_length
        # text appended after the rendered prompt (the start of the assistant's turn, e.g. "<profile>");
        # it belongs to the prompt, so completions hold only what was sampled
        self.completion_prefix = completion_prefix
        eos = _as_id_list(eos_token_id)
        if not eos:
            eos = _as_id_list(getattr(tokenizer, "eos_token_id", None))
            eos += [i for i in _as_id_list(getattr(generation_config, "eos_token_id", None)) if i not in eos]
        if not eos:
            raise ValueError("eos_token_id is unknown: pass eos_token_id= or use a tokenizer with an eos token")
        self.eos_token_ids = eos
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(generation_config, "pad_token_id", None)
        self.pad_token_id = int(pad) if pad is not None else eos[0]
        self.last_stats: dict[str, float] = {}

    # ---- prompts -------------------------------------------------------------------------------
    def _template(self) -> str | None:
        """The Jinja template to apply, or None for raw text."""
        if self.chat_template == "none":
            return None
        if self.chat_template == "auto":
            return getattr(self.tokenizer, "chat_template", None) or None
        return self.chat_template

    def render_prompts(self, prompts: Sequence[Any]) -> tuple[list[str], bool]:
        """Prompt texts, and whether a chat template produced them (then no extra special tokens)."""
        template = self._template()
        if template is None:
            if any(_is_chat(p) for p in prompts):
                raise ValueError(
                    "chat-message prompts need a chat template: the tokenizer has none or "
                    "chat_template='none'; pass chat_template=<jinja> or string prompts"
                )
            return [str(p) + self.completion_prefix for p in prompts], False
        texts = []
        for p in prompts:
            messages = list(p) if _is_chat(p) else [{"role": "user", "content": str(p)}]
            texts.append(
                self.tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True, chat_template=template
                ) + self.completion_prefix
            )
        return texts, True

    def encode_prompts(self, prompts: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Render, tokenize and left-pad: ids [N, P] long, mask [N, P] bool."""
        texts, templated = self.render_prompts(prompts)
        rows = self.tokenizer(texts, add_special_tokens=not templated)["input_ids"]
        if self.max_prompt_length is not None:
            rows = [r[-self.max_prompt_length:] for r in rows]
        if any(len(r) == 0 for r in rows):
            raise ValueError("a prompt tokenized to zero tokens; every prompt needs at least one token")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [N, P]
        mask = torch.zeros(len(rows), width, dtype=torch.bool)  # [N, P]
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = True
        return ids, mask

    # ---- generate() arguments and result -------------------------------------------------------
    @staticmethod
    def _check_generate_args(prompts: Sequence[Any], generations: int, index, groups) -> None:
        n = len(prompts)
        if n == 0:
            raise ValueError("prompts is empty")
        if generations < 1:
            raise ValueError(f"generations={generations} must be >= 1")
        if index is not None and len(index) != n:
            raise ValueError(f"index has {len(index)} entries, expected one per prompt ({n})")
        if groups is not None and len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries, expected one per prompt ({n})")

    def _assemble_batch(
        self,
        prompts: Sequence[Any],
        generations: int,
        index: Sequence[int] | torch.Tensor | None,
        groups: Sequence[Hashable] | None,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        truncated: torch.Tensor,
        old_logp: torch.Tensor | None = None,
        engine_logp: torch.Tensor | None = None,
    ) -> RolloutBatch:
        """The batch for n prompts [n, P] and their B = n * G responses [B, R] (one prompt's adjacent);
        per-prompt `index` / `groups` (default: positions / None) are repeated per generation."""
        n = len(prompts)
        index_t = torch.arange(n) if index is None else torch.as_tensor(index, dtype=torch.long)
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(generations, dim=0),  # [B, P]
            prompt_mask=prompt_mask.repeat_interleave(generations, dim=0),  # [B, P]
            response_ids=response_ids,
            response_mask=response_mask,
            lengths=response_mask.sum(1),  # [B]
            truncated=truncated,
            prompts=[p for p in prompts for _ in range(generations)],
            completions=decode_completions(self.tokenizer, response_ids, response_mask),
            index=index_t.repeat_interleave(generations).to(response_ids.device),
            groups=[g for g in (groups if groups is not None else [None] * n) for _ in range(generations)],
            old_logp=old_logp,
            engine_logp=engine_logp,
        )
