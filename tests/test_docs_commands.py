"""Every ```bash block of docs/training.md, rlpa.md, distributed.md, performance.md,
length_fairness.md and reliability.md, and every `fairalign ...` command quoted inline in docs/*.md,
runs as written, in a temporary folder, page by page in the order a reader meets them.

How each line is treated (a line = one shell command, `\\` continuations joined, comments dropped):
- `fairalign ...`: through `fairalign.cli.main`, with the tiny model and sizes appended
  (tests/docs_support.py: `tiny`); the commands themselves are as written.
- `PYTHONPATH=src python -m fairalign.simulate ...`: a subprocess, with PYTHONPATH pointing at this
  checkout's src (the temporary folder has none).
- `--num-processes 2` and `torchrun --nproc_per_node 2` CPU lines: run (two gloo workers each, ~20 s),
  in their own test, marked slow.
- GPU, multi-machine, vLLM and live-server lines, and usage synopses: SKIPPED below, each with its reason;
  what they name is still checked (their CONFIG and KEY=VALUEs through `fairalign config`, the
  accelerate config file, a synopsis's options in --help).
- `python benchmarks/X.py ...`: not fairalign commands; the script exists and `--help` lists every
  option the line uses (a full run is a benchmark: minutes).
- `pip install`: not run (network, and it would change the environment); the extra it names exists in
  pyproject.toml, or the packages it names are pinned in constraints.txt.
- `python -m pytest tests/...`: the files exist; a `-k` expression selects tests in each file (collected,
  not run: the suite runs them). `make TARGET` in a comment: the Makefile has the target.
Inline `fairalign SUBCOMMAND` with no argument, or with an UPPERCASE placeholder, names a command
rather than giving one to copy; MENTIONS lists the other inline spans that are not commands."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from docs_support import run_cli, tiny

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["training", "rlpa", "length_fairness", "distributed", "performance", "reliability"]

SKIPPED = {  # line (comment dropped, spaces collapsed) -> why it does not run here
    "fairalign train task=rlpa task_options.user=openai task_options.user_options.base_url=http://127.0.0.1:8000/v1 "
    "task_options.user_options.model=Qwen/Qwen2.5-7B-Instruct task_options.user_options.api_key_env=null "
    "task_options.user_options.max_wait_s=300":
        "needs a live OpenAI-compatible server on 127.0.0.1:8000 (test_rlpa_openai.py runs one, faked)",
    "fairalign eval-dialogue RUN_DIR_OR_MODEL [KEY=VALUE ...] [--profiles N] [--max-turns K] [--out DIR] ...":
        "a usage synopsis, not a command",
    "accelerate launch --config_file configs/accelerate/fsdp2.yaml -m fairalign train my_run.yaml":
        "8 GPUs",
    "torchrun --standalone --nproc_per_node 8 -m fairalign train my_run.yaml dist_strategy=fsdp2": "8 GPUs",
    "accelerate launch --config_file configs/accelerate/fsdp2.yaml --num_machines 2 --num_processes 16 "
    "--machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 -m fairalign train my_run.yaml":
        "two machines with 8 GPUs each",
    "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --master_addr 10.0.0.1 --master_port 29500 "
    "-m fairalign train my_run.yaml dist_strategy=fsdp2": "two machines with 8 GPUs each",
    "accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m fairalign train my_run.yaml":
        "8 GPUs",
    "accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml -m fairalign train my_run.yaml":
        "8 GPUs",
    "accelerate launch --config_file configs/accelerate/multi_gpu_ddp.yaml --num_machines 2 --num_processes 16 "
    "--machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 -m fairalign train my_run.yaml":
        "two machines with 8 GPUs each",
    "fairalign train my_run.yaml rollout.engine=vllm rollout.vllm_gpu_memory_utilization=0.3":
        "vLLM on a GPU (tests/test_vllm_gpu.py)",
}
MENTIONS = {"fairalign train --resume": "names the option (docs/compare.md)"}


def _lines(page: str) -> list[str]:
    text = (ROOT / "docs" / f"{page}.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            # a synopsis's [OPTIONAL ...] parts are kept as written; elsewhere the shell's own quoting
            code = shlex.join(shlex.split(line, comments=True)) if "[" not in line else \
                " ".join(line.split("#")[0].split())
            if code:
                out.append(code)
    return out


def _kind(line: str) -> str:
    if line in SKIPPED:
        return "skipped"
    if "--num-processes 2" in line or "torchrun --standalone --nproc_per_node 2" in line:
        return "two-process"
    if line.startswith("fairalign "):
        return "cli"
    if "python -m fairalign.simulate" in line:
        return "module"
    if "benchmarks/" in line:
        return "benchmark"
    if "pip install" in line:
        return "pip"
    if "-m pytest" in line:
        return "pytest"
    return "unknown"


def test_every_line_is_treated():
    kinds = {page: [_kind(line) for line in _lines(page)] for page in PAGES}
    assert all("unknown" not in k for k in kinds.values()), {p: [ln for ln in _lines(p) if _kind(ln) == "unknown"]
                                                             for p in PAGES}
    counts = {p: len(k) for p, k in kinds.items()}
    assert counts == {"training": 6, "rlpa": 8, "length_fairness": 3, "distributed": 12, "performance": 23,
                      "reliability": 8}
    everything = [line for page in PAGES for line in _lines(page)]
    assert set(SKIPPED) <= set(everything)  # no stale entry


def _simulate_module(line: str) -> None:
    env_part, _, rest = line.partition(" ")
    assert env_part == "PYTHONPATH=src" and rest.startswith("python -m fairalign.simulate "), line
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, *shlex.split(rest)[1:]], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{line}\n{done.stderr[-2000:]}"


def _steps(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_page_commands_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for page in PAGES:
        for line in _lines(page):
            if _kind(line) == "cli":
                run_cli(line, capsys)
            elif _kind(line) == "module":
                _simulate_module(line)
    runs = Path("runs")
    assert yaml.safe_load(Path("my_run.yaml").read_text())["output_dir"] == "runs/my_run"
    assert _steps(runs / "my_run") == [1, 2, 3, 4]  # 2 steps, resumed (already finished), on to 4
    assert _steps(runs / "my_run_lr3e-5") == [1, 2]
    assert yaml.safe_load((runs / "my_run_lr3e-5" / "config.yaml").read_text())["optim"]["lr"] == 3e-5
    assert _steps(runs / "rlpa-smollm2-cpu") == [1, 2]
    for name in ("rlpa-smollm2-cpu", "eval-untrained", "rlpa-sft-only"):
        assert (runs / name / "dialogue_eval.json").is_file(), name
    sft_only = runs / "rlpa-sft-only"  # steps=0: the warm-up (sft.steps=2 in the tiny run), no RL step
    assert len((sft_only / "sft_metrics.jsonl").read_text().splitlines()) == 2
    assert not (sft_only / "metrics.jsonl").exists() or _steps(sft_only) == []
    assert (Path("docs/figures") / "clip_rate_by_length.json").is_file()
    assert (runs / "simulate-none" / "clip_rate_by_length.json").is_file()


def _inline() -> list[str]:
    spans = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        spans += [" ".join(s.split()) for s in re.findall(r"`(fairalign [^`]*)`", doc.read_text())]
    return sorted(set(spans))


def _is_command(span: str) -> bool:
    argv = span.split()
    placeholder = any(re.fullmatch(r"[A-Z][A-Z_|.]*(\.yaml)?", a) for a in argv)
    return len(argv) > 2 and not placeholder and span not in MENTIONS


def test_inline_commands_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tasks = (ROOT / "docs/tasks.md").read_text()  # the module the `task=my_tasks.py:...` command names
    section = tasks[tasks.index("## Registering a task of your own"):]
    Path("my_tasks.py").write_text(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    commands = [s for s in _inline() if _is_command(s)]
    assert commands == [
        "fairalign config --keys", "fairalign config pgrpo-fspo output_dir=runs/my_run > my_run.yaml",
        "fairalign config rlpa-smollm2-cpu", "fairalign train dapo",
        "fairalign train pgrpo-fspo model=tiny task=personas steps=40 rollout.prompts_per_step=4 "
        "rollout.generations=4 rollout.max_new_tokens=16 algo.pgrpo_min_count=4 optim.lr=3e-4",  # docs/report.md
        "fairalign train ppo", "fairalign train task=my_tasks.py:make_my_task task_options.n=50"], commands
    for span in commands:
        run_cli(span, capsys)
    runs = Path("runs")
    assert _steps(runs / "dapo") == [1, 2] and _steps(runs / "ppo") == [1, 2]
    assert _steps(runs / "pgrpo-fspo") == [1, 2, 3, 4]  # steps=40 -> 4
    assert _steps(runs / "run") == [1, 2]  # the task from my_tasks.py, output_dir left at its default
    assert yaml.safe_load(Path("my_run.yaml").read_text())["output_dir"] == "runs/my_run"  # docs/distributed.md


def test_lines_that_are_not_fairalign_commands():
    pyproject = (ROOT / "pyproject.toml").read_text()
    pins = (ROOT / "constraints.txt").read_text()
    helps: dict[str, str] = {}
    for page in PAGES:
        for line in _lines(page):
            kind, argv = _kind(line), shlex.split(line.replace("[", " ").replace("]", " "))
            if kind == "benchmark":
                script = next(a for a in argv if a.startswith("benchmarks/"))
                assert (ROOT / script).is_file(), line
                if script not in helps:
                    done = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True,
                                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
                    assert done.returncode == 0, done.stderr[-2000:]
                    helps[script] = done.stdout
                for flag in (a for a in argv if a.startswith("--")):
                    assert flag in helps[script], (line, flag)
            elif kind == "pip" and "-e" in argv:
                (extra,) = re.findall(r"\.\[(\w+)\]", line)
                assert re.search(rf"^{extra} = \[", pyproject, re.M), line
            elif kind == "pip":
                for package in argv[argv.index("constraints.txt") + 1:]:
                    assert re.search(rf"^{package}==", pins, re.M), (line, package)
            elif kind == "pytest":
                files = [a for a in argv if a.startswith("tests/")]
                assert files and all((ROOT / f).is_file() for f in files), line
                if "-k" in argv:
                    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p",
                                           "no:cacheprovider", "-k", argv[argv.index("-k") + 1], *files],
                                          cwd=ROOT, capture_output=True, text=True)
                    assert done.returncode == 0, done.stdout[-2000:]
                    for f in files:
                        assert re.search(rf"^{f}(::|: [1-9])", done.stdout, re.M), (line, f)  # -q or -qq
    assert set(helps) == {"benchmarks/profile_step.py", "benchmarks/step_time.py", "benchmarks/rlpa_compare.py",
                          "benchmarks/step_floor.py", "benchmarks/update_variants.py",
                          "benchmarks/precision_agreement.py", "benchmarks/decode_kernels.py"}
    pages = "".join((ROOT / f"docs/{page}.md").read_text() for page in PAGES)
    blocks = "".join(re.findall(r"```bash\n(.*?)```", pages, re.S))
    targets = re.findall(r"# .*?\bmake (\w+)", blocks)
    assert targets == ["simulate"]
    for target in targets:
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), target


def test_skipped_lines_name_real_things(tmp_path, monkeypatch, capsys):
    """What a skipped line names is checked without the GPU or server it needs: its config (the
    same CONFIG and KEY=VALUEs through `fairalign config`, which refuses an unknown key or bad value),
    its accelerate config file, and a synopsis's options (in the command's --help)."""
    monkeypatch.chdir(tmp_path)
    run_cli("fairalign config pgrpo-fspo output_dir=runs/my_run > my_run.yaml", capsys)  # docs/training.md
    for line in SKIPPED:
        if line.startswith("fairalign eval-dialogue RUN_DIR_OR_MODEL"):
            from fairalign.cli import main
            with pytest.raises(SystemExit):
                main(["eval-dialogue", "--help"])
            usage = capsys.readouterr().out
            assert all(flag in usage for flag in re.findall(r"--[a-z-]+", line)), line
            continue
        words = shlex.split(line)
        if "--config_file" in words:
            assert (ROOT / words[words.index("--config_file") + 1]).is_file(), line
        train = words.index("train")
        config = run_cli(shlex.join(["fairalign", "config", *words[train + 1:]]), capsys)
        assert yaml.safe_load(config)["model"], line


@pytest.mark.slow
def test_two_process_lines(tmp_path, monkeypatch, capsys):
    """The CPU launches of docs/distributed.md: two gloo workers each (~20 s a line on two cores)."""
    monkeypatch.chdir(tmp_path)
    run_cli("fairalign config pgrpo-fspo output_dir=runs/my_run > my_run.yaml", capsys)  # docs/training.md
    torchrun = str(Path(sys.executable).parent / "torchrun")
    for line in (ln for page in PAGES for ln in _lines(page) if _kind(ln) == "two-process"):
        if line.startswith("fairalign "):
            run_cli(line, capsys)
            continue
        words = shlex.split(line)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        while "=" in words[0]:
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        cli = words.index("fairalign")
        argv = [torchrun, *words[1:cli + 1], *tiny(words[cli:])[1:]]
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
    for name in ("fsdp2-cpu", "zero2-cpu", "zero3-cpu", "ddp-cpu", "ddp-torchrun"):
        assert _steps(Path("runs") / name) == [1, 2], name
