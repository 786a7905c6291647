#!/usr/bin/env bash
# gpu_check.sh: check fairalign's CUDA paths on a machine with a GPU, offline, in a few minutes.
#
# Usage:   bash scripts/gpu_check.sh            (from any folder; PYTHON=/path/to/python to choose one)
# Needs:   a CUDA GPU and a Python with torch and transformers (plus what they bring: tokenizers,
#          safetensors, numpy, pyyaml) and matplotlib, rich, pytest. Nothing is downloaded:
#          fairalign is installed from this checkout with `pip install --no-deps --no-build-isolation -e .`
#          (or, if pip cannot, used from src/ through PYTHONPATH), and the model is the tiny random
#          test model, built from code.
# Does:    2 training steps on CUDA with model=tiny through each path (off-policy reuse, beta>0, LoRA,
#          bf16, the SFT warm-up, RLPA, FSPO drift=kl + P-GRPO), `fairalign eval` and
#          `fairalign eval-dialogue` on finished runs, then `pytest -m gpu tests/test_gpu.py`.
#          One line per path: `PASS name 12.3s`, `FAIL name 12.3s: <last error line>` or `SKIP name: why`.
#          A run passes when it exits 0 and its metrics.jsonl has one row per step, with a finite loss,
#          no skipped update, and the metrics or files that prove its path ran.
# Exit:    0 all passed (or skipped), 1 a path failed, 2 refused (no CUDA GPU, a missing package).
# Env:     PYTHON            the interpreter (default: python3, else python)
#          GPU_CHECK_TIMEOUT seconds allowed per path (default 150; pytest gets twice that)
#          GPU_CHECK_KEEP=1  keep the temporary folder (runs and logs); it is always kept after a FAIL
#          GPU_CHECK_DEVICE  cuda (default) | cpu. Debugging aid only: cpu runs every path on the CPU
#                            so the commands themselves can be checked on a machine without a GPU.
set -u

case "${PYTHON:-}" in /*|'') ;; */*) PYTHON="$PWD/$PYTHON" ;; esac  # a relative path: from where it was typed
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)" || { echo "gpu_check: cannot find the repository root"; exit 2; }
cd "$ROOT" || exit 2
export LC_ALL=C
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1

DEV="${GPU_CHECK_DEVICE:-cuda}"
TIMEOUT_S="${GPU_CHECK_TIMEOUT:-150}"
case "$DEV" in cuda|cpu) ;; *) echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEV'"; exit 2 ;; esac
case "$TIMEOUT_S" in ''|*[!0-9]*) echo "gpu_check: GPU_CHECK_TIMEOUT must be a whole number of seconds, got '$TIMEOUT_S'"; exit 2 ;; esac

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3 >/dev/null 2>&1; then PY=python3; else PY=python; fi
fi
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_check: no Python interpreter '$PY' (set PYTHON=...)"; exit 2; }

# ------------------------------------------------------------------ what this machine has
"$PY" - "$DEV" <<'EOF' || exit 2
import importlib.util, sys
dev = sys.argv[1]
try:
    import torch, transformers
except Exception as e:  # noqa: BLE001
    print(f"gpu_check: refusing: cannot import torch and transformers ({type(e).__name__}: {e})")
    sys.exit(2)
gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) \
    if torch.cuda.is_available() else "none visible"
