"""KL-to-reference estimators, elementwise over tokens (docs/algorithms.md; Schulman's k1/k2/k3).

With d = ref_logp − logp (log of the reference/policy ratio on tokens sampled from the policy):
    k1 = logp − ref_logp = −d               unbiased, can be negative
    k2 = ½ d²                               biased, low variance
    k3 = exp(d) − d − 1                     unbiased for KL(π‖ref), always >= 0 (a.k.a. low_var_kl)
Returned per token [B, T] (no masking: aggregate with `aggregate(kl, mask, agg)`), used as a loss
term with coefficient beta (default 0: no reference model). Simplification: for k3, d is clamped at
+20 before exp (overflow guard; the gradient is 0 beyond it).
"""

from __future__ import annotations

import torch

from ._validate import LOG_RATIO_MAX, check_name

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Elementwise KL estimate of `kind` ("k1" | "k2" | "k3"); same shape as logp."""
    check_name(kind, {k: None for k in KL_ESTIMATORS}, "kl estimator")
    for arg, t in (("logp", logp), ("ref_logp", ref_logp)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{arg} must be a floating torch.Tensor")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp shape {tuple(ref_logp.shape)} != logp shape {tuple(logp.shape)}")
    d = ref_logp.detach() - logp  # [B, T]
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d.square()
    d = d.clamp(max=LOG_RATIO_MAX)
    return torch.exp(d) - d - 1.0
