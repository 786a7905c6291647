"""One live run per output directory: an exclusive `flock` on `<output_dir>/.fairalign.lock`.

The operating system releases the lock when the process holding it exits, however it exits, so a
killed run never leaves a stale lock that blocks `--resume`. The file holds the holder's pid for
the error message. Simplifications: locks are advisory and local to one machine's kernel (a run
directory on a network file system shared by two machines is only protected where the file system
supports flock); several Trainer objects in *one* process may share a directory (tests and notebooks
do that on purpose), counted by reference.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fairalign.errors import ConfigError

LOCK_NAME = ".fairalign.lock"
_HELD: dict[str, list] = {}  # resolved path -> [file object, reference count]


class RunLock:
    def __init__(self, run_dir: Path):
        self.key = str((Path(run_dir) / LOCK_NAME).resolve())
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
        else:
            f = open(self.key, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                pid = f.read().strip() or "unknown"
                f.close()
                raise ConfigError(f"output_dir '{run_dir}' is in use by another fairalign run (pid {pid}); wait "
                                  f"for it to finish, stop it, or choose another output_dir") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            _HELD[self.key] = [f, 1]
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        held = _HELD.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.key]
            held[0].close()  # closing the file releases the flock

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass
