"""Seeded, offline generator of coherent RLPA profiles, and the fixed train/test splits.

Coherence rules (all enforced by construction, checked in tests):
- occupation fixes an age range, the allowed education levels and an occupation category;
- education levels have a minimum age (no 19-year-old with a PhD);
- marital status depends on age (minors are single, widowhood is rare under 35);
- family background depends on age and marital status (grown children only from 45, etc.);
- personality traits avoid contradictory pairs (introverted + extroverted);
- a few "Other" facts only fit some profiles (planning a wedding -> engaged).

Simplifications: built-in English vocabularies (no fake-data dependency), uniform choices with a
few weights; the split is fixed by seeds, not by any semantic criterion.
"""

from __future__ import annotations

import random
from dataclasses import replace
from functools import lru_cache
from typing import Callable

from .profile import Profile

# (occupation, category, min_age, max_age, allowed education levels)
_HS, _VOC, _SOME, _ASSOC, _BA, _MA, _PHD = (
    "high school diploma", "vocational training", "some college", "associate degree",
    "bachelor's degree", "master's degree", "PhD",
)
OCCUPATIONS: tuple[tuple[str, str, int, int, tuple[str, ...]], ...] = (
    ("nurse", "health", 22, 66, (_BA, _ASSOC, _MA)),
    ("physician", "health", 28, 72, ("medical degree",)),
    ("pharmacist", "health", 25, 68, (_PHD, _MA)),
    ("physical therapist", "health", 24, 66, (_MA, _PHD)),
    ("dental hygienist", "health", 21, 66, (_ASSOC, _BA)),
    ("paramedic", "health", 20, 60, (_VOC, _ASSOC)),
    ("software engineer", "tech", 21, 66, (_BA, _MA, _SOME)),
    ("data scientist", "tech", 23, 62, (_MA, _PHD, _BA)),
    ("IT support specialist", "tech", 19, 66, (_ASSOC, _SOME, _BA, _VOC)),
    ("web developer", "tech", 19, 62, (_BA, _SOME, _ASSOC)),
    ("cybersecurity analyst", "tech", 22, 62, (_BA, _MA)),
    ("elementary school teacher", "education", 22, 67, (_BA, _MA)),
    ("high school teacher", "education", 22, 67, (_BA, _MA)),
    ("university professor", "education", 30, 75, (_PHD,)),
    ("librarian", "education", 24, 68, (_MA, _BA)),
    ("school counselor", "education", 25, 66, (_MA,)),
    ("accountant", "business", 22, 68, (_BA, _MA)),
    ("marketing manager", "business", 25, 65, (_BA, _MA)),
    ("sales representative", "business", 19, 66, (_HS, _SOME, _BA)),
    ("financial analyst", "business", 22, 62, (_BA, _MA)),
    ("small business owner", "business", 22, 76, (_HS, _SOME, _BA, _VOC)),
    ("human resources manager", "business", 26, 66, (_BA, _MA)),
    ("graphic designer", "arts", 20, 66, (_BA, _ASSOC, _SOME)),
    ("musician", "arts", 18, 78, (_HS, _SOME, _BA)),
    ("photographer", "arts", 18, 72, (_HS, _SOME, _BA, _ASSOC)),
    ("writer", "arts", 21, 82, (_BA, _MA, _SOME)),
    ("chef", "arts", 19, 66, (_VOC, _HS)),
    ("electrician", "trades", 19, 66, (_VOC, _HS)),
    ("plumber", "trades", 19, 66, (_VOC, _HS)),
    ("carpenter", "trades", 18, 68, (_VOC, _HS)),
    ("auto mechanic", "trades", 18, 66, (_VOC, _HS)),
    ("construction worker", "trades", 18, 62, (_HS, _VOC)),
    ("retail cashier", "service", 16, 70, (_HS, "currently in high school")),
    ("barista", "service", 17, 50, (_HS, _SOME, "currently in college")),
    ("delivery driver", "service", 19, 66, (_HS, _SOME)),
    ("hairdresser", "service", 18, 66, (_VOC, _HS)),
    ("waiter", "service", 17, 60, (_HS, _SOME, "currently in college")),
    ("research scientist", "science", 27, 72, (_PHD,)),
    ("lab technician", "science", 21, 62, (_BA, _ASSOC)),
    ("environmental engineer", "science", 23, 66, (_BA, _MA)),
    ("lawyer", "legal", 25, 76, ("law degree",)),
    ("paralegal", "legal", 21, 66, (_ASSOC, _BA)),
    ("police officer", "public service", 21, 60, (_HS, _ASSOC, _SOME, _BA)),
    ("firefighter", "public service", 19, 60, (_HS, _VOC, _ASSOC)),
    ("social worker", "public service", 23, 66, (_BA, _MA)),
    ("civil servant", "public service", 22, 66, (_BA, _MA, _HS)),
    ("farmer", "agriculture", 18, 80, (_HS, _VOC, _BA)),
    ("high school student", "student", 15, 18, ("currently in high school",)),
    ("university student", "student", 18, 25, ("currently in college",)),
    ("graduate student", "student", 22, 33, ("currently in graduate school",)),
    ("retired teacher", "retired", 60, 86, (_BA, _MA)),
    ("retired nurse", "retired", 60, 86, (_BA, _ASSOC)),
    ("retired engineer", "retired", 60, 86, (_BA, _MA)),
    ("retired factory worker", "retired", 60, 86, (_HS, _VOC)),
    ("stay-at-home parent", "homemaker", 24, 52, (_HS, _SOME, _BA, _MA)),
)
OCCUPATION_CATEGORY: dict[str, str] = {o[0]: o[1] for o in OCCUPATIONS}
OCCUPATION_CATEGORIES: tuple[str, ...] = tuple(dict.fromkeys(o[1] for o in OCCUPATIONS))

