"""A training step against this machine's floor: per phase, seconds / floor / ratio, optionally side by side
with another git revision (a benchmark script, not a test).

1. Measures the machine with torch at --threads: the fp32 and bf16 matmul rate (2048 x 2048, GFLOP/s) and
   the memory bandwidth (a 256 MiB copy, bytes read + written per second).
2. In a subprocess, trains --warmup untimed + --steps timed steps of the demo's configuration (fairalign
   demo's settings + KEY=VALUE overrides; `--model` swaps the model; `--config` takes a config file or
   preset instead, as `fairalign train` does), then one evaluation (eval.* settings, the demo's: 64
   held-out prompts, greedy; `--no-eval` skips it). It records each phase's seconds from the trainer's own
   time/* metrics and counts the work each phase had to do from the batches it saw.
3. Prints, per phase, the median seconds, the floor and the ratio seconds / floor, and the training samples
   per second of a step.

The floor of a phase is the time the work it must do takes at the measured rates, with no padding and no
repeated work (a prompt prefix that all distinct prompts of a forward share, such as a system prompt, counts
once): for every forward, 2 FLOPs per weight of every linear layer per real token + attention
(QK and AV over the causal context) + the LM head only where logits are needed; a backward counts 2 forwards.
- generation: each distinct prompt pre-filled once; then each decode step is max(FLOPs of the rows still
  alive / matmul rate, every weight read once / bandwidth);
- log-prob passes: the behaviour pass over the rows outside the first minibatch (whose own on-policy forward
  gives theirs) and the reference pass over every row, each one forward over the distinct prompts and the
  real response tokens;
- update: per minibatch, forward + backward over its distinct prompts and real response tokens, plus the
  optimizer (AdamW: parameters, gradients and both moments read and written once);
- rewards: the reward functions, or a dialogue task's simulated user and judge (time/reward_s), floor 0;
- evaluation: as generation, for every evaluation batch, at the fp32 rate (evaluation runs in fp32).
Simplifications: rates are one square matmul's and one copy's (skinny decode matmuls run slower, which
shows up as ratio); element-wise work (norms, activations, softmax, sampling) counts as free; precision=bf16
uses the bf16 matmul rate and 2-byte weights.

    PYTHONPATH=src .venv/bin/python benchmarks/step_floor.py [--steps 2 --warmup 1 --threads 2] [KEY=VALUE ...]
    PYTHONPATH=src .venv/bin/python benchmarks/step_floor.py --against 645919d --repeats 2 --json out.json
    PYTHONPATH=src .venv/bin/python benchmarks/step_floor.py --model tiny --steps 2   # seconds, a smoke run
    PYTHONPATH=src .venv/bin/python benchmarks/step_floor.py --table out.json        # re-print a saved one

--against REV checks REV out into a temporary git worktree and runs the same measurement on it, in
alternating subprocesses (this tree, REV, this tree, REV, ...) on the same machine; the table gains REV's
seconds and the speed-up. --baseline-config SOURCE measures another configuration on this tree instead,
alternating the same way (e.g. an RLPA recipe against the study it replaces):

    PYTHONPATH=src .venv/bin/python benchmarks/step_floor.py --config rlpa-smollm2-cpu \
        --baseline-config docs/evidence/rlpa/rl10.yaml --steps 1 --warmup 0 --no-eval sft.steps=0
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
PHASES = ("generation", "rewards", "logprob passes", "update", "step", "evaluation")
REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------- the machine
def measure_machine(threads: int) -> dict:
    """Matmul rates (GFLOP/s, fp32 and bf16, 2048²) and copy bandwidth (GB/s, read + write) with `threads`."""
    import torch

    torch.set_num_threads(threads)

    def rate(dtype, n=2048, reps=8) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for _ in range(2):
            a @ b
        best = float("inf")
        for _ in range(reps):  # best of reps: the machine's rate, not its noise
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return 2 * n ** 3 / best / 1e9

    x = torch.empty(256 * 2 ** 20 // 4)
    y = torch.empty_like(x)
    y.copy_(x)
    best = float("inf")
    for _ in range(8):
        t = time.perf_counter()
        y.copy_(x)
        best = min(best, time.perf_counter() - t)
    return {"fp32_gflops": rate(torch.float32), "bf16_gflops": rate(torch.bfloat16),
            "copy_gbs": 2 * x.numel() * 4 / best / 1e9, "threads": threads}


# ----------------------------------------------------------------------------------------- work counts
class ModelShape:
    """What a forward costs: linear weights per token, attention per token and context, the LM head."""

    def __init__(self, model):
        import torch

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        c = inner.config
        head = inner.get_output_embeddings()
        self.linear = sum(m.weight.numel() for m in inner.modules()
                          if isinstance(m, torch.nn.Linear) and m is not head)  # non-embedding linear weights
        self.head = head.weight.numel()  # V x d
        self.attn_width = c.num_attention_heads * getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)
        self.layers = c.num_hidden_layers
        self.params = sum(p.numel() for p in inner.parameters())
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def forward_flops(self, tokens: float, attended: float, logits: float) -> float:
        """FLOPs of a forward over `tokens` tokens attending to `attended` positions in all (Σ over tokens of
        its causal context) with the LM head at `logits` positions."""
        return 2 * self.linear * tokens + 4 * self.layers * self.attn_width * attended + 2 * self.head * logits


def causal_attended(start: int, n: int) -> int:
    """Σ context over n tokens at positions start+1 .. start+n (each attends to itself and everything before)."""
    return n * start + n * (n + 1) // 2


def sequence_forward(shape: ModelShape, prompts: list[int], responses: list[tuple[int, int]], prefix: int = 0) -> float:
    """FLOPs of one forward over distinct prompts (real lengths) sharing their first `prefix` tokens (computed
    once) and responses (prompt length, real length), logits at the response tokens only."""
    prefix = prefix if len(prompts) > 1 else 0
    tokens = prefix + sum(p - prefix for p in prompts) + sum(r for _, r in responses)
    attended = (causal_attended(0, prefix) + sum(causal_attended(prefix, p - prefix) for p in prompts)
                + sum(causal_attended(p, r) for p, r in responses))
    return shape.forward_flops(tokens, attended, sum(r for _, r in responses))


def generation_floor(shape: ModelShape, rec: dict, rate: float, bw: float, weight_bytes: float) -> float:
    """Seconds of one `generate` call at the floor (see the module docstring)."""
    prefill = sequence_forward(shape, rec["distinct_prompts"], [], rec.get("prefix", 0))
    prefill = (prefill + 2 * shape.head * len(rec["distinct_prompts"])) / rate  # + each prompt's last logits
    decode = 0.0
    for s in range(max(rec["lengths"], default=0) - 1):  # the first token comes from the pre-fill's logits
        alive = [(p, n) for p, n in zip(rec["row_prompts"], rec["lengths"]) if n > s + 1]
        flops = sum(shape.forward_flops(1, p + s + 1, 1) for p, _ in alive)
        decode += max(flops / rate, weight_bytes / bw)
    return prefill + decode


# ----------------------------------------------------------------------------------------- the child
def child(a) -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import torch

    torch.set_num_threads(a.threads)
    import fairalign.rollout.hf_engine as he
    from fairalign.cli import resolve_config
    from fairalign.demo import demo_config
    from fairalign.eval.run import evaluate_policy
    from fairalign.rollout.shared_prefix import common_prefix_len
    from fairalign.train.trainer import Trainer

    calls: list[dict] = []  # every generate() call of the current phase
    original = he.HFGenerationEngine.generate

    def recording(self, prompts, generations=1, *args, **kwargs):
        batch = original(self, prompts, generations, *args, **kwargs)
        pl = batch.prompt_mask.sum(1).tolist()
        calls.append({"distinct_prompts": pl[::generations], "row_prompts": pl, "lengths": batch.lengths.tolist(),
                      "prefix": common_prefix_len(batch.prompt_ids[::generations], batch.prompt_mask[::generations])})
        return batch

    he.HFGenerationEngine.generate = recording
    with tempfile.TemporaryDirectory() as out:
        overrides = [f"output_dir={out}", f"steps={a.warmup + a.steps}", "save_every=0",
                     "log.tensorboard=false", "log.progress=false", "log.samples_per_step=0"]
        if a.model:
            overrides.append(f"model={a.model}")
        cfg = resolve_config(a.config, overrides + a.overrides) if a.config else demo_config(overrides + a.overrides)
        trainer = Trainer(cfg, progress=False)
        shape = ModelShape(trainer.model)
        captured: list = []
        pick = trainer.rollout_stage.training_batch

        def keep(pool):
            batch = pick(pool)
            captured.append(batch)
            return batch

        trainer.rollout_stage.training_batch = keep
        steps = []
        for i in range(a.warmup + a.steps):
            calls.clear()
            captured.clear()
            m = trainer.train_step()
            if i < a.warmup:
                continue
            batch = captured[-1]
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + trainer.step - 1)
            mbs = [torch.arange(len(batch))] if cfg.algo.minibatches == 1 else \
                list(torch.tensor_split(torch.randperm(len(batch), generator=gen), cfg.algo.minibatches))
            steps.append({"seconds": {"generation": m["time/generate_s"], "rewards": m["time/reward_s"],
                                      "logprob passes": m["time/logprob_s"], "update": m["time/update_s"],
                                      "step": m["step_s"]},
                          "generate_calls": list(calls), "batch": batch_work(batch, mbs, cfg),
                          "response_length": m["response_length/mean"], "samples": len(batch)})
        calls.clear()
        evaluation = None
        if not a.no_eval:
            t = time.perf_counter()
            res = evaluate_policy(trainer.model, trainer.tokenizer, trainer.task, cfg)
            evaluation = {"seconds": time.perf_counter() - t, "generate_calls": list(calls), "n": res.get("n")}
    json.dump({"shape": vars(shape), "steps": steps, "evaluation": evaluation, "precision": cfg.precision,
               "revision": os.environ.get("STEP_FLOOR_REVISION", ""),
               "passes": {"behaviour": cfg.algo.ppo_epochs * cfg.algo.minibatches > 1, "reference": cfg.algo.beta > 0},
               "optimizer_bytes_per_param": 4 * 7},  # fp32 p r/w, g r, m r/w, v r/w
              sys.stdout)


def batch_work(batch, minibatches, cfg) -> dict:
    """Per row: its prompt key, prompt length, response length; the minibatches' rows; the prompt prefix
    every row shares (shared_prefix.common_prefix_len: 0 below its minimum)."""
    from fairalign.rollout.shared_prefix import common_prefix_len

    pl = batch.prompt_mask.sum(1).tolist()
    keys = [hash(tuple(r[m.bool()].tolist())) for r, m in zip(batch.prompt_ids, batch.prompt_mask)]
    return {"prompt_keys": keys, "prompt_lengths": pl, "lengths": batch.lengths.tolist(),
            "minibatches": [mb.tolist() for mb in minibatches], "epochs": cfg.algo.ppo_epochs,
            "prefix": common_prefix_len(batch.prompt_ids, batch.prompt_mask)}


def rows_forward(shape: ModelShape, work: dict, rows: list[int], padded: bool = False) -> float:
    """FLOPs of one forward over `rows` of a batch, each distinct prompt once; `padded`: every prompt and
    response as long as the longest among `rows` (what a padded forward computes)."""
    if not rows:
        return 0.0
    pl = {work["prompt_keys"][i]: work["prompt_lengths"][i] for i in rows}
    rl = [(work["prompt_lengths"][i], work["lengths"][i]) for i in rows]
    if padded:
        P, R = max(pl.values()), max(r for _, r in rl)
        pl, rl = {k: P for k in pl}, [(P, R)] * len(rl)
    return sequence_forward(shape, list(pl.values()), rl, 0 if padded else work.get("prefix", 0))


def floors(run: dict, machine: dict) -> list[dict]:
    """Per timed step: {phase: floor seconds}; plus the evaluation's."""
    shape = ModelShape.__new__(ModelShape)
    shape.__dict__.update(run["shape"])
    bf16 = run["precision"] == "bf16"
    rate = 1e9 * (machine["bf16_gflops"] if bf16 else machine["fp32_gflops"])
    bw = 1e9 * machine["copy_gbs"]
    weight_bytes = shape.params * (2 if bf16 else 4)
    out = []
    for st in run["steps"]:
        w = st["batch"]
        every = list(range(len(w["lengths"])))
        first = set(w["minibatches"][0])
        later = [i for i in every if i not in first]  # the first minibatch's forward gives its own
        gen = sum(generation_floor(shape, c, rate, bw, weight_bytes) for c in st["generate_calls"])
        row = {"generation": gen, "rewards": 0.0}
        for key, padded in (("", False), (" (padded)", True)):
            lp = (run["passes"]["behaviour"] * rows_forward(shape, w, later, padded)
                  + run["passes"]["reference"] * rows_forward(shape, w, every, padded)) / rate
            upd = w["epochs"] * sum(3 * rows_forward(shape, w, mb, padded) / rate
                                    + shape.trainable * run["optimizer_bytes_per_param"] / bw
                                    for mb in w["minibatches"])
            row.update({"logprob passes" + key: lp, "update" + key: upd})
        row["step"] = gen + row["logprob passes"] + row["update"]
        out.append(row)
    # evaluation runs in fp32 whatever `precision` says (eval/run.py does not autocast)
    ev = sum(generation_floor(shape, c, 1e9 * machine["fp32_gflops"], bw, shape.params * 4)
             for c in (run.get("evaluation") or {}).get("generate_calls", []))
    return out, ev


