"""Every input a user supplies fails with one line that names it in the user's terms (the key they
typed, the file and line), exit code 2, no traceback: the matrix in docs/reliability.md, row by row."""
import pytest

from fairalign.cli import main

FILES = {
    "bad.yaml": "a: [\n",
    "list.yaml": "- 1\n",
    "bad.jsonl": '{"prompt": "x"\n',
    "noprompt.jsonl": '{"q": "x"}\n',
    "emptyprompt.jsonl": '{"prompt": ""}\n',
    "rw.py": "def f(prompts, completions, **kw):\n    return [1.0] * len(completions)\n",
    "broken.py": "import nonexistent_module_zz\n",
    "afile": "",
}
TINY = ["model=tiny", "steps=1", "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=4",
        "log.tensorboard=false", "log.progress=false"]

ROWS = [
    # config files and keys
    (["train", "nope.yaml"], "cannot read config file 'nope.yaml': No such file or directory"),
    (["train", "bad.yaml"], "config file 'bad.yaml' line 2 is not valid YAML"),
    (["train", "list.yaml"], "config file 'list.yaml' must hold a mapping"),
    (["train", "algo.los=fspo"], "unknown config key 'algo.los'; did you mean 'algo.loss'?"),
    (["train", "optim.lr=abc"], "config key 'optim.lr' expects a number, got 'abc'"),
    (["train", "algo.loss=ppo", "algo.c_low=0.1"], "config key 'algo.c_low' does not apply to algo.loss=ppo"),
    (["train", "algo.advantage=pgrpo", "algo.pgrpo_min_count=0"], "config key 'algo.pgrpo_min_count'"),
    (["train", "reward_timeout_s=-1"], "config key 'reward_timeout_s' must be >= 0"),
    # data files
    (["train", "task=missing.jsonl", "task_reward=rw.py:f", *TINY], "task file not found: 'missing.jsonl'"),
    (["train", "task=bad.jsonl", "task_reward=rw.py:f", *TINY], "bad.jsonl: line 1: invalid JSON"),
    (["train", "task=noprompt.jsonl", "task_reward=rw.py:f", *TINY], "noprompt.jsonl: line 1: missing the 'prompt' column"),
    (["train", "task=emptyprompt.jsonl", "task_reward=rw.py:f", *TINY], "emptyprompt.jsonl: line 1: 'prompt' is empty"),
    (["train", "task=noprompt.jsonl", *TINY], "needs reward functions: set task_reward=module:function"),
    (["train", "task_options.foo=1", *TINY], "unknown config key 'task_options.foo' for task 'personas'"),
    # reward code
    (["train", "task_reward=broken.py:f", *TINY], "config key 'task_reward': bad reward function spec 'broken.py:f': "
                                                  "importing 'broken.py' failed: ModuleNotFoundError"),
    (["train", "task_reward=rw.py:g", *TINY], "config key 'task_reward': bad reward function spec 'rw.py:g': module "
                                              "'rw.py' has no attribute 'g'"),
    (["train", "task_reward=no_such_mod_zz:g", *TINY], "cannot import module 'no_such_mod_zz'"),
    (["train", "task_reward=rw.py:f", "task_reward_weights=[1,2]", *TINY],
     "config key 'task_reward_weights' has 2 values for 1 task_reward functions"),
    # user methods
    (["train", "algo.loss=rw.py:nope", *TINY], "bad config key 'algo.loss' 'rw.py:nope'"),
    (["train", "algo.advantage=missing.py:f", *TINY], "bad config key 'algo.advantage' 'missing.py:f': file"),
    # model folders
    (["train", "model=./no_such_model_dir", *TINY[1:]], "model folder ./no_such_model_dir does not exist"),
    (["train", "model=emptymodel", *TINY[1:]], "model folder emptymodel has no config.json"),
    # checkpoints and output locations
    (["train", "--resume", "afile"], "--resume: 'afile' is not a run directory (no config.yaml)"),
    (["train", *TINY, "output_dir=afile/run"], "output_dir 'afile/run' cannot be created: Not a directory"),
    (["eval", "emptymodel"], "nor a model folder (no config.json)"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "emptymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, fragment", ROWS, ids=[" ".join(a[:3]) for a, _ in ROWS])
def test_bad_input_is_one_line_naming_it(workdir, capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("fairalign: error: "), err
    assert fragment in err[-1], err[-1]
    assert not any("Traceback" in line for line in err)
