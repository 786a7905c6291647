"""What an evaluation has finished, kept on disk while it runs, so that a rerun after a fault (a remote
simulated user or judge that keeps failing) does not redo it.

`PartialResults(path, settings)` is the `parts=` store `Task.evaluate` takes: `get(key)` returns the part
an earlier attempt with the same `settings` kept under `key` (None otherwise), `put(key, part)` appends it
to the file, flushed and fsynced. The command removes the file (`finish()`) once its result is written.

File (JSON lines): the first line is {"settings": ...}; then one {"key": ..., "part": ...} per finished
part. A file written with other settings (another model, other eval keys) is started over; a last line cut
short by a crash is ignored. Simplification: settings are compared as JSON: the resolved config and the
weights folder with its files' sizes and modification times (`evaluation_settings`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fairalign.config import Config, to_dict
from fairalign.errors import EnvironmentFault, TrainingError


class PartialResults:
    """The finished parts of one evaluation (see the module docstring)."""

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.parts: dict[str, dict] = {}  # JSON of the key -> part
        self.reused = 0  # parts read back from an earlier attempt
        kept = self._read()
        if kept is not None:
            self.parts = kept
        else:  # none yet, or of other settings: start the file over
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"settings": self.settings}) + "\n")

    def _read(self) -> dict | None:
        try:
            lines = self.path.read_text().splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        try:
            if not lines or json.loads(lines[0]).get("settings") != self.settings:
                return None
        except (ValueError, AttributeError):
            return None
        parts = {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                parts[json.dumps(rec["key"])] = rec["part"]
            except (ValueError, KeyError, TypeError):
                break  # a line cut short by a crash, and anything after it
        return parts

    def get(self, key) -> dict | None:
        part = self.parts.get(json.dumps(key))
        if part is not None:
            self.reused += 1
        return part

    def put(self, key, part: dict) -> None:
        self.parts[json.dumps(key)] = part
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "part": part}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @property
    def examples(self) -> int:
        """Examples (profiles, prompts) in the kept parts."""
        return sum(int(p.get("examples", 0)) for p in self.parts.values())

    def finish(self) -> None:
        """The evaluation's result is written: the partial file is no longer needed."""
        self.path.unlink(missing_ok=True)

    def stopped(self, fault: EnvironmentFault, rerun: str) -> TrainingError:
        """The error of an evaluation that stopped on `fault`: the fault on the first line, what is kept and
        how to go on (`rerun`, e.g. "rerun the same command: fairalign eval runs/x") on the second."""
        return TrainingError(f"evaluation stopped: {fault}\n{self.examples} examples evaluated before it are kept "
                             f"in {self.path}; once it works again, {rerun}")


def evaluation_settings(cfg: Config, weights: str | None) -> dict:
    """What an evaluation's result depends on: the resolved config and the weights (folder, file sizes and
    modification times), as JSON."""
    files = {}
    if weights and Path(weights).is_dir():
        for p in sorted(Path(weights).iterdir()):
            if p.is_file():
                st = p.stat()
                files[p.name] = [st.st_size, st.st_mtime_ns]
    return {"config": to_dict(cfg), "weights": weights, "files": files}
