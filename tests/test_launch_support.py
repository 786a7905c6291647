"""The multi-process tests' launcher (replay_support.run_ranks) ends a hang: on its timeout it kills the
launcher and every process below it, including those in sessions of their own (as torch.distributed.run
starts its ranks), so a rank holding the output pipes cannot keep the test waiting forever."""
import textwrap
import time

import psutil
import pytest
from replay_support import run_ranks

# A launcher stand-in: it starts a "rank" in a new session that inherits stdout/stderr, records its pid,
# and both wait forever (a collective that never completes).
HANGS = textwrap.dedent('''
    import subprocess, sys, time
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open(sys.argv[1], "w").write(str(rank.pid))
    print("launched", flush=True)
    time.sleep(600)
''')


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_timeout_kills_ranks_in_their_own_sessions(tmp_path):
    script = tmp_path / "hangs.py"
    script.write_text(HANGS)
    pid_file = tmp_path / "rank.pid"
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="no result after 5 s"):
        run_ranks(script, [pid_file], 1, timeout=5)
    assert time.monotonic() - start < 60  # the pipes closed: it did not wait for the rank's sleep
    rank_pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(rank_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(rank_pid)


def test_returns_output_and_exit_status(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("import os, sys\nprint(sys.argv[1], os.environ['OMP_NUM_THREADS'])\nsys.exit(3)\n")
    done = run_ranks(script, ["hello"], 1, timeout=60)
    assert (done.returncode, done.stdout) == (3, "hello 1\n")
