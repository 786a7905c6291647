"""`arithmetic`: verifiable integer problems whose natural solutions differ widely in length.

Five problem types (the preference group, also column "type"): one-step `add` and `multiply`,
`sum_list` (4-7 numbers), `two_step` ("(a + b) * c") and multi-step `word` problems. The correct
integer is in column "answer" (a string). Rewards: `exact_answer` (1 if the last number in the
completion equals the answer, else 0) and a small `answer_format` bonus (1 if the reply contains
"Answer: <number>").

Simplifications: numbers are small non-negative integers; train and test are disjoint by question
text; types are equally frequent unless `shares` says otherwise.
"""
from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation

from fairalign.envs.registry import register_task
from fairalign.envs.rewards import RewardSpec, completion_text, register_reward
from fairalign.envs.task import Task
from fairalign.envs.personas import allocate, resolve_shares

_NUMBER = re.compile(r"(?:(?<![\w)])-)?\d+(?:,\d{3})*(?:\.\d+)?")
_FORMAT = re.compile(r"answer\s*[:=]\s*\$?\s*-?\d", re.IGNORECASE)
INSTRUCTION = 'End your reply with "Answer: <number>".'
TYPES = ("add", "multiply", "sum_list", "two_step", "word")
_NAMES = ("Sam", "Mia", "Leo", "Ana", "Tom", "Zoe", "Ben", "Ivy")
_ITEMS = ("apple", "pencil", "marble", "cookie", "sticker", "card")


def last_number(text: str) -> Decimal | None:
    """The last number written in `text` ("1,200" and "-3.5" included), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


def _as_decimal(answer) -> Decimal | None:
    try:
        return Decimal(str(answer).strip().replace(",", ""))
    except InvalidOperation:
        return None


@register_reward("exact_answer")
def exact_answer(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the last number in the completion equals the answer (numerically), else 0.0."""
    out = []
    for c, a in zip(completions, answer):
        got, want = last_number(completion_text(c)), _as_decimal(a)
        out.append(1.0 if got is not None and want is not None and got == want else 0.0)
    return out


@register_reward("answer_format")
def answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion contains "Answer: <number>" (case-insensitive), else 0.0."""
    return [1.0 if _FORMAT.search(completion_text(c)) else 0.0 for c in completions]


# ----------------------------------------------------------------------------- problem generators
def _add(r: random.Random):
    a, b = r.randint(1, 99), r.randint(1, 99)
    return f"What is {a} + {b}?", a + b


def _multiply(r: random.Random):
    a, b = r.randint(2, 15), r.randint(2, 40)
    return f"What is {a} * {b}?", a * b


def _sum_list(r: random.Random):
    xs = [r.randint(1, 40) for _ in range(r.randint(4, 7))]
    return f"What is the sum of {', '.join(map(str, xs[:-1]))} and {xs[-1]}?", sum(xs)


def _two_step(r: random.Random):
    a, c = r.randint(1, 20), r.randint(2, 9)
    if r.random() < 0.5:
        b = r.randint(1, 20)
        return f"What is ({a} + {b}) * {c}?", (a + b) * c
    b = r.randint(1, min(20, a * c))  # keep the answer non-negative
    return f"What is {a} * {c} - {b}?", a * c - b


def _word(r: random.Random):
    name, item = r.choice(_NAMES), r.choice(_ITEMS)
    kind = r.randrange(4)
    if kind == 0:
        a, b, c = r.randint(2, 30), r.randint(2, 6), r.randint(2, 9)
        d = r.randint(1, a + b * c - 1)
        return (f"{name} has {a} {item}s. {name} buys {b} bags with {c} {item}s in each bag and then gives "
                f"away {d}. How many {item}s does {name} have now?", a + b * c - d)
    if kind == 1:
        p, n = r.randint(2, 9), r.randint(2, 9)
        bill = next(x for x in (20, 50, 100) if x > p * n)
        return (f"A shop sells {item}s for {p} dollars each. {name} buys {n} {item}s and pays with a "
                f"{bill}-dollar bill. How much change does {name} get?", bill - p * n)
    if kind == 2:
        a, b, c = r.randint(5, 40), r.randint(2, 9), r.randint(1, 30)
        return (f"{name} reads {a} pages every day for {b} days, then {c} more pages on the last day. "
                f"How many pages did {name} read in total?", a * b + c)
    a, b = r.randint(3, 12), r.randint(10, 60)
    c = r.randint(1, a * b - 1)
    return (f"A train has {a} cars with {b} seats each. {c} seats are empty. How many people are "
            f"sitting on the train?", a * b - c)


_GENERATORS = {"add": _add, "multiply": _multiply, "sum_list": _sum_list, "two_step": _two_step, "word": _word}


def _unique_problems(r: random.Random, kind: str, n: int) -> list[tuple[str, int]]:
    seen, out = set(), []
    for _ in range(50 * n + 100):
        if len(out) == n:
            break
        q, a = _GENERATORS[kind](r)
        if q not in seen:
            seen.add(q)
            out.append((q, a))
    if len(out) < n:
        raise ValueError(f"cannot generate {n} distinct '{kind}' problems; lower n_train/n_test")
    return out


@register_task("arithmetic")
def make_arithmetic_task(*, seed: int = 0, n_train: int = 1000, n_test: int = 200, chat: bool = True,
                         shares: dict | None = None, format_weight: float = 0.1) -> Task:
    """Build the arithmetic task.

    n_train / n_test: examples per split (disjoint questions); chat: prompts as chat messages;
    shares: type -> share (default equal); format_weight: weight of the answer_format reward
    (0 drops it).
    """
    if n_train < 1 or n_test < 0:
        raise ValueError(f"n_train must be >= 1 and n_test >= 0, got {n_train} and {n_test}")
    share = resolve_shares({t: 1.0 for t in TYPES}, shares, "problem type")
    rng = random.Random(f"arithmetic-{seed}")
    sh = [share[t] for t in TYPES]
    train, test = [], []
    for kind, k_train, k_test in zip(TYPES, allocate(n_train, sh), allocate(n_test, sh)):
        problems = _unique_problems(rng, kind, k_train + k_test)
        for j, (q, a) in enumerate(problems):
            text = f"{q} {INSTRUCTION}"
            ex = {"prompt": [{"role": "user", "content": text}] if chat else text, "group": kind,
                  "type": kind, "question": q, "answer": str(a)}
            (test if j < k_test else train).append(ex)
    rng.shuffle(train)
    rng.shuffle(test)
    rewards = [RewardSpec("exact_answer", exact_answer, 1.0)]
    if format_weight:
        rewards.append(RewardSpec("answer_format", answer_format, format_weight))
    return Task(name="arithmetic", train_examples=train, test_examples=test, rewards=rewards,
                description="integer arithmetic, one-step to multi-step word problems; exact-match reward",
                info={"shares": share})
