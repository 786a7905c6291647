"""`fairalign compare` starts a fresh run that only trains longer than an earlier arm's run of the same seed
from that run's last checkpoint (compare/study.py: start_from_shorter_run): the RL arm after a `steps: 0`
warm-up arm does not redo the supervised warm-up, and its training is exactly what a run from scratch gives."""
import io
import json

import yaml

from fairalign.compare import run_study

BASE = {"model": "tiny", "task": "rlpa", "steps": 2, "threads": 1,
        "task_options": {"n_test": 2, "n_train": 8, "max_turns": 2, "eval_turns": 2, "demo_turns": 2,
                         "context": "recent"},
        "rollout": {"prompts_per_step": 1, "generations": 2, "max_new_tokens": 8},
        "algo": {"beta": 0.1},  # a KL reference saved after the warm-up: copied with the checkpoint
        "sft": {"steps": 2, "batch_size": 2}, "log": {"tensorboard": False}, "keep_last": 1}


def _study(folder, arms: dict, **spec_keys):
    spec = {"output_dir": str(folder / "study"), "seeds": [0], "base": BASE, "arms": arms,
            "eval": {"examples": 2, "batch_size": 2}, **spec_keys}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = io.StringIO()
    run_study(folder / "spec.yaml", stream=out)
    return folder / "study", out.getvalue()


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rl_arm_starts_from_the_warmup_arm_and_trains_as_from_scratch(tmp_path, tiny_model_dir):
    both, text = _study(tmp_path / "a", {"warmup": {"steps": 0}, "rl": {}}, keep_checkpoints=True)
    assert "[rl seed 0] starts from [warmup seed 0]'s step 0" in text and "deleted" not in text
    alone, text_alone = _study(tmp_path / "b", {"rl": {}, "short": {"steps": 1, "optim.lr": 1e-4}})
    assert "starts from" not in text_alone  # another lr: not only steps differ, so it trains from scratch
    rl, ref = both / "rl" / "seed-0", alone / "rl" / "seed-0"
    drop = ("step_s", "tokens_per_s")
    timing = lambda row: {k: v for k, v in row.items() if not k.startswith("time/") and k not in drop}  # noqa: E731
    assert [timing(r) for r in _lines(rl / "metrics.jsonl")] == [timing(r) for r in _lines(ref / "metrics.jsonl")]
    assert [r["sft/loss"] for r in _lines(rl / "sft_metrics.jsonl")] == \
        [r["sft/loss"] for r in _lines(ref / "sft_metrics.jsonl")]  # the warm-up's log came along
    ev = lambda d: json.loads((d / "eval.json").read_text())["metrics"]  # noqa: E731
    assert ev(rl) == ev(ref)
    assert (both / "warmup" / "seed-0" / "checkpoints" / "step-0").is_dir()  # the source run is left as it was
    _, again = _study(tmp_path / "a", {"warmup": {"steps": 0}, "rl": {}})  # keep_checkpoints false, nothing to run
    assert "0 trained, 0 evaluated, 2 reused" in again and "deleted" not in again
    assert (both / "warmup" / "seed-0" / "checkpoints" / "step-0").is_dir()  # a rerun of a finished study deletes nothing


def test_a_seeds_checkpoints_are_deleted_after_its_last_arm_not_before(tmp_path, tiny_model_dir):
    """By default (keep_checkpoints: false) the seed's runs lose checkpoints/ once its last arm is evaluated: the RL
    arm still starts from the warm-up arm's checkpoint, and both keep final/, their logs and eval.json."""
    study, text = _study(tmp_path, {"warmup": {"steps": 0}, "rl": {}})
    assert text.index("[rl seed 0] starts from [warmup seed 0]'s step 0") < text.index("[seed 0] deleted the "
                                                                                          "checkpoints of warmup, rl (")
    for arm in ("warmup", "rl"):
        run = study / arm / "seed-0"
        assert not (run / "checkpoints").exists() and not (run / "checkpoints.deleting").exists()
        assert (run / "final").is_dir() and (run / "eval.json").is_file() and (run / "sft_metrics.jsonl").is_file()
    assert len(_lines(study / "rl" / "seed-0" / "metrics.jsonl")) == BASE["steps"]


def test_an_interrupted_deletion_is_finished_by_the_next(tmp_path):
    """A kill between the rename and the delete leaves checkpoints.deleting/: the next prune removes it."""
    from fairalign.compare import load_study
    from fairalign.compare.study import prune_checkpoints

    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path / "study"), "seeds": [0],
                                                         "base": BASE, "arms": {"a": {}, "b": {"steps": 3}}}))
    study = load_study(tmp_path / "spec.yaml")
    for arm in ("a", "b"):
        run = study.run_dir(arm, 0)
        (run / "final").mkdir(parents=True)
        (run / "eval.json").write_text('{"metrics": {}}')
        (run / "checkpoints" / "step-2").mkdir(parents=True)
        (run / "checkpoints" / "step-2" / "state.pt").write_bytes(b"x" * 1000)
    (study.run_dir("a", 0) / "checkpoints").rename(study.run_dir("a", 0) / "checkpoints.deleting")
    (study.run_dir("b", 0) / "eval.json").unlink()  # not evaluated: its checkpoints stay
    out = io.StringIO()
    prune_checkpoints(study, 0, out)
    assert not (study.run_dir("a", 0) / "checkpoints.deleting").exists()
    assert (study.run_dir("b", 0) / "checkpoints" / "step-2" / "state.pt").is_file()
    assert out.getvalue() == ""  # nothing named: the only deletion finished an earlier one


def test_a_run_trained_at_another_micro_batch_size_is_the_same_run(tmp_path):
    """`algo.micro_batch_size` only splits a minibatch into forwards (the update is micro-batch invariant, tested in
    test_equivalence): a run trained with another value is the spec's run (done / resumed), not 'another config'.
    A key that changes training still is."""
    from fairalign.compare import load_study
    from fairalign.compare.study import run_state
    import pytest

    from fairalign.config import build_config, dump_yaml, to_dict
    from fairalign.errors import ConfigError

    spec = {"output_dir": str(tmp_path / "study"), "seeds": [0],
            "base": {**BASE, "algo": {**BASE["algo"], "micro_batch_size": 2}},
            "arms": {"a": {}, "b": {"optim.lr": 2e-5}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    study = load_study(tmp_path / "spec.yaml")
    run_dir = study.run_dir("a", 0)
    run_dir.mkdir(parents=True)
    cfg = study.configs["a"][0]
    (run_dir / "config.yaml").write_text(dump_yaml(build_config(to_dict(cfg), ["algo.micro_batch_size=0"])))
    assert run_state(study, "a", 0) == ("fresh", 0)
    (run_dir / "config.yaml").write_text(dump_yaml(build_config(to_dict(cfg), ["optim.lr=3e-5"])))
    with pytest.raises(ConfigError, match="'optim.lr'"):
        run_state(study, "a", 0)
