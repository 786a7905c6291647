"""The RLPA CPU study's harness (docs/evidence/rlpa_cpu): its spec loads with compare's loader and names the
preset; summarize.py's numbers on hand-made records (2 seeds x 3 profiles x 3 turns) are the hand-computed ones;
study.py runs a tiny-model 1-seed study end to end (greedy compare, a steps=0 warm-up arm, sampled decoding, the
oracle, records.jsonl, the summary) and a second call reuses everything."""
import importlib.util
import io
import json
from pathlib import Path

import pytest
import yaml

from fairalign.compare import load_study
from fairalign.config import to_dict
from fairalign.config.presets import get_preset

HERE = Path(__file__).resolve().parents[1] / "docs" / "evidence" / "rlpa_cpu"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"rlpa_cpu_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


summ = _load("summarize")
study_py = _load("study")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_spec_loads_with_compares_loader_and_takes_the_recipe_from_the_preset():
    study = load_study(HERE / "spec.yaml")
    assert study.arms == ["warmup", "rl"] and study.seeds == [0, 1, 2] and study.primary == ["dialogue/avg"]
    assert str(study.output_dir) == "runs/study-rlpa-cpu"
    assert study.eval_overrides == ["eval.examples=64", "eval.batch_size=64"]
    recipe = {k: v for k, v in _flat(get_preset("rlpa-smollm2-cpu")).items() if k != "output_dir"}
    for arm in study.arms:
        for seed in study.seeds:
            cfg = _flat(to_dict(study.configs[arm][seed]))
            # every key of the recipe is the preset's (the one place it is set), but the warm-up arm's steps
            assert {k: cfg[k] for k in recipe if not (arm == "warmup" and k == "steps")} == \
                   {k: v for k, v in recipe.items() if not (arm == "warmup" and k == "steps")}
            assert cfg["task_options.n_test"] == 64 and cfg["eval.temperature"] == 0.0
            assert cfg["output_dir"] == f"runs/study-rlpa-cpu/{arm}/seed-{seed}" and cfg["seed"] == seed
    assert study.configs["warmup"][0].steps == 0
    assert study.configs["rl"][0].steps == get_preset("rlpa-smollm2-cpu")["steps"]
    assert study.configs["warmup"][0].sft.steps > 0  # the warm-up arm is the supervised warm-up alone


# ---------------------------------------------------------------------------------------------
# summarize.py on hand-made records

AL = {  # arm -> seed -> profile -> AL per turn (greedy)
    "warmup": {0: {"p0": [50, 50, 50], "p1": [0, 50, 100], "p2": [50, 0, 50]},     # curve 33.3 33.3 66.7
               1: {"p0": [50, 100, 100], "p1": [0, 0, 50], "p2": [50, 50, 50]}},   # curve 33.3 50.0 66.7
    "untrained": {0: {"p0": [0, 0, 50], "p1": [0, 0, 0], "p2": [0, 0, 0]},           # curve 0 0 16.7
                  1: {"p0": [0, 0, 0], "p1": [0, 0, 0], "p2": [0, 50, 50]}},         # curve 0 16.7 16.7
}
AL["rl"] = {s: {p: [v + 25 for v in al] for p, al in ps.items()} for s, ps in AL["warmup"].items()}  # +25 everywhere


