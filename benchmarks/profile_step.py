"""Where a fairalign training step spends its time (a benchmark script, not a test).

Runs --warmup untimed steps and then --steps steps of `Trainer.train_step()` for one config and prints
the median of the trainer's own time/* metrics (generation, rewards, log-prob passes, update) with
their share of the step, generated tokens per second, and a finer split of the update measured by
timing wrappers: the training forward (`sequence_logprobs`), the policy loss, backward, gradient
clipping and the optimizer step (the rest of the update is metric bookkeeping); with a critic
(`algo.advantage=gae algo.critic=head|model`) also the value model's forward (`sequence_values`),
the value loss, the value model's backward and the critic's optimizer step. The critic's no-grad
values pass (and the value head's shared behaviour pass) is part of the "logprob" phase. With
--torch-profile, one extra step runs under torch.profiler and the top-15 ops by self CPU time are
printed. Any config key can be overridden with KEY=VALUE (as on the `fairalign train` command line).

    PYTHONPATH=src .venv/bin/python benchmarks/profile_step.py --model tiny --prompts 8 --generations 4 \
        --max-new-tokens 32 [--steps 3 --threads 2 --torch-profile] [algo.loss=fspo ...]
    PYTHONPATH=src .venv/bin/python benchmarks/profile_step.py --model tiny algo.advantage=gae algo.critic=model
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
PHASES = (("generate", "time/generate_s"), ("reward", "time/reward_s"), ("logprob (+ critic values, advantages)", "time/logprob_s"),
          ("update", "time/update_s"))


class PhaseTimer:
    """Accumulates wall time of wrapped callables per name, per step."""

    def __init__(self):
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []

    def wrap(self, name: str, fn, when=None):
        """`fn` timed under `name` (only calls for which `when()` is true, if given)."""
        def wrapper(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)
        return wrapper

    def add(self, name: str, seconds: float) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = {}


def instrument(trainer, timer: PhaseTimer) -> None:
    """Wrap the update's pieces with timers (the trainer module's names are patched, not fairalign's code)."""
    import torch
    import fairalign.config.methods as mm
    import fairalign.train.policy as tm

    # grad-enabled calls only: the no-grad behaviour / reference passes belong to the "logprob" phase
    tm.sequence_logprobs = timer.wrap("  forward (sequence_logprobs)", tm.sequence_logprobs,
                                      when=torch.is_grad_enabled)
    mm.compute_policy_loss = timer.wrap("  policy loss", mm.compute_policy_loss)  # what PolicyLoss calls
    trainer.dist.backward = timer.wrap("  backward", trainer.dist.backward)
    torch.nn.utils.clip_grad_norm_ = timer.wrap("  grad clip", torch.nn.utils.clip_grad_norm_)
    starts = []
    trainer.optimizer.register_step_pre_hook(lambda *_: starts.append(time.perf_counter()))
    trainer.optimizer.register_step_post_hook(lambda *_: timer.add("  optimizer step", time.perf_counter() - starts.pop()))
    critic = trainer.critic
    if hasattr(critic, "optimizer"):  # algo.critic=head|model
        import fairalign.rollout.values as vm
        import fairalign.train.critic as cm

        vm.sequence_values = timer.wrap("  critic: value model forward (sequence_values)", vm.sequence_values,
                                        when=torch.is_grad_enabled)
        cm.compute_value_loss = timer.wrap("  critic: value loss", cm.compute_value_loss)
        if critic.dist is not trainer.dist:
            critic.dist.backward = timer.wrap("  critic: value model backward", critic.dist.backward)
        critic.optimizer.register_step_pre_hook(lambda *_: starts.append(time.perf_counter()))
        critic.optimizer.register_step_post_hook(
            lambda *_: timer.add("  critic: optimizer step", time.perf_counter() - starts.pop()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2-135m | a model folder")
    ap.add_argument("--task", default="personas")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-profile", action="store_true", help="profile one extra step with torch.profiler")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    a = ap.parse_args()
    if a.steps < 1 or a.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import torch
    from fairalign.config import build_config
    from fairalign.train.trainer import Trainer

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as out:
        n_total = a.warmup + a.steps + (1 if a.torch_profile else 0)
        base = {"model": a.model, "task": a.task, "seed": a.seed, "output_dir": out, "steps": n_total,
                "rollout": {"prompts_per_step": a.prompts, "generations": a.generations,
                            "max_new_tokens": a.max_new_tokens},
                "log": {"samples_per_step": 0, "tensorboard": False, "progress": False}}
        cfg = build_config(base, a.overrides)
        t0 = time.perf_counter()
        trainer = Trainer(cfg, progress=False)
        print(f"model {cfg.model}, {a.prompts} prompts x {a.generations} generations, {a.max_new_tokens} new tokens, "
              f"loss {cfg.algo.loss}/{cfg.algo.agg}, advantage {cfg.algo.advantage}, critic {cfg.algo.critic}, precision {cfg.precision}, threads {torch.get_num_threads()}; "
              f"setup {time.perf_counter() - t0:.1f} s")
        timer = PhaseTimer()
        instrument(trainer, timer)
        rows = []
        for i in range(a.warmup + a.steps):
            m = trainer.train_step()
            timer.end_step()
            if i >= a.warmup:
                rows.append(m)
        detail = timer.steps[a.warmup:]
        if a.torch_profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.train_step()
        if trainer.logger is not None:
            trainer.logger.close()

    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    step = med("step_s")
    print(f"\nmedian over {len(rows)} steps: {step:.3f} s/step, {med('tokens_per_s'):.1f} generated tokens/s, "
          f"mean response length {statistics.mean(r['response_length/mean'] for r in rows):.1f}\n")
    print("| phase | median s | share of step |")
    print("|---|---|---|")
    for name, key in PHASES:
        print(f"| {name} | {med(key):.3f} | {100 * med(key) / step:.0f}% |")
        if name == "update":
            subs = sorted({k for d in detail for k in d})
            for sub in subs:
                v = statistics.median(d.get(sub, 0.0) for d in detail)
                print(f"| {sub} | {v:.3f} | {100 * v / step:.0f}% |")
            rest = statistics.median(r["time/update_s"] - sum(d.get(k, 0.0) for k in subs)
                                     for r, d in zip(rows, detail))
            print(f"|   rest of update (loss stats, clip-rate bookkeeping) | {rest:.3f} | {100 * rest / step:.0f}% |")
    other = statistics.median(r["step_s"] - sum(r[k] for _, k in PHASES) for r in rows)
    print(f"| metrics + logging (rest of step) | {other:.3f} | {100 * other / step:.0f}% |")
    print("(each row is a median over steps, so the rows need not add up exactly to the step median)")
    gen_tok = statistics.median(r["response_length/mean"] * a.prompts * a.generations for r in rows)
    print(f"\ngeneration: {gen_tok / med('time/generate_s'):.1f} tokens/s over {a.prompts * a.generations} rows")
    if a.torch_profile:
        print("\ntorch.profiler, one step, top-15 ops by self CPU time:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
