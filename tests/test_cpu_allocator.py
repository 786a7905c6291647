"""`cpu_allocator`: a run's process keeps freed memory for reuse (glibc), so a step's large temporary
tensors do not page-fault in anew each time. Observed from outside: the minor page faults of allocating
and filling a 64 MiB tensor after a tensor of that size was freed, in a fresh process that built a Trainer."""
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import resource, sys, tempfile
    import torch
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        Trainer(build_config({"model": "tiny", "steps": 1, "output_dir": out,
                              "cpu_allocator": sys.argv[1]}), progress=False)
        faults = []
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            x = torch.empty(16 << 20)  # 64 MiB of fp32
            x.fill_(1.0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            del x
        print(faults[-1])
""")


def _faults_of_a_reused_64mib_tensor(rule: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, rule], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux) only")
def test_a_run_reuses_freed_memory_without_page_faults():
    pages = (64 << 20) // 4096  # 16384 pages of 4 KiB
    kept = _faults_of_a_reused_64mib_tensor("keep")
    system = _faults_of_a_reused_64mib_tensor("system")
    assert system > pages // 2, system  # glibc's default: a block this large is mmap'd, freed, faulted in anew
    assert kept < pages // 20, kept     # kept: the freed block is reused as it is


def test_the_setting_is_checked_and_does_not_change_what_a_run_computes():
    from fairalign.cli import RESUMABLE_KEYS
    from fairalign.compare.spec import NON_TRAINING_KEYS
    from fairalign.config import build_config
    from fairalign.errors import ConfigError

    assert "cpu_allocator" in RESUMABLE_KEYS and "cpu_allocator" in NON_TRAINING_KEYS
    with pytest.raises(ConfigError, match="cpu_allocator"):
        build_config({"model": "tiny", "cpu_allocator": "jemalloc"})
