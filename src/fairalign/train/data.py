"""Prompt sampling with a resumable position: a seeded permutation per epoch over the training
examples; the position (epoch, offset) is saved in every checkpoint so a resumed run draws
exactly the prompts the uninterrupted run would have drawn."""
from __future__ import annotations

import random

from fairalign.errors import ConfigError


class PromptSampler:
    def __init__(self, n_examples: int, seed: int, epoch: int = 0, offset: int = 0):
        if n_examples <= 0:
            raise ConfigError("the task has no training examples")
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
            raise ConfigError(f"the checkpoint was taken with {sd['n']} training examples, "
                             f"the task now has {self.n}")
        self.seed = sd["seed"]
        self.epoch = sd["epoch"]
        self.offset = sd["offset"]
        self._order = self._permutation(self.epoch)
