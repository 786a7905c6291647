"""The driver-side P-GRPO state of one verl run: fairalign's `pgrpo` estimator, each prompt's
preference group, and the file that carries both through a verl checkpoint.

verl 0.9.1 calls an advantage estimator with `token_level_rewards`, `response_mask`, `config`
(the `algorithm` section) and `index` (`non_tensor_batch["uid"]`, one uuid per prompt), and only
GDPO gets `non_tensor_batch`. So no dataset column reaches the estimator; the group is recorded
*by uid* when verl's v1 trainer fetches a batch from the dataloader (`install_group_recorder` wraps
`PPOTrainer._fetch_one_gen_batch`, which creates the uids), and looked up by uid in the estimator.
Both run in the trainer's process (verl's TaskRunner), where this module's `DRIVER` lives.

Simplifications: one run per process (`DRIVER` is a module-level object); a uid's group is dropped
once its batch got advantages, and at most `MAX_PENDING` groups are held (the oldest go first: prompts
that never reached an advantage step, e.g. failed rollouts); groups must be JSON values (str, int,
float, bool, or lists of them) so the state is a JSON file.
"""
from __future__ import annotations

import itertools
import json
import os
from typing import Any, Iterable

import torch

from fairalign.algos import ESTIMATOR_REGISTRY, LOCAL, build_estimator

STATE_FILE = "fairalign_pgrpo.json"
STATE_FORMAT = "fairalign.verl.pgrpo/1"
GROUP_KEY = "pgrpo_group_key"  # algorithm.pgrpo_group_key: the dataset column holding the preference group
MAX_PENDING = 1 << 18
_SPEC = ESTIMATOR_REGISTRY["pgrpo"]
# algorithm.<key> -> fairalign hyperparameter, derived from fairalign's registry (algorithm.pgrpo_min_count, ...)
HPARAM_KEYS = {_SPEC.config_prefix + name: name for name in _SPEC.hparams}


def _keys(config: Any) -> list[str]:
    return [] if config is None else [str(k) for k in config.keys()]


def read_hparams(config: Any) -> dict[str, Any]:
    """fairalign's pgrpo hyperparameters from verl's `algorithm` config (DictConfig, AlgoConfig, dict
    or None); a `pgrpo_*` key that is not one of them is an error naming it."""
    unknown = [k for k in _keys(config) if k.startswith(_SPEC.config_prefix)
               and k not in HPARAM_KEYS and k != GROUP_KEY]
    if unknown:
        raise ValueError(f"unknown algorithm.{unknown[0]}; P-GRPO keys: "
                         + ", ".join(f"algorithm.{k}" for k in (GROUP_KEY, *HPARAM_KEYS)))
    hp = dict(_SPEC.hparams)
    for key, name in HPARAM_KEYS.items():
        if config is not None and config.get(key) is not None:
            hp[name] = config.get(key)
    return hp


def group_key(config: Any) -> str:
    key = None if config is None else config.get(GROUP_KEY)
    if not isinstance(key, str) or not key:
        raise ValueError(f"algorithm.adv_estimator=pgrpo needs +algorithm.{GROUP_KEY}=<dataset column> "
                         f"(or extra_info.<key>): the preference group of each prompt")
    return key


def _hashable(value: Any) -> Any:
    """numpy scalars -> Python scalars, lists -> tuples (a group must be a dict key and JSON)."""
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1:  # a numpy array (a parquet list column)
        return _hashable(value.tolist())
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(f"a preference group must be a str, number, bool or list of them, got "
                     f"{type(value).__name__} {value!r}")


def read_groups(batch: Any, key: str) -> list:
    """The preference group of every row of `batch`: column `key`, or `head.field` of a column of
    dicts (verl's `extra_info`). `batch` is a verl TensorDict or a dict of arrays (non_tensor_batch)."""
    names = [str(k) for k in batch.keys()]
    head, _, field = key.partition(".")
    if key in names:
        return [_hashable(v) for v in list(batch[key])]
    if field and head in names:
        rows = list(batch[head])
        missing = [i for i, row in enumerate(rows) if not isinstance(row, dict) or field not in row]
        if missing:
            raise ValueError(f"algorithm.{GROUP_KEY}={key}: row {missing[0]} of column {head!r} has no "
                             f"field {field!r}")
        return [_hashable(row[field]) for row in rows]
    raise ValueError(f"algorithm.{GROUP_KEY}={key}: the batch has no such column; columns: {', '.join(names)}")


def prompt_ids(index: Iterable) -> torch.Tensor:
    """verl's `index` (one uid per row, repeated rollout.n times) -> prompt ids [N] long, in order of appearance."""
    ids: dict = {}
    return torch.tensor([ids.setdefault(u, len(ids)) for u in index], dtype=torch.long)


