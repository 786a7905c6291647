"""The supervised warm-up (`sft.*`): its loss is the completion tokens' cross-entropy computed by an
independent full-sequence forward, it lowers that loss, it runs once (a resumed run skips it), and
bad settings fail with one line."""
import json

import pytest
import torch

from fairalign.errors import ConfigError
from fairalign.config import build_config
from fairalign.train.sft import encode_completions
from fairalign.train.trainer import Trainer


def _cfg(tmp_path, **over):
    d = {"model": "tiny", "task": "rlpa", "steps": 1, "seed": 0, "output_dir": str(tmp_path / "run"),
         "task_options": {"max_turns": 2, "n_train": 16, "n_test": 4},
         "rollout": {"prompts_per_step": 2, "generations": 2, "max_new_tokens": 6},
         "sft": {"steps": 3, "batch_size": 4, "lr": 1e-3},
         "log": {"tensorboard": False, "progress": False}}
    for k, v in over.items():
        merge = isinstance(v, dict) and isinstance(d.get(k), dict) and k != "task_options"
        d[k] = {**d[k], **v} if merge else v
    return build_config(d)


def _reference_nll(model, tokenizer, engine, demos):
    """Mean cross-entropy of completion tokens (+EOS) from one plain forward per demonstration."""
    total, n = 0.0, 0
    for d in demos:
        text = engine.render_prompts([d["prompt"]])[0][0]
        p = tokenizer(text, add_special_tokens=False)["input_ids"]
        c = tokenizer(d["completion"], add_special_tokens=False)["input_ids"] + [engine.eos_token_ids[0]]
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logits = model(ids).logits[0, len(p) - 1:-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(c), reduction="sum"))
        n += len(c)
    return total / n


def test_warmup_loss_matches_independent_cross_entropy_and_decreases(tmp_path):
    tr = Trainer(_cfg(tmp_path, sft={"steps": 4, "batch_size": 4}))
    demos = tr.task.demonstrations(4 * 4, 0)
    order = torch.randperm(len(demos), generator=torch.Generator().manual_seed(0))
    first = [demos[int(i)] for i in order[:4]]
    ref_before = _reference_nll(tr.model, tr.tokenizer, tr.engine, first)
    from fairalign.train.sft import run_sft_warmup

    rows = run_sft_warmup(tr.policy, tr.task, tr.cfg, tr.run_dir, show_progress=False)
    assert [r["sft_step"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["sft/loss"] == pytest.approx(ref_before, rel=1e-4)  # step 1 = loss before any update
    assert rows[0]["sft/tokens"] == sum(len(tr.tokenizer(d["completion"], add_special_tokens=False)["input_ids"]) + 1
                                        for d in first)
    assert _reference_nll(tr.model, tr.tokenizer, tr.engine, first) < ref_before
    logged = [json.loads(x) for x in (tmp_path / "run" / "sft_metrics.jsonl").read_text().splitlines()]
    assert [r["sft/loss"] for r in logged] == pytest.approx([r["sft/loss"] for r in rows])


def test_encode_completions_right_pads_and_appends_eos(tiny_policy):
    _, tok = tiny_policy
    ids, mask = encode_completions(tok, ["ab", "abcd efg"], eos_id=7, pad_id=0)
    n0 = len(tok("ab", add_special_tokens=False)["input_ids"])
    assert ids[0, n0] == 7 and mask[0].sum() == n0 + 1 and not mask[0, n0 + 1:].any()
    assert mask[1].all() and ids[1, -1] == 7


def test_warmup_runs_once_and_resume_skips_it(tmp_path):
    cfg = _cfg(tmp_path, steps=2)
    tr = Trainer(cfg)
    tr.train(stop_after=1)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step-0" / "COMPLETE").exists()
    assert len((run / "sft_metrics.jsonl").read_text().splitlines()) == 3
    before = (run / "sft_metrics.jsonl").stat().st_mtime_ns
    tr2 = Trainer(cfg, resume=True)
    assert tr2.step >= 0 and tr2.sft_done
    tr2.train()
    assert (run / "sft_metrics.jsonl").stat().st_mtime_ns == before  # not rerun
    assert (run / "final").is_dir()


def test_sft_only_run_and_config_errors(tmp_path):
    cfg = _cfg(tmp_path, steps=0, sft={"steps": 2})
    Trainer(cfg).train()
    assert (tmp_path / "run" / "final" / "config.json").exists()
    with pytest.raises(ConfigError, match="'steps'"):
        _cfg(tmp_path, steps=0, sft={"steps": 0})
    with pytest.raises(ConfigError, match="sft.batch_size"):
        _cfg(tmp_path, sft={"batch_size": 0})
    with pytest.raises(ValueError, match="demonstrations"):
        Trainer(_cfg(tmp_path, task="arithmetic", task_options={}, output_dir=str(tmp_path / "arith"))).train()


def test_keep_last_never_prunes_the_warmup_checkpoint(tmp_path):
    """checkpoints/step-0 is the warm-up-only policy (`eval-dialogue RUN --checkpoint 0`): pruning to
    keep_last keeps it beside the newest ones, also across a stop and resume."""
    cfg = _cfg(tmp_path, steps=4, save_every=1, keep_last=1)
    Trainer(cfg).train(stop_after=2)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0", "step-2"]
    Trainer(cfg, resume=True).train()
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0", "step-4"]


def test_train_step_alone_runs_the_warmup_first_as_train_does(tmp_path):
    """Driving the trainer step by step (`train_step()`, no `train()`) with a warm-up and a KL penalty: the
    warm-up runs first and becomes the KL reference, and the step equals `train()`'s first step (it used to
    fail with AttributeError: the reference did not exist yet and the code took the LoRA path)."""
    over = {"steps": 1, "algo": {"beta": 0.05}}
    by_train = Trainer(_cfg(tmp_path / "a", **over)).train()[0]
    stepper = Trainer(_cfg(tmp_path / "b", **over))
    by_step = stepper.train_step()
    assert stepper.sft_done and stepper.ref_model is not None
    assert len((tmp_path / "b" / "run" / "sft_metrics.jsonl").read_text().splitlines()) == 3
    keys = [k for k in by_train if not k.startswith(("time/", "step_s", "tokens_per_s"))]
    assert "kl" in " ".join(keys)
    assert {k: by_step[k] for k in keys} == pytest.approx({k: by_train[k] for k in keys}, rel=1e-5, abs=1e-7)