def summarize(run: dict, machine: dict) -> dict:
    """{phase: (median seconds, median floor)} for the phases the run measured (a file saved before the
    rewards were timed apart has them inside generation), plus "samples/s" (training samples per step second)."""
    fl, ev = floors(run, machine)
    out = {}
    for ph in PHASES[:-1]:
        if ph not in run["steps"][0]["seconds"]:
            continue
        out[ph] = (statistics.median(s["seconds"][ph] for s in run["steps"]), statistics.median(f.get(ph, 0.0) for f in fl))
        if ph + " (padded)" in fl[0]:
            out[ph + " (padded)"] = (out[ph][0], statistics.median(f[ph + " (padded)"] for f in fl))
    if run.get("evaluation"):
        out["evaluation"] = (run["evaluation"]["seconds"], ev)
    if "samples" in run["steps"][0]:
        out["samples/s"] = statistics.median(s["samples"] / s["seconds"]["step"] for s in run["steps"])
    return out


# ----------------------------------------------------------------------------------------- the parent
def run_child(src: Path, a, config: str | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--steps", str(a.steps), "--warmup",
           str(a.warmup), "--threads", str(a.threads)] + (["--model", a.model] if a.model else []) + \
        (["--config", config] if config else []) + (["--no-eval"] if a.no_eval else []) + a.overrides
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(a.threads), **OFFLINE_ENV}
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-4000:])
        raise SystemExit(f"step_floor: the measurement of {src} failed (exit {p.returncode})")
    run = json.loads(p.stdout.strip().splitlines()[-1])
    run["wall_s"] = time.perf_counter() - t
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="swap the demo's model (tiny | smollm2-135m | a folder)")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="measurements per tree (alternating with --against)")
    ap.add_argument("--against", default=None, metavar="REV", help="a git revision to measure side by side")
    ap.add_argument("--json", default=None, help="write the machine, the runs and the table here")
    ap.add_argument("--table", default=None, metavar="JSON", help="re-print the table of a saved --json file")
    ap.add_argument("--config", default=None, metavar="SOURCE",
                    help="a config file or preset to measure instead of the demo's configuration")
    ap.add_argument("--baseline-config", default=None, metavar="SOURCE",
                    help="another config file or preset, measured side by side on this tree")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0 or a.repeats < 1:
        raise SystemExit("step_floor: --steps and --repeats must be >= 1, --warmup >= 0")
    if a.child:
        return child(a)
    if a.against and a.baseline_config:
        raise SystemExit("step_floor: --against and --baseline-config are alternatives: give one")
    if a.table:  # re-print a saved measurement (floors recomputed from its raw counts)
        saved = json.loads(Path(a.table).read_text())
        return print_table(saved["machine"], saved["runs"], saved.get("against"), saved["argv"])
    machine = measure_machine(a.threads)
    print(f"machine: fp32 {machine['fp32_gflops']:.0f} GFLOP/s, bf16 {machine['bf16_gflops']:.0f} GFLOP/s, "
          f"copy {machine['copy_gbs']:.1f} GB/s (read + write), {a.threads} threads", flush=True)
    trees = {"this tree": (REPO / "src", a.config)}
    if a.baseline_config:
        trees[a.baseline_config] = (REPO / "src", a.baseline_config)
    tmp = None
    if a.against:
        tmp = tempfile.mkdtemp(prefix="step_floor-")
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", tmp, a.against], check=True)
        trees[a.against] = (Path(tmp) / "src", a.config)
    runs: dict[str, list] = {name: [] for name in trees}
    try:
        for r in range(a.repeats):
            for name, (src, config) in trees.items():
                print(f"repeat {r + 1}/{a.repeats}: {name} ...", flush=True)
                runs[name].append(run_child(src, a, config))
    finally:
        if tmp:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", tmp], check=False)
    other = a.against or a.baseline_config
    print_table(machine, runs, other, sys.argv[1:])
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine, "argv": sys.argv[1:], "against": other,
                                            "runs": runs}, indent=1))
        print(f"wrote {a.json}")


