"""`personas`: a synthetic heterogeneous-preference task for P-GRPO and friends.

Five personas ask everyday questions; each states its taste in the prompt ("I am ... I like answers
that ...") and the reward scores the reply by rules against that taste. The persona id is the
preference group (column "group", also "persona"). Shares are imbalanced (one 64% majority, four
minorities of 8-12%) and the tastes conflict: the majority wants one short calm sentence, one
minority wants a long bullet list, one wants exclamation marks and slang, one forbids them and
wants polite words, one wants every answer tied to gardening.

Simplifications (fairalign's choices):
- Rewards are surface rules (word counts, list lines, punctuation, keyword stems), graded in [0, 1]
  so a 135M model gets signal; they do not judge helpfulness. A reply with no words scores 0.
- Questions come from templates x everyday topics; train and test use disjoint topics (and so
  disjoint questions), chosen by `seed`.
- `reward="binary"` (a variant for P-GRPO studies, docs/evidence/pgrpo): 1 when the reply meets every
  rule of its persona in full (graded score 1), else 0. Successes are rare for hard tastes, so many
  prompt groups tie at 0 and group-normalized advantages carry no signal there.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from fairalign.envs.registry import register_task
from fairalign.envs.rewards import RewardSpec, completion_text, register_reward
from fairalign.envs.task import Task

# ----------------------------------------------------------------------------- text features
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
_ITEM = re.compile(r"^\s*(?:[-*•+]|\d{1,2}[.)])\s+\S")
_CONTRACTION = re.compile(r"\b[A-Za-z]+(?:n['’]t|['’](?:re|ve|ll|m|d))\b|"
                          r"\b(?:it|that|there|what|here|let|he|she|who|where|how)['’]s\b", re.IGNORECASE)
SLANG = frozenset({"hey", "yo", "gonna", "wanna", "gotta", "yeah", "yep", "nope", "cool", "awesome", "lol",
                   "guys", "dude", "stuff", "kinda", "sorta", "totally", "omg"})
GREETINGS = frozenset({"hi", "hello", "yo", "hiya", "heya"})  # "hey" (asked for) scores 1, these 0.5
POLITE_STEMS = ("certainly", "please", "thank", "kindly", "sorry", "hope", "recommend", "suggest", "advis",
                "consider", "would", "could", "respectful", "sincere", "regard", "appreciat")
TOPIC_STEMS = ("plant", "garden", "flower", "soil", "seed", "leaf", "leaves", "grow", "tree", "compost",
               "bloom", "root", "herb", "veget")


def words(text: str) -> list[str]:
    """Words: runs of letters/digits, a contraction like "don't" counts as one."""
    return _WORD.findall(text)


def list_items(text: str) -> int:
    """Lines that start a list item: "-", "*", "•", "+" or "1." / "1)" followed by text."""
    return sum(1 for line in text.splitlines() if _ITEM.match(line))


def n_emoji(text: str) -> int:
    return sum(1 for ch in text if 0x1F000 <= ord(ch) <= 0x1FAFF or 0x2600 <= ord(ch) <= 0x27BF
               or ord(ch) in (0x2B50, 0x2B55))


def casual_markers(text: str) -> int:
    """Contractions ("don't", "I'm", "it's") plus slang words ("hey", "gonna", "cool", ...)."""
    return len(_CONTRACTION.findall(text)) + sum(1 for w in words(text) if w.lower() in SLANG)


def length_score(n: int, lo: int, hi: int) -> float:
    """1 inside [lo, hi] words; (n/lo)^2 below; (hi/n)^2 above."""
    if n < lo:
        return (n / lo) ** 2
    if n > hi:
        return (hi / n) ** 2
    return 1.0


def _stem_hits(ws: list[str], stems: tuple[str, ...]) -> int:
    return sum(1 for w in ws if w.lower().startswith(stems))


def component_scores(text: str, length: tuple[int, int]) -> dict[str, float]:
    """Every rule score in [0, 1] for one reply (`length` = the persona's [lo, hi] word range)."""
    ws = words(text)
    items = list_items(text)
    bangs = text.count("!")
    casual = casual_markers(text)
    first = ws[0].lower() if ws else ""
    return {
        "length": length_score(len(ws), *length),
        "list": min(items, 3) / 3,                               # up to 3 list items
        "calm": 1.0 / (1 + bangs + n_emoji(text)),               # no "!" and no emoji
        "formal": 1.0 / (1 + casual),                            # no contractions or slang
        "polite": min(_stem_hits(ws, POLITE_STEMS), 2) / 2,      # "certainly", "please", "would", ...
        "topic": min(_stem_hits(ws, TOPIC_STEMS), 2) / 2,        # plant / garden / flower / soil ... words
        "hey": 1.0 if first == "hey" else 0.5 if first in GREETINGS else 0.0,
        "excited": min(bangs, 2) / 2,
        "casual": min(casual, 2) / 2,
    }


# ----------------------------------------------------------------------------- personas
@dataclass(frozen=True)
class Persona:
    id: str
    share: float                      # fraction of the training set
    preambles: tuple[str, ...]        # ways the persona states itself at the start of the prompt
    weights: dict                     # rule name -> weight (sums to 1)
    length: tuple[int, int]           # preferred reply length in words [lo, hi] (if weights has "length")


PERSONAS: tuple[Persona, ...] = (
    Persona("concise", 0.64, (
        "I am a busy nurse and I have very little time. Please answer in one short sentence, with no lists.",
        "I work long shifts and only read quick replies. Keep it to one short sentence, no bullet points.",
        "I am always in a hurry. Give me a very brief answer: a single calm sentence, no list.",
    ), {"length": 0.7, "calm": 0.3}, (3, 12)),
    Persona("detailed_list", 0.12, (
        "I am a student who loves detail. Please answer with a bullet list of at least three points, "
        "each one explained.",
        "I am studying for exams and I like thorough answers. Use a bulleted list with several detailed points.",
        "I like complete, detailed answers. Please write a list of at least three points, one per line "
        "starting with '-'.",
    ), {"list": 0.5, "length": 0.5}, (30, 100)),
    Persona("formal", 0.08, (
        "I am a lawyer. Please reply formally and politely, without exclamation marks, emoji, slang "
        "or contractions.",
        "I am a retired judge and I value formal, polite language. Do not use exclamation marks, emoji, slang "
        "or contractions.",
        "I prefer a formal, polite and calm tone. Please avoid exclamation marks, emoji, slang and contractions "
        "such as \"don't\".",
    ), {"calm": 0.3, "formal": 0.4, "polite": 0.3}, (10, 40)),
    Persona("gardener", 0.08, (
        "I am a gardener. Please relate your answer to plants or gardening.",
        "I spend all my free time in my garden. Mention plants, flowers or gardening in your answer.",
        "I love plants more than anything. Connect your answer to gardening, soil or flowers.",
    ), {"topic": 0.7, "length": 0.3}, (10, 40)),
    Persona("casual", 0.08, (
        "I am a teenager. I like casual, fun answers that start with 'Hey' and use exclamation marks!",
        "I'm 15 and I hate boring answers. Start with 'Hey', be casual and excited, use exclamation marks!",
        "Talk to me like a friend: start with 'Hey', keep it casual and fun, with exclamation marks!",
    ), {"hey": 0.3, "excited": 0.4, "casual": 0.3}, (5, 40)),
)
PERSONA_BY_ID = {p.id: p for p in PERSONAS}

TEMPLATES = ("How can I {}?", "What is the best way to {}?", "Do you have any tips to {}?",
             "I want to {}. Where should I start?")
TOPICS = (
    "sleep better", "save money on groceries", "keep my houseplants alive", "learn to cook simple meals",
    "stay focused while studying", "make new friends in a new city", "get up earlier in the morning",
    "drink more water during the day", "start running", "keep my kitchen clean", "prepare for a job interview",
    "reduce stress after work", "learn a new language", "organize my closet", "cut down on screen time",
    "write a polite complaint email", "plan a cheap weekend trip", "fix a squeaky door",
    "take better photos with my phone", "remember people's names", "stop procrastinating",
    "keep my bike in good shape", "make my coffee taste better", "start a small vegetable garden",
    "choose a good book to read", "stay warm in winter", "pack light for a trip", "improve my handwriting",
    "be on time more often", "teach my dog to sit", "bake bread at home", "make my phone battery last longer",
    "learn to swim as an adult", "eat more vegetables", "fall asleep on a plane",
    "prepare a quick healthy breakfast", "speak more confidently in meetings", "clean my windows without streaks",
    "store leftovers safely", "start journaling", "keep a monthly budget", "reduce food waste",
    "learn to play the guitar", "get rid of fruit flies", "make my small apartment feel bigger",
    "help my kids with homework", "recycle properly", "stretch after a workout", "choose a ripe watermelon",
    "keep my shoes from smelling", "write a thank-you note", "host a dinner for friends",
    "improve my posture at my desk", "back up my photos", "find my way in a new city", "wash a wool sweater",
    "make a good cup of tea", "practice mindfulness", "walk more every day", "clean my laptop keyboard",
)


def persona_scores(text: str, persona: str) -> dict[str, float]:
    """The rule scores a persona cares about, unweighted (for inspection and tests)."""
    p = PERSONA_BY_ID[persona]
    comp = component_scores(text, p.length)
    return {k: comp[k] for k in p.weights}


def score_reply(text: str, persona: str) -> float:
    """Reward of one reply for one persona, in [0, 1]: Σ weight · rule score; 0 for a reply with no words."""
    if persona not in PERSONA_BY_ID:
        raise ValueError(f"unknown persona {persona!r}; valid: {', '.join(PERSONA_BY_ID)}")
    if not words(text):
        return 0.0
    p = PERSONA_BY_ID[persona]
    comp = component_scores(text, p.length)
    return float(sum(w * comp[k] for k, w in p.weights.items()))


@register_reward("persona")
def persona_reward(prompts, completions, persona, **kwargs) -> list[float]:
    """TRL-style reward: how well each completion fits its persona (column "persona")."""
    return [score_reply(completion_text(c), p) for c, p in zip(completions, persona)]


def binary_score(text: str, persona: str) -> float:
    """1.0 when the reply meets every rule of its persona in full (graded score 1), else 0.0."""
    return 1.0 if score_reply(text, persona) >= 1.0 - 1e-9 else 0.0


@register_reward("persona_binary")
def persona_binary_reward(prompts, completions, persona, **kwargs) -> list[float]:
    """TRL-style reward: 1 if a completion meets all of its persona's rules in full, else 0."""
    return [binary_score(completion_text(c), p) for c, p in zip(completions, persona)]


# ----------------------------------------------------------------------------- dataset
def resolve_shares(default: dict, shares: dict | None, what: str) -> dict:
    """The sampling share of each kind: `default`, or the user's `shares` (unlisted kinds get 0)."""
    if shares is None:
        return default
    bad = [k for k in shares if k not in default]
    if bad:
        raise ValueError(f"shares: unknown {what} {bad[0]!r}; valid: {', '.join(default)}")
    if any(not v >= 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"shares must be non-negative with a positive sum, got {shares}")
    return {k: float(shares.get(k, 0.0)) for k in default}


def allocate(n: int, shares: list[float]) -> list[int]:
    """Split n into integer counts proportional to shares (largest remainder; ties go to the earlier)."""
    total = sum(shares)
    exact = [n * s / total for s in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _make_prompt(preamble: str, question: str, chat: bool):
    text = f"{preamble}\n{question}"
    return [{"role": "user", "content": text}] if chat else text


def _build_split(rng: random.Random, topics: list[str], counts: list[int], chat: bool) -> list[dict]:
    examples = []
    for persona, count in zip(PERSONAS, counts):
        combos = [(t, q, k) for t in topics for q in TEMPLATES for k in range(len(persona.preambles))]
        rng.shuffle(combos)
        for j in range(count):  # without replacement until every combination is used once
            topic, template, k = combos[j % len(combos)]
            question = template.format(topic)
            examples.append({"prompt": _make_prompt(persona.preambles[k], question, chat), "group": persona.id,
                             "persona": persona.id, "question": question, "topic": topic})
    rng.shuffle(examples)
    return examples


@register_task("personas")
def make_personas_task(*, seed: int = 0, n_train: int = 512, n_test: int = 128, chat: bool = True,
                       test_mix: str = "population", test_topics: float = 0.2,
                       shares: dict | None = None, reward: str = "graded") -> Task:
    """Build the personas task.

    n_train / n_test: examples per split; chat: prompts as chat messages (else plain strings);
    test_mix: "population" (test shares = train shares) or "balanced" (equal count per persona);
    test_topics: fraction of topics held out for the test split; shares: persona id -> share;
    reward: "graded" (rule scores in [0, 1]) or "binary" (1 only when every rule is met in full).
    """
    if reward not in ("graded", "binary"):
        raise ValueError(f"reward must be 'graded' or 'binary', got {reward!r}")
    if test_mix not in ("population", "balanced"):
        raise ValueError(f"test_mix must be 'population' or 'balanced', got {test_mix!r}")
    if not 0 < test_topics < 1:
        raise ValueError(f"test_topics must be in (0, 1), got {test_topics}")
    if n_train < 1 or n_test < 0:
        raise ValueError(f"n_train must be >= 1 and n_test >= 0, got {n_train} and {n_test}")
    share = resolve_shares({p.id: p.share for p in PERSONAS}, shares, "persona")
    rng = random.Random(f"personas-{seed}")
    topics = list(TOPICS)
    rng.shuffle(topics)
    n_test_topics = max(1, round(len(topics) * test_topics))
    test_t, train_t = sorted(topics[:n_test_topics]), sorted(topics[n_test_topics:])
    shares_list = [share[p.id] for p in PERSONAS]
    test_shares = shares_list if test_mix == "population" else [1.0 if s > 0 else 0.0 for s in shares_list]
    train = _build_split(rng, train_t, allocate(n_train, shares_list), chat)
    test = _build_split(rng, test_t, allocate(n_test, test_shares), chat)
    return Task(
        name="personas", train_examples=train, test_examples=test,
        rewards=[RewardSpec("persona_reward", persona_reward, 1.0) if reward == "graded"
                 else RewardSpec("persona_binary_reward", persona_binary_reward, 1.0)],
        description="five personas with conflicting reply-style tastes, imbalanced (64/12/8/8/8%)",
        info={"shares": share, "train_topics": train_t, "test_topics": test_t},
    )