# Minimum age at which each education level can be complete (or in progress).
EDUCATION_MIN_AGE: dict[str, int] = {
    "currently in high school": 14, _HS: 18, _VOC: 19, _SOME: 19, "currently in college": 18,
    _ASSOC: 20, _BA: 21, "currently in graduate school": 22, _MA: 23, "law degree": 25,
    "medical degree": 26, _PHD: 26,
}

# In-progress education only fits the young.
EDUCATION_MAX_AGE: dict[str, int] = {
    "currently in high school": 19, "currently in college": 30, "currently in graduate school": 35,
}

GENDERS = ("female", "male", "non-binary")
GENDER_WEIGHTS = (48, 48, 4)

INTERESTS = (
    "hiking", "cooking", "reading", "photography", "gardening", "video games", "yoga", "running",
    "cycling", "painting", "playing guitar", "chess", "traveling", "baking", "fishing", "soccer",
    "basketball", "swimming", "board games", "knitting", "birdwatching", "camping", "jazz",
    "classical music", "podcasts", "movies", "anime", "volunteering", "woodworking", "astronomy",
    "history", "dancing", "rock climbing", "skiing", "tennis", "golf", "poetry",
    "crossword puzzles", "learning languages", "meditation",
)

TRAITS = (
    "curious", "introverted", "extroverted", "organized", "easygoing", "ambitious", "patient",
    "impatient", "creative", "analytical", "empathetic", "humorous", "cautious", "adventurous",
    "detail-oriented", "stubborn", "generous", "shy", "talkative", "calm", "anxious",
    "optimistic", "practical", "independent", "loyal",
)
CONFLICTING_TRAITS = (
    frozenset({"introverted", "extroverted"}), frozenset({"shy", "talkative"}),
    frozenset({"shy", "extroverted"}), frozenset({"introverted", "talkative"}),
    frozenset({"patient", "impatient"}), frozenset({"cautious", "adventurous"}),
    frozenset({"calm", "anxious"}),
)

