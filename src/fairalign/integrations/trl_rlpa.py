"""RLPA inside TRL 1.16's GRPOTrainer: multi-turn personalized dialogue with a simulated user, through
TRL's `rollout_func` (docs/integrations.md, "RLPA inside GRPOTrainer").

    trainer = FairGRPOTrainer(model=..., args=FairGRPOConfig(..., pgrpo_group_column="rlpa_group"),
                              train_dataset=rlpa_dataset(get_profiles("train")),
                              reward_funcs=RLPA_REWARD_FUNCS, rollout_func=rlpa_rollout_func(max_turns=3))

TRL 1.16's rollout_func contract (`GRPOTrainer._generate`, `_generate_and_score_completions`):
- TRL calls `rollout_func(prompts, trainer)` once per generation batch on every process, with the
  "prompt" value of each row of that process's batch (nothing else of the rows). A training batch has
  N = per_device_train_batch_size x steps_per_generation rows (evaluation: per_device_eval_batch_size),
  and TRL's sampler repeats each dataset row num_generations (G) times in a row.
- It returns one entry per row, in the rows' order: "prompt_ids", "completion_ids" (token id lists)
  and "logprobs" (the sampler's per-token log-probs, or None: TRL then computes the behaviour
  log-probs itself where it needs them; only vLLM's importance-sampling correction needs them).
- Every other key is an extra field, one value per row, that TRL writes into its row
  (`row[key] = value`) before it calls the reward functions: they get it as a keyword argument, and
  a field named like a dataset column replaces that column's value, so FairGRPOTrainer's
  `pgrpo_group_column` reads it too.
- TRL's advantages normalize each block of G consecutive rows (of the batch gathered from all
  processes) together; fairalign's P-GRPO takes the same blocks as its prompt groups.

The mapping onto RLPA:
- A dataset row (`rlpa_dataset`) is one simulated user: "prompt" is its hidden profile as JSON (the
  policy never sees it: the rollout writes every turn's chat itself) and "rlpa_group" its
  preference group.
- The N/G prompt groups of a batch are D = N / (G*T) dialogues of T = max_turns turns: row r is
  candidate r mod G of turn (r div G) mod T of dialogue r div (G*T). Dialogue b is played with the
  profile of its first row (row b*G*T); the other rows of its block give their places to its later
  turns, so each batch draws D users (an epoch of TRL's sampler plays len(dataset) / T dialogues).
- Turn by turn, all D dialogues in lockstep (`DialogueBatch`): the chat so far (system prompt and
  visible history, through the tokenizer's chat template) followed by `completion_prefix` is the
  prompt of G candidates, sampled by TRL's own generation (`_generate_single_turn`: transformers
  `generate` with TRL's generation settings); each candidate is scored (profile F1 of its
  `<profile>` block + the judge's 0/1 verdict on its reply: a total in [0, 2]; a malformed turn
  scores 0) and the best one (highest total, first on ties) continues: the simulated user answers it.
- Extra fields of every row: rlpa_profile (the dialogue's profile JSON), rlpa_group, rlpa_dialogue,
  rlpa_turn (1-based), rlpa_candidate, rlpa_chosen (this candidate continued the dialogue),
  rlpa_profile_f1, rlpa_response, rlpa_format_ok and rlpa_total. `RLPA_REWARD_FUNCS` =
  (`rlpa_profile_reward`, `rlpa_response_reward`) hand the two parts to TRL, which sums them
  (reward weights 1, 1) into the RLPA reward and logs each as `rewards/<function>/mean`.
- Metrics (TRL's logs, averaged over the logging interval like TRL's own): `rlpa/format_ok` (share of
  well-formed candidates), `rlpa/chosen_total/turn_<t>` (mean total of the continuing candidates at
  turn t: 2 x AL(t)/100) and `rlpa/revealed` (share of profile items the user revealed by the end).

Resume: every dialogue starts and ends inside one generation batch, so none is in flight at a
checkpoint. What a resumed run needs is (1) P-GRPO's statistics per profile group, which
FairGRPOTrainer writes into every checkpoint (`fairalign_pgrpo.json`), and (2) the same simulated
users: the users' random choices are seeded from (args.seed, trainer.state.global_step, process
index), and TRL restores global_step, the weights, the sampler's position and the RNG states, so a
resumed run plays exactly the dialogues of the uninterrupted one. Evaluation dialogues take a seed
without the step, so every evaluation meets the same users.

Simplifications: no vLLM (`use_vllm=True` is refused: the rollout returns no sampling log-probs), no
tools or environments, no reward models (they would score the profile JSON; all three refused), no
multimodal prompts, no truncation of long dialogue prompts; the user and the judge are the
rules ones or OpenAI-compatible endpoints (`make_user`, `make_judge` specs); TRL's completions table
shows the profile JSON as each row's prompt.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from fairalign.envs.rlpa.dialogue import DialogueBatch
from fairalign.envs.rlpa.generator import profile_group
from fairalign.envs.rlpa.judge import make_judge
from fairalign.envs.rlpa.profile import Profile
from fairalign.envs.rlpa.prompts import POLICY_SYSTEM_PROMPT
from fairalign.envs.rlpa.user import make_user
from fairalign.errors import ConfigError

__all__ = ["RLPA_GROUP_COLUMN", "RLPA_FIELDS", "RLPA_REWARD_FUNCS", "RLPARollout", "rlpa_dataset",
           "rlpa_profile_reward", "rlpa_response_reward", "rlpa_rollout_func"]

RLPA_GROUP_COLUMN = "rlpa_group"
RLPA_FIELDS = ("rlpa_profile", "rlpa_group", "rlpa_dialogue", "rlpa_turn", "rlpa_candidate", "rlpa_chosen",
               "rlpa_profile_f1", "rlpa_response", "rlpa_format_ok", "rlpa_total")


def rlpa_dataset(profiles: Sequence[Profile], group_by: str = "occupation_category"):
    """A `datasets.Dataset` with one row per simulated user: "prompt" (the profile as JSON, with its
    id) and "rlpa_group" (its preference group; the rollout writes the same with its own group_by)."""
    from datasets import Dataset

    if not profiles or not all(isinstance(p, Profile) for p in profiles):
        raise ConfigError("rlpa_dataset: profiles must be a non-empty list of fairalign Profile objects "
                          "(e.g. fairalign.envs.rlpa.get_profiles('train') or load_profiles_jsonl(path))")
    try:
        rows = [{"prompt": p.to_json(include_id=True), RLPA_GROUP_COLUMN: profile_group(p, group_by)} for p in profiles]
    except ValueError as exc:
        raise ConfigError(f"rlpa_dataset: group_by={group_by!r}: {exc}") from None
    return Dataset.from_list(rows)


def _field(kwargs: dict, name: str, reward: str) -> list[float]:
    if name not in kwargs:
        raise ConfigError(f"{reward} needs the field {name!r} that rlpa_rollout_func returns: pass "
                          f"rollout_func=rlpa_rollout_func(...) to the trainer")
    return [float(v) for v in kwargs[name]]


def rlpa_profile_reward(completions, **kwargs) -> list[float]:
    """Profile F1 in [0, 1] of each turn's `<profile>` block against the user's true profile (0 if malformed)."""
    return _field(kwargs, "rlpa_profile_f1", "rlpa_profile_reward")


def rlpa_response_reward(completions, **kwargs) -> list[float]:
    """The judge's 0/1 verdict on each turn's reply (0 if malformed)."""
    return _field(kwargs, "rlpa_response", "rlpa_response_reward")


RLPA_REWARD_FUNCS = [rlpa_profile_reward, rlpa_response_reward]


class RLPARollout:
    """TRL rollout_func playing RLPA dialogues (see the module docstring for the mapping).
    `last_dialogues` is the DialogueBatch of the current / last batch (records, transcripts)."""

    def __init__(self, max_turns: int = 3, user: Any = "rules", judge: Any = "rules",
                 group_by: str = "occupation_category", completion_prefix: str = "<profile>",
                 system_prompt: str = POLICY_SYSTEM_PROMPT, matcher: Any = None):
        if not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1:
            raise ConfigError(f"rlpa_rollout_func: max_turns must be an integer >= 1, got {max_turns!r}")
        if not isinstance(completion_prefix, str):
            raise ConfigError(f"rlpa_rollout_func: completion_prefix must be a string, got {completion_prefix!r}")
        try:
            self.user, self.judge = make_user(user), make_judge(judge)
            profile_group(Profile(age=30), group_by)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"rlpa_rollout_func: {exc}") from None
        self.max_turns, self.group_by = max_turns, group_by
        self.completion_prefix, self.system_prompt, self.matcher = completion_prefix, system_prompt, matcher
        self.last_dialogues: DialogueBatch | None = None

    # ------------------------------------------------------------------ TRL's entry point
    def __call__(self, prompts: list, trainer) -> dict:
        mode = "train" if trainer.model.training else "eval"
        G = trainer.num_generations if mode == "train" else trainer.num_generations_eval
        T = self.max_turns
        profiles = self._profiles(prompts, trainer, mode, G)
        D = len(profiles)
        db = DialogueBatch(profiles, user=self.user, judge=self.judge, max_turns=T, seed=self._seed(trainer, mode),
                           system_prompt=self.system_prompt, matcher=self.matcher, group_by=self.group_by,
                           completion_prefix=self.completion_prefix)
        self.last_dialogues = db
        turns = []  # per turn: (prompt ids [D*G], completion ids [D*G], scores [D][G], best [D])
        while not db.done:
            chat_ids = [ids for ids in self._chat_ids(trainer, db.policy_prompts()) for _ in range(G)]  # [D*G]
            completion_ids, _ = trainer._generate_single_turn(chat_ids, None, {}, G)  # [D*G] token id lists
            texts = trainer.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            candidates = [texts[d * G:(d + 1) * G] for d in range(D)]
            scores = db.score(candidates)
            best = db.best(scores)
            db.advance([c[j] for c, j in zip(candidates, best)])
            turns.append((chat_ids, completion_ids, scores, best))
        self._log(trainer, mode, turns, db)
        return self._rows(turns, profiles, D, G)

    # ------------------------------------------------------------------ helpers
    def _profiles(self, prompts: list, trainer, mode: str, G: int) -> list[Profile]:
        """The profile of each dialogue: the first row of each block of G*T rows."""
        if trainer.use_vllm:
            raise ConfigError("rlpa_rollout_func samples with TRL's transformers generation and returns no sampling "
                              "log-probs: use_vllm=True is not supported; set use_vllm=False")
        if trainer.tools or trainer.environment_factories is not None:
            raise ConfigError("rlpa_rollout_func: tools and environment_factory are not supported with RLPA "
                              "(the simulated user answers every turn); pass neither")
        models = [name for f, name in zip(trainer.reward_funcs, trainer.reward_func_names)
                  if isinstance(f, torch.nn.Module)]
        if models:
            raise ConfigError(f"rlpa_rollout_func: reward model {models[0]!r} would score the profile JSON in each "
                              f"row's prompt, not the dialogue; use RLPA_REWARD_FUNCS or functions of the rlpa_* "
                              f"fields")
        n, block = len(prompts), G * self.max_turns
        if n == 0 or n % block:
            sizes = ("per_device_train_batch_size x steps_per_generation" if mode == "train"
                     else "per_device_eval_batch_size")
            raise ConfigError(f"rlpa_rollout_func: a {mode} generation batch of {n} rows per process ({sizes}) must "
                              f"hold whole dialogues of max_turns={self.max_turns} turns x num_generations={G} "
                              f"candidates = {block} rows; make it a multiple of {block}")
        for k in range(0, n, G):
            if any(p != prompts[k] for p in prompts[k:k + G]):
                raise ConfigError(f"rlpa_rollout_func: rows {k}..{k + G - 1} of the batch are not one dataset row "
                                  f"repeated num_generations={G} times (TRL's RepeatSampler does that)")
        out = []
        for k in range(0, n, block):
            try:
                out.append(Profile.from_json(prompts[k]))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"rlpa_rollout_func: a dataset prompt is not a profile's JSON ({exc}); build the "
                                  f"dataset with rlpa_dataset(profiles)") from None
        return out

    def _seed(self, trainer, mode: str) -> int:
        step = trainer.state.global_step if mode == "train" else -1
        key = f"{trainer.args.seed}:{mode}:{step}:{trainer.accelerator.process_index}"
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")

    def _chat_ids(self, trainer, chats: list[list[dict]]) -> list[list[int]]:
        """Token ids of each chat with the generation prompt and `completion_prefix` appended."""
        tok = trainer.processing_class
        kwargs = getattr(trainer, "chat_template_kwargs", None) or {}
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True, **kwargs) for c in chats]
        return [tok(t + self.completion_prefix, add_special_tokens=False)["input_ids"] for t in texts]

    def _rows(self, turns: list, profiles: list[Profile], D: int, G: int) -> dict:
        out: dict[str, Any] = {"prompt_ids": [], "completion_ids": [], "logprobs": None, **{f: [] for f in RLPA_FIELDS}}
        for b in range(D):
            profile = profiles[b].to_json(include_id=True)
            group = profile_group(profiles[b], self.group_by)
            for t, (chat_ids, completion_ids, scores, best) in enumerate(turns):
                for g in range(G):
                    sc = scores[b][g]
                    out["prompt_ids"].append(chat_ids[b * G + g])
                    out["completion_ids"].append(completion_ids[b * G + g])
                    for name, value in (("rlpa_profile", profile), ("rlpa_group", group), ("rlpa_dialogue", b),
                                        ("rlpa_turn", t + 1), ("rlpa_candidate", g), ("rlpa_chosen", g == best[b]),
                                        ("rlpa_profile_f1", float(sc["profile"])),
                                        ("rlpa_response", float(sc["response"])),
                                        ("rlpa_format_ok", bool(sc["format_ok"])), ("rlpa_total", float(sc["total"]))):
                        out[name].append(value)
        return out

    def _log(self, trainer, mode: str, turns: list, db: DialogueBatch) -> None:
        """Sums over this process, gathered over all processes (every process calls the rollout)."""
        flat = [s for _, _, scores, _ in turns for row in scores for s in row]
        chosen = [sum(scores[d][best[d]]["total"] for d in range(len(best))) for _, _, scores, best in turns]  # [T]
        last = [r for r in db.records if r["turn"] == db.turn]
        revealed = sum(r["n_revealed"] / max(r["n_items"], 1) for r in last)
        local = torch.tensor([sum(bool(s["format_ok"]) for s in flat), len(flat), len(db), revealed, *chosen],
                             dtype=torch.float64, device=trainer.accelerator.device)  # [4 + T]
        tot = trainer.accelerator.gather(local).view(-1, local.numel()).sum(0).tolist()  # [4 + T]
        metrics = trainer._metrics[mode]
        metrics["rlpa/format_ok"].append(tot[0] / tot[1])
        metrics["rlpa/revealed"].append(tot[3] / tot[2])
        for t, total in enumerate(tot[4:]):
            metrics[f"rlpa/chosen_total/turn_{t + 1}"].append(total / tot[2])


def rlpa_rollout_func(max_turns: int = 3, user: Any = "rules", judge: Any = "rules",
                      group_by: str = "occupation_category", completion_prefix: str = "<profile>",
                      system_prompt: str = POLICY_SYSTEM_PROMPT, matcher: Any = None) -> RLPARollout:
    """A TRL 1.16 `rollout_func` that plays RLPA dialogues of `max_turns` turns.

    user / judge: "rules" (default), or an OpenAI-compatible endpoint such as
    {"backend": "openai", "base_url": "http://localhost:8000/v1", "model": "...", "api_key_env": None}
    (fairalign.envs.rlpa.make_user / make_judge specs, or instances). group_by: the profile's
    preference group for P-GRPO (occupation_category | cluster | a slot name). completion_prefix:
    text appended to every prompt, so each completion continues it ("<profile>" starts the turn format)."""
    return RLPARollout(max_turns=max_turns, user=user, judge=judge, group_by=group_by,
                       completion_prefix=completion_prefix, system_prompt=system_prompt, matcher=matcher)
