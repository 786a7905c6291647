"""Graceful stop on SIGTERM (a cluster's preemption) and Ctrl-C (SIGINT).

The first signal only sets a flag: the trainer finishes the step it is in, every rank agrees to stop
at the same step, a checkpoint is written and the run exits with 128 + the signal number (143 for
SIGTERM, 130 for SIGINT) after one line saying how to resume. A second Ctrl-C exits at once
(KeyboardInterrupt), as users expect.
Simplification: handlers can only be installed from the main thread; elsewhere (a trainer driven
from a worker thread) signals keep their default behaviour.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None

    @property
    def signal_name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        """Catch SIGTERM / SIGINT while the block runs; the previous handlers come back after."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        for s in STOP_SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
