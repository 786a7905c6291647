"""Batch-scoped and history estimators give every rank the numbers one process would give on the whole
global batch: `batch_joint` (one mean and std over every rank's rewards) and P-GRPO with the std floor,
checked with fake collectives (rank 0 and rank 1 of 2, each holding half the batch) and with two real
gloo processes (torchrun) against one process."""
import json
import textwrap

import pytest
import torch
from replay_support import run_ranks, write_worker

from fairalign.algos import LOCAL, build_estimator, compute_advantages
from two_ranks import TwoRanks


def test_batch_joint_over_two_ranks_equals_one_process():
    r = torch.tensor([0.9, 0.8, 0.3, 0.35, 1.0, 0.95, 0.2, 0.6])
    idx = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])  # each rank numbers its own prompts from 0
    one = compute_advantages("batch_joint", r, torch.arange(8) // 2)
    halves = (slice(0, 4), slice(4, 8))
    for k, h in enumerate(halves):
        other = halves[1 - k]
        est = build_estimator("batch_joint")
        adv = est(r[h], idx[h], ["g"] * 4, TwoRanks(k, (r[other].tolist(),)))
        torch.testing.assert_close(adv, one[h])
        assert est.metrics() == pytest.approx({"batch_joint/mean": float(r.double().mean()),
                                               "batch_joint/std": float(r.double().std())})
        local = build_estimator("batch_joint")(r[h], idx[h], ["g"] * 4, LOCAL)
        assert not torch.allclose(local, one[h], atol=1e-3)  # rank-local statistics would differ


WORKER = textwrap.dedent('''
    import json, sys, torch
    from fairalign.algos import LOCAL, build_estimator
    from fairalign.dist import from_env

    out, mode = sys.argv[1], sys.argv[2]
    d = from_env("ddp") if mode == "dp" else LOCAL
    rank, world = d.rank, d.world
    g = torch.Generator().manual_seed(0)
    steps = [torch.rand(8, generator=g) for _ in range(3)]          # 3 steps x 8 rewards (global batch)
    groups = ["a", "a", "b", "b", "c", "c", "a", "a"]                # preference group per sample
    rows = slice(rank * 8 // world, (rank + 1) * 8 // world)         # this rank's rows
    res = {}
    for name, hp in (("batch_joint", {}), ("pgrpo", {"min_count": 2, "zero_std": "floor", "min_std": 0.2})):
        est = build_estimator(name, **hp)
        res[name] = [est(r[rows], torch.arange(8)[rows] // 2, groups[rows], d).tolist() for r in steps]
        res[name + "/state"] = est.state_dict()
    json.dump(res, open(f"{out}/{mode}-rank{rank}.json", "w"))
    if mode == "dp":
        d.close()  # a gloo group left to interpreter exit can abort the process
''')



def test_two_processes_equal_one(tmp_path):
    script = write_worker(tmp_path / "worker.py", WORKER)
    single = run_ranks(script, [tmp_path, "single"], 1, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    dp = run_ranks(script, [tmp_path, "dp"], 2, timeout=300)
    assert dp.returncode == 0, dp.stderr[-3000:]
    one = json.loads((tmp_path / "single-rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"dp-rank{k}.json").read_text()) for k in (0, 1)]
    for name in ("batch_joint", "pgrpo"):
        for step, want in enumerate(one[name]):
            got = ranks[0][name][step] + ranks[1][name][step]  # rank 0 holds rows 0-3, rank 1 rows 4-7
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (name, step)
    assert ranks[0]["pgrpo/state"] == ranks[1]["pgrpo/state"]
    for key in ("n", "mean", "m2"):
        assert ranks[0]["pgrpo/state"][key] == pytest.approx(one["pgrpo/state"][key], abs=1e-9)
    assert any(v != 0 for v in one["batch_joint"][0])
