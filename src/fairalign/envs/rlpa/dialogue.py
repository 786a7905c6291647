"""Batched RLPA dialogues, engine-agnostic: the environment side of the rollout.

    batch = DialogueBatch(profiles, user="rules", judge="rules", max_turns=10, seed=0)
    while not batch.done:
        prompts = batch.policy_prompts()            # N chat-message lists (system + history)
        cands = <policy samples G texts per prompt>  # list[list[str]], [N][G]
        scores = batch.score(cands)                 # [N][G] dicts: total, profile, response, ...
        batch.advance([c[i] for c, i in zip(cands, batch.best(scores))])

Every (prompt, candidate) pair is an independent training sample with its own reward (no credit
across turns); the best candidate (highest total, first on ties) continues the dialogue. The
user only sees the reply part of the chosen turn (the `<profile>` block is dropped; a malformed
turn is shown with its tags stripped). All dialogues move in lockstep: turn k of every dialogue
is scored in one batch, and the simulated user answers all of them in one batched call.

What the policy sees (`context`): "full" (default) is the system prompt and the whole visible
conversation. "recent" is the system prompt and the last `context_turns` exchanges (assistant turn,
user answer), the latest assistant turn written out whole, `<profile>` block included, with the
profile the policy last stated in a well-formed turn (`{}` before any): the policy restates its
inferred profile every turn, so that block carries what it learned before the window, and the prompt
stops growing with the turn. The user, the judge's repeat gate and the rewards always see the whole
dialogue.
`run_dialogues` drives the same loop with a `policy_fn` (evaluation, tests).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .metrics import alignment_by_turn, dialogue_metrics
from .generator import profile_group
from .judge import make_judge
from .parser import parse_turn, strip_tags
from .profile import Profile
from .prompts import POLICY_SYSTEM_PROMPT
from .rewards import Matcher, score_turns
from .user import make_user


class DialogueBatch:
    """N dialogues (profile, simulated-user state, visible history) advanced turn by turn."""

    def __init__(self, profiles: Sequence[Profile], user: Any = "rules", judge: Any = "rules",
                 max_turns: int = 10, seed: int = 0, system_prompt: str = POLICY_SYSTEM_PROMPT,
                 matcher: Matcher | None = None, group_by: str = "occupation_category",
                 completion_prefix: str = "", context: str = "full", context_turns: int = 2):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {', '.join(CONTEXTS)}, got {context!r}")
        if not isinstance(context_turns, int) or isinstance(context_turns, bool) or context_turns < 1:
            raise ValueError(f"context_turns must be an integer >= 1, got {context_turns!r}")
        if not profiles:
            raise ValueError("profiles must be a non-empty list of Profile")
        self.profiles = list(profiles)
        self.user = make_user(user)
        self.judge = make_judge(judge)
        self.max_turns, self.seed = max_turns, seed
        self.system_prompt, self.matcher, self.group_by = system_prompt, matcher, group_by
        # Text the engine pre-fills at the start of every assistant turn (e.g. "<profile>{"); it is
        # prepended to each candidate before parsing, since the candidates hold only what was sampled.
        self.completion_prefix = completion_prefix
        self.context, self.context_turns = context, context_turns
        # The JSON object of the profile each dialogue's policy last stated in a well-formed turn ("recent").
        self.stated: list[dict] = [{} for _ in self.profiles]
        self.states = self.user.start(self.profiles, seed)
        # Visible conversation of each dialogue (no system prompt): starts with the user's "Hello".
        self.histories: list[list[dict]] = [[{"role": "user", "content": self.user.opening}]
                                            for _ in self.profiles]
        self.turn = 0  # assistant turns completed (the same for every dialogue)
        self.records: list[dict] = []  # one per dialogue per turn (see advance)
        self._last: tuple[list[list[str]], list[list[dict]]] | None = None

    def __len__(self) -> int:
        return len(self.profiles)

    @property
    def done(self) -> bool:
        return self.turn >= self.max_turns

    @property
    def active(self) -> list[int]:
        """Indices of the dialogues still running (all of them until max_turns, then none)."""
        return [] if self.done else list(range(len(self.profiles)))

    def policy_prompts(self) -> list[list[dict]]:
        """Chat messages per active dialogue: the system prompt, then the whole visible conversation
        (context "full") or its last `context_turns` exchanges with the latest assistant turn written out
        whole (context "recent"; see the module docstring)."""
        return [self._policy_prompt(i) for i in self.active]

    def _policy_prompt(self, i: int) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}]
        history = self.histories[i]  # user "Hello", then (assistant, user) per completed turn
        if self.context == "full" or self.turn == 0:
            return system + [dict(m) for m in history]
        tail = [dict(m) for m in history[-2 * self.context_turns:]]  # whole history while it is shorter
        tail[-2]["content"] = render_turn(self.stated[i], tail[-2]["content"])  # the latest assistant turn
        return system + tail

    def groups(self) -> list[str]:
        """Preference group (P-GRPO) of each active dialogue."""
        return [profile_group(self.profiles[i], self.group_by) for i in self.active]

    def score(self, candidates: Sequence[Sequence[str]]) -> list[list[dict]]:
        """Score G candidate texts per active dialogue -> [N][G] reward dicts.

        Each dict: total, profile, response, format_ok, reason, profile_pred (the parsed inferred
        profile or None), reply, plus dialogue, turn (1-based) and candidate indices.
        """
        active = self.active
        if len(candidates) != len(active):
            raise ValueError(f"candidates must have one list per active dialogue ({len(active)}), "
                             f"got {len(candidates)}")
        flat_texts, flat_truth, flat_hist = [], [], []
        for i, cands in zip(active, candidates):
            if isinstance(cands, str):
                raise ValueError("candidates must be a list of lists of strings, got a list of strings")
            for text in cands:
                flat_texts.append(self.completion_prefix + text)
                flat_truth.append(self.profiles[i])
                flat_hist.append(self.histories[i])
        flat = score_turns(flat_texts, flat_truth, flat_hist, self.judge, self.matcher)
        out: list[list[dict]] = []
        pos = 0
        for i, cands in zip(active, candidates):
            row = []
            for j in range(len(cands)):
                rec = flat[pos]
                rec.update(dialogue=i, turn=self.turn + 1, candidate=j)
                row.append(rec)
                pos += 1
            out.append(row)
        self._last = ([list(c) for c in candidates], out)
        return out

    @staticmethod
    def best(scores: Sequence[Sequence[dict]]) -> list[int]:
        """Index of the highest-total candidate per dialogue (first one on ties)."""
        out = []
        for row in scores:
            if not row:
                raise ValueError("every active dialogue needs at least one candidate")
            out.append(max(range(len(row)), key=lambda j: (row[j]["total"], -j)))
        return out

    def advance(self, chosen: Sequence[str]) -> list[str]:
        """Continue every active dialogue with its chosen candidate; returns the users' answers.

        Appends the chosen turn's visible reply and (unless this was the last turn) the simulated
        user's answer, logs one record per dialogue in `self.records`, and counts the turn.
        """
        active = self.active
        if not active:
            raise ValueError("all dialogues are finished (max_turns reached)")
        if len(chosen) != len(active):
            raise ValueError(f"chosen must have one text per active dialogue ({len(active)}), got {len(chosen)}")
        recs = self._chosen_records(active, chosen)
        visible = []
        for i, text in zip(active, chosen):
            full = self.completion_prefix + text
            parsed = parse_turn(full)
            visible.append((parsed.reply if parsed.ok else strip_tags(full)) or "")
            if parsed.ok:
                self.stated[i] = parsed.raw_profile
            self.histories[i].append({"role": "assistant", "content": visible[-1]})
        last_turn = self.turn + 1 >= self.max_turns
        answers = [""] * len(active)
        if not last_turn:
            answers = self.user.reply([self.states[i] for i in active], [self.histories[i] for i in active])
            for i, a in zip(active, answers):
                self.histories[i].append({"role": "user", "content": a})
        for i, rec, shown, a in zip(active, recs, visible, answers):
            self.records.append({
                "dialogue": i, "profile_id": self.profiles[i].id,
                "group": profile_group(self.profiles[i], self.group_by), "turn": self.turn + 1,
                "total": rec["total"], "profile": rec["profile"], "response": rec["response"],
                "format_ok": rec["format_ok"], "reason": rec["reason"], "chosen": rec.get("candidate"),
                "candidate_totals": rec.get("candidate_totals"), "reply": shown,
                "user_reply": None if last_turn else a,
                "n_revealed": len(self.user.revealed(self.states[i])),
                "n_items": len(self.profiles[i].items()),
            })
        self.turn += 1
        self._last = None
        return answers

    def _chosen_records(self, active: list[int], chosen: Sequence[str]) -> list[dict]:
        """Reward record of each chosen text: from the last score() call, or scored now."""
        recs: list[dict | None] = [None] * len(active)
        if self._last is not None:
            cands, scores = self._last
            for k, text in enumerate(chosen):
                if text in cands[k]:
                    j = cands[k].index(text)
                    recs[k] = dict(scores[k][j], candidate_totals=[s["total"] for s in scores[k]])
        missing = [k for k, r in enumerate(recs) if r is None]
        if missing:
            fresh = score_turns([self.completion_prefix + chosen[k] for k in missing], [self.profiles[active[k]] for k in missing],
                                [self.histories[active[k]] for k in missing], self.judge, self.matcher)
            for k, r in zip(missing, fresh):
                recs[k] = r
        return recs  # type: ignore[return-value]

    def step(self, candidates: Sequence[Sequence[str]]) -> list[list[dict]]:
        """score + pick the best per dialogue + advance; returns the scores."""
        scores = self.score(candidates)
        self.advance([c[j] for c, j in zip(candidates, self.best(scores))])
        return scores

    def transcripts(self) -> list[list[dict]]:
        """The visible conversations (no system prompt)."""
        return [[dict(m) for m in h] for h in self.histories]


CONTEXTS = ("full", "recent")


def render_turn(profile: dict, reply: str) -> str:
    """An assistant turn in the contract's form, as the oracle writes it: `<profile>{JSON}</profile>`,
    a newline, `<response>reply</response>`."""
    return f"<profile>{json.dumps(profile, ensure_ascii=False)}</profile>\n<response>{reply}</response>"


PolicyFn = Callable[[list[list[dict]], int], list[list[str]]]


@dataclass
class DialogueRun:
    """What `run_dialogues` returns."""

    records: list[dict]
    transcripts: list[list[dict]]
    al_by_turn: list[float]  # AL(k) x 100, fairalign's choice: mean total / 2
    profile_f1_by_turn: list[float]  # mean profile F1 x 100
    response_by_turn: list[float]  # judge pass rate x 100
    metrics: dict[str, float] = field(default_factory=dict)  # avg, n_ir, n_r2 (needs >= 2 turns)


def run_dialogues(policy_fn: PolicyFn, profiles: Sequence[Profile], user: Any = "rules",
                  judge: Any = "rules", max_turns: int = 10, G: int = 1, seed: int = 0,
                  matcher: Matcher | None = None, system_prompt: str = POLICY_SYSTEM_PROMPT,
                  completion_prefix: str = "", context: str = "full", context_turns: int = 2) -> DialogueRun:
    """Run full dialogues: policy_fn(prompts, G) -> G candidate texts per prompt; best continues."""
    if G < 1:
        raise ValueError(f"G must be >= 1, got {G}")
    batch = DialogueBatch(profiles, user=user, judge=judge, max_turns=max_turns, seed=seed,
                          system_prompt=system_prompt, matcher=matcher, completion_prefix=completion_prefix,
                          context=context, context_turns=context_turns)
    while not batch.done:
        prompts = batch.policy_prompts()
        cands = policy_fn(prompts, G)
        if len(cands) != len(prompts) or any(len(c) != G for c in cands):
            raise ValueError(f"policy_fn must return {G} candidate(s) for each of the {len(prompts)} prompts")
        batch.step(cands)
    recs = batch.records
    al = alignment_by_turn(recs, "total")
    return DialogueRun(records=recs, transcripts=batch.transcripts(), al_by_turn=al,
                       profile_f1_by_turn=alignment_by_turn(recs, "profile"),
                       response_by_turn=alignment_by_turn(recs, "response"),
                       metrics=dialogue_metrics(al) if len(al) >= 2 else {})
