"""RLPA user profiles: the 10-slot schema, a typed `Profile`, JSON/JSONL (de)serialization.

A profile has 10 slots (docs/rlpa.md §1). Seven are scalars (one *item* each when set), three are
lists (each element is one item). Values are plain strings except Age, an int.

Simplifications: slot names in user data are matched loosely (case and `_`/`-`/space), so
`"marital_status"`, `"Marital Status"` and `"marital-status"` all work; anything else is an error
on load. Empty strings / empty lists mean "not set".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# Canonical slot names, in display order.
SLOTS: tuple[str, ...] = (
    "Age",
    "Gender",
    "Interests",
    "Education",
    "Personality Traits",
    "Occupation",
    "Marital Status",
    "Family Background",
    "Location",
    "Other",
)
LIST_SLOTS: frozenset[str] = frozenset({"Interests", "Personality Traits", "Other"})
SLOT_TO_FIELD: dict[str, str] = {s: s.lower().replace(" ", "_") for s in SLOTS}
FIELD_TO_SLOT: dict[str, str] = {f: s for s, f in SLOT_TO_FIELD.items()}

# Words that signal a slot in free text (used by the rules user to see what it was asked about,
# and by the rules judge to see whether a question targets a missing slot). Matched on word
# boundaries in lower-cased text; a trailing "*" means "any word starting with this".
SLOT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Age": ("age", "how old", "old are", "born", "birthday", "years old"),
    "Gender": ("gender", "pronoun*", "man or", "woman or", "male", "female", "identify as"),
    "Interests": ("interest*", "hobby", "hobbies", "free time", "spare time", "for fun", "enjoy",
                  "passion*", "weekend*", "pastime*", "like to do"),
    "Education": ("education*", "school*", "stud*", "degree*", "college", "universit*",
                  "graduat*", "major*", "qualification*"),
    "Personality Traits": ("personality", "describe yourself", "kind of person", "introvert*",
                           "extrovert*", "trait*", "character", "temperament"),
    "Occupation": ("job*", "work*", "occupation*", "career*", "profession*", "for a living",
                   "employ*"),
    "Marital Status": ("married", "marriage", "marital", "single", "partner*", "relationship*",
                       "spouse", "wife", "husband", "dating"),
    "Family Background": ("family", "families", "kids", "child*", "parent*", "sibling*",
                          "grew up", "grow up", "household", "brother*", "sister*"),
    "Location": ("where", "live", "living", "city", "cities", "location", "located", "hometown",
                 "town", "country", "neighborhood"),
    "Other": ("anything else", "else about", "tell me more", "about yourself", "habit*", "pet*",
              "diet*", "health", "routine*"),
}

_KEY_RE = re.compile(r"[\s_\-]+")


def canonical_slot(key: Any) -> str | None:
    """Map a loosely spelled slot name (`"marital_status"`, `"AGE"`) to its canonical name, or None."""
    if not isinstance(key, str):
        return None
    folded = _KEY_RE.sub(" ", key.strip().lower())
    for slot in SLOTS:
        if slot.lower() == folded:
            return slot
    return None


def keyword_pattern(words: Iterable[str]) -> re.Pattern:
    """Compile SLOT_KEYWORDS-style words (trailing `*` = prefix) into one word-boundary regex."""
    parts = []
    for w in words:
        if w.endswith("*"):
            parts.append(re.escape(w[:-1]) + r"\w*")
        else:
            parts.append(re.escape(w))
    return re.compile(r"\b(?:" + "|".join(parts) + r")\b", re.IGNORECASE)


SLOT_PATTERNS: dict[str, re.Pattern] = {s: keyword_pattern(w) for s, w in SLOT_KEYWORDS.items()}


def slots_mentioned(text: str) -> list[str]:
    """Slots whose keywords occur in `text`, in schema order."""
    return [s for s in SLOTS if SLOT_PATTERNS[s].search(text or "")]


@dataclass(frozen=True)
class Profile:
    """One simulated user's hidden profile. Lists are tuples so a Profile is hashable."""

    age: int | None = None
    gender: str | None = None
    interests: tuple[str, ...] = ()
    education: str | None = None
    personality_traits: tuple[str, ...] = ()
    occupation: str | None = None
    marital_status: str | None = None
    family_background: str | None = None
    location: str | None = None
    other: tuple[str, ...] = ()
    id: str | None = field(default=None, compare=False)

    def get(self, slot: str) -> Any:
        """Value of a canonical slot (int/str/None for scalars, tuple for lists)."""
        return getattr(self, SLOT_TO_FIELD[slot])

    def items(self) -> list[tuple[str, str]]:
        """All profile items as (slot, value-as-string), in schema order; one per list element."""
        out: list[tuple[str, str]] = []
        for slot in SLOTS:
            v = self.get(slot)
            if slot in LIST_SLOTS:
                out.extend((slot, str(x)) for x in v)
            elif v is not None:
                out.append((slot, str(v)))
        return out

    def to_dict(self, include_id: bool = False) -> dict[str, Any]:
        """Slot-named dict (canonical names); unset slots are left out; lists as lists."""
        d: dict[str, Any] = {}
        if include_id and self.id is not None:
            d["id"] = self.id
        for slot in SLOTS:
            v = self.get(slot)
            if slot in LIST_SLOTS:
                if v:
                    d[slot] = list(v)
            elif v is not None:
                d[slot] = v
        return d

    def to_json(self, include_id: bool = False) -> str:
        return json.dumps(self.to_dict(include_id=include_id), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Profile":
        """Strict constructor for user data. Raises ValueError on unknown keys or bad types."""
        if not isinstance(data, dict):
            raise ValueError(f"profile must be a JSON object, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "id":
                kwargs["id"] = None if value is None else str(value)
                continue
            slot = canonical_slot(key)
            if slot is None:
                raise ValueError(f"profile has unknown slot {key!r}; valid slots: {', '.join(SLOTS)}")
            kwargs[SLOT_TO_FIELD[slot]] = _coerce(slot, value)
        profile = cls(**kwargs)
        if not profile.items():
            raise ValueError("profile has no items: set at least one slot")
        return profile

    @classmethod
    def from_json(cls, text: str) -> "Profile":
        return cls.from_dict(json.loads(text))


def _coerce(slot: str, value: Any) -> Any:
    """Validate and convert one slot value from user data."""
    if slot in LIST_SLOTS:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(x, (str, int, float)) for x in value):
            raise ValueError(f"slot {slot!r} must be a list of strings, got {value!r}")
        return tuple(str(x).strip() for x in value if str(x).strip())
    if value is None:
        return None
    if slot == "Age":
        if isinstance(value, bool):
            raise ValueError(f"slot 'Age' must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        raise ValueError(f"slot 'Age' must be an integer, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"slot {slot!r} must be a string, got {value!r}")
    text = str(value).strip()
    return text or None


def load_profiles_jsonl(path: str | Path) -> list[Profile]:
    """Read one profile per line (blank lines skipped). Errors name the file and line number."""
    from fairalign.envs.file_task import read_jsonl_objects

    path = Path(path)
    profiles: list[Profile] = []
    for lineno, data in read_jsonl_objects(path, "profiles file"):
        try:
            p = Profile.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: line {lineno}: {e}") from None
        if p.id is None:
            p = _with_id(p, f"{path.stem}-{lineno}")
        profiles.append(p)
    if not profiles:
        raise ValueError(f"{path}: no profiles found")
    return profiles


def save_profiles_jsonl(profiles: Iterable[Profile], path: str | Path) -> None:
    """Write profiles one per line (with their ids)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for p in profiles:
            f.write(p.to_json(include_id=True) + "\n")


def _with_id(p: Profile, pid: str) -> Profile:
    from dataclasses import replace

    return replace(p, id=pid)


# Placeholder values a policy may write for a slot it does not know; they count as "not set".
UNKNOWN_VALUES = frozenset({"", "unknown", "n/a", "na", "none", "null", "not mentioned",
                            "not specified", "not provided", "unspecified", "?", "-", "tbd"})


def coerce_inferred(raw: Any) -> dict[str, list[str]]:
    """Best-effort view of a policy's inferred profile: canonical slot -> list of value strings.

    Never raises. Unknown keys, nested objects and placeholder values ("unknown", "N/A", "") are
    dropped. A scalar slot given a list keeps every element (each counts as a predicted item).
    """
    out: dict[str, list[str]] = {}
    if isinstance(raw, Profile):
        raw = raw.to_dict()
    if not isinstance(raw, dict):
        return out
    for key, value in raw.items():
        slot = canonical_slot(key)
        if slot is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        kept: list[str] = []
        for v in values:
            if isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
                continue
            text = str(v).strip()
            if text.lower() in UNKNOWN_VALUES:
                continue
            kept.append(text)
        if kept:
            out.setdefault(slot, []).extend(kept)
    return out