CITIES = (
    "Chicago", "Austin", "Seattle", "Boston", "Denver", "Toronto", "Vancouver", "London",
    "Manchester", "Dublin", "Sydney", "Melbourne", "Berlin", "Munich", "Paris", "Lyon", "Madrid",
    "Barcelona", "Rome", "Milan", "Amsterdam", "Stockholm", "Oslo", "Copenhagen", "Helsinki",
    "Tokyo", "Osaka", "Seoul", "Singapore", "Mumbai", "Bangalore", "Cape Town", "Nairobi",
    "Lagos", "Cairo", "Mexico City", "Buenos Aires", "Sao Paulo", "Lima", "Auckland",
    "Edinburgh", "Portland", "Atlanta", "Miami", "Phoenix", "Nashville", "New York",
    "Los Angeles", "San Francisco", "Montreal",
)
RURAL = ("a small town in Ohio", "a farm in Iowa", "rural Montana", "a village in Wales",
         "the countryside near Lyon", "rural Queensland")

MARITAL = ("single", "in a relationship", "engaged", "married", "divorced", "widowed")


def _marital_weights(age: int) -> tuple[int, ...]:
    """Weights over MARITAL for an age (0 = impossible)."""
    if age < 18:
        return (1, 0, 0, 0, 0, 0)
    if age < 21:
        return (6, 3, 0, 0, 0, 0)
    if age < 25:
        return (5, 4, 1, 2, 0, 0)
    if age < 35:
        return (4, 3, 2, 5, 1, 0)
    if age < 55:
        return (2, 2, 1, 8, 3, 1)
    if age < 70:
        return (2, 1, 0, 8, 3, 2)
    return (1, 1, 0, 6, 2, 5)


# Family background options: (value, predicate(age, marital, occupation)).
_FamilyRule = tuple[str, Callable[[int, str, str], bool]]
_PARTNERED = {"married"}
_ALONE = {"divorced", "widowed", "single"}
FAMILY: tuple[_FamilyRule, ...] = (
    ("lives with parents", lambda a, m, o: a < 30 and m in {"single", "in a relationship"}),
    ("lives with a single mother", lambda a, m, o: a < 18),
    ("lives with grandparents", lambda a, m, o: a < 18),
    ("has two younger siblings", lambda a, m, o: a < 30),
    ("lives with roommates", lambda a, m, o: 18 <= a <= 40 and m in {"single", "in a relationship"}),
    ("lives alone", lambda a, m, o: a >= 20 and m in _ALONE | {"in a relationship"}),
    ("lives with partner", lambda a, m, o: a >= 19 and m in {"in a relationship", "engaged"}),
    ("no children", lambda a, m, o: a >= 22 and m in _PARTNERED | {"engaged"}),
    ("has one young child", lambda a, m, o: 23 <= a <= 45 and m in _PARTNERED),
    ("has two young children", lambda a, m, o: 25 <= a <= 47 and m in _PARTNERED),
    ("single parent of one child", lambda a, m, o: 24 <= a <= 55 and m in _ALONE),
    ("has teenage children", lambda a, m, o: 36 <= a <= 60 and m in _PARTNERED | {"divorced", "widowed"}),
    ("has grown children", lambda a, m, o: a >= 46 and m in _PARTNERED | {"divorced", "widowed"}),
    ("has grandchildren", lambda a, m, o: a >= 56 and m in _PARTNERED | {"divorced", "widowed"}),
    ("lives with elderly parents", lambda a, m, o: 35 <= a <= 65 and m in _ALONE),
    ("grew up in a large family", lambda a, m, o: a >= 18),
    ("raised by grandparents", lambda a, m, o: a >= 18),
    ("only child", lambda a, m, o: a >= 18 and m in _ALONE | {"in a relationship", "engaged"}),
)
CHILD_FAMILIES = frozenset({"has one young child", "has two young children", "single parent of one child",
                            "has teenage children"})

