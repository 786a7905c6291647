"""RLPA environment: profiles, simulated users, turn parsing, rewards and batched dialogues.

See docs/rlpa.md. The trainer-facing entry point is `DialogueBatch`; evaluation uses
`run_dialogues` and `fairalign.eval.dialogue_metrics`.
"""

from .backends import BackendError, HFChat, OpenAIChat
from .dialogue import DialogueBatch, DialogueRun, run_dialogues
from .generator import (
    OCCUPATION_CATEGORIES,
    generate_profile,
    generate_profiles,
    get_profiles,
    life_stage_cluster,
    occupation_category,
    profile_group,
    split_profiles,
)
from .judge import LLMJudge, make_judge, parse_verdict
from .parser import ParsedTurn, parse_turn, strip_tags
from .profile import (
    LIST_SLOTS,
    SLOTS,
    Profile,
    canonical_slot,
    coerce_inferred,
    load_profiles_jsonl,
    save_profiles_jsonl,
)
from .prompts import POLICY_SYSTEM_PROMPT, user_system_prompt
from .rewards import (
    EmbeddingMatcher,
    RulesJudge,
    normalize_value,
    profile_f1,
    profile_prf,
    score_turns,
)
from .user import LLMUser, RulesUser, SimulatedUser, make_user

__all__ = [
    "BackendError", "HFChat", "OpenAIChat",
    "DialogueBatch", "DialogueRun", "run_dialogues",
    "OCCUPATION_CATEGORIES", "generate_profile", "generate_profiles", "get_profiles",
    "life_stage_cluster", "occupation_category", "profile_group", "split_profiles",
    "LLMJudge", "make_judge", "parse_verdict",
    "ParsedTurn", "parse_turn", "strip_tags",
    "LIST_SLOTS", "SLOTS", "Profile", "canonical_slot", "coerce_inferred", "load_profiles_jsonl",
    "save_profiles_jsonl",
    "POLICY_SYSTEM_PROMPT", "user_system_prompt",
    "EmbeddingMatcher", "RulesJudge", "normalize_value", "profile_f1", "profile_prf", "score_turns",
    "LLMUser", "RulesUser", "SimulatedUser", "make_user",
]

from .task import make_task  # noqa: E402  (registers the `rlpa` task for fairalign train)

__all__ += ["make_task"]
