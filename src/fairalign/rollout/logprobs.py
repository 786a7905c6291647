"""Token log-probs (and entropy) of given responses under a model: the training / behaviour-policy pass.

One forward over `concat(prompt, response[:, :-1])` with an attention mask and position ids that are
correct for left-padded prompts; logits are computed only for the positions that predict response
tokens (`logits_to_keep`), never over the prompt. Log-probs use `logit[token] − logsumexp(logits)`
(no full log_softmax tensor). Logits are divided by the sampling temperature, as TRL does, so the
log-probs are those of the distribution the tokens were sampled from. `with_hidden=True` also returns
the final hidden states at those positions (a value head on the policy's trunk reads them).
Simplifications: entropy is a detached metric (no gradient); columns that are padding in every row
of a micro-batch are trimmed before the forward (results are unchanged).
Sharded models (FSDP2, DeepSpeed ZeRO-3): every forward is a collective, so every process must make
the same forward calls. Code whose number of forwards depends on its own data (the prompt-sharing
path below, the decode loop's stop in hf_engine.py) decides with an explicit `all_ranks(flag)`
callable, True iff the flag is true on *every* process (`Dist.all_ranks`); None, the default, means
forwards are local (one process, DDP) and the local flag decides.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from fairalign.rollout.shared_prefix import common_prefix_len, prefill_split, split_prefix

_KEEP_SUPPORT: dict[type, bool] = {}


def unwrap(model: torch.nn.Module, through_peft: bool = True) -> torch.nn.Module:
    """The module inside a DDP-style wrapper (`.module`) and, with `through_peft`, inside a PEFT model
    (`get_base_model`): the one whose `forward` really runs."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif through_peft and hasattr(model, "get_base_model"):
            base = model.get_base_model()
            if base is model:
                return model
            model = base
        else:
            return model


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (unwrapped) model's forward accepts `logits_to_keep`."""
    inner = type(unwrap(model))
    if inner not in _KEEP_SUPPORT:
        _KEEP_SUPPORT[inner] = "logits_to_keep" in inspect.signature(inner.forward).parameters
    return _KEEP_SUPPORT[inner]


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(logits)[ids] via logsumexp: logits [..., V], ids [...] -> [...].
    `lse` [...]: logsumexp(logits, -1) when the caller already has it."""
    picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [...]
    return picked - (torch.logsumexp(logits, dim=-1) if lse is None else lse)


@torch.no_grad()
def entropy_from_logits(logits: torch.Tensor, lse: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis (detached): [..., V] -> [...].
    `lse` [...]: logsumexp(logits, -1) when the caller already has it."""
    lse = torch.logsumexp(logits, dim=-1) if lse is None else lse.detach()  # [...]
    probs = torch.exp(logits - lse.unsqueeze(-1))  # [..., V]
    return lse - (probs * logits).sum(-1)


def response_inputs(prompt_ids, prompt_mask, response_ids, n_keep: int) -> dict:
    """Model inputs whose last `n_keep` positions predict response_ids[:, :n_keep] (left-padded prompts):
    input_ids = concat(prompt, response[:, :n_keep-1]) [b, T], its attention mask and position ids."""
    resp_in = response_ids[:, : n_keep - 1]  # [b, n_keep-1]; the last response token predicts nothing
    input_ids = torch.cat([prompt_ids, resp_in], dim=1)  # [b, T]
    attn = torch.cat([prompt_mask.long(), torch.ones_like(resp_in)], dim=1)  # [b, T]
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)  # [b, T]; left padding shifts nothing
    return dict(input_ids=input_ids, attention_mask=attn, position_ids=position_ids)


def _response_logits_full(model, prompt_ids, prompt_mask, response_ids, n_keep: int, with_hidden: bool = False):
    """Logits at the positions that predict response_ids[:, :n_keep]: [b, n_keep, V] (one forward per row),
    and (with_hidden) the final hidden states there [b, n_keep, H], else None."""
    kwargs = dict(**response_inputs(prompt_ids, prompt_mask, response_ids, n_keep), use_cache=False)
    if with_hidden:
        kwargs["output_hidden_states"] = True
    if supports_logits_to_keep(model):
        out = model(**kwargs, logits_to_keep=n_keep)
        logits = out.logits  # [b, n_keep, V]
    else:
        out = model(**kwargs)
        logits = out.logits[:, -n_keep:]  # [b, n_keep, V]
    return logits, out.hidden_states[-1][:, -n_keep:] if with_hidden else None