def _records():
    rows = []
    for arm, seeds in AL.items():
        for seed, profiles in seeds.items():
            for p, al in profiles.items():
                for k, v in enumerate(al, 1):
                    rows.append({"arm": arm, "seed": seed, "decoding": "greedy", "sample": 0, "profile": p, "turn": k,
                                 "al": float(v), "profile_f1": v / 100, "response_pass": int(v >= 50),
                                 "repeated": arm == "warmup" and seed == 0 and p == "p0" and k == 3,
                                 "truncated": False})
    for arm, by_sample in (("warmup", {0: 0.0, 1: 100.0}), ("rl", {0: 100.0, 1: 50.0})):  # sampled: 2 samples
        for seed in (0, 1):
            for s, v in by_sample.items():
                for p in ("p0", "p1", "p2"):
                    for k in (1, 2, 3):
                        rows.append({"arm": arm, "seed": seed, "decoding": "sampled", "sample": s, "profile": p,
                                     "turn": k, "al": v, "profile_f1": 0.0, "response_pass": 0, "repeated": False,
                                     "truncated": s == 1})
    for p in ("p0", "p1", "p2"):
        for k, v in enumerate([50, 75, 100], 1):
            rows.append({"arm": "oracle", "seed": None, "decoding": "greedy", "sample": 0, "profile": p, "turn": k,
                         "al": float(v), "profile_f1": 1.0, "response_pass": 1, "repeated": False, "truncated": False})
    return rows