class PGRPODriver:
    """fairalign's pgrpo estimator plus the uid -> preference group table of one verl run."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new run in the same process)."""
        self.estimator = None
        self.hparams: dict | None = None
        self.pending: dict[str, Any] = {}  # uid -> group, recorded at fetch, dropped after use

    def configure(self, config: Any):
        """The estimator for these `algorithm` settings (built on first use; the same settings after)."""
        hp = read_hparams(config)
        if self.estimator is None:
            try:
                self.estimator = build_estimator("pgrpo", **hp)
            except ValueError as exc:
                raise ValueError(f"algorithm.pgrpo_*: {exc}") from None
            self.hparams = hp
        elif hp != self.hparams:
            raise ValueError(f"P-GRPO settings changed within one run: {self.hparams} -> {hp}")
        return self.estimator

    def record(self, uids: list, groups: list) -> None:
        """Remember each fetched prompt's group (called when verl fetches a batch)."""
        if len(uids) != len(groups):
            raise ValueError(f"{len(uids)} uids but {len(groups)} preference groups")
        for uid, group in zip(uids, groups):
            self.pending[str(uid)] = group
        excess = len(self.pending) - MAX_PENDING
        for uid in list(itertools.islice(self.pending, max(excess, 0))):
            del self.pending[uid]

    def groups_for(self, index: Iterable) -> list:
        """The recorded group of each row's uid; a uid never recorded is an error saying why."""
        uids = [str(u) for u in index]
        missing = [u for u in uids if u not in self.pending]
        if missing:
            raise ValueError(f"adv_estimator=pgrpo: no preference group recorded for {len(set(missing))} prompt(s) "
                             f"of this batch (uid {missing[0]}). Groups are recorded by "
                             f"trainer.checkpoint_callback_class=fairalign.integrations.verl.PGRPOCheckpointCallback "
                             f"when verl's v1 trainer (trainer.use_v1=true) fetches a batch")
        return [self.pending[u] for u in uids]

    def advantages(self, scores: torch.Tensor, index: Iterable, groups: list | None, config: Any) -> torch.Tensor:
        """Sequence advantages [N] for sequence rewards `scores` [N]; `groups` None = the recorded ones."""
        est = self.configure(config)
        index = list(index)
        from_table = groups is None
        if from_table:
            groups = self.groups_for(index)
        adv = est(scores, prompt_ids(index).to(scores.device), groups, LOCAL)  # [N]
        if from_table:
            for uid in {str(u) for u in index}:
                self.pending.pop(uid, None)
        return adv

    def metrics(self) -> dict[str, float]:
        return {} if self.estimator is None else self.estimator.metrics()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "hparams": self.hparams,
                "estimator": None if self.estimator is None else self.estimator.state_dict(),
                "pending": [[uid, group] for uid, group in self.pending.items()]}

    def load_state_dict(self, state: dict, config: Any) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a fairalign P-GRPO state (format {STATE_FORMAT!r})")
        est = self.configure(config)
        if state["estimator"] is not None:
            est.load_state_dict(state["estimator"])
        self.pending = {str(uid): _hashable(group) for uid, group in state["pending"]}

    def save(self, folder: str) -> str:
        """Write the state to `folder`/fairalign_pgrpo.json (atomically); returns the path."""
        path = os.path.join(folder, STATE_FILE)
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state_dict(), f)
        os.replace(tmp, path)
        return path

    def load(self, folder: str, config: Any) -> None:
        path = os.path.join(folder, STATE_FILE)
        if not os.path.exists(path):
            raise ValueError(f"resuming {folder} with algorithm.adv_estimator=pgrpo, but it holds no {STATE_FILE} "
                             f"(saved without fairalign's PGRPOCheckpointCallback?); set trainer.resume_mode=disable "
                             f"to start P-GRPO's statistics from scratch")
        with open(path) as f:
            self.load_state_dict(json.load(f), config)


def install_group_recorder(trainer_cls: type, driver: PGRPODriver) -> None:
    """Wrap `trainer_cls._fetch_one_gen_batch` (verl's v1 PPOTrainer: it returns the dataloader's batch
    with fresh uids) so that every fetched prompt's group is recorded in `driver`. Idempotent."""
    fetch = trainer_cls._fetch_one_gen_batch
    if getattr(fetch, "_fairalign_records_groups", False):
        return

    def fetch_and_record(self):
        batch = fetch(self)
        algo = self.config.algorithm
        if algo.get("adv_estimator") == "pgrpo":
            driver.record(list(batch["uid"]), read_groups(batch, group_key(algo)))
        return batch

    fetch_and_record._fairalign_records_groups = True
    fetch_and_record.__doc__ = fetch.__doc__
    trainer_cls._fetch_one_gen_batch = fetch_and_record


DRIVER = PGRPODriver()