def _response_logits(model, prompt_ids, prompt_mask, response_ids, n_keep: int,
                     all_ranks: Callable[[bool], bool] = bool, with_hidden: bool = False):
    """Same as `_response_logits_full`, but each *distinct* prompt row runs once: its KV cache is
    gathered (differentiably) for the rows that share it, so the G generations of a prompt do not
    recompute — or backpropagate through — the prompt G times; a long prefix the distinct prompts share
    (a system prompt) runs once for all of them (shared_prefix.py). `all_ranks`: see the module docstring."""
    b, P = prompt_ids.shape
    key = torch.cat([prompt_ids, prompt_mask.long()], dim=1)  # [b, 2P]
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)  # [u, 2P], [b]
    u_ids, u_mask = uniq[:, :P], uniq[:, P:]  # [u, P]
    c = common_prefix_len(u_ids, u_mask)
    # sharded model: this path makes 2-3 forwards, the full one 1, so all ranks must take the same one
    if not all_ranks(bool((uniq.shape[0] < b or c) and n_keep > 1 and supports_logits_to_keep(model))):
        return _response_logits_full(model, prompt_ids, prompt_mask, response_ids, n_keep, with_hidden)
    u_pos = (u_mask.cumsum(-1) - 1).clamp(min=0)  # [u, P]
    hid = {"output_hidden_states": True} if with_hidden else {}
    if all_ranks(bool(c)):  # the distinct prompts' shared prefix once, then their suffixes (shared_prefix.py)
        split = split_prefix(u_ids, u_mask, c)
        out = prefill_split(model, split, logits_to_keep=1, **hid)
        u_mask, u_pos = split.mask, split.position  # [u, C + S]: the cache's layout
    else:
        out = model(input_ids=u_ids, attention_mask=u_mask, position_ids=u_pos, use_cache=True, logits_to_keep=1,
                    **hid)
    cache = out.past_key_values
    if not hasattr(cache, "batch_select_indices"):
        return _response_logits_full(model, prompt_ids, prompt_mask, response_ids, n_keep, with_hidden)
    cache.batch_select_indices(inverse)  # [u, ...] -> [b, ...]
    first = out.logits[inverse]  # [b, 1, V]: predicts response token 0
    r_in = response_ids[:, : n_keep - 1]  # [b, n_keep-1]
    attn = torch.cat([u_mask[inverse], torch.ones_like(r_in)], dim=1)  # [b, P + n_keep-1]
    r_pos = u_pos[inverse, -1:] + 1 + torch.arange(n_keep - 1, device=r_in.device)  # [b, n_keep-1]
    rest = model(input_ids=r_in, attention_mask=attn, position_ids=r_pos, past_key_values=cache,
                 use_cache=True, **hid)  # logits [b, n_keep-1, V]
    logits = torch.cat([first, rest.logits], dim=1)  # [b, n_keep, V]
    if not with_hidden:
        return logits, None
    return logits, torch.cat([out.hidden_states[-1][inverse, -1:], rest.hidden_states[-1]], dim=1)  # [b, n_keep, H]


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    with_entropy: bool = False,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    all_ranks: Callable[[bool], bool] | None = None,
    with_hidden: bool = False,
):
    """Per-token log-probs `[B, R]` of `response_ids` given left-padded prompts, and entropies `[B, R]`.

    Masked positions (response_mask == 0) are 0 in both. `entropy` is None unless `with_entropy`.
    Gradients flow to `logp` when grad is enabled. `micro_batch_size` chunks the forward over rows.
    `all_ranks`: flag -> whether it holds on every process sharing a sharded model (`Dist.all_ranks`),
    so every process makes the same forward calls; None: the model's forwards are local.
    `with_hidden`: also return the final hidden states `[B, R, H]` at the positions that predict each
    response token (0 on padding), with gradient — what a value head on the shared trunk reads:
    `(logp, entropy, hidden)`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 for log-probs (use 1.0 for greedy rollouts)")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1 or None")
    if prompt_ids.shape != prompt_mask.shape or response_ids.shape != response_mask.shape:
        raise ValueError("prompt_ids/prompt_mask and response_ids/response_mask must have equal shapes")
    B, R = response_ids.shape
    if prompt_ids.shape[0] != B:
        raise ValueError(f"prompt batch {prompt_ids.shape[0]} != response batch {B}")
    prompt_mask, response_mask = prompt_mask.bool(), response_mask.bool()
    if B and not prompt_mask[:, -1].all():
        raise ValueError("prompt_mask must be left-padded: every row's last prompt column must be real")
    device = next(model.parameters()).device
    step = micro_batch_size or max(B, 1)
    logps, ents, hiddens = [], [], []
    for lo in range(0, B, step):
        rows = slice(lo, lo + step)
        p_ids, p_mask = prompt_ids[rows].to(device), prompt_mask[rows].to(device)  # [b, P]
        r_ids, r_mask = response_ids[rows].to(device), response_mask[rows].to(device)  # [b, R]
        b = r_ids.shape[0]
        logp = torch.zeros(b, R, device=device)  # [b, R]
        ent = torch.zeros(b, R, device=device) if with_entropy else None
        hidden = None
        used = r_mask.any(0).nonzero()
        if used.numel():
            n_keep = int(used[-1]) + 1  # trailing all-padding response columns are skipped
            first = int(p_mask.any(0).nonzero()[0])  # leading all-padding prompt columns are skipped
            logits, h = _response_logits(model, p_ids[:, first:], p_mask[:, first:], r_ids, n_keep,
                                         all_ranks=all_ranks or bool, with_hidden=with_hidden)
            logits = logits.float()
            if temperature != 1.0:
                logits = logits / temperature
            lse = torch.logsumexp(logits, dim=-1)  # [b, n_keep], shared by log-probs and entropy
            token_logp = gather_logprobs(logits, r_ids[:, :n_keep], lse) * r_mask[:, :n_keep]  # [b, n_keep]
            logp = torch.cat([token_logp, logp[:, n_keep:]], dim=1)  # [b, R]
            if with_entropy:
                ent[:, :n_keep] = entropy_from_logits(logits, lse) * r_mask[:, :n_keep]
            if with_hidden:
                pad = h.new_zeros(b, R - n_keep, h.shape[-1])
                hidden = torch.cat([h * r_mask[:, :n_keep, None].to(h.dtype), pad], dim=1)  # [b, R, H]
        logps.append(logp)
        if with_entropy:
            ents.append(ent)
        if with_hidden:  # no response token in these rows: zeros
            hiddens.append(hidden if hidden is not None else
                           torch.zeros(b, R, unwrap(model).config.hidden_size, device=device))
    logp_all = torch.cat(logps) if logps else torch.zeros(0, R, device=device)
    ent_all = (torch.cat(ents) if ents else torch.zeros(0, R, device=device)) if with_entropy else None
    if with_hidden:
        H = unwrap(model).config.hidden_size
        return logp_all, ent_all, torch.cat(hiddens) if hiddens else torch.zeros(0, R, H, device=device)
    return logp_all, ent_all
