# shellcheck shell=bash
# Sourced by the device scripts of tools/gpu/ (owed_h200.sh, h100_scenarios.sh, tp2_h100.sh), never run: the output
# folder, DRY_RUN, and the checks made before a model is built (a part that fails after the 70B has loaded costs a
# whole device call). Each function takes the calling script's name first, for its one-line refusals.
#
# DRY_RUN=1: `run CMD...` prints CMD as one shell-quoted line on the script's stdout instead of running it (no GPU,
# no nvidia-smi, no LoadGen needed); tests/test_gpu_scripts_dryrun.py parses every printed tools/*.py command with
# that tool's own parser and pre-flight checks, so a renamed flag fails CI, not a device session.

# run CMD...: CMD, or under DRY_RUN its quoted words on fd 3 (the script's stdout, past any `2>&1 | filter` pipe).
# A real run's pipelines fail with their tool (pipefail): the part's exit status is not that of the tail after it.
if [ -n "${DRY_RUN:-}" ]; then
  exec 3>&1
  run() { printf '%q ' "$@" >&3; printf '\n' >&3; }
else
  set -o pipefail
  run() { "$@"; }
fi

# require_out SCRIPT: $OUT must be an existing folder (the device tool sets it; unset, every output went to /)
require_out() {
  [ -n "${OUT:-}" ] && [ -d "$OUT" ] && return 0
  echo "$1: OUT must name an existing folder for the outputs (the device tool sets it), got '${OUT:-}'" >&2
  exit 2
}

# require_gpus SCRIPT PATTERN COUNT: "$OUT"/gpu.txt (nvidia-smi, a line per GPU) must list at least COUNT GPUs, each
# line matching PATTERN (grep -E); ANY_GPU=1 accepts any card. Skipped under DRY_RUN.
require_gpus() {
  [ -n "${DRY_RUN:-}" ] && return 0
  local seen
  seen=$(grep -c . "$OUT"/gpu.txt 2>/dev/null)
  if [ "${seen:-0}" -lt "$3" ]; then
    echo "$1: needs $3 GPU(s), nvidia-smi lists ${seen:-0} ($(paste -sd ';' "$OUT"/gpu.txt 2>/dev/null)); ask the" \
         "device tool for the kind the script's header names" >&2
    exit 2
  fi
  if [ -z "${ANY_GPU:-}" ] && grep -Evq "$2" "$OUT"/gpu.txt; then
    echo "$1: made for $2 cards, this machine has '$(paste -sd ';' "$OUT"/gpu.txt)' (its figures would be" \
         "filed as the other card's); ask for the kind the script's header names, or ANY_GPU=1 to run it anyway" >&2
    exit 2
  fi
}

# require_loadgen SCRIPT: the LoadGen the runs need imports (it is imported only after the model is built)
require_loadgen() {
  [ -n "${DRY_RUN:-}" ] && return 0
  python3 -c "import mlperf_loadgen" 2>/dev/null && return 0
  echo "$1: python3 cannot import mlperf_loadgen: carry .whl (the mlcommons_loadgen wheel) in the device call" >&2
  exit 2
}

# check_offline_json SCRIPT VAR PATH WEIGHTS KV_CACHE_DTYPE INT8_RULES: the bench.json a Server/Interactive part
# takes its automatic points and Offline ratio from (tools/bench.py reads it only after the model is built) must be
# readable, hold an engine Offline row, and be a run of the same build (70B, all layers, these numerics).
check_offline_json() {
  python3 - "$@" <<'PY' || exit 2
import json
import sys

script, var, path, weights, kv, rules = sys.argv[1:]
try:
    with open(path) as fh:
        data = json.load(fh)
    ran = data.get("args") or {}
    rows = [r for r in data.get("rows") or [] if r.get("backend") == "engine" and r.get("tokens_per_s")]
except (OSError, ValueError, AttributeError) as exc:
    sys.exit(f"{script}: {var} {path}: cannot read it as a tools/bench.py bench.json ({exc})")
if not rows:
    sys.exit(f"{script}: {var} {path} has no engine Offline row with tokens/s: give the bench.json of an Offline run")
want = {"shape": "70b", "layers": None, "weights": weights, "kv_cache_dtype": kv, "int8_rules": rules}
for key, value in want.items():
    if ran.get(key, value) != value:
        sys.exit(f"{script}: {var} {path} ran --{key.replace('_', '-')} {ran.get(key)}, this part "
                 f"{'all' if value is None else value}: its automatic QPS points and Offline ratio would come from "
                 "another build; give a bench.json of this build")
PY
}

# finish: exit with the part's status (its last command's); 0 under DRY_RUN, whose pipelines filtered no output
finish() {
  local rc=$?
  [ -n "${DRY_RUN:-}" ] && rc=0
  exit "$rc"
}