print(f"gpu_check: GPU {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"transformers {transformers.__version__}; python {sys.version.split()[0]} ({sys.executable})")
if dev == "cuda" and not torch.cuda.is_available():
    print("gpu_check: refusing: torch.cuda.is_available() is False on this machine (no CUDA GPU to check)")
    sys.exit(2)
need = ["tokenizers", "safetensors", "numpy", "yaml", "matplotlib", "rich", "pytest"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    print(f"gpu_check: refusing: missing Python packages (nothing can be downloaded here): {', '.join(missing)}")
    sys.exit(2)
EOF

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fairalign-gpu-check.XXXXXX")" || { echo "gpu_check: cannot make a temporary folder"; exit 2; }
export FAIRALIGN_CACHE="$WORK/cache"  # private model cache: the tiny model is built here, nothing else is used
trap 'echo "gpu_check: interrupted; runs and logs in $WORK"; exit 130' INT TERM

# ------------------------------------------------------------------ fairalign from this checkout
fairalign_home() {  # the real path of the fairalign package Python imports (empty if none)
    (cd "$WORK" && "$PY" -c 'import os, fairalign; print(os.path.realpath(os.path.dirname(fairalign.__file__)))' 2>/dev/null)
}
if [ "$(fairalign_home)" = "$ROOT/src/fairalign" ]; then
    echo "gpu_check: fairalign is already installed from this checkout"
elif "$PY" -m pip install -q --no-deps --no-build-isolation -e . >"$WORK/pip.log" 2>&1 \
        && [ "$(fairalign_home)" = "$ROOT/src/fairalign" ]; then
    echo "gpu_check: installed fairalign from this checkout (pip install --no-deps -e .)"
else
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    if [ "$(fairalign_home)" != "$ROOT/src/fairalign" ]; then
        echo "gpu_check: refusing: cannot install or import fairalign from $ROOT/src (see $WORK/pip.log)"
        exit 2
    fi
    why="$(grep -E 'error|ERROR' "$WORK/pip.log" | grep -vE 'subprocess-exited-with-error|metadata-generation-failed|^ *note:|^ *hint:' \
           | head -n 1 | sed 's/^[[:space:]]*//' | cut -c1-160)"
    echo "gpu_check: pip could not install fairalign (${why:-see $WORK/pip.log}); using PYTHONPATH=src"
fi

# ------------------------------------------------------------------ helpers
now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "$EPOCHREALTIME"; else date +%s.%N; fi; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-300; }
with_timeout() {  # with_timeout SECONDS CMD...: run CMD, killed after SECONDS (exit 124)
    local s="$1"; shift
    if command -v timeout >/dev/null 2>&1; then timeout --kill-after=15 "$s" "$@"; else "$@"; fi
}

N_PASS=0; N_FAIL=0; N_SKIP=0
declare -A DONE=()  # path name -> PASS | FAIL | SKIP
pass() { echo "PASS $1 $2s"; N_PASS=$((N_PASS + 1)); DONE[$1]=PASS; }
fail() { echo "FAIL $1 $2s: $3"; N_FAIL=$((N_FAIL + 1)); DONE[$1]=FAIL; }
skip() { echo "SKIP $1: $2"; N_SKIP=$((N_SKIP + 1)); DONE[$1]=SKIP; }

# check_run DIR STEPS [key=K | pos=K | file=F | sft=N]...: one line on stdout and exit 1 if the run is not whole
check_run() {
    "$PY" - "$@" <<'EOF'
import json, math, sys
from pathlib import Path
run, steps, specs = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def rows(name):
    p = run / name
    if not p.is_file():
        sys.exit(f"{p.name} was not written")
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
def finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)
m = rows("metrics.jsonl")
if [r.get("step") for r in m] != list(range(1, steps + 1)):
    sys.exit(f"metrics.jsonl has steps {[r.get('step') for r in m]}, expected 1..{steps}")
for r in m:
    if not finite(r.get("loss")):
        sys.exit(f"step {r['step']}: loss is {r.get('loss')}")
    if r.get("skipped_updates", 0):
        sys.exit(f"step {r['step']}: {r['skipped_updates']} update(s) skipped (non-finite loss or gradient)")
if not (run / "final").is_dir():
    sys.exit("no final model was saved")
for spec in specs:
    kind, _, what = spec.partition("=")
    if kind == "file" and not (run / what).exists():
        sys.exit(f"{what} was not written")
    if kind in ("key", "pos"):
        for r in m:
            if not finite(r.get(what)):
                sys.exit(f"step {r['step']}: metric {what} is {r.get(what, 'missing')}")
            if kind == "pos" and not r[what] > 0:
                sys.exit(f"step {r['step']}: metric {what} is {r[what]}, expected > 0")
    if kind == "sft":
        s = rows("sft_metrics.jsonl")
        if len(s) != int(what) or not all(finite(r.get("sft/loss")) for r in s):
            sys.exit(f"sft_metrics.jsonl: {len(s)} rows (expected {what}) or a non-finite sft/loss")
EOF
}

# run_path NAME CHECK -- CMD...: CHECK is "-" (exit status only), "run:DIR:STEPS[:spec...]" (check_run)
# or "file:PATH" (PATH must exist afterwards)
run_path() {
    local name="$1" check="$2"; shift 3
    local log="$WORK/${name//[^A-Za-z0-9_-]/_}.log" t0 rc dt why
    t0="$(now)"
    with_timeout "$TIMEOUT_S" "$@" >"$log" 2>&1
    rc=$?
    dt="$(since "$t0")"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        fail "$name" "$dt" "timed out after ${TIMEOUT_S}s (log: $log)"; return
    elif [ "$rc" -ne 0 ]; then
        why="$(last_line "$log")"; fail "$name" "$dt" "${why:-exit status $rc}"; return
    fi
    case "$check" in
        run:*)
            local parts; IFS=':' read -r -a parts <<<"${check#run:}"
            if ! why="$(check_run "${parts[@]}" 2>&1)"; then fail "$name" "$dt" "$(echo "$why" | tail -n 1)"; return; fi ;;
        file:*)
            if [ ! -e "${check#file:}" ]; then fail "$name" "$dt" "${check#file:} was not written"; return; fi ;;
    esac
    pass "$name" "$dt"
}

