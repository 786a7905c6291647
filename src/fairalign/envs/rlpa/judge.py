"""Response judges for RLPA: the default rules judge (see rewards.RulesJudge) or an LLM judge.

A judge is any callable `judge(replies, inferred_profiles, histories) -> list[float]` (0/1 each),
batched over replies. `LLMJudge` asks a chat backend (HFChat / OpenAIChat) to rate the paper's five
criteria — natural, relevant, consistent, engaging, informative — as a JSON object of booleans,
and is strict: the reply passes only if every criterion is true. A verdict that cannot be read
(no JSON, a missing criterion) counts as a failure; a backend that fails raises `BackendError` naming
the role "judge".
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .backends import BackendError, HFChat, OpenAIChat
from .prompts import CRITERIA, judge_prompt
from .rewards import RulesJudge

_TRUE = {"true", "yes", "pass", "1"}
_FALSE = {"false", "no", "fail", "0"}


def parse_verdict(text: str, criteria: Sequence[str] = CRITERIA) -> dict[str, bool] | None:
    """Criterion -> bool from the judge's answer, or None when any criterion is unreadable."""
    text = text or ""
    found: dict[str, bool] = {}
    for m in re.finditer(r"\{.*?\}", text, re.DOTALL):
        try:
            obj = json.loads(m.group())
        except ValueError:
            continue
        if isinstance(obj, dict):
            for c in criteria:
                v = obj.get(c, obj.get(c.capitalize()))
                if isinstance(v, bool):
                    found.setdefault(c, v)
                elif isinstance(v, (str, int)) and str(v).strip().lower() in _TRUE | _FALSE:
                    found.setdefault(c, str(v).strip().lower() in _TRUE)
    for c in criteria:  # fall back to "natural: true" style lines
        if c not in found:
            m = re.search(rf'"?{c}"?\s*[:=]\s*"?(\w+)', text, re.IGNORECASE)
            if m and m.group(1).lower() in _TRUE | _FALSE:
                found[c] = m.group(1).lower() in _TRUE
    return found if all(c in found for c in criteria) else None


class LLMJudge:
    """Five-criteria strict judge through a chat backend."""

    def __init__(self, backend: Any, criteria: Sequence[str] = CRITERIA):
        if not hasattr(backend, "complete"):
            raise ValueError("backend must have a complete(conversations) method (HFChat or OpenAIChat)")
        self.backend, self.criteria = backend, tuple(criteria)
        self.last_details: list[dict[str, bool] | None] = []

    def __repr__(self) -> str:
        return f"LLMJudge(backend={self.backend!r})"

    def __call__(self, replies: Sequence[str], inferred: Sequence[Any],
                 histories: Sequence[Sequence[dict]]) -> list[float]:
        convs = [[{"role": "user", "content": judge_prompt(r, p, list(h))}]
                 for r, p, h in zip(replies, inferred, histories)]
        try:
            answers = self.backend.complete(convs) if convs else []
        except BackendError as e:  # the run's error names who failed: the judge
            raise e.with_role("judge") from None
        self.last_details = [parse_verdict(a, self.criteria) for a in answers]
        return [float(d is not None and all(d.values())) for d in self.last_details]


JUDGE_BACKENDS = ("rules", "hf", "openai")


def make_judge(spec: Any = "rules", **kwargs: Any) -> Any:
    """A judge from a name (`rules`, `hf`, `openai`), a dict with "backend", or a callable."""
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("backend", "rules")
        return make_judge(name, **{**spec, **kwargs})
    if spec == "rules":
        return RulesJudge(**kwargs)
    if spec == "hf":
        return LLMJudge(HFChat(**kwargs))
    if spec == "openai":
        return LLMJudge(OpenAIChat(**kwargs))
    if callable(spec):
        return spec
    raise ValueError(f"judge backend must be one of {', '.join(JUDGE_BACKENDS)} or a callable, got {spec!r}")
