"""What the doc-command tests (test_readme_commands.py, test_docs_commands.py) add to a documented
`fairalign ...` line so it runs on a CPU in seconds: the tiny random model and tiny sizes. The commands
themselves stay as written; nothing in the code under test changes.

- train: tiny model, 2 prompts x 2 samples of 6 tokens, 2 steps unless the line gives its own
  (`steps=40` becomes 4), a 2-step warm-up for the `rlpa-smollm2-cpu` preset;
- demo: the same, 2 steps, a checkpoint every step; compare: 2 seeds of 1 step;
- eval-dialogue: 2 turns, at most 2 profiles and 6 new tokens, the tiny model for `smollm2-135m`;
- config, eval, report, simulate-clipping: unchanged (no model to shrink; eval reads the run's config)."""
import shlex

TINY = ["model=tiny", "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=6",
        "eval.examples=2", "log.tensorboard=false", "log.progress=false"]


def _replace_value(argv: list[str], flag: str, value: str) -> list[str]:
    """`flag N` -> `flag value` where the line gives the flag."""
    return [value if i and argv[i - 1] == flag else a for i, a in enumerate(argv)]


def tiny(argv: list[str]) -> list[str]:
    """The additions to one command `fairalign SUBCOMMAND ...` (argv[0] is 'fairalign')."""
    command = argv[1]
    if command == "train":
        steps = [a for a in argv if a.startswith("steps=")]
        if steps == ["steps=40"]:
            return [a if a != "steps=40" else "steps=4" for a in argv] + TINY
        return argv + TINY + ([] if steps else ["steps=2"]) + ["sft.steps=2"] * ("rlpa-smollm2-cpu" in argv)
    if command == "demo":
        return argv + TINY + ["steps=2", "save_every=1"]
    if command == "compare":
        return argv + TINY + ["seeds=2", "steps=1"]
    if command == "eval-dialogue":
        argv = ["tiny" if a == "smollm2-135m" else a for a in argv]
        argv = _replace_value(_replace_value(argv, "--profiles", "2"), "--max-new-tokens", "6")
        return argv + ["--max-turns", "2"]
    return argv


def run_cli(line: str, capsys) -> str:
    """Run one documented `fairalign ...` line through `fairalign.cli.main` with the tiny additions;
    `> FILE` writes the output to FILE as the shell would. Returns stdout; fails on a non-zero exit."""
    from pathlib import Path

    from fairalign.cli import main

    argv = shlex.split(line, comments=True)
    assert argv[0] == "fairalign", line
    redirect = argv[argv.index(">") + 1] if ">" in argv else None
    argv = argv[:argv.index(">")] if redirect else argv
    capsys.readouterr()
    code = main(tiny(argv)[1:])
    out = capsys.readouterr()
    assert code == 0, f"{line}\n{out.err[-2000:]}"
    if redirect:
        Path(redirect).write_text(out.out)
    return out.out
