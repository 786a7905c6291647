"""`python -m fairalign` (also what `torchrun` and `accelerate launch -m fairalign` run in each rank).

A rank of a launched run (WORLD_SIZE > 1) whose process group `Dist.close()` has already torn down ends
with `os._exit` once its output is flushed, skipping interpreter teardown: gloo's teardown at interpreter
exit sometimes aborts a rank (SIGABRT, "terminate called without an active exception") after the run has
finished and saved, and the launcher then reports the whole run as failed. Everything the run writes is
closed by then (checkpoints, metrics, the logger); a rank whose process group is still open (an error
before close) exits the normal way, traceback and all.
"""
import os
import sys

from fairalign.cli import main


def _process_group_closed() -> bool:
    """`Dist.close()` tore this process's process group down (dist/base.py; never imported, never closed)."""
    base = sys.modules.get("fairalign.dist.base")
    return base is not None and base.process_group_closed()


code = main()
if _process_group_closed():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
