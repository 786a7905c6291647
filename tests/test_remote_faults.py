"""A remote simulated user or judge that keeps failing, through the CLI, against the fake endpoint of
fake_openai.py on 127.0.0.1 (started and stopped by each test):
- `fairalign train`: exit 1, one line naming the role, the endpoint and the fault, the next line the resume
  command; the last completed step is checkpointed, and `--resume` once the endpoint behaves continues
  exactly as an uninterrupted run (metrics, samples and bit-identical weights);
- `fairalign eval` / `eval-dialogue`: the finished batches are kept and a rerun does not redo them (the
  endpoint counts the requests), and the result equals an uninterrupted evaluation;
- `fairalign compare`: a fault in training or in evaluation stops the study with a rerun hint; the rerun
  resumes it;
- the API key never appears in any file of the run or in the output.
Runs are tiny (the tiny model, 2 dialogues x 2 turns x 2 candidates per step). The tiny model never writes
a well-formed turn, and the judge only sees well-formed ones: the judge's tests replace the texts the engine
samples with one well-formed turn (`well_formed_turns`)."""
import json
import shutil

import pytest
import torch
import yaml
from fake_openai import OK, FakeOpenAI

from fairalign.cli import main as cli_main
from fairalign.config import build_config, dump_yaml

KEY = "sk-remote-faults-SECRET-71c2aa"
KEY_ENV = "FAIRALIGN_FAULTS_KEY"
TIMING = ("step_s", "tokens_per_s", "time/")
TRAIN = ["model=tiny", "task=rlpa", "task_options.max_turns=2", "task_options.n_train=8", "task_options.n_test=4",
         "rollout.prompts_per_step=2", "rollout.generations=2", "rollout.max_new_tokens=6", "log.tensorboard=false",
         "log.progress=false", "seed=5", "steps=3"]
