"""fairalign.integrations.trl inside TRL 1.16's GRPOTrainer, on CPU with the tiny model (no downloads).

What TRL backpropagates and the advantages it trains on are captured at TRL's own call sites
(`compute_loss`, `_get_per_token_logps_and_entropies`, `_calculate_rewards`) and compared with
fairalign's functions on the same tensors: the loss with `compute_policy_loss` (global token count of
the optimizer step, FSPO's drift from the whole step), the advantages with a fresh
`PreferenceGroupNormalizer` and, for one history-normalized sample, with a hand computation. Also: the
P-GRPO state survives `resume_from_checkpoint` exactly, the logged clip metrics are fairalign's, bad
fields are one-line errors, and docs/integrations.md's script and diff are what the test runs.
The tiny model is saved with a generation config that stops on ~120 token ids, so completion lengths vary.
"""
import difflib
import json
import re
import runpy
import statistics
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from fairalign.algos import (POLICY_LOSS_REGISTRY, PreferenceGroupNormalizer, aggregate, build_estimator,  # noqa: E402
                             compute_policy_loss)
from fairalign.diagnostics import clip_rate_metrics  # noqa: E402
from fairalign.integrations.trl import (PGRPO_STATE_FILE, FairGRPOConfig, FairGRPOTrainer,  # noqa: E402
                                        pgrpo_advantages, sampler_weighted_advantages)
from fairalign.errors import ConfigError  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
PERSONAS = ("concise", "detailed", "concise", "concise")  # unbalanced preference groups
STOP_IDS = list(range(2, 120))  # the tiny model stops often, so lengths differ


def _dataset(n=16):
    return Dataset.from_list([{"prompt": f"Tell me about item {i}.", "persona": PERSONAS[i % 4]} for i in range(n)])


def reward_fit(completions, persona, **kwargs):
    return [1.0 - min(len(c), 60) / 60 if p == "concise" else min(len(c), 60) / 60 for c, p in zip(completions, persona)]


