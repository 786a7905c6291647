"""The exit-code contract, below every layer: what a command prints and how it exits.

- `ConfigError` — bad input (an unknown key, a bad value, an unknown name, unreadable data, a run
  directory that does not fit the command). The CLI prints one line `fairalign: error: ...` and exits 2.
- `TrainingError` — the run cannot continue (repeated non-finite updates, a full disk, a remote user
  or judge that keeps failing); a resumable checkpoint was written where one could be. It says what
  failed and how to resume, exit 1.
- `EnvironmentFault` — a service a task depends on failed after its retries (raised by the task layer;
  the trainer and the evaluators turn it into a TrainingError with a checkpoint and a resume hint).
- `StopRequested` — the run stopped on a signal after writing a checkpoint; exit 128 + the signal.
Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad key, value or name in the configuration (the CLI prints it as one line, exit code 2)."""


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. repeated non-finite updates); a checkpoint was written."""


class StopRequested(RuntimeError):
    """The run stopped on a signal after writing a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class EnvironmentFault(RuntimeError):
    """A service a task depends on (a remote simulated user or judge, a reward server) still fails after
    its retries. The message names the role, the endpoint and the fault, never a credential. The trainer
    turns it into a TrainingError after checkpointing the last completed step."""