def print_table(machine: dict, runs: dict, against: str | None, argv: list) -> None:
    """The per-phase table: median seconds, floor and ratio of this tree (and of `against`: another revision
    or another configuration)."""
    print(f"machine: fp32 {machine['fp32_gflops']:.0f} GFLOP/s, bf16 {machine['bf16_gflops']:.0f} GFLOP/s, "
          f"copy {machine['copy_gbs']:.1f} GB/s (read + write), {machine['threads']} threads")
    sums = {name: [summarize(run, machine) for run in rs] for name, rs in runs.items()}
    med = lambda name, ph, k: statistics.median(x[ph][k] for x in sums[name])  # noqa: E731
    first = runs["this tree"][0]
    n_steps = sum(len(r["steps"]) for r in runs["this tree"])
    print(f"\nargv {' '.join(argv)}; {n_steps} timed steps in {len(runs['this tree'])} measurement(s) each; "
          f"precision {first['precision']}; mean response length "
          f"{statistics.mean(s['response_length'] for r in runs['this tree'] for s in r['steps']):.1f}\n")
    ratio = lambda sec, fl: f"{sec / fl:.2f}" if fl > 0 else "-"  # noqa: E731
    head = "| phase | s (this tree) | floor s | ratio |"
    if against:
        head += f" s ({against}) | ratio ({against}) | speed-up |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for ph in PHASES:
        if ph not in sums["this tree"][0]:
            continue
        s, f = med("this tree", ph, 0), med("this tree", ph, 1)
        row = f"| {ph} | {s:.2f} | {f:.2f} | {ratio(s, f)} |"
        if against and ph in sums[against][0]:
            s2, f2 = med(against, ph, 0), med(against, ph, 1)
            row += f" {s2:.2f} | {ratio(s2, f2)} | {s2 / s:.2f}x |"
        print(row)
    if "samples/s" in sums["this tree"][0]:
        sps = statistics.median(x["samples/s"] for x in sums["this tree"])
        row = f"| training samples per second of a step | {sps:.3f} | | |"
        if against and "samples/s" in sums[against][0]:
            sps2 = statistics.median(x["samples/s"] for x in sums[against])
            row += f" {sps2:.3f} | | {sps / sps2:.2f}x |"
        print(row)
    print("\n(step = generation + rewards + log-prob passes + update + metrics; evaluation: one pass over eval.examples)")
    for ph in ("logprob passes", "update"):
        fl = statistics.median(x[ph + " (padded)"][1] for x in sums["this tree"])
        print(f"{ph}: the floor of the padded work (every row as long as its micro-batch's longest) is "
              f"{fl:.2f} s, ratio {ratio(med('this tree', ph, 0), fl)}")
    if first["precision"] == "bf16":  # against what fp32 could reach on the same batches: the goal's yardstick
        phases = ("generation", "logprob passes", "update", "step")
        pairs: dict[str, list] = {ph: [] for ph in phases}  # (seconds, fp32 floor) per timed step
        for r in runs["this tree"]:
            for st, fl in zip(r["steps"], floors(dict(r, precision="fp32"), machine)[0]):
                for ph in phases:
                    pairs[ph].append((st["seconds"][ph], fl[ph]))
        print("the same work at the fp32 matmul rate and 4-byte weights (median per step): " + ", ".join(
            f"{ph} floor {statistics.median(f for _, f in pairs[ph]):.2f} s, ratio "
            f"{statistics.median(x / f for x, f in pairs[ph]):.2f}" for ph in phases))


if __name__ == "__main__":
    main()
