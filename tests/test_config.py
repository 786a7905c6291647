"""Config tree: YAML + presets + dotted overrides, validation messages, field docs."""
import pytest

from fairalign.config import Config, build_config, field_docs, parse_override
from fairalign.errors import ConfigError
from fairalign.config.presets import PRESETS, get_preset


def test_defaults_and_overrides_parse_yaml_scalars():
    cfg = build_config({}, ["algo.loss=fspo", "optim.lr=3e-5", "rollout.generations=8",
                            "algo.dual_clip=3", "log.tensorboard=false", "task_reward=mod:fn"])
    assert cfg.algo.loss == "fspo"
    assert cfg.optim.lr == pytest.approx(3e-5)
    assert cfg.rollout.generations == 8
    assert cfg.algo.dual_clip == 3.0 and isinstance(cfg.algo.dual_clip, float)
    assert cfg.log.tensorboard is False
    assert cfg.task_reward == ["mod:fn"]


def test_required_dotted_names_exist():
    cfg = Config()
    for key in ["algo.loss", "algo.agg", "algo.advantage", "algo.ppo_epochs", "algo.minibatches",
                "algo.beta", "algo.kl", "rollout.prompts_per_step", "rollout.generations",
                "rollout.max_new_tokens", "rollout.temperature", "rollout.top_p", "optim.lr",
                "model", "task", "output_dir", "seed", "steps", "save_every", "precision", "lora.r"]:
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)


def test_every_field_has_a_doc_line():
    docs = field_docs()
    assert "[loss: fspo 0.02]" in docs["algo.c_low"]  # derived from the loss registry
    assert "optim.lr" in docs and "rollout.top_p" in docs and "lora.r" in docs
    assert len(docs) >= 50


@pytest.mark.parametrize("override, fragment", [
    ("algo.los=fspo", "did you mean 'algo.loss'"),
    ("algo.loss=trpo", "allowed: ppo, gspo, fspo, cispo"),
    ("algo.advantage=foo", "allowed: grpo, dr_grpo, rloo"),
    ("optim.lr=-1", "'optim.lr' must be > 0"),
    ("optim.lr=abc", "'optim.lr' expects a number"),
    ("rollout.generations=1", "must be >= 2 for the group estimator"),
    ("algo.loss=fspo algo.c_low=0", "'algo.c_low' must be > 0"),
    ("algo.loss=fspo algo.drift=up", "'algo.drift' has unknown value 'up'"),
    ("algo.clip_low=1.5", "'algo.clip_low' must be < 1"),
    ("algo.dual_clip=1", "'algo.dual_clip' must be > 1"),
    ("rollout.max_new_tokens=0", "'rollout.max_new_tokens' must be > 0"),
    ("rollout.top_p=1.5", "'rollout.top_p' must be in (0, 1]"),
    ("steps=2.5", "'steps' expects an integer"),
    ("precision=fp16", "allowed: fp32, bf16"),
    ("nonsense", "is not KEY=VALUE"),
])
def test_bad_values_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        build_config({}, override.split())
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg


def test_generations_one_is_fine_for_non_group_estimator():
    cfg = build_config({}, ["algo.advantage=reinforce_pp_baseline", "rollout.generations=1"])
    assert cfg.rollout.generations == 1


def test_presets_resolve_and_unknown_preset_lists_names():
    for name in PRESETS:
        build_config(get_preset(name))
    assert build_config(get_preset("dapo")).algo.clip_high == 0.28
    assert build_config(get_preset("gspo")).algo.agg == "seq-mean-token-mean"
    assert build_config(get_preset("pgrpo-fspo")).algo.advantage == "pgrpo"
    with pytest.raises(ConfigError, match="known presets: .*pgrpo-fspo"):
        get_preset("grpoo")


def test_parse_override_values():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=x=y") == ("a", "x=y")


def test_nested_section_must_be_mapping():
    with pytest.raises(ConfigError, match="section 'algo' must be a mapping"):
        build_config({"algo": 3})


def test_device_resolution_without_a_gpu(monkeypatch):
    import torch

    from fairalign.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'device' is 'cuda' but no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="device"):
        build_config({"device": "tpu"})


def test_threads_key_sets_torch_threads(tmp_path):
    import torch

    from fairalign.train.trainer import Trainer

    with pytest.raises(ConfigError, match="'threads'"):
        build_config({"threads": -1})
    before = torch.get_num_threads()
    try:
        Trainer(build_config({"model": "tiny", "threads": 2, "output_dir": str(tmp_path / "r"),
                              "log": {"tensorboard": False, "progress": False}}))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _config_cli(args, capsys):
    """`fairalign config ARGS` in this process: (exit code, the printed config as a dict, stderr)."""
    import yaml

    from fairalign.cli import main as cli_main

    code = cli_main(["config", *args])
    out, err = capsys.readouterr()
    return code, (yaml.safe_load(out) if code == 0 else None), err


def test_dotted_overrides_merge_into_task_options(capsys):
    code, cfg, _ = _config_cli(["task=rlpa", "task_options.max_turns=3", "task_options.n_train=8"], capsys)
    assert code == 0 and cfg["task_options"] == {"max_turns": 3, "n_train": 8}
    # a YAML file's mapping is merged into, not replaced
    base = {"task": "rlpa", "task_options": {"max_turns": 2, "group_by": "cluster"}}
    assert build_config(base, ["task_options.max_turns=5"]).task_options == {"max_turns": 5, "group_by": "cluster"}


def test_dotted_overrides_merge_into_user_options(capsys):
    code, cfg, _ = _config_cli(["task=rlpa", "task_options.user=openai",
                                "task_options.user_options.base_url=http://127.0.0.1:8000/v1",
                                "task_options.user_options.model=m", "task_options.user_options.extra_body.top_k=5",
                                "task_options.user_options.extra_body.seed=1"], capsys)
    assert code == 0
    assert cfg["task_options"]["user_options"] == {"base_url": "http://127.0.0.1:8000/v1", "model": "m",
                                                   "extra_body": {"top_k": 5, "seed": 1}}
    base = {"task_options": {"user_options": {"api_key_env": "MY_KEY", "model": "old"}}}
    assert build_config(base, ["task_options.user_options.model=new"]).task_options == {
        "user_options": {"api_key_env": "MY_KEY", "model": "new"}}


def test_dotted_overrides_merge_into_loss_args(capsys):
    code, cfg, _ = _config_cli(["algo.loss=ppo", "algo.loss_args.clip_low=0.1", "algo.loss_args.clip_high=0.3"],
                               capsys)
    assert code == 0 and cfg["algo"]["loss_args"] == {"clip_low": 0.1, "clip_high": 0.3}


@pytest.mark.parametrize("args, outer, inner", [
    (["task_options.user_options={model: m}", "task_options.user_options.base_url=u"],
     "task_options.user_options", "task_options.user_options.base_url"),
    (["algo.loss_args.clip_low=0.1", "algo.loss_args={clip_high: 0.3}"], "algo.loss_args", "algo.loss_args.clip_low"),
    (["task_options={max_turns: 2}", "task_options.n_train=4"], "task_options", "task_options.n_train"),
])
def test_an_override_naming_a_mapping_and_one_of_its_keys_is_an_error(args, outer, inner, capsys):
    code, _, err = _config_cli(args, capsys)
    assert code == 2
    assert err == (f"fairalign: error: KEY=VALUE sets both '{outer}' and '{inner}' (a key inside it): give "
                   f"'{outer}' as one mapping or its keys one by one, not both\n")