def test_summary_of_hand_made_records(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    runs = tmp_path / "runs"
    for seed, rewards in ((0, [0.5, 1.0]), (1, [1.0, 1.5])):
        (runs / "rl" / f"seed-{seed}").mkdir(parents=True)
        (runs / "rl" / f"seed-{seed}" / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": i, "reward/mean": r, "entropy": r / 10}) + "\n"
                    for i, r in enumerate(rewards, 1)))
    (runs / "warmup" / "seed-0").mkdir(parents=True)
    (runs / "warmup" / "seed-0" / "metrics.jsonl").write_text("")  # steps=0: no RL step
    out = io.StringIO()
    assert summ.main([str(records), "--json", str(tmp_path / "s.json"), "--plot", str(tmp_path / "al.png"),
                      "--runs", str(runs)], stream=out) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert (tmp_path / "al.png").stat().st_size > 0
    g, d = s["arms_summary"]["greedy"], s["differences"]["greedy"]
    assert list(g) == ["untrained", "warmup", "rl", "oracle"] and list(s["arms_summary"]["sampled"]) == ["warmup", "rl"]
    # AVG: the mean over seeds of each seed's AVG: warmup (44.44 + 50) / 2, untrained (5.56 + 11.11) / 2
    assert g["warmup"]["avg"]["mean"] == pytest.approx((400 / 9 + 50) / 2)
    assert g["untrained"]["avg"]["mean"] == pytest.approx((50 / 9 + 100 / 9) / 2)
    assert g["rl"]["avg"]["mean"] == pytest.approx((400 / 9 + 50) / 2 + 25)
    assert g["warmup"]["al/3"]["mean"] == pytest.approx(200 / 3)
    # N-IR / N-R² per seed: warmup seed 0 y = (0, 0, 1): slope 0.5, R² 0.75; seed 1 linear: slope 0.5, R² 1
    assert g["warmup"]["n_ir"]["mean"] == pytest.approx(0.5) and g["warmup"]["n_r2"]["mean"] == pytest.approx(0.875)
    assert g["rl"]["n_ir"]["mean"] == pytest.approx(0.5)  # a shift leaves the normalized curve as it is
    # the seeds' mean curve (33.3, 41.7, 66.7): y = (0, 1/4, 1), slope 0.5, R² = 1 - (1/24) / (13/24)
    assert g["warmup"]["pooled_curve"]["n_r2"] == pytest.approx(12 / 13)
    assert g["oracle"]["avg"]["mean"] == pytest.approx(75.0) and g["oracle"]["avg"]["ci95"] == pytest.approx([75, 75])
    assert g["oracle"]["seeds"] == 1 and g["oracle"]["profiles"] == 3
    # rl − warmup is +25 for every seed, profile and turn: the interval shrinks to [25, 25]
    assert d["rl − warmup"]["avg"]["mean"] == pytest.approx(25.0)
    assert d["rl − warmup"]["avg"]["ci95"] == pytest.approx([25.0, 25.0])
    assert d["rl − warmup"]["al/2"]["ci95"] == pytest.approx([25.0, 25.0])
    assert d["rl − warmup"]["n_ir"]["ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert d["rl − warmup"]["avg"]["mde80"] == pytest.approx(0.0, abs=1e-9)
    # warmup − untrained varies over profiles: an interval of some width around its point estimate
    w = d["warmup − untrained"]["avg"]
    assert w["mean"] == pytest.approx((400 / 9 + 50) / 2 - (50 / 9 + 100 / 9) / 2)
    assert w["ci95"][0] < w["mean"] < w["ci95"][1] and w["ci95"][1] - w["ci95"][0] > 1.0
    assert d["rl − untrained"]["avg"]["mean"] == pytest.approx(w["mean"] + 25)
    # sampled: the two samples averaged within each profile first: warmup 50, rl 75 at every turn
    sa = s["arms_summary"]["sampled"]
    assert sa["warmup"]["avg"]["mean"] == pytest.approx(50.0) and sa["rl"]["avg"]["mean"] == pytest.approx(75.0)
    assert sa["rl"]["samples"] == 2 and sa["rl"]["by_turn"]["truncated"] == pytest.approx([50.0] * 3)
    assert s["differences"]["sampled"]["rl − warmup"]["avg"]["ci95"] == pytest.approx([25.0, 25.0])
    # per-turn rates: warmup repeats in 1 of 3 dialogues at turn 3 in seed 0, none in seed 1
    assert g["warmup"]["by_turn"]["repeated"] == pytest.approx([0.0, 0.0, 100 / 6])
    assert g["warmup"]["by_turn"]["profile_f1"] == pytest.approx([100 / 3, 125 / 3, 200 / 3])
    assert s["target"] == {"primary_lower_bound_above_0": True, "rl_n_ir_above_0": True, "rl_n_r2_at_least_0.5": True}
    assert s["training_reward"] == {"rl": {"0": [0.5, 1.0], "1": [1.0, 1.5]}}
    assert s["training"]["entropy"] == {"rl": {"0": [0.05, 0.1], "1": [0.1, 0.15]}}
    assert s["training"]["approx_kl"] == {}  # not logged by these runs
    assert "| 2 | 0.100 | 0.150 | 0.125 |" in out.getvalue()  # entropy, step 2: the seeds and their mean
    text = out.getvalue()
    assert "target (greedy): rl − warmup AVG +25.00 [+25.00, +25.00], lower bound > 0: yes" in text
    assert "| 2 | 1.000 | 1.500 | 1.250 |" in text  # training reward, step 2: seeds and mean


def test_summary_refuses_records_without_a_key(tmp_path):
    row = _records()[0]
    del row["repeated"]
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(SystemExit, match="line 1 has no repeated"):
        summ.main([str(tmp_path / "r.jsonl")], stream=io.StringIO())


# ---------------------------------------------------------------------------------------------
# study.py on the tiny model

TINY_BASE = {"model": "tiny", "steps": 1, "threads": 1,
             "task_options": {"n_test": 2, "n_train": 8, "max_turns": 2, "eval_turns": 2, "demo_turns": 2},
             "rollout": {"prompts_per_step": 1, "generations": 2, "max_new_tokens": 8},
             "sft": {"steps": 1, "batch_size": 2}, "log": {"tensorboard": False}}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("rlpa_cpu")
    spec = yaml.safe_load((HERE / "spec.yaml").read_text())  # the study's spec, made tiny
    spec.update(output_dir=str(folder / "study"), seeds=[0], base=TINY_BASE, eval={"examples": 2, "batch_size": 2})
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = io.StringIO()
    argv = [str(folder / "spec.yaml"), "--samples", "2", "--out", str(folder / "results" / "records.jsonl")]
    assert study_py.main(argv, stream=out) == 0
    return folder, argv, out.getvalue()


def test_study_writes_every_record(tiny_study):
    folder, _, _ = tiny_study
    study = folder / "study"
    rows = [json.loads(x) for x in (folder / "results" / "records.jsonl").read_text().splitlines()]
    assert all(list(r) == list(summ.KEYS) for r in rows)
    counts = {}
    for r in rows:
        key = (r["arm"], r["seed"], r["decoding"], r["sample"])
        counts[key] = counts.get(key, 0) + 1
    per_eval = 2 * 2  # profiles x turns
    want = {(arm, 0, dec, s): per_eval for arm in ("untrained", "warmup", "rl")
            for dec, samples in (("greedy", [0]), ("sampled", [0, 1])) for s in samples}
    want[("oracle", None, "greedy", 0)] = per_eval
    assert counts == want  # (3 arms x 1 seed x (1 greedy + 2 sampled) + the oracle) x 2 profiles x 2 turns
    # greedy records are compare's eval.json turns: al = 50 x total; the warm-up arm (steps 0) was evaluated
    assert (study / "warmup" / "seed-0" / "final").is_dir()
    for arm in ("warmup", "rl", "untrained"):
        ev = json.loads((study / arm / "seed-0" / "eval.json").read_text())
        mine = [r for r in rows if r["arm"] == arm and r["decoding"] == "greedy"]
        theirs = [(d["profile_id"], t["turn"], 50.0 * t["total"], t["profile"]) for d in ev["dialogues"]
                  for t in d["turns"]]
        assert [(r["profile"], r["turn"], r["al"], r["profile_f1"]) for r in mine] == theirs
    # same seed, same warm-up: the two arms' supervised steps are the same
    sft = [[json.loads(x)["sft/loss"] for x in (study / a / "seed-0" / "sft_metrics.jsonl").read_text().splitlines()]
           for a in ("warmup", "rl")]
    assert sft[0] == sft[1]
    # sampled: the training temperature (the preset's 0.8), one candidate, sample s with evaluation seed s
    sampled = json.loads((study / "rl" / "seed-0" / "eval_sampled.json").read_text())
    assert [(x["sample"], x["settings"]["seed"], x["settings"]["temperature"], x["settings"]["generations"])
            for x in sampled["samples"]] == [(0, 0, 0.8, 1), (1, 1, 0.8, 1)]
    # the oracle: the rules judge passes its turn 1 (F1 0 before the user revealed anything): AL(1) = 50
    oracle = [r for r in rows if r["arm"] == "oracle"]
    assert [r["al"] for r in oracle if r["turn"] == 1] == [50.0, 50.0]
    assert all(r["response_pass"] == 1 and not r["repeated"] for r in oracle)
    assert {r["profile"] for r in oracle} == {r["profile"] for r in rows if r["arm"] == "rl"}
    results = folder / "results"
    for name in ("summary.json", "al.png", "timing.json", "comparison.json", "runs/rl/seed-0/metrics.jsonl"):
        assert (results / name).is_file(), name
    assert json.loads((results / "summary.json").read_text())["records"] == len(rows)


def test_a_second_call_reuses_everything(tiny_study):
    folder, argv, _ = tiny_study
    study = folder / "study"
    files = [study / a / "seed-0" / n for a in ("warmup", "rl", "untrained")
             for n in ("eval.json", "eval_sampled.json")]
    files += [study / "oracle" / "eval.json", folder / "results" / "records.jsonl"]
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files[:-1]] + [files[-1].read_bytes()]
    out = io.StringIO()
    assert study_py.main(argv, stream=out) == 0
    text = out.getvalue()
    assert "(0 trained, 0 evaluated, 2 reused)" in text and "[oracle] reused" in text
    assert text.count("sampled: 2 sample(s) reused") == 3
    after = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files[:-1]] + [files[-1].read_bytes()]
    assert after == before
    # one more sample: only it is evaluated, per policy
    out = io.StringIO()
    assert study_py.main([*argv[:2], "3", *argv[3:], "--only", "sampled"], stream=out) == 0
    assert out.getvalue().count("sampled 3/3") == 3 and "sampled 1/3" not in out.getvalue()
