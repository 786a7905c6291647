"""The update's time on one fixed rollout batch, with its optional paths on and off (a benchmark script).

Trains one step of the demo's configuration (to get a real batch and optimizer state), then times
`PolicyUpdate` on that same batch --repeats times per variant, restoring the weights, optimizer and
schedule before each. The toggles (each on = the code's default path):
- `buckets`: length buckets (`Policy.forwards`) on / off;
- `behaviour`: the first minibatch's behaviour log-probs from its own forward / from a separate pass.
`--toggles` picks which ones vary (the others stay on); toggles that the code on PYTHONPATH does not have
are left out, so the same command times an older revision's update for comparison. `--profile` runs
one more update (every toggle on) under torch.profiler and prints the top ops by self CPU time.
KEY=VALUE arguments override the demo's config (`cpu_allocator=system`: glibc's malloc defaults).

    PYTHONPATH=src .venv/bin/python benchmarks/update_variants.py --repeats 3 [--toggles buckets] [--profile]
    PYTHONPATH=src .venv/bin/python benchmarks/update_variants.py --repeats 3 --toggles "" cpu_allocator=system
    git worktree add --detach /tmp/old 645919d && PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/update_variants.py
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import tempfile
import time

TOGGLES = ("buckets", "behaviour")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--toggles", default=",".join(TOGGLES), help=f"comma-separated subset of {TOGGLES}")
    ap.add_argument("--profile", action="store_true", help="profile one more update (all toggles on)")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (e.g. cpu_allocator=system)")
    a = ap.parse_args()
    wanted = [t for t in a.toggles.split(",") if t]
    if any(t not in TOGGLES for t in wanted):
        ap.error(f"--toggles: each of {wanted} must be one of {TOGGLES}")
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    import torch

    from fairalign.demo import demo_config
    from fairalign.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = demo_config([f"output_dir={out}", "steps=2", "save_every=0", "log.tensorboard=false",
                           "log.progress=false", "log.samples_per_step=0", *a.overrides])
        tr = Trainer(cfg, progress=False)
        kept = []
        pick = tr.rollout_stage.training_batch
        tr.rollout_stage.training_batch = lambda pool: kept.append(pick(pool)) or kept[-1]
        tr.train_step()
        batch, micro = kept[-1], len(kept[-1])
        print("response lengths", sorted(batch.lengths.tolist()))
        saved = [copy.deepcopy(x.state_dict()) for x in (tr.model, tr.optimizer, tr.scheduler)]
        buckets = getattr(tr.policy, "forwards", None)
        plain_forwards = lambda b, rows, m: list(torch.split(rows, m)) if len(rows) else []  # noqa: E731
        has = {"buckets": buckets is not None, "behaviour": hasattr(tr.update, "later_rows")}
        varied = [t for t in TOGGLES if t in wanted and has[t]]

        def run(on: dict) -> float:
            for x, state in zip((tr.model, tr.optimizer, tr.scheduler), saved):
                x.load_state_dict(state)
            if has["buckets"]:
                tr.policy.forwards = buckets if on["buckets"] else plain_forwards
            b = copy.copy(batch)
            own = has["behaviour"] and on["behaviour"]
            rows = tr.update.later_rows(len(b), 2) if own else None
            b.old_logp = tr.policy.logprobs(tr.model, b, micro, **({"rows": rows} if own else {}))
            t = time.perf_counter()
            tr.update(b, micro, 2, 0)
            return time.perf_counter() - t

        for r in range(a.repeats):
            for values in itertools.product([True, False], repeat=len(varied)):
                on = dict.fromkeys(TOGGLES, True) | dict(zip(varied, values))
                label = ", ".join(f"{t} {'on' if on[t] else 'off'}" for t in varied) or "defaults"
                print(f"repeat {r + 1}: {label}: {run(on):.2f} s", flush=True)
        if a.profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                seconds = run(dict.fromkeys(TOGGLES, True))
            print(f"profiled update: {seconds:.2f} s (under the profiler)")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
