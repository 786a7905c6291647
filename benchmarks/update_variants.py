"""The update's time on one fixed rollout batch, with its optional paths on and off (a benchmark script).

Trains one step of the demo's configuration (to get a real batch and optimizer state), then times
`PolicyUpdate` on that same batch --repeats times per variant, restoring the weights, optimizer and
schedule before each: length buckets on / off (`Policy.forwards`) and the behaviour log-probs of the
first minibatch from its own forward or from a separate pass. Variants that the code on PYTHONPATH does
not have are left out, so the same command times an older revision's update for comparison:

    PYTHONPATH=src .venv/bin/python benchmarks/update_variants.py --repeats 3
    git worktree add --detach /tmp/old 645919d && PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/update_variants.py
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import torch

    from fairalign.demo import demo_config
    from fairalign.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = demo_config([f"output_dir={out}", "steps=2", "save_every=0", "log.tensorboard=false",
                           "log.progress=false", "log.samples_per_step=0"])
        tr = Trainer(cfg, progress=False)
        kept = []
        pick = tr.rollout_stage.training_batch
        tr.rollout_stage.training_batch = lambda pool: kept.append(pick(pool)) or kept[-1]
        tr.train_step()
        batch, micro = kept[-1], len(kept[-1])
        print("response lengths", sorted(batch.lengths.tolist()))
        saved = [copy.deepcopy(x.state_dict()) for x in (tr.model, tr.optimizer, tr.scheduler)]
        buckets = getattr(tr.policy, "forwards", None)
        plain = lambda b, rows, m: list(torch.split(rows, m)) if len(rows) else []  # noqa: E731
        own = hasattr(tr.update, "later_rows")
        variants = [(b, o) for b in ([False, True] if buckets else [False]) for o in ([False, True] if own else [False])]
        for r in range(a.repeats):
            for bucket, first in variants:
                for x, state in zip((tr.model, tr.optimizer, tr.scheduler), saved):
                    x.load_state_dict(state)
                if buckets:
                    tr.policy.forwards = buckets if bucket else plain
                b = copy.copy(batch)
                rows = tr.update.later_rows(len(b), 2) if first else None
                b.old_logp = tr.policy.logprobs(tr.model, b, micro, **({"rows": rows} if first else {}))
                t = time.perf_counter()
                tr.update(b, micro, 2, 0)
                print(f"repeat {r + 1}: length buckets {'on ' if bucket else 'off'}, first minibatch's behaviour "
                      f"log-probs {'own forward' if first else 'separate pass'}: {time.perf_counter() - t:.2f} s",
                      flush=True)


if __name__ == "__main__":
    main()
