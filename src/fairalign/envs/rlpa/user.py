"""Simulated users for RLPA, one interface, three backends.

Interface (`SimulatedUser`), batched over dialogues:
    states = user.start(profiles, seed)          # one state per dialogue; the user opened with "Hello"
    texts  = user.reply(states, histories)       # history = visible messages, last one the assistant's
    user.revealed(state) -> list[(slot, value)]  # items stated so far (exact for `rules`, detected for LLMs)

Backends:
- `rules` (default): a deterministic template user. Per reply it states at most
  `budget = max(1, round(reveal_fraction * n_items))` items (15% by default), preferring
  unrevealed items of the slots the assistant's message mentions (keyword match), else volunteering
  one random unrevealed item. It says "you already asked me that" and reveals nothing when the
  assistant repeats itself (`rewards.repeats_earlier`: the whole message, or a question in it, has
  word-set Jaccard >= 0.8 with an earlier message or a question in one), shrugs off flattery, and only ever
  states values from its profile, verbatim, inside fixed templates.
- `hf` / `openai`: an LLM role-plays the profile from `prompts.user_system_prompt`, through
  `backends.HFChat` / `backends.OpenAIChat`. Revealed items are detected by text match (approximate).
  A backend that fails raises `BackendError` naming the role "simulated user".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from .backends import BackendError, HFChat, OpenAIChat
from .profile import Profile, slots_mentioned
from .prompts import user_system_prompt
from .rewards import item_mentioned, repeats_earlier

OPENING = "Hello"

_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Age": ("I'm {v} years old.", "I'm {v}."),
    "Gender": ("I'm {v}.", "For what it's worth, I'm {v}."),
    "Interests": ("I really enjoy {v}.", "In my free time I like {v}."),
    "Education": ("My education: {v}.", "Education-wise: {v}."),
    "Personality Traits": ("People say I'm {v}.", "I'd call myself {v}."),
    "Occupation": ("I'm {a} {v}.", "Work-wise, I'm {a} {v}."),
    "Marital Status": ("I'm {v}.", "Relationship-wise, I'm {v}."),
    "Family Background": ("About my family: {v}.", "Family-wise: {v}."),
    "Location": ("I live in {v}.", "I'm based in {v}."),
    "Other": ("Also: {v}.", "One more thing about me: {v}."),
}
REPEAT_REPLIES = ("You already asked me that.", "You said that already.")
FLATTERY_REPLIES = ("Ha, no need to flatter me.", "Thanks, but you don't have to butter me up.")
NOTHING_LEFT_REPLIES = ("That's about all there is to know about me.", "Not much else to tell, really.")
_FLATTERY = re.compile(r"\b(amazing|incredible|wonderful|brilliant|impressive|awesome|fantastic|genius|"
                       r"so smart|so talented|so interesting|fascinating|remarkable|admire)\b", re.IGNORECASE)


class SimulatedUser:
    """Base class of the simulated users (see the module docstring for the interface)."""

    opening = OPENING

    def start(self, profiles: Sequence[Profile], seed: int = 0) -> list[Any]:
        raise NotImplementedError

    def reply(self, states: Sequence[Any], histories: Sequence[Sequence[dict]]) -> list[str]:
        raise NotImplementedError

    def revealed(self, state: Any) -> list[tuple[str, str]]:
        return list(state.revealed)

    def revealed_profile(self, state: Any) -> dict[str, Any]:
        """The revealed items as a slot-schema dict (what an oracle policy would write)."""
        from .profile import LIST_SLOTS

        out: dict[str, Any] = {}
        for slot, value in self.revealed(state):
            if slot in LIST_SLOTS:
                out.setdefault(slot, []).append(value)
            else:
                out[slot] = value
        return out


@dataclass
class RulesUserState:
    profile: Profile
    rng: random.Random
    budget: int
    revealed: list[tuple[str, str]] = field(default_factory=list)
    revealed_by_turn: list[list[tuple[str, str]]] = field(default_factory=list)

    def unrevealed(self) -> list[tuple[str, str]]:
        left = list(self.profile.items())
        for item in self.revealed:
            left.remove(item)
        return left


class RulesUser(SimulatedUser):
    """Deterministic template user; far cheaper than a policy generation."""

    def __init__(self, reveal_fraction: float = 0.15, volunteer: bool = True, repeat_jaccard: float = 0.8):
        if not 0.0 < reveal_fraction <= 1.0:
            raise ValueError(f"reveal_fraction must be in (0, 1], got {reveal_fraction}")
        self.reveal_fraction, self.volunteer, self.repeat_jaccard = reveal_fraction, volunteer, repeat_jaccard

    def __repr__(self) -> str:
        return f"RulesUser(reveal_fraction={self.reveal_fraction}, volunteer={self.volunteer})"

    def budget(self, profile: Profile) -> int:
        """Most items stated in one reply."""
        return max(1, int(self.reveal_fraction * len(profile.items()) + 0.5))

    def start(self, profiles: Sequence[Profile], seed: int = 0) -> list[RulesUserState]:
        return [RulesUserState(p, random.Random(f"{seed}:{i}:{p.id}"), self.budget(p))
                for i, p in enumerate(profiles)]

    def reply(self, states: Sequence[RulesUserState], histories: Sequence[Sequence[dict]]) -> list[str]:
        if len(states) != len(histories):
            raise ValueError(f"states and histories must have the same length, got {len(states)}, {len(histories)}")
        return [self._reply_one(s, h) for s, h in zip(states, histories)]

    def _reply_one(self, st: RulesUserState, history: Sequence[dict]) -> str:
        said = [m.get("content", "") for m in history if m.get("role") == "assistant"]
        msg = said[-1] if said else ""
        if repeats_earlier(msg, said[:-1], self.repeat_jaccard):
            st.revealed_by_turn.append([])
            return st.rng.choice(REPEAT_REPLIES)
        parts: list[str] = []
        if _FLATTERY.search(msg):
            parts.append(st.rng.choice(FLATTERY_REPLIES))
        left = st.unrevealed()
        asked = set(slots_mentioned(msg))
        wanted = [it for it in left if it[0] in asked]
        st.rng.shuffle(wanted)
        chosen = wanted[:st.budget]
        if not chosen and left and self.volunteer:
            chosen = [st.rng.choice(left)]
        for slot, value in chosen:
            article = "an" if value[:1].lower() in "aeiou" and not value.lower().startswith(("uni", "eu", "one")) else "a"
            parts.append(st.rng.choice(_TEMPLATES[slot]).format(v=value, a=article))
        if not chosen:
            parts.append(st.rng.choice(NOTHING_LEFT_REPLIES))
        st.revealed.extend(chosen)
        st.revealed_by_turn.append(list(chosen))
        return " ".join(parts)


@dataclass
class LLMUserState:
    profile: Profile
    revealed: list[tuple[str, str]] = field(default_factory=list)


class LLMUser(SimulatedUser):
    """An LLM role-plays the user through a chat backend (`HFChat` or `OpenAIChat`)."""

    def __init__(self, backend: Any):
        if not hasattr(backend, "complete"):
            raise ValueError("backend must have a complete(conversations) method (HFChat or OpenAIChat)")
        self.backend = backend

    def __repr__(self) -> str:
        return f"LLMUser(backend={self.backend!r})"

    def start(self, profiles: Sequence[Profile], seed: int = 0) -> list[LLMUserState]:
        return [LLMUserState(p) for p in profiles]

    @staticmethod
    def role_play_messages(profile: Profile, history: Sequence[dict]) -> list[dict]:
        """System prompt + the conversation with roles swapped (the LLM speaks as the user)."""
        msgs = [m for m in history if m.get("role") in ("user", "assistant")]
        if msgs and msgs[0]["role"] == "user" and msgs[0].get("content", "").strip() == OPENING:
            msgs = msgs[1:]  # the opening "Hello" is stated in the system prompt
        flip = {"user": "assistant", "assistant": "user"}
        return [{"role": "system", "content": user_system_prompt(profile)}] + [
            {"role": flip[m["role"]], "content": m.get("content", "")} for m in msgs]

    def reply(self, states: Sequence[LLMUserState], histories: Sequence[Sequence[dict]]) -> list[str]:
        if len(states) != len(histories):
            raise ValueError(f"states and histories must have the same length, got {len(states)}, {len(histories)}")
        try:
            texts = self.backend.complete([self.role_play_messages(s.profile, h) for s, h in zip(states, histories)])
        except BackendError as e:  # the run's error names who failed: the simulated user
            raise e.with_role("simulated user") from None
        out = []
        for st, text in zip(states, texts):
            text = (text or "").strip() or "Hmm."
            for item in st.profile.items():
                if item not in st.revealed and item_mentioned(item[0], item[1], text):
                    st.revealed.append(item)
            out.append(text)
        return out


USER_BACKENDS = ("rules", "hf", "openai")


def make_user(spec: Any = "rules", **kwargs: Any) -> SimulatedUser:
    """A simulated user from a name (`rules`, `hf`, `openai`), a dict with "backend", or an instance.

    `hf` needs model= and tokenizer= (plus HFChat options); `openai` takes OpenAIChat options
    (base_url, model, api_key_env, timeout, max_retries, ...).
    """
    if isinstance(spec, SimulatedUser):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        name = spec.pop("backend", "rules")
        return make_user(name, **{**spec, **kwargs})
    if spec == "rules":
        return RulesUser(**kwargs)
    if spec == "hf":
        return LLMUser(HFChat(**kwargs))
    if spec == "openai":
        return LLMUser(OpenAIChat(**kwargs))
    raise ValueError(f"user backend must be one of {', '.join(USER_BACKENDS)}, got {spec!r}")