USER_PER_STEP = 2   # 2 dialogues x 1 user reply (the last of the 2 turns gets none)
JUDGE_PER_STEP = 8  # 2 dialogues x 2 candidates x 2 turns, every one well-formed
FAULTS = {  # action of the fake endpoint -> the fault as the error line says it
    "http-500": (("status", 500), "failed after 2 attempts; last error: HTTP 500: server says: 500 auth=Bearer ***"),
    "http-401": (("status", 401), "HTTP 401: server says: 401 auth=Bearer *** (not retried)"),
    "not-json": (("raw", b"<html>\n busy\n</html>"), "malformed JSON in the reply: '<html> busy </html>'"),
    "no-choices": (("raw", b'{"error": "overloaded"}'),
                   "the reply has no choices[0].message.content (keys: ['error'])"),
    "hang": (("sleep", 1.5), "failed after 2 attempts; last error: timed out after 0.3s"),
    "refused": (("refuse",), "failed after 2 attempts; last error: connection error: [Errno 111] Connection refused"),
    "429-retry-after": (("status", 429, {"Retry-After": "3600"}),
                        "gave up after 1 of 2 attempts: the endpoint asked to wait 3600s (Retry-After), past "
                        "max_wait_s=180s for one call; last error: HTTP 429: server says: 429 auth=Bearer ***"),
    "503-retry-after": (("status", 503, {"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}), None),
}
ROLE_NAMES = {"user": "simulated user", "judge": "judge"}


@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def remote(srv, role: str) -> list[str]:
    """KEY=VALUE overrides that make `role` ("user" or "judge") the fake endpoint's: short timeout and backoff,
    one retry."""
    opts = {"base_url": srv.url(role), "model": "m", "api_key_env": KEY_ENV, "timeout": 0.3, "max_retries": 1,
            "backoff": 0.05}
    return [f"task_options.{role}=openai", *(f"task_options.{role}_options.{k}={v}" for k, v in opts.items())]


WELL_FORMED = '{"Location": "Oslo"}</profile><response>Nice to meet you!</response>'


def _sample_well_formed_turns(mp: pytest.MonkeyPatch) -> None:
    """The engine's sampled texts replaced by one well-formed turn (its token ids kept), so the judge is asked."""
    from fairalign.rollout import HFGenerationEngine

    real = HFGenerationEngine.generate

    def generate(self, prompts, *args, **kw):
        b = real(self, prompts, *args, **kw)
        b.completions = [WELL_FORMED] * len(b)
        return b
    mp.setattr(HFGenerationEngine, "generate", generate)


@pytest.fixture
def well_formed_turns(monkeypatch):
    _sample_well_formed_turns(monkeypatch)


def endpoint(srv, role: str) -> str:
    return f"{srv.url(role)}/chat/completions"


def _rows(run, name="metrics.jsonl"):
    rows = [json.loads(x) for x in (run / name).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(next((run / "final").glob("*.safetensors"))))


def _no_key_anywhere(folder, *texts):
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for t in texts:
        assert KEY not in t


def _uninterrupted(tmp_path_factory, role: str, well_formed: bool = False):
    """A run of the same config against an endpoint that never fails."""
    run = tmp_path_factory.mktemp(f"full-{role}") / "run"
    with FakeOpenAI() as srv, pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        if well_formed:
            _sample_well_formed_turns(mp)
        assert cli_main(["train", *TRAIN, *remote(srv, role), f"output_dir={run}"]) == 0
    return run


@pytest.fixture(scope="module")
def uninterrupted_user(tmp_path_factory):
    return _uninterrupted(tmp_path_factory, "user")


@pytest.fixture(scope="module")
def uninterrupted_judge(tmp_path_factory):
    return _uninterrupted(tmp_path_factory, "judge", well_formed=True)


def _train_until_fault(srv, role, fault, run, capsys):
    """Step 1 is answered, the fault comes in step 2: exit 1 with the two lines; returns stderr."""
    action, said = FAULTS[fault]
    srv.script(role, [OK] * (USER_PER_STEP if role == "user" else JUDGE_PER_STEP) + [action])
    capsys.readouterr()
    assert cli_main(["train", *TRAIN, *remote(srv, role), f"output_dir={run}"]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    first = f"fairalign: error: step 2 failed: {ROLE_NAMES[role]} at {endpoint(srv, role)}: "
    assert lines[-2].startswith(first), err
    if said is not None:
        assert lines[-2] == first + said
    assert lines[-1] == f"checkpoint of step 1 written; once it works again, resume with: fairalign train --resume {run}"
    assert sum("fairalign: error" in x for x in lines) == 1
    assert (run / "checkpoints" / "step-1" / "COMPLETE").is_file() and not (run / "final").exists()
    assert [r["step"] for r in _rows(run)] == [1]
    _no_key_anywhere(run, out, err)
    return out + err


@pytest.mark.parametrize("fault", [f for f in FAULTS if f != "503-retry-after"])
def test_a_failing_user_stops_training_with_a_checkpoint_and_the_resume_command(server, fault, tmp_path, capsys):
    _train_until_fault(server, "user", fault, tmp_path / "run", capsys)


def test_503_with_a_retry_after_date_names_the_wait(server, tmp_path, capsys):
    text = _train_until_fault(server, "user", "503-retry-after", tmp_path / "run", capsys)
    assert "gave up after 1 of 2 attempts: the endpoint asked to wait" in text
    assert "(Retry-After), past max_wait_s=180s for one call; last error: HTTP 503: server says: 503" in text


@pytest.mark.parametrize("fault", ["no-choices", "http-500", "hang"])
def test_a_failing_judge_stops_training_naming_the_judge(server, fault, tmp_path, capsys, well_formed_turns):
    _train_until_fault(server, "judge", fault, tmp_path / "run", capsys)


@pytest.mark.parametrize("fault", ["http-500", "refused"])
def test_resume_after_a_user_fault_equals_an_uninterrupted_run(server, fault, tmp_path, capsys, caplog,
                                                               uninterrupted_user):
    run = tmp_path / "run"
    text = _train_until_fault(server, "user", fault, run, capsys)
    if fault == "refused":
        server.start()  # the endpoint is back, on the same port
    server.script("user", [OK])
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert _rows(run) == _rows(uninterrupted_user)
    assert _rows(run, "samples.jsonl") == _rows(uninterrupted_user, "samples.jsonl")
    a, b = _weights(run), _weights(uninterrupted_user)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the key is in no file of the run (config, metrics, samples, checkpoints, report, evaluation) nor the output
    assert cli_main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    server.script("user", [OK, OK, ("status", 500)])
    assert cli_main(["eval", str(run), "eval.examples=4", "eval.batch_size=2", "task_options.eval_turns=2"]) == 1
    server.script("user", [OK])
    assert cli_main(["eval", str(run), "eval.examples=4", "eval.batch_size=2", "task_options.eval_turns=2"]) == 0
    assert (run / "eval.json").is_file()
    _no_key_anywhere(run, text, *capsys.readouterr(), caplog.text)


def test_resume_after_a_judge_fault_equals_an_uninterrupted_run(server, tmp_path, capsys, well_formed_turns,
                                                                uninterrupted_judge):
    run = tmp_path / "run"
    text = _train_until_fault(server, "judge", "no-choices", run, capsys)
    server.script("judge", [OK])
    assert cli_main(["train", "--resume", str(run)]) == 0
    assert _rows(run) == _rows(uninterrupted_judge)
    assert [r["reward/response"] for r in _rows(run)] == [1.0, 1.0, 1.0]  # the judge's verdicts were used
    a, b = _weights(run), _weights(uninterrupted_judge)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _no_key_anywhere(run, text, *capsys.readouterr())


def test_bad_remote_options_are_config_errors_before_training(server, tmp_path, capsys):
    code = cli_main(["train", *TRAIN, *remote(server, "user"), "task_options.user_options.timout=3",
                     f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert capsys.readouterr().err.startswith("fairalign: error: config key 'task_options.user_options' has unknown "
                                              "key 'timout'; valid: base_url, model, api_key_env, timeout, ")
    code = cli_main(["train", *TRAIN, *remote(server, "judge"), "task_options.judge_options.max_wait_s=0",
                     f"output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert capsys.readouterr().err == ("fairalign: error: config key 'task_options.judge_options': max_wait_s must be "
                                       "> 0 seconds, got 0\n")
    assert server.requests == []


# ------------------------------------------------------------------------------------------ evaluation

def _finished_run(tmp_path, tiny_model_dir, srv, role):
    """A finished rlpa run directory (the tiny model as final/) whose `role` is the fake endpoint's."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "final")
    cfg = build_config({}, [*TRAIN, *remote(srv, role), f"output_dir={run}", "eval.examples=4", "eval.batch_size=2",
                            "task_options.eval_turns=2"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    return run


def test_eval_keeps_the_finished_batches_and_the_rerun_does_not_redo_them(server, tmp_path, tiny_model_dir, capsys):
    run = _finished_run(tmp_path, tiny_model_dir, server, "user")
    assert cli_main(["eval", str(run), "--out", str(tmp_path / "ref")]) == 0  # uninterrupted, for comparison
    reference = json.loads((tmp_path / "ref" / "eval.json").read_text())
    assert not (tmp_path / "ref" / "eval.partial.jsonl").exists()
    server.script("user", [OK, OK, ("status", 500)])  # batch 1 (2 dialogues, 1 user reply each) answered
    capsys.readouterr()
    assert cli_main(["eval", str(run)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == [
        f"fairalign: error: evaluation stopped: simulated user at {endpoint(server, 'user')}: "
        f"{FAULTS['http-500'][1]}",
        f"2 examples evaluated before it are kept in {run / 'eval.partial.jsonl'}; once it works again, rerun the "
        f"same command: fairalign eval {run}"]
    assert not (run / "eval.json").exists()
    kept = server.count("user")
    server.script("user", [OK])
    assert cli_main(["eval", str(run)]) == 0
    assert server.count("user") - kept == 2  # batch 2 only: batch 1 was not redone
    result = json.loads((run / "eval.json").read_text())
    assert not (run / "eval.partial.jsonl").exists()
    strip = lambda r: {k: v for k, v in r.items() if k != "eval_s"}
    assert strip(result) == strip(reference)


def test_eval_dialogue_judge_fault_keeps_batches_that_other_settings_do_not_use(server, tmp_path, capsys,
                                                                               well_formed_turns):
    out = tmp_path / "out"
    args = ["tiny", "--profiles", "4", "--batch-size", "2", "--max-turns", "2", "--max-new-tokens", "4", "--judge",
            "openai", "--openai-base-url", server.url("judge"), "--openai-model", "m", "--api-key-env", KEY_ENV,
            "task_options.judge_options.backoff=0.01", "task_options.judge_options.max_retries=1", "--out", str(out)]
    partial = out / "dialogue_eval.partial.jsonl"
    server.script("judge", [OK] * 4 + [("raw", b"{}")])  # batch 1 (2 dialogues x 2 turns) answered
    assert cli_main(["eval-dialogue", *args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == [
        f"fairalign: error: evaluation stopped: judge at {endpoint(server, 'judge')}: the reply has no "
        f"choices[0].message.content (keys: [])",
        f"2 examples evaluated before it are kept in {partial}; once it works again, rerun the same command: "
        f"fairalign eval-dialogue " + " ".join(args)]
    # other settings (another seed) do not take the kept batch: they start the file over
    server.script("judge", [("raw", b"{}")])
    assert cli_main(["eval-dialogue", *args, "--seed", "9"]) == 1
    assert f"0 examples evaluated before it are kept in {partial}" in capsys.readouterr().err
    server.script("judge", [OK] * 4 + [("raw", b"{}")])
    assert cli_main(["eval-dialogue", *args]) == 1
    assert f"2 examples evaluated before it are kept in {partial}" in capsys.readouterr().err
    kept = server.count("judge")
    server.script("judge", [OK])
    assert cli_main(["eval-dialogue", *args]) == 0
    assert server.count("judge") - kept == 4  # batch 2 only
    res = json.loads((out / "dialogue_eval.json").read_text())
    assert res["profiles"] == 4 and res["response_pass_by_turn"] == [100.0, 100.0]
    assert not partial.exists()


# ------------------------------------------------------------------------------------------ compare

UNTRAINED_EVAL = 4  # the study first evaluates seed 0's untrained policy: 2 batches x 2 turns of user replies


def _study_spec(server, tmp_path, steps: int):
    """A two-arm study of the tiny RLPA run against the fake remote user; returns its spec's path."""
    base = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in TRAIN + remote(server, "user"))}
    base["steps"] = steps
    del base["seed"]  # the study's
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "study"), "seeds": [0], "base": base,
                                    "arms": {"a": {"optim.lr": 1e-5}, "b": {"optim.lr": 2e-5}}, "save_every": 1,
                                    "eval": {"examples": 4, "batch_size": 2, "turns": 2}}))
    return spec


def test_compare_stops_with_a_rerun_hint_and_the_rerun_resumes(server, tmp_path, capsys):
    spec = _study_spec(server, tmp_path, steps=2)
    run = tmp_path / "study" / "a" / "seed-0"
    hint = f"rerun `fairalign compare {spec}` to continue the study"
    server.script("user", [OK] * (UNTRAINED_EVAL + USER_PER_STEP) + [("status", 500)])  # training: step 2 fails
    assert cli_main(["compare", str(spec)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == [f"fairalign: error: [a seed 0] step 2 failed: simulated user at {endpoint(server, 'user')}: "
                          f"{FAULTS['http-500'][1]}",
                          f"its last completed step is checkpointed; once it works again, {hint}"]
    assert (run / "checkpoints" / "step-1" / "COMPLETE").is_file()
    server.script("user", [OK] * (USER_PER_STEP + 2) + [("status", 500)])  # step 2, eval batch 1; batch 2 fails
    assert cli_main(["compare", str(spec)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2:] == [f"fairalign: error: evaluation stopped: simulated user at {endpoint(server, 'user')}: "
                          f"{FAULTS['http-500'][1]}",
                          f"2 examples evaluated before it are kept in {run / 'eval.partial.jsonl'}; once it works "
                          f"again, {hint}"]
    assert [r["step"] for r in _rows(run)] == [1, 2] and (run / "final").is_dir()
    kept = server.count("user")
    server.script("user", [OK])
    assert cli_main(["compare", str(spec)]) == 0
    # a's evaluation batch 2 only (nothing of a retrained or re-evaluated), then b: 2 steps and 2 batches
    assert server.count("user") - kept == 2 + 2 * USER_PER_STEP + 2 + 2
    assert (tmp_path / "study" / "comparison.json").is_file() and not (run / "eval.partial.jsonl").exists()
    # the same as a study that never failed
    ref_spec = tmp_path / "ref.yaml"
    ref_spec.write_text(spec.read_text().replace(str(tmp_path / "study"), str(tmp_path / "ref")))
    assert cli_main(["compare", str(ref_spec)]) == 0
    got, ref = (json.loads((tmp_path / d / "comparison.json").read_text())["runs"] for d in ("study", "ref"))
    strip = lambda runs: {a: {k: v for k, v in runs[a]["0"].items() if not k.startswith("time/")} for a in runs}
    assert strip(got) == strip(ref)


def test_compare_fault_in_the_untrained_evaluation_stops_with_a_rerun_hint(server, tmp_path, capsys):
    """The study's first evaluation (each seed's untrained policy) fails like the others: one line, a rerun hint,
    its finished batch kept and not asked again."""
    spec = _study_spec(server, tmp_path, steps=1)
    server.script("user", [OK] * 2 + [("status", 500)])  # untrained evaluation: batch 1 done, batch 2 fails
    assert cli_main(["compare", str(spec)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    partial = tmp_path / "study" / "untrained" / "seed-0" / "eval.partial.jsonl"
    assert lines[-2] == (f"fairalign: error: evaluation stopped: simulated user at {endpoint(server, 'user')}: "
                         f"{FAULTS['http-500'][1]}")
    assert lines[-1].startswith(f"2 examples evaluated before it are kept in {partial}") and \
        lines[-1].endswith(f"rerun `fairalign compare {spec}` to continue the study")
    assert not (tmp_path / "study" / "a" / "seed-0" / "metrics.jsonl").exists()  # nothing trained yet
    kept = server.count("user")
    server.script("user", [OK])
    assert cli_main(["compare", str(spec)]) == 0
    # untrained batch 2, then each arm: 1 step and 2 evaluation batches
    assert server.count("user") - kept == 2 + 2 * (USER_PER_STEP + 2 + 2)
    assert not partial.exists()


def test_a_script_driving_compare_is_named_in_the_stop_message(server, tmp_path):
    """A script that runs the study through `run_study(..., rerun=...)` (docs/evidence/rlpa_cpu/study.py) is
    what the stop message tells the user to rerun, not `fairalign compare`."""
    from fairalign.compare import run_study
    from fairalign.errors import TrainingError

    spec = _study_spec(server, tmp_path, steps=1)
    server.script("user", [("status", 500)])  # the untrained evaluation's first batch fails
    with pytest.raises(TrainingError) as err:
        run_study(spec, rerun="python my_study.py spec.yaml --samples 2")
    assert str(err.value).splitlines()[-1].endswith("rerun `python my_study.py spec.yaml --samples 2` to continue "
                                                     "the study")
