"""Prompts for RLPA: the policy's system prompt (the turn contract + one example), the role-play
prompt for LLM-simulated users, and the five-criteria prompt for the optional LLM judge."""

from __future__ import annotations

import json
from typing import Any

from .profile import SLOTS, Profile

POLICY_SYSTEM_PROMPT = """You are a friendly assistant chatting with a user you do not know yet. \
Learn about the user gradually and tailor your replies to what you have learned.

Every reply has exactly two parts, in this order, and nothing else:
<profile>{}</profile>
<response>Your reply to the user.</response>

In <profile>, write a JSON object with everything you have inferred about the user so far ({} \
while you know nothing). Use only these keys: "Age", "Gender", "Interests" (a list), "Education", \
"Personality Traits" (a list), "Occupation", "Marital Status", "Family Background", "Location", \
"Other" (a list). Include only what the user has told you; leave out what you do not know. \
In the response, write at most 3 short sentences, never repeat yourself, and either refer to \
something you know about the user or ask a question that helps you learn more about them.

Example:
User: Hi! I'm a nurse and I just got back from a long hike.
Assistant: <profile>{"Occupation": "nurse", "Interests": ["hiking"]}</profile>
<response>Welcome back, that sounds like a good break from nursing shifts! Where do you like to hike?</response>"""


USER_SYSTEM_PROMPT = """You are role-playing a person chatting with an AI assistant. This is \
who you are:
{profile}

Rules:
- You already opened the conversation by saying "Hello".
- Reply in one or two short, casual sentences, as this person would.
- Reveal at most one or two facts about yourself per reply, preferably what the assistant asked \
about. Never list your whole profile.
- Never state anything that is not in your profile; if asked about something else, say you'd \
rather not say or change the subject.
- If the assistant repeats itself, point it out. If it flatters you, react with mild skepticism.
- Never mention that you are role-playing or that you have a profile."""


def user_system_prompt(profile: Profile) -> str:
    """System prompt that makes an LLM role-play `profile`."""
    lines = []
    for slot in SLOTS:
        v = profile.get(slot)
        if isinstance(v, tuple):
            v = ", ".join(v) if v else None
        if v is not None:
            lines.append(f"- {slot}: {v}")
    return USER_SYSTEM_PROMPT.format(profile="\n".join(lines))


CRITERIA = ("natural", "relevant", "consistent", "engaging", "informative")

JUDGE_PROMPT = """You evaluate one reply of an AI assistant in a personalized conversation.

What the assistant believes about the user (its inferred profile):
{profile}

Conversation so far:
{history}

The assistant's new reply:
{reply}

Judge the reply on five criteria; each is true or false:
- natural: fluent, human-like, not robotic or overly long;
- relevant: fits the user's inferred profile and the conversation;
- consistent: does not contradict the profile or earlier turns;
- engaging: invites the user to keep talking;
- informative: adds something useful or asks something that helps know the user.

Answer with only a JSON object, for example:
{{"natural": true, "relevant": true, "consistent": true, "engaging": false, "informative": true}}"""


def judge_prompt(reply: str, inferred: Any, history: list[dict]) -> str:
    """The LLM judge's prompt for one reply."""
    convo = "\n".join(f"{m.get('role', '?').capitalize()}: {m.get('content', '')}"
                      for m in history if m.get("role") in ("user", "assistant")) or "(empty)"
    return JUDGE_PROMPT.format(profile=json.dumps(inferred or {}, ensure_ascii=False),
                               history=convo, reply=reply)