def _args(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=2, num_generations=2, max_completion_length=12,
                gradient_accumulation_steps=2, steps_per_generation=4, max_steps=4, learning_rate=1e-2,
                logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    return FairGRPOConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved as a hub folder is (with its architecture, so TRL can load it by path; needed
    for TRL's reference model), stopping on STOP_IDS."""
    path = tmp_path_factory.mktemp("model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.generation_config.eos_token_id = STOP_IDS
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


def _trainer(model_dir, args, **kw):
    return FairGRPOTrainer(model=str(model_dir), reward_funcs=reward_fit, args=args,
                           train_dataset=kw.pop("train_dataset", _dataset()), **kw)


def _record(tr):
    """Capture, at TRL's call sites: rewards and groups per generation batch, and per micro-batch the
    loss inputs, the policy log-probs of the loss forward and the loss returned for backward."""
    rec = {"gen": [], "mic": []}
    calc, gen, logps, loss = (tr._calculate_rewards, tr._generate_and_score_completions,
                              tr._get_per_token_logps_and_entropies, tr.compute_loss)

    def calc_rec(inputs, *a):
        out = calc(inputs, *a)
        rec["gen"].append({"groups": [x["persona"] for x in inputs], "rpf": out.clone(), "train": tr.model.training})
        return out

    def gen_rec(inputs):
        out = gen(inputs)
        rec["gen"][-1]["adv"] = out["advantages"].clone()
        return out

    def logps_rec(*a, **k):
        out = logps(*a, **k)
        if k.get("compute_entropy"):
            rec["logp"] = out[0]
        return out

    def loss_rec(model, inputs, *a, **k):
        out = loss(model, inputs, *a, **k)
        rec["mic"].append({"inputs": inputs, "logp": rec.pop("logp"), "loss": out.detach().clone(),
                           "train": tr.model.training})
        return out

    tr._calculate_rewards, tr._generate_and_score_completions = calc_rec, gen_rec
    tr._get_per_token_logps_and_entropies, tr.compute_loss = logps_rec, loss_rec
    return rec


@pytest.fixture(scope="module")
def fspo_pgrpo_run(model_dir, tmp_path_factory):
    args = _args(tmp_path_factory.mktemp("fspo"), fair_loss="fspo", fair_loss_kwargs={"drift": "kl"},
                 pgrpo_group_column="persona", pgrpo_min_count=2)
    tr = _trainer(model_dir, args)
    rec = _record(tr)
    tr.train()
    return tr, rec


def test_fspo_pgrpo_trains_two_steps_per_batch(fspo_pgrpo_run):
    tr, rec = fspo_pgrpo_run
    assert tr.state.global_step == 4 and len(rec["gen"]) == 2 and len(rec["mic"]) == 8
    lengths = torch.cat([m["inputs"]["completion_mask"].sum(1) for m in rec["mic"]])
    assert len(set(lengths.tolist())) > 2  # the loss sees padded, unequal completions
    logs = {h["step"]: h for h in tr.state.log_history if "loss" in h}
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs.values())
    # logged with the step that generated the batch: the first batch is all cold start, the second uses history
    assert logs[1]["pgrpo/history_frac"] == 0 and logs[3]["pgrpo/history_frac"] > 0


def test_backpropagated_loss_is_compute_policy_loss(fspo_pgrpo_run):
    tr, rec = fspo_pgrpo_run
    for k in range(4):  # optimizer steps; 2 micro-batches each, 2 steps per generation batch
        mics = rec["mic"][2 * k:2 * k + 2]
        masks = [m["inputs"]["completion_mask"].bool() for m in mics]
        olds = [m["inputs"]["old_per_token_logps"] for m in mics]
        tokens = sum(int(m.sum()) for m in masks)  # the whole optimizer step's tokens
        ell = [(m["logp"].detach() - o) * mk for m, o, mk in zip(mics, olds, masks)]
        mu = 0.0 if k % 2 == 0 else float(sum(e.sum() for e in ell) / tokens)  # first step on a batch: ratio 1
        for m, old, mask in zip(mics, olds, masks):
            want, _ = compute_policy_loss("fspo", m["logp"], old, m["inputs"]["advantages"], mask, "token-mean",
                                          global_tokens=tokens, batch_stats={"mean_log_ratio": mu},
                                          c_low=0.02, c_high=0.03, drift="kl")
            torch.testing.assert_close(m["loss"], want.detach(), rtol=1e-5, atol=1e-7)
        # the split does not matter: the step's losses add up to the loss of the whole step
        whole, _ = compute_policy_loss("fspo", torch.cat([m["logp"] for m in mics]).detach(), torch.cat(olds),
                                       torch.cat([m["inputs"]["advantages"] for m in mics]), torch.cat(masks),
                                       c_low=0.02, c_high=0.03, drift="kl", batch_stats={"mean_log_ratio": mu})
        torch.testing.assert_close(sum(m["loss"] for m in mics), whole, rtol=1e-5, atol=1e-6)


def test_advantages_are_pgrpo_estimators(fspo_pgrpo_run):
    _, rec = fspo_pgrpo_run
    ref = PreferenceGroupNormalizer(min_count=2)
    history: dict = {}
    for g, batch in enumerate(rec["gen"]):
        rewards = batch["rpf"].sum(1)  # one reward function, weight 1
        index = torch.arange(len(rewards)) // 2  # num_generations=2 consecutive rows per prompt
        want = ref(rewards, batch["groups"], index)
        torch.testing.assert_close(batch["adv"], want.float(), rtol=1e-5, atol=1e-6)
        if g == 1:  # by hand: the first sample of the second batch against its group's first-batch rewards
            hist = history[batch["groups"][0]]
            hand = (float(rewards[0]) - statistics.fmean(hist)) / (statistics.pstdev(hist) + 1e-6)
            assert len(hist) >= 2 and abs(float(batch["adv"][0]) - hand) < 1e-4
        for grp, r in zip(batch["groups"], rewards.tolist()):
            history.setdefault(grp, []).append(r)


def test_logged_clip_metrics_are_fairaligns(fspo_pgrpo_run):
    tr, rec = fspo_pgrpo_run
    logs = {h["step"]: h for h in tr.state.log_history if "loss" in h}
    assert "lre" not in logs[1] and "lre" not in logs[3]  # first update on each batch: ratio 1, nothing can clip
    for step in (2, 4):
        mics = rec["mic"][2 * step - 2:2 * step]
        masks = [m["inputs"]["completion_mask"].bool() for m in mics]
        tokens = sum(int(m.sum()) for m in masks)
        mu = float(sum(((m["logp"].detach() - m["inputs"]["old_per_token_logps"]) * mk).sum()
                       for m, mk in zip(mics, masks)) / tokens)
        clipped = [compute_policy_loss("fspo", m["logp"].detach(), m["inputs"]["old_per_token_logps"],
                                       m["inputs"]["advantages"], mk, drift="kl",
                                       batch_stats={"mean_log_ratio": mu})[1]["clipped"] for m, mk in zip(mics, masks)]
        want = clip_rate_metrics(torch.cat([mk.sum(1) for mk in masks]), torch.cat(clipped),
                                 torch.cat([m["inputs"]["advantages"] for m in mics]))
        for key, value in want.items():
            assert logs[step][key] == pytest.approx(value), key
        assert logs[step]["clip/sequences"] == 4


def test_kl_term_sequence_mean_and_evaluation(model_dir, tmp_path):
    """ppo + beta·k3 (TRL's bias correction; with PEFT the reference is the model without its adapter)
    with seq-mean-token-mean over the optimizer step's sequences; evaluation scores with P-GRPO but never
    moves its history."""
    from peft import LoraConfig

    args = _args(tmp_path, fair_loss="ppo", fair_agg="seq-mean-token-mean", beta=0.04, pgrpo_group_column="persona",
                 pgrpo_min_count=2, eval_strategy="steps", eval_steps=2, per_device_eval_batch_size=4)
    tr = _trainer(model_dir, args, eval_dataset=_dataset(4),
                  peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    rec = _record(tr)
    tr.train()
    train = [m for m in rec["mic"] if m["train"]]
    assert len(train) == 8 and len(rec["mic"]) > 8  # evaluation ran (twice) through the same loss
    for k in range(4):
        mics = train[2 * k:2 * k + 2]
        seqs = sum(int((m["inputs"]["completion_mask"].sum(1) > 0).sum()) for m in mics)
        for m in mics:
            inp, logp, mask = m["inputs"], m["logp"], m["inputs"]["completion_mask"].bool()
            d = inp["ref_per_token_logps"] - logp
            k3 = (torch.exp(d) - d - 1) * torch.exp(logp - inp["old_per_token_logps"])  # TRL's bias-corrected k3
            want = compute_policy_loss("ppo", logp, inp["old_per_token_logps"], inp["advantages"], mask,
                                       "seq-mean-token-mean", global_seqs=seqs)[0]
            want = want + 0.04 * aggregate(k3, mask, "seq-mean-token-mean", global_seqs=seqs)
            torch.testing.assert_close(m["loss"], want.detach(), rtol=1e-5, atol=1e-7)
    assert sum(tr._pgrpo.state_dict()["n"]) == 16  # the two training batches only
    assert sum(not g["train"] for g in rec["gen"]) == 4  # 2 evaluations x (8 rows / 4 per batch)
    assert [h["step"] for h in tr.state.log_history if "eval_loss" in h] == [2, 4]
    assert tr.ref_model is None and any("lora_" in n for n, p in tr.model.named_parameters() if p.requires_grad)
    assert any(float(m["inputs"]["ref_per_token_logps"].sub(m["logp"]).abs().max()) > 0 for m in train[2:])


def test_resume_restores_pgrpo_state_exactly(model_dir, tmp_path):
    saved, resumed = {}, {}

    class Snap(TrainerCallback):
        def __init__(self, into):
            self.into = into

        def on_save(self, args, state, control, **kw):
            self.into[state.global_step] = json.loads(json.dumps(tr._pgrpo.state_dict()))

        def on_train_begin(self, args, state, control, **kw):  # after the checkpoint was loaded
            self.into["begin"] = json.loads(json.dumps(tr._pgrpo.state_dict()))

    kw = dict(fair_loss="fspo", pgrpo_group_column="persona", pgrpo_min_count=2, save_strategy="steps", save_steps=2)
    tr = _trainer(model_dir, _args(tmp_path, **kw), callbacks=[Snap(saved)])
    tr.train()
    ckpt = tmp_path / "checkpoint-2"
    assert json.loads((ckpt / PGRPO_STATE_FILE).read_text()) == saved[2]
    assert sum(saved[2]["n"]) == 8 and sum(saved[4]["n"]) == 16  # one generation batch of 8 per 2 steps

    tr = _trainer(model_dir, _args(tmp_path, **kw), callbacks=[Snap(resumed)])
    tr.train(resume_from_checkpoint=str(ckpt))
    assert resumed["begin"] == saved[2]  # exactly: groups, n, mean, m2
    assert resumed[4] == saved[4]  # and the resumed run continues as the uninterrupted one did

    (ckpt / PGRPO_STATE_FILE).unlink()
    tr = _trainer(model_dir, _args(tmp_path, **kw))
    with pytest.raises(ConfigError, match=PGRPO_STATE_FILE):
        tr.train(resume_from_checkpoint=str(ckpt))


@pytest.mark.parametrize("fields, named", [
    ({"fair_loss": "nope"}, "fair_loss='nope'"),
    ({"fair_loss": "fspo", "fair_loss_kwargs": {"c_lo": 0.1}}, "fair_loss_kwargs"),
    ({"fair_loss": "fspo", "fair_loss_kwargs": '{"c_low": -1}'}, "fair_loss_kwargs"),
    ({"fair_loss": "ppo", "fair_agg": "mean"}, "fair_agg='mean'"),
    ({"fair_loss": "gspo", "loss_type": "grpo"}, "loss_type='grpo'"),
    ({"fair_loss": "ppo", "epsilon": 0.3}, "epsilon=0.3"),
    ({"fair_loss": "fspo", "steps_per_generation": 3}, "steps_per_generation=3"),
    ({"fair_agg": "seq-mean-token-mean"}, "fair_agg"),
    ({"pgrpo_decay": 0.9}, "pgrpo_decay=0.9"),
    ({"pgrpo_group_column": "persona", "pgrpo_min_count": 0}, "pgrpo_"),
    ({"pgrpo_group_column": "persona", "scale_rewards": "none"}, "scale_rewards='none'"),
    ({"fair_loss": "fspo", "fair_length_edges": [8, 4]}, "fair_length_edges"),
])
def test_bad_field_is_one_line_error(tmp_path, fields, named):
    with pytest.raises(ConfigError) as err:
        _args(tmp_path, **fields)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_missing_group_column_is_one_line_error(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="pgrpo_group_column='user'.*train_dataset") as err:
        _trainer(model_dir, _args(tmp_path, pgrpo_group_column="user"))
    assert "\n" not in str(err.value)


def test_on_policy_setup_warns(tmp_path):
    with pytest.warns(UserWarning, match="on-policy"):
        _args(tmp_path, fair_loss="fspo", steps_per_generation=2)


@pytest.mark.parametrize("name", sorted(POLICY_LOSS_REGISTRY))
def test_sampler_weights_as_advantages_weight_the_token_loss(name):
    """TRL's vLLM importance-sampling ratio w enters as A·w: the same as w times each token's loss."""
    g = torch.Generator().manual_seed(3)
    logp, old = -torch.rand(4, 6, generator=g), -torch.rand(4, 6, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.2
    for w in (torch.rand(4, 6, generator=g) * 2, (torch.rand(4, 1, generator=g) > 0.5).float()):
        got, _ = compute_policy_loss(name, logp, old, sampler_weighted_advantages(adv, w, mask), mask)
        loss_mat, _ = POLICY_LOSS_REGISTRY[name].fn(logp, old, adv, mask, **POLICY_LOSS_REGISTRY[name].hparams)
        torch.testing.assert_close(got, aggregate(loss_mat * w, mask), rtol=1e-5, atol=1e-7)


def test_unscored_completions_get_zero_and_stay_out_of_the_history():
    est = build_estimator("pgrpo", min_count=2)
    rpf = torch.tensor([[1.0, float("nan")], [0.0, 2.0], [float("nan"), float("nan")], [3.0, 1.0]])  # [N, F]
    adv = pgrpo_advantages(est, rpf, torch.tensor([1.0, 0.5]), ["a", "a", "a", "a"], num_generations=2)
    # weighted nansum: 1, 1, (unscored), 3.5; prompt groups {0, 1} and {3} (row 2 left out)
    want = torch.tensor([0.0, 0.0, 0.0, 3.5 / (1 + 1e-6)])  # cold start = GRPO: equal pair -> 0; a group of one: mean 0, std 1
    torch.testing.assert_close(adv, want)
    assert est.normalizer.stats()["a"][0] == 3 and est.normalizer.stats()["a"][1] == pytest.approx(5.5 / 3)


# ---------------------------------------------------------------------- docs/integrations.md
def _doc_blocks():
    text = DOC.read_text().split("\n## verl")[0]  # the TRL section
    scripts = dict(re.findall(r"```python title=(\S+)\n(.*?)```", text, re.S))
    (diff,) = re.findall(r"```diff\n(.*?)```", text, re.S)
    return text, scripts["grpo_personas.py"], scripts["fair_grpo_personas.py"], diff


def test_doc_diff_is_the_difference_between_the_scripts():
    _, stock, fair, diff = _doc_blocks()
    changes = [line for line in difflib.ndiff(stock.splitlines(), fair.splitlines()) if line[:2] in ("- ", "+ ")]
    assert [c[0] + c[2:] for c in changes] == diff.splitlines()
    assert sum(c.startswith("+") for c in changes) <= 5


def test_doc_tables_match_the_registries():
    text = DOC.read_text().split("\n## verl")[0]  # the TRL section
    for name, spec in POLICY_LOSS_REGISTRY.items():
        if name in ("ppo", "gspo", "fspo", "cispo"):
            row = ", ".join(f"`{k}={v!r}`" for k, v in spec.hparams.items())
            assert f"| `{name}` | {row} |" in text
    for f in ("min_count", "eps", "decay", "min_std", "zero_std"):
        assert f"| `pgrpo_{f}` | `{getattr(FairGRPOConfig, f'pgrpo_{f}')!r}` |" in text
    from fairalign.integrations.trl_config import _LOSS_OWNED, _PGRPO_OWNED
    refused = text.split("### Not supported")[1]
    assert all(f"`{key}`" in refused for key in [*_LOSS_OWNED, *_PGRPO_OWNED])


@pytest.mark.parametrize("script", ["grpo_personas.py", "fair_grpo_personas.py"])
def test_doc_script_trains_as_written_on_a_cpu(model_dir, tmp_path, monkeypatch, script):
    """The page's scripts run on this CPU-only machine with nothing added: only the downloaded model is
    swapped for the tiny one and the sizes shrunk (no use_cpu=True: the script itself picks fp32 on a CPU)."""
    _, stock, fair, _ = _doc_blocks()
    code = {"grpo_personas.py": stock, "fair_grpo_personas.py": fair}[script]
    for old, new in (('"Qwen/Qwen2.5-0.5B-Instruct"', repr(str(model_dir))),
                     ("per_device_train_batch_size=8", "per_device_train_batch_size=2"),
                     ("num_generations=4", "num_generations=2"), ("max_completion_length=128", "max_completion_length=8"),
                     ("max_steps=100", "max_steps=2")):
        assert old in code
        code = code.replace(old, new)
    assert "use_cpu" not in code
    text = DOC.read_text().split("### The diff")[0]
    assert "`Qwen/Qwen2.5-0.5B-Instruct`, which TRL **downloads**" in text  # the page says it is a download
    (tmp_path / script).write_text(code)
    monkeypatch.chdir(tmp_path)
    trainer = runpy.run_path(str(tmp_path / script))["trainer"]
    assert trainer.args.bf16 is torch.cuda.is_available()  # fp32 on a CPU
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert trainer.state.global_step == 2
    if script == "fair_grpo_personas.py":
        assert "lre" in logs[1] and "pgrpo/history_frac" in logs[0]


# ---------------------------------------------------------------------- two processes (gloo, CPU)
WORKER = '''
import json, sys, torch
from test_integration_trl import _args, _record, _trainer
out, model_dir = sys.argv[1], sys.argv[2]
# 3 prompts x 4 generations per generation batch, 6 rows per process: the middle prompt straddles them
args = _args(out, fair_loss="fspo", pgrpo_group_column="persona", pgrpo_min_count=2, num_generations=4,
             gradient_accumulation_steps=1, steps_per_generation=3, max_steps=6)
tr = _trainer(model_dir, args)
rec = _record(tr)
tr.train()
rank = tr.accelerator.process_index
mics = [{"logp": m["logp"].detach(), "loss": m["loss"], **{k: m["inputs"][k] for k in
         ("old_per_token_logps", "advantages", "completion_mask")}} for m in rec["mic"]]
torch.save({"gen": rec["gen"], "mic": mics, "state": tr._pgrpo.state_dict(), "logs": tr.state.log_history},
           f"{out}/rank{rank}.pt")
'''


def _pad_cat(tensors):
    width = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors])


def test_two_processes_share_pgrpo_state_and_global_loss(model_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    (tmp_path / "worker.py").write_text(f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n" + WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(port), str(tmp_path / "worker.py"), str(tmp_path),
                          str(model_dir)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    ref = PreferenceGroupNormalizer(min_count=2)
    for g0, g1 in zip(r0["gen"], r1["gen"]):
        torch.testing.assert_close(g0["rpf"], g1["rpf"])  # TRL gathers every process's rewards
        groups = g0["groups"] + g1["groups"]  # global order: process 0's rows, then process 1's
        want = ref(g0["rpf"].sum(1), groups, torch.arange(len(groups)) // 4).float()
        torch.testing.assert_close(torch.cat([g0["adv"], g1["adv"]]), want, rtol=1e-5, atol=1e-6)
    assert r0["state"] == r1["state"] == json.loads(json.dumps(ref.state_dict()))
    for m0, m1 in zip(r0["mic"], r1["mic"]):  # one micro-batch per optimizer step per process
        whole, _ = compute_policy_loss("fspo", _pad_cat([m0["logp"], m1["logp"]]),
                                       _pad_cat([m0["old_per_token_logps"], m1["old_per_token_logps"]]),
                                       torch.cat([m0["advantages"], m1["advantages"]]),
                                       _pad_cat([m0["completion_mask"], m1["completion_mask"]]).bool())
        torch.testing.assert_close((m0["loss"] + m1["loss"]) / 2, whole, rtol=1e-5, atol=1e-6)  # DDP averages
    clip_logs = [h for h in r0["logs"] if "lre" in h]
    assert [h["step"] for h in clip_logs] == [2, 3, 5, 6] and all(h["clip/sequences"] == 4 for h in clip_logs)