# "Other" facts: (value, predicate(age, marital, occupation)).
OTHER: tuple[_FamilyRule, ...] = (
    ("vegetarian", lambda a, m, o: True),
    ("vegan", lambda a, m, o: True),
    ("allergic to peanuts", lambda a, m, o: True),
    ("has a dog", lambda a, m, o: True),
    ("has two cats", lambda a, m, o: True),
    ("owns a motorcycle", lambda a, m, o: a >= 18),
    ("early riser", lambda a, m, o: True),
    ("night owl", lambda a, m, o: True),
    ("training for a marathon", lambda a, m, o: 16 <= a <= 62),
    ("lactose intolerant", lambda a, m, o: True),
    ("recently moved", lambda a, m, o: a >= 18),
    ("speaks three languages", lambda a, m, o: True),
    ("afraid of flying", lambda a, m, o: True),
    ("does not drink alcohol", lambda a, m, o: a >= 18),
    ("saving for a house", lambda a, m, o: 22 <= a <= 48 and not o.startswith("retired")),
    ("planning a wedding", lambda a, m, o: m == "engaged"),
    ("recently retired", lambda a, m, o: o.startswith("retired") and a <= 68),
    ("preparing for college exams", lambda a, m, o: o == "high school student"),
    ("looking for a new job", lambda a, m, o: OCCUPATION_CATEGORY.get(o) not in {"student", "retired", "homemaker"}),
    ("volunteers at an animal shelter", lambda a, m, o: a >= 16),
)


def _pick_traits(rng: random.Random, k: int) -> tuple[str, ...]:
    chosen: list[str] = []
    for t in rng.sample(TRAITS, len(TRAITS)):
        if any(frozenset({t, c}) in CONFLICTING_TRAITS for c in chosen):
            continue
        chosen.append(t)
        if len(chosen) == k:
            break
    return tuple(chosen)


def generate_profile(rng: random.Random, pid: str | None = None) -> Profile:
    """Draw one coherent profile from `rng`."""
    occ, _cat, lo, hi, edus = rng.choice(OCCUPATIONS)
    age = rng.randint(lo, hi)
    edu_ok = [e for e in edus if EDUCATION_MIN_AGE[e] <= age <= EDUCATION_MAX_AGE.get(e, 200)]
    education = rng.choice(edu_ok or [edus[0]])
    age = max(age, EDUCATION_MIN_AGE[education])
    weights = _marital_weights(age)
    if occ == "stay-at-home parent":  # has children at home: a married or single parent
        weights = tuple(w if m in {"married", "divorced", "widowed"} else 0 for m, w in zip(MARITAL, weights))
    marital = rng.choices(MARITAL, weights=weights)[0]
    fam_ok = [v for v, ok in FAMILY if ok(age, marital, occ)]
    if occ == "stay-at-home parent":
        fam_ok = [v for v in fam_ok if v in CHILD_FAMILIES]
    family = rng.choice(fam_ok)
    if occ == "farmer" or rng.random() < 0.08:
        location = rng.choice(RURAL)
    else:
        location = rng.choice(CITIES)
    other_ok = [v for v, ok in OTHER if ok(age, marital, occ)]
    other = tuple(rng.sample(other_ok, rng.choice((1, 1, 2))))
    if "vegan" in other and "vegetarian" in other:
        other = ("vegan",)
    return Profile(
        age=age,
        gender=rng.choices(GENDERS, weights=GENDER_WEIGHTS)[0],
        interests=tuple(rng.sample(INTERESTS, rng.randint(2, 4))),
        education=education,
        personality_traits=_pick_traits(rng, rng.randint(2, 3)),
        occupation=occ,
        marital_status=marital,
        family_background=family,
        location=location,
        other=other,
        id=pid,
    )


def generate_profiles(n: int, seed: int = 0) -> list[Profile]:
    """`n` distinct profiles (distinct in content, ids `p00000`...), deterministic in `seed`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    seen: set[Profile] = set()
    out: list[Profile] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n:
            raise ValueError(f"could not draw {n} distinct profiles; use a smaller n")
        p = generate_profile(rng)
        if p in seen:  # Profile equality ignores the id
            continue
        seen.add(p)
        out.append(replace(p, id=f"p{len(out):05d}"))
    return out


DEFAULT_N = 3000
DEFAULT_SEED = 2505_15456
DEFAULT_TEST_FRACTION = 0.1
SPLITS = ("train", "test", "all")


@lru_cache(maxsize=4)
def _default_split(split: str) -> tuple[Profile, ...]:
    everything = generate_profiles(DEFAULT_N, seed=DEFAULT_SEED)
    train, test = split_profiles(everything, DEFAULT_TEST_FRACTION, seed=0)
    return tuple({"train": train, "test": test, "all": everything}[split])


def split_profiles(profiles: list[Profile], test_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[Profile], list[Profile]]:
    """Deterministic (train, test) split; order inside each part follows the input order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    idx = list(range(len(profiles)))
    random.Random(seed).shuffle(idx)
    n_test = max(1, round(test_fraction * len(profiles)))
    test_idx = set(idx[:n_test])
    train = [p for i, p in enumerate(profiles) if i not in test_idx]
    test = [p for i, p in enumerate(profiles) if i in test_idx]
    return train, test


