"""An oracle RLPA policy and the demonstrations it yields for a supervised warm-up.

The oracle reads what the simulated user has revealed so far (it has access to the user's state,
which a real policy does not), restates exactly those items in the `<profile>` block, and replies
with a short acknowledgement plus a question it has not asked before in that dialogue: about a slot
it does not know yet and has not asked about (else a new phrasing for a missing slot, else a
general follow-up). Its turns follow the contract, earn response reward 1 from the rules judge,
and have precision 1, so they are good targets for a short SFT warm-up that teaches a small policy
the turn format before RL (`sft.steps` in the trainer config; see docs/rlpa.md, "Cold start").
Simplification: with every slot question and follow-up used (after about 34 turns) the oracle
only acknowledges, and such replies may repeat.
"""
from __future__ import annotations

import json
import random
from typing import Any, Collection, Sequence

from .dialogue import DialogueBatch
from .parser import parse_turn
from .profile import SLOTS, Profile
from .rewards import questions

# Several phrasings per slot; each contains a keyword the rules user maps to that slot.
QUESTIONS: dict[str, tuple[str, ...]] = {
    "Age": ("How old are you, if you don't mind me asking?", "May I ask your age?"),
    "Gender": ("What gender do you identify as?", "Which pronouns do you use?"),
    "Interests": ("What do you enjoy doing in your free time?", "Do you have any hobbies?",
                  "What do you like to do on weekends?"),
    "Education": ("What did you study?", "Did you go to college or university?",
                  "What is your education?"),
    "Personality Traits": ("How would you describe your personality?",
                           "What kind of person would your friends say you are?"),
    "Occupation": ("What do you do for work?", "What is your job?", "What do you do for a living?"),
    "Marital Status": ("Are you married or in a relationship?", "Do you have a partner?"),
    "Family Background": ("Could you tell me about your family?", "Do you have kids or siblings?"),
    "Location": ("Where do you live?", "Which city are you in?"),
    "Other": ("Is there anything else about yourself you'd like to share?",
              "Any habits or routines you care about?"),
}

# For when no slot question is left to ask; none of them targets a slot.
FOLLOW_UPS = ("What else is on your mind today?", "How has your week been so far?",
              "What are you looking forward to?", "Is there something you'd like to talk about?",
              "What made you smile recently?", "Any plans for the coming days?",
              "What have you been thinking about lately?", "Is there a goal you are aiming for?",
              "What would make today a good day for you?", "Have you tried anything new lately?",
              "What is something you are proud of?", "Is there a place you would love to visit?")

ACKS_INTEREST = ("Nice, {item} sounds fun.", "Oh, {item} is a great pastime.")
ACKS_ITEM = ("Got it: {item}.", "Thanks, good to know: {item}.", "Noted, {item}.")
ACKS_PLAIN = ("Nice to meet you!", "Thanks for sharing.", "Hello there!")


def oracle_turn(known: dict[str, Any], rng: random.Random, last_item: tuple[str, str] | None = None,
                asked: Collection[str] = ()) -> str:
    """One contract-following turn: `known` restated, an acknowledgement of the last revealed
    (slot, value) if any, and a question not in `asked` (the questions of the dialogue so far):
    about a missing slot never asked about, else a new phrasing for a missing slot, else a follow-up."""
    missing = [s for s in SLOTS if s not in known]
    if last_item is None:
        ack = rng.choice(ACKS_PLAIN)
    else:
        ack = rng.choice(ACKS_INTEREST if last_item[0] == "Interests" else ACKS_ITEM).format(item=last_item[1])
    fresh = [s for s in missing if not any(q in asked for q in QUESTIONS[s])]
    slots = fresh or [s for s in missing if any(q not in asked for q in QUESTIONS[s])]
    if slots:
        question = rng.choice([q for q in QUESTIONS[rng.choice(slots)] if q not in asked])
    else:
        left = [q for q in FOLLOW_UPS if q not in asked]
        question = rng.choice(left) if left else ""
    reply = f"{ack} {question}".strip()
    return f"<profile>{json.dumps(known, ensure_ascii=False)}</profile>\n<response>{reply}</response>"


def oracle_demonstrations(profiles: Sequence[Profile], *, max_turns: int = 10, seed: int = 0,
                          completion_prefix: str = "", user: Any = "rules",
                          group_by: str = "occupation_category", context: str = "full",
                          context_turns: int = 2) -> list[dict]:
    """Run the oracle against the simulated user; one demonstration per (dialogue, turn).

    Returns dicts {"prompt": chat messages the policy would see (under `context`, dialogue.py), "completion": the oracle's turn
    without `completion_prefix` (the engine pre-fills it), "group", "turn"}.
    """
    batch = DialogueBatch(profiles, user=user, max_turns=max_turns, seed=seed, group_by=group_by,
                          completion_prefix=completion_prefix, context=context, context_turns=context_turns)
    rng = random.Random(seed)
    asked: list[set[str]] = [set() for _ in profiles]  # questions each dialogue's oracle has asked
    out: list[dict] = []
    while not batch.done:
        prompts, groups = batch.policy_prompts(), batch.groups()
        texts = []
        for i in batch.active:
            revealed = batch.user.revealed(batch.states[i])
            last = tuple(revealed[-1]) if revealed else None
            text = oracle_turn(batch.user.revealed_profile(batch.states[i]), rng, last, asked[i])
            asked[i].update(questions(parse_turn(text).reply))
            if not text.startswith(completion_prefix):
                raise ValueError(f"completion_prefix {completion_prefix!r} is not a prefix of the oracle's "
                                 f"turns (they start with {text[:12]!r})")
            texts.append(text[len(completion_prefix):])
        for prompt, group, text in zip(prompts, groups, texts):
            out.append({"prompt": prompt, "completion": text, "group": group, "turn": batch.turn + 1})
        batch.step([[t] for t in texts])
    return out
