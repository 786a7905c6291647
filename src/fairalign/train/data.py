"""Prompt sampling with a resumable position: a seeded permutation per epoch over the training
examples; the position (epoch, offset) is saved in every checkpoint so a resumed run draws
exactly the prompts the uninterrupted run would have drawn."""
from __future__ import annotations

import random


class PromptSampler:
    def __init__(self, n_examples: int, seed: int, epoch: int = 0, offset: int = 0):
        if n_examples <= 0:
            raise ValueError("the task has no training examples")
        self.n = n_examples
        self.seed = seed
        self.epoch = epoch
        self.offset = offset
        self._order = self._permutation(epoch)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        """The next k example indices (wrapping into a new shuffled epoch as needed)."""
        out = []
        while len(out) < k:
            if self.offset >= self.n:
                self.epoch += 1
                self.offset = 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.offset])
            self.offset += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "n": self.n, "seed": self.seed}

    def load_state_dict(self, sd: dict) -> None:
        if sd["n"] != self.n:
            raise ValueError(f"the checkpoint was taken with {sd['n']} training examples, "
                             f"the task now has {self.n}")
        self.seed = sd["seed"]
        self.epoch = sd["epoch"]
        self.offset = sd["offset"]
        self._order = self._permutation(self.epoch)


def balanced_subset(groups: list, k: int) -> list[int]:
    """Up to k indices chosen round-robin across preference groups (in first-seen order within a
    group), so a held-out evaluation sees minorities as well as the majority."""
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    queues = [list(v) for _, v in sorted(by_group.items(), key=lambda kv: str(kv[0]))]
    out: list[int] = []
    limit = len(groups) if k <= 0 else min(k, len(groups))
    while len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return sorted(out)
