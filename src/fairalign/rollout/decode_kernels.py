"""Two ways the transformers engine's decode loop runs faster on a CPU, with the same arithmetic.

- `packed_linears(model)`: while decoding, every `torch.nn.Linear` runs oneDNN's linear on a weight
  re-laid-out once for it (`torch.ops.mkldnn._reorder_linear_weight`). A plain `F.linear` re-packs the
  weight on every call, so a decode step of 32 rows (a skinny matmul) spent most of its time packing:
  SmolLM2's 49152 x 576 LM head took 26 ms per step instead of the ~9 ms its FLOPs need
  (benchmarks/step_floor.py measures the whole step). Results equal `F.linear` up to float rounding
  (the accumulation order differs; ~1e-7 relative).
- `growing_cache(model)`: a transformers `DynamicCache` whose layers write new keys / values into a
  buffer with spare room instead of concatenating the whole cache at every step (one copy per step
  and layer, which cost ~14% of a decode).

Simplifications, on purpose:
- Weights are packed on entry, every time (the policy changes between rollouts; packing reads the
  weights once, ~1/50 of a 48-token decode), and the packed copies are freed on exit (memory: one extra
  copy of the linear weights while decoding).
- Only plain, full, CPU-resident `nn.Linear` weights in fp32 or bf16 are packed (sharded or offloaded
  parameters keep `F.linear`); under bf16 autocast the input and weight are cast to bf16, as autocast does.
  Inference only: no autograd through a packed weight (the engine decodes under `torch.no_grad`).
- The growing cache is used only for models whose layers are all full attention (no sliding window).
"""
from __future__ import annotations

import contextlib

import torch

SPARE_POSITIONS = 64  # room added whenever a layer's buffer is full


def packing_available(model: torch.nn.Module) -> bool:
    """Whether oneDNN's packed linear can run this model's forwards (a CPU model, torch built with oneDNN)."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return False
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def _packable(module: torch.nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (isinstance(module, torch.nn.Linear) and isinstance(w, torch.Tensor) and type(w.data) is torch.Tensor
            and w.device.type == "cpu" and w.dtype in (torch.float32, torch.bfloat16)
            and tuple(w.shape) == (module.out_features, module.in_features))


@contextlib.contextmanager
def packed_linears(model: torch.nn.Module, rows: int):
    """Run every packable `nn.Linear` of `model` on a packed copy of its weight inside the block
    (`rows`: the expected number of input rows, a layout hint). Yields the number of layers packed
    (0 where packing is unavailable: then nothing changes)."""
    if not packing_available(model):
        yield 0
        return
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    patched = []
    try:
        with torch.no_grad():
            for m in model.modules():
                if not _packable(m) or "forward" in m.__dict__:
                    continue
                w = m.weight.detach() if dtype is None else m.weight.detach().to(dtype)
                b = None if m.bias is None else (m.bias.detach() if dtype is None else m.bias.detach().to(dtype))
                packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
                m.forward = _packed_forward(packed, b, w.dtype)  # an instance attribute shadows Linear.forward
                patched.append(m)
        yield len(patched)
    finally:
        for m in patched:
            del m.forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    def forward(x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        return torch.ops.mkldnn._linear_pointwise(x.to(dtype), packed, bias, "none", [], "")
    return forward


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that appends into a buffer [B, H, capacity, D] with spare positions."""
        _kbuf = _vbuf = None

        def update(self, key_states, value_states, *args, **kwargs):  # [B, H, t, D] each
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.get_seq_length()
            need = n + key_states.shape[-2]
            buf = self._kbuf
            if buf is None or need > buf.shape[-2] or buf.shape[0] != key_states.shape[0]:
                B, H, _, D = key_states.shape
                kb = key_states.new_empty(B, H, need + SPARE_POSITIONS, D)
                vb = value_states.new_empty(B, value_states.shape[1], need + SPARE_POSITIONS, value_states.shape[-1])
                if n:
                    kb[:, :, :n] = self.keys
                    vb[:, :, :n] = self.values
                self._kbuf, self._vbuf = kb, vb
            self._kbuf[:, :, n:need] = key_states
            self._vbuf[:, :, n:need] = value_states
            self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]  # views
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            super().batch_repeat_interleave(repeats)
            self._kbuf = self._vbuf = None  # the next update re-buffers the new rows

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            super().batch_select_indices(indices)
            self._kbuf = self._vbuf = None

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._kbuf = self._vbuf = None

    return GrowingLayer


_LAYER = None


def growing_cache(model: torch.nn.Module):
    """A `DynamicCache` with growing-buffer layers for `model`, or None (use the model's default cache)
    when the model has a sliding-window or otherwise non-standard layer, or transformers lacks the API."""
    global _LAYER
    try:
        from transformers.cache_utils import DynamicCache
    except ImportError:
        return None
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if getattr(text, "sliding_window", None) or (layer_types and set(layer_types) != {"full_attention"}):
        return None
    cache = DynamicCache()
    if not hasattr(cache, "layer_class_to_replicate") or cache.layers:
        return None
    if _LAYER is None:
        _LAYER = _growing_layer_class()
    cache.layer_class_to_replicate = _LAYER
    return cache