def get_profiles(split: str = "train") -> list[Profile]:
    """The built-in fixed split: 3000 profiles (seed fixed), 2700 train / 300 test."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return list(_default_split(split))


# ---------------------------------------------------------------- preference groups (P-GRPO)
_CATEGORY_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("retired", ("retired", "retiree", "pensioner")),
    ("student", ("student", "pupil")),
    ("homemaker", ("stay-at-home", "homemaker", "housewife", "househusband")),
    ("health", ("nurse", "doctor", "physician", "therapist", "medic", "pharmac", "dentist", "dental",
                "surgeon", "clinic", "health", "caregiver")),
    ("education", ("teacher", "professor", "tutor", "librarian", "lecturer", "counselor", "principal")),
    ("tech", ("software", "developer", "programmer", "data scien", " it ", "cyber", "web", "computer", "devops")),
    ("science", ("scientist", "researcher", " lab ", "laborator", "chemist", "biologist", "physicist", "engineer")),
    ("legal", ("lawyer", "attorney", "paralegal", "judge", "solicitor")),
    ("business", ("accountant", "manager", "sales", "financ", "business", "marketing", "consultant", "banker")),
    ("arts", ("designer", "musician", "artist", "photographer", "writer", "chef", "actor", "author")),
    ("trades", ("electrician", "plumber", "carpenter", "mechanic", "construction", "welder", "builder")),
    ("service", ("cashier", "barista", "driver", "hairdresser", "waiter", "waitress", "clerk", "cleaner")),
    ("public service", ("police", "firefighter", "social worker", "civil servant", "soldier", "officer")),
    ("agriculture", ("farmer", "rancher", "fisher")),
)
GROUP_BY = ("occupation_category", "cluster", "<slot name>")


def occupation_category(occupation: str | None) -> str:
    """Coarse category of an occupation: the built-in table, else keywords, else "other"."""
    if not occupation:
        return "other"
    occ = occupation.strip().lower()
    for name, cat in OCCUPATION_CATEGORY.items():
        if name.lower() == occ:
            return cat
    padded = f" {occ} "
    for cat, words in _CATEGORY_KEYWORDS:
        if any(w in padded for w in words):
            return cat
    return "other"


def life_stage_cluster(profile: Profile) -> str:
    """fairalign's "cluster": age band (<30, 30-54, 55+) x partnered or not, e.g. "30-54/partnered"."""
    if profile.age is None:
        band = "unknown-age"
    else:
        band = "<30" if profile.age < 30 else ("30-54" if profile.age < 55 else "55+")
    m = (profile.marital_status or "").strip().lower()
    partnered = m in {"married", "engaged", "in a relationship"}
    return f"{band}/{'partnered' if partnered else 'unpartnered'}"


def profile_group(profile: Profile, by: str = "occupation_category") -> str:
    """Hashable preference-group id of a profile for P-GRPO.

    by = "occupation_category" (e.g. "health", "tech"), "cluster" (life_stage_cluster), or a slot
    name (its normalized value; list slots join their sorted values with "|"; unset -> "unknown").
    """
    if by == "occupation_category":
        return occupation_category(profile.occupation)
    if by == "cluster":
        return life_stage_cluster(profile)
    from .profile import LIST_SLOTS, canonical_slot
    from .rewards import normalize_value

    slot = canonical_slot(by)
    if slot is None:
        from .profile import SLOTS

        raise ValueError(f"by must be 'occupation_category', 'cluster' or a slot name ({', '.join(SLOTS)}), got {by!r}")
    value = profile.get(slot)
    if slot in LIST_SLOTS:
        return "|".join(sorted(normalize_value(v, slot) for v in value)) or "unknown"
    return "unknown" if value is None else normalize_value(value, slot)
