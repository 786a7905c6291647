"""Config files and presets through the CLI: `fairalign config PRESET > my_run.yaml` prints the band or
statistics the chosen methods use (as comments, so the file loads to the same config and another loss
can be chosen in it later); a file may write keys dotted; a mistake in a file names the file; a
misspelt preset gets a suggestion; errors about a data file or a missing run point the right way."""
import yaml

import pytest

from fairalign.cli import main
from fairalign.config import build_config, to_dict


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_config_prints_the_band_fspo_uses_and_loads_back_to_the_same_config(workdir, capsys):
    code, out, _ = _run(capsys, "config", "fspo")
    assert code == 0
    assert "  c_low: null  # fspo uses 0.02\n  c_high: null  # fspo uses 0.03\n" in out  # the registry's defaults
    assert "clip_low: null\n" in out  # a key of another loss: no comment
    assert to_dict(build_config(yaml.safe_load(out))) == to_dict(build_config({"algo": {"loss": "fspo",
                                                                                         "drift": "none"}},
                                                                                ["output_dir=runs/fspo"]))
    (workdir / "my_run.yaml").write_text(out)
    code, out2, err = _run(capsys, "config", "my_run.yaml", "algo.loss=ppo", "algo.drift=null")
    assert code == 0, err  # nothing of fspo's band is left behind in the file
    assert "  clip_low: null  # ppo uses 0.2\n" in out2 and "c_low: null\n" in out2


def test_config_prints_the_estimators_defaults(capsys):
    code, out, _ = _run(capsys, "config", "pgrpo")
    assert code == 0
    assert "  pgrpo_min_count: null  # pgrpo uses 8\n" in out
    assert "  pgrpo_min_std: null  # pgrpo uses 0.001\n" in out
    assert "  pgrpo_decay: null\n" in out  # default None (off): nothing to print
    assert "gamma: null\n" in out


def test_a_dotted_key_in_a_file_is_the_nested_key(workdir, capsys):
    (workdir / "dotted.yaml").write_text("algo.loss: fspo\nrollout.generations: 8\nsteps: 3\n")
    code, out, err = _run(capsys, "config", "dotted.yaml")
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert (cfg["algo"]["loss"], cfg["rollout"]["generations"], cfg["steps"]) == ("fspo", 8, 3)
    (workdir / "twice.yaml").write_text("algo:\n  loss: ppo\nalgo.loss: fspo\n")
    assert _run(capsys, "config", "twice.yaml")[2] == [
        "fairalign: error: twice.yaml: config key 'algo.loss' is given twice (nested and as a dotted key); keep one"]


@pytest.mark.parametrize("text, line", [
    ("algo.lss: fspo\n", "my_run.yaml: unknown config key 'algo.lss'; did you mean 'algo.loss'?"),
    ("algo:\n  lss: fspo\n", "my_run.yaml: unknown config key 'algo.lss'; did you mean 'algo.loss'?"),
    ("optim:\n  lr: abc\n", "my_run.yaml: config key 'optim.lr' expects a number, got 'abc'"),
    ("algo:\n  advantage: grpo\nrollout:\n  generations: 1\n",
     "my_run.yaml: config key 'rollout.generations' must be >= 2 for the group estimator 'grpo', got 1"),
])
def test_a_mistake_in_a_config_file_names_the_file(workdir, capsys, text, line):
    (workdir / "my_run.yaml").write_text(text)
    for command in ("config", "train"):
        code, _, err = _run(capsys, command, "my_run.yaml")
        assert code == 2 and err == [f"fairalign: error: {line}"]


def test_a_mistake_on_the_command_line_does_not_blame_the_file(workdir, capsys):
    (workdir / "ok.yaml").write_text("rollout:\n  generations: 4\n")
    assert _run(capsys, "config", "ok.yaml", "rollout.generations=1")[2] == [
        "fairalign: error: config key 'rollout.generations' must be >= 2 for the group estimator 'grpo', got 1"]
    (workdir / "one.yaml").write_text("rollout:\n  generations: 1\n")  # fixed by the command line: fine
    assert _run(capsys, "config", "one.yaml", "rollout.generations=2")[0] == 0


def test_a_misspelt_preset_gets_a_suggestion(workdir, capsys):
    code, _, err = _run(capsys, "train", "pgrpo-fsp", "model=tiny")
    assert code == 2 and err == [
        "fairalign: error: 'pgrpo-fsp' is neither a config file nor a preset; did you mean 'pgrpo-fspo'? presets: "
        "cispo, dapo, dr_grpo, fspo, grpo, gspo, pgrpo, pgrpo-fspo, ppo, rlpa-smollm2-cpu"]


def test_a_data_file_without_rewards_names_the_config_key_and_the_python_keyword(workdir, capsys):
    (workdir / "data.jsonl").write_text('{"prompt": "hi"}\n')
    code, _, err = _run(capsys, "train", "task=data.jsonl", "model=tiny")
    assert code == 2 and err == [
        "fairalign: error: task file 'data.jsonl' needs reward functions: set task_reward=module:function "
        "(several: task_reward=[a:f, b:g]); in Python, get_task(..., reward_funcs=[...])"]


def test_eval_of_a_run_that_does_not_exist_says_so(workdir, capsys):
    code, _, err = _run(capsys, "eval", "runs/demo")
    assert code == 2 and err == [
        "fairalign: error: eval: run directory 'runs/demo' does not exist (a run writes it: `fairalign demo` writes "
        "runs/demo, `fairalign train` its output_dir)"]
    code, _, err = _run(capsys, "eval", str(workdir / "elsewhere" / "demo"))
    assert code == 2 and err == [f"fairalign: error: eval: '{workdir / 'elsewhere' / 'demo'}' does not exist "
                                 f"(neither a run directory nor a model folder)"]
