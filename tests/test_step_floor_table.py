"""benchmarks/step_floor.py's table re-printed from the committed raw files (docs/performance.md quotes it):
for a bf16 measurement it also gives each phase against the fp32 floor of the same batches. Checked
against a property the floors must have (the log-prob passes are pure matmul work, so their fp32 floor is
the bf16 floor times the ratio of the two matmul rates) and against the numbers the page prints."""
import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "docs" / "evidence" / "performance"


def _step_floor():
    spec = importlib.util.spec_from_file_location("step_floor", ROOT / "benchmarks" / "step_floor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name, step_ratio", [("bf16_5f683b0_r1", 1.21), ("bf16_5f683b0_r2", 1.39)])
def test_bf16_table_gives_the_fp32_floor_of_the_same_work(name, step_ratio, capsys):
    sf = _step_floor()
    saved = json.loads((RAW / f"{name}.json").read_text())
    sf.print_table(saved["machine"], saved["runs"], saved.get("against"), saved["argv"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("the same work at the fp32 matmul rate and 4-byte weights (median per step): ")
    got = {ph: (float(f), float(r)) for ph, f, r in
           re.findall(r"(generation|logprob passes|update|step) floor ([\d.]+) s, ratio ([\d.]+)", last)}
    assert list(got) == ["generation", "logprob passes", "update", "step"]
    assert got["step"][1] == step_ratio  # docs/performance.md's last column
    run, machine = saved["runs"]["this tree"][0], saved["machine"]
    bf16_floors, _ = sf.floors(run, machine)
    scale = machine["bf16_gflops"] / machine["fp32_gflops"]
    want = statistics.median(f["logprob passes"] * scale for f in bf16_floors)
    assert got["logprob passes"][0] == pytest.approx(want, abs=0.006)


def test_an_fp32_table_has_no_such_line(capsys):
    sf = _step_floor()
    saved = json.loads((RAW / "fp32_5f683b0_r1.json").read_text())
    sf.print_table(saved["machine"], saved["runs"], saved.get("against"), saved["argv"])
    assert "at the fp32 matmul rate" not in capsys.readouterr().out
