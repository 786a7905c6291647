"""The command line explains itself: every command's --help shows its positional arguments, KEY=VALUE and
an example; a bare `fairalign train` prints its usage (exit 2) instead of training; usage mistakes are one
line; output cut by a closed pipe (`| head`) ends quietly with 141."""
import os
import re
import subprocess
import sys

import pytest

from fairalign.cli import main

# command -> the positional arguments its help shows
POSITIONALS = {
    "train": ["CONFIG.yaml | PRESET", "KEY=VALUE"],
    "demo": ["KEY=VALUE"],
    "config": ["CONFIG.yaml | PRESET", "KEY=VALUE"],
    "eval": ["RUN_DIR_OR_MODEL", "KEY=VALUE"],
    "eval-dialogue": ["target", "KEY=VALUE"],
    "compare": ["SPEC.yaml", "KEY=VALUE"],
    "report": ["RUN_DIR_OR_STUDY_DIR"],
    "simulate-clipping": [],
}


@pytest.mark.parametrize("command", list(POSITIONALS))
def test_every_command_help_shows_its_arguments_key_value_and_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's --help
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: fairalign {command} ")
    if POSITIONALS[command]:
        section = text.split("positional arguments:")[1].split("options:")[0]
        for name in POSITIONALS[command]:
            assert f"\n  {name} " in section, name
    assert "KEY=VALUE" in text  # its KEY=VALUE, or a line saying it takes none
    parts = re.split(r"(?im)^examples?:$", text)
    assert len(parts) == 2 and re.search(rf"(?m)^ +fairalign {command}( |$)", parts[1]), text


def test_train_help_says_torchrun_not_accelerate(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "torchrun" in text and "accelerate" not in text


def test_bare_train_prints_its_usage_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("usage: fairalign train [CONFIG.yaml | PRESET] [KEY=VALUE ...]")
    assert list(tmp_path.iterdir()) == []  # no runs/run


@pytest.mark.parametrize("argv, line", [
    (["train", "--foo"], "fairalign: error: train: unrecognized arguments: --foo (usage: fairalign train --help)"),
    (["trian"], "fairalign: error: unknown command 'trian'; did you mean 'train'? commands: train, demo, config, "
                "eval, eval-dialogue, compare, report, simulate-clipping"),
    (["report"], "fairalign: error: report: the following arguments are required: RUN_DIR_OR_STUDY_DIR (usage: "
                 "fairalign report --help)"),
])
def test_usage_mistakes_are_one_line(argv, line, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_closed_pipe_ends_quietly(tmp_path):
    """`fairalign config --keys | head -1`: the reader is gone before fairalign writes (the read end is closed
    first), so every write fails with EPIPE; no "Broken pipe", no traceback, exit 141 (128 + SIGPIPE)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        res = subprocess.run([sys.executable, "-m", "fairalign", "config", "--keys"], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert res.returncode == 141
    assert res.stderr == ""


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["compare", "--help"]])
def test_help_does_not_load_torch(argv):
    """Help lists the presets without the method registries (and torch, 2 s of a 2.4 s `train --help`)."""
    probe = ("import sys\nfrom fairalign.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('fairalign.algos')))")
    res = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


def test_config_package_names_load_on_first_use():
    import fairalign.config as C
    from fairalign.config import load, schema

    assert C.build_config is load.build_config and C.Config is schema.Config
    assert set(C.__all__) <= set(dir(C))
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        C.nonexistent
