"""Parse one RLPA assistant turn: `<profile>{JSON}</profile>` then `<response>reply</response>`.

`parse_turn` never raises (it is fuzzed with hypothesis). The contract, strictly:
- exactly one `<profile>...</profile>` block, then exactly one `<response>...</response>` block;
- only whitespace before, between and after them (a trailing end-of-turn marker such as
  `<|im_end|>` or `</s>` is tolerated, since some decoders keep it);
- the profile block holds a JSON object (a ```json fence around it is tolerated).
The response may be empty here; the response judge rejects empty replies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .profile import coerce_inferred

_TAGS = ("<profile>", "</profile>", "<response>", "</response>")
_TURN_RE = re.compile(
    r"\A\s*<profile>(?P<profile>.*?)</profile>\s*<response>(?P<reply>.*?)</response>\s*\Z",
    re.DOTALL,
)
_END_MARKERS = re.compile(r"(?:\s*(?:<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|</s>|<eos>))+\s*\Z")
_FENCE = re.compile(r"\A\s*```(?:json)?\s*(?P<body>.*?)\s*```\s*\Z", re.DOTALL)


@dataclass
class ParsedTurn:
    """Result of `parse_turn`: ok with profile + reply, or not ok with a reason."""

    ok: bool
    profile: dict[str, list[str]] | None = None  # canonical slot -> values (coerce_inferred)
    reply: str | None = None
    reason: str | None = None
    raw_profile: Any = field(default=None, repr=False)  # the decoded JSON object as written


def parse_turn(text: Any) -> ParsedTurn:
    """Split an assistant turn into (inferred profile, reply); never raises."""
    try:
        return _parse(text)
    except Exception as e:  # defensive: the contract is "never raises"
        return ParsedTurn(False, reason=f"internal parser error: {type(e).__name__}")


def _parse(text: Any) -> ParsedTurn:
    if not isinstance(text, str):
        return ParsedTurn(False, reason=f"turn is not a string ({type(text).__name__})")
    text = _END_MARKERS.sub("", text)
    for tag in _TAGS:
        n = text.count(tag)
        if n != 1:
            return ParsedTurn(False, reason=f"expected exactly one {tag}, found {n}")
    m = _TURN_RE.match(text)
    if m is None:
        return ParsedTurn(False, reason="expected <profile>...</profile> then <response>...</response> "
                                        "with nothing else around them")
    body = m.group("profile").strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group("body")
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as e:
        return ParsedTurn(False, reason=f"profile is not valid JSON ({type(e).__name__})")
    if not isinstance(raw, dict):
        return ParsedTurn(False, reason=f"profile JSON must be an object, got {type(raw).__name__}")
    return ParsedTurn(True, profile=coerce_inferred(raw), reply=m.group("reply").strip(), raw_profile=raw)


def strip_tags(text: str) -> str:
    """What a user would see of a malformed turn: the text with the contract's tags removed."""
    if not isinstance(text, str):
        return ""
    m = re.search(r"<response>(.*?)(?:</response>|\Z)", text, re.DOTALL)
    if m:
        return m.group(1).strip()
    text = re.sub(r"<profile>.*?(?:</profile>|\Z)", " ", text, flags=re.DOTALL)
    for tag in _TAGS:
        text = text.replace(tag, " ")
    return " ".join(text.split())
