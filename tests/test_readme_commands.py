"""README's "Command line" block runs top to bottom as a new user would on a fresh clone, line by line,
in a temporary folder (holding what a clone has that the block uses: docs/evidence/pgrpo/spec.yaml, and
my_loss.py as docs/extending.md writes it), through the CLI.

What the test changes, and only this: the tiny random model and tiny sizes are appended to the lines
that load a model (`model=tiny`, 2 prompts x 2 samples of 6 tokens, 2 steps unless the line gives its
own steps; `steps=40` becomes 4, a study gets 2 seeds of 1 step, a dialogue evaluation 2 turns), so the
block's SmolLM2 runs (minutes to an hour on a CPU) take seconds; the commands themselves are as written.
No line needs a GPU. The two `--num-processes 2` lines start torchrun with two workers (~20 s each on two
shared cores) and run in their own test, marked slow; tests/test_distributed.py covers the launcher in the
default suite. The runs must not collide: each trains into its own directory and its metrics hold exactly
its own steps."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from docs_support import run_cli

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Command line"):text.index("## Python API")]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for line in block.splitlines() if line.strip()]


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _setup(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "docs/evidence/pgrpo").mkdir(parents=True)
    shutil.copy(ROOT / "docs/evidence/pgrpo/spec.yaml", tmp_path / "docs/evidence/pgrpo/spec.yaml")
    extending = (ROOT / "docs/extending.md").read_text()
    (tmp_path / "my_loss.py").write_text(re.search(r"```python title=my_loss.py\n(.*?)```", extending, re.S).group(1))
    monkeypatch.chdir(tmp_path)


def _two_processes(line: str) -> bool:
    return "--num-processes 2" in line


def test_readme_command_block_runs_top_to_bottom_without_collisions(tmp_path, monkeypatch, capsys):
    _setup(tmp_path, monkeypatch)
    lines = readme_commands()
    assert len(lines) == 16 and sum(map(_two_processes, lines)) == 2
    for line in lines:
        if not _two_processes(line):  # the slow test below runs these
            run_cli(line, capsys)
    runs = Path("runs")
    assert _steps(runs / "pgrpo-fspo") == [1, 2, 3, 4, 5]  # steps=5, not mixed with any other run
    assert _steps(runs / "my_run") == [1, 2, 3, 4]  # trained to 2, resumed to 4
    for name in ("demo", "my_rlpa_run", "rlpa-smollm2-cpu", "grpo"):
        assert _steps(runs / name) == [1, 2], name
    saved = yaml.safe_load((runs / "grpo" / "config.yaml").read_text())
    assert saved["algo"]["loss"] == f"{tmp_path / 'my_loss.py'}:ppo_with_entropy_bonus"
    assert (runs / "demo" / "eval.json").is_file() and (runs / "demo" / "report.html").is_file()
    assert (runs / "my_rlpa_run" / "dialogue_eval.json").is_file()
    assert (runs / "simulate" / "clip_rate_by_length.json").is_file()
    study = json.loads((runs / "study-pgrpo" / "comparison.json").read_text())
    assert (study["arms"], study["seeds"]) == (["grpo", "pgrpo", "reinforce_pp"], [0, 1])


@pytest.mark.slow
def test_readme_two_process_lines(tmp_path, monkeypatch, capsys):
    _setup(tmp_path, monkeypatch)
    lines = [line for line in readme_commands() if _two_processes(line)]
    for line in lines:
        run_cli(line, capsys)
    for name in ("grpo-ddp", "grpo-fsdp2"):
        assert _steps(Path("runs") / name) == [1, 2], name


def test_quick_start_says_how_to_run_fairalign_after_make():
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("### What `make demo` shows")]
    assert "`.venv/bin/fairalign`" in quick and "`source .venv/bin/activate`" in quick
    assert "`make install`" in quick
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^install: \$\(STAMP\)$", makefile, re.M)  # the target README names
    assert re.search(r"^demo: \$\(STAMP\)$", makefile, re.M) and re.search(r"^test: \$\(STAMP\)$", makefile, re.M)