FA=("$PY" -m fairalign)
COMMON=(model=tiny "device=$DEV" steps=2 seed=0 rollout.prompts_per_step=2 rollout.generations=2
        rollout.max_new_tokens=8 log.tensorboard=false log.progress=false)
T_ALL="$(now)"
echo "gpu_check: device=$DEV, ${TIMEOUT_S}s per path, runs and logs in $WORK"

# ------------------------------------------------------------------ the paths
run_path offpolicy-reuse "run:$WORK/offpolicy:2:pos=clip/off_policy_updates" -- \
    "${FA[@]}" train "${COMMON[@]}" algo.ppo_epochs=2 algo.minibatches=2 "output_dir=$WORK/offpolicy"

run_path "beta>0" "run:$WORK/beta:2:key=kl" -- \
    "${FA[@]}" train "${COMMON[@]}" algo.beta=0.1 "output_dir=$WORK/beta"

if "$PY" -c "import peft" >/dev/null 2>&1; then
    run_path lora "run:$WORK/lora:2:key=kl:file=final/adapter_config.json" -- \
        "${FA[@]}" train "${COMMON[@]}" lora.enabled=true lora.r=4 algo.beta=0.05 "output_dir=$WORK/lora"
else
    skip lora "peft not installed"
fi

run_path bf16 "run:$WORK/bf16:2" -- \
    "${FA[@]}" train "${COMMON[@]}" precision=bf16 "output_dir=$WORK/bf16"

run_path sft-warmup "run:$WORK/sft:2:sft=2:key=kl:file=reference" -- \
    "${FA[@]}" train "${COMMON[@]}" task=rlpa sft.steps=2 sft.batch_size=4 task_options.max_turns=1 \
    task_options.n_train=8 algo.beta=0.1 "output_dir=$WORK/sft"

run_path rlpa "run:$WORK/rlpa:2:key=reward/profile" -- \
    "${FA[@]}" train "${COMMON[@]}" task=rlpa task_options.max_turns=2 task_options.n_train=8 "output_dir=$WORK/rlpa"

if [ "${DONE[offpolicy-reuse]}" = PASS ]; then
    run_path eval "file:$WORK/offpolicy/eval.json" -- \
        "${FA[@]}" eval "$WORK/offpolicy" "device=$DEV" eval.examples=4 eval.batch_size=4
else
    skip eval "needs the offpolicy-reuse run, which did not pass"
fi

if [ "${DONE[rlpa]}" = PASS ]; then
    run_path eval-dialogue "file:$WORK/rlpa-dialogue/dialogue_eval.json" -- \
        "${FA[@]}" eval-dialogue "$WORK/rlpa" "device=$DEV" --profiles 2 --max-turns 2 --max-new-tokens 8 \
        --batch-size 2 --out "$WORK/rlpa-dialogue"
else
    skip eval-dialogue "needs the rlpa run, which did not pass"
fi

run_path fspo-kl-pgrpo "run:$WORK/fspo:2:key=pgrpo/history_frac" -- \
    "${FA[@]}" train "${COMMON[@]}" algo.loss=fspo algo.drift=kl algo.advantage=pgrpo algo.pgrpo_min_count=2 \
    "output_dir=$WORK/fspo"

# ------------------------------------------------------------------ pytest -m gpu
LOG_PT="$WORK/pytest-gpu.log"
T0="$(now)"
COLUMNS=250 GPU_CHECK_DEVICE="$DEV" with_timeout $((2 * TIMEOUT_S)) "$PY" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -rfEs \
    >"$LOG_PT" 2>&1
RC=$?
DT="$(since "$T0")"
SUMMARY="$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$LOG_PT" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')"
if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
    fail pytest-gpu "$DT" "timed out after $((2 * TIMEOUT_S))s (log: $LOG_PT)"
elif [ "$RC" -ne 0 ]; then
    FIRST="$(grep -m 1 -E '^(FAILED|ERROR) ' "$LOG_PT" | sed 's/^[A-Z]* tests\/test_gpu.py:://' | cut -c1-240)"
    fail pytest-gpu "$DT" "${SUMMARY:-$(last_line "$LOG_PT")}${FIRST:+; first: $FIRST} (log: $LOG_PT)"
elif ! echo "$SUMMARY" | grep -q passed; then
    fail pytest-gpu "$DT" "no gpu test ran: ${SUMMARY:-no summary}"
else
    pass pytest-gpu "$DT"
    echo "     ($SUMMARY)"
fi

# ------------------------------------------------------------------ summary
echo "gpu_check: $N_PASS passed, $N_FAIL failed, $N_SKIP skipped in $(since "$T_ALL")s on $DEV"
if [ "$N_FAIL" -gt 0 ] || [ "${GPU_CHECK_KEEP:-0}" = 1 ]; then
    echo "gpu_check: runs and logs kept in $WORK"
else
    rm -rf "$WORK"
fi
[ "$N_FAIL" -eq 0 ]
