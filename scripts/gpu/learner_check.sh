#!/usr/bin/env bash
# The learner check for a GPU machine whose image has torch and transformers but no network,
# Ray, vLLM or DeepSpeed: installs what the learner needs from a folder of wheels (made with
# scripts/gpu/wheels.sh where there is network), then
#   1. ZeRO-3 bf16 learner steps at Qwen2.5-VL-3B dimensions on an 8k-token packed micro-batch
#      (a 4096-token video prompt and its completion): step time, tokens/s, MFU, peak
#      max_memory_allocated, export GB/s (system/benchmarks/learner_check.py);
#   2. the learner-only GPU tests (pytest -m gpu tests/gpu/test_learner_gpu.py).
# About 5-10 minutes on one H100/H200. Run from the repository root:
#   bash scripts/gpu/learner_check.sh WHEELS_DIR [extra learner_check options]
set -euo pipefail
WHEELS=${1:?usage: bash scripts/gpu/learner_check.sh WHEELS_DIR [learner_check options]}
shift
PY=${PYTHON:-python}
[[ -d "$WHEELS" ]] || { echo "learner_check: no folder $WHEELS" >&2; exit 2; }
missing=()
for pkg in deepspeed msgpack pydantic yaml pytest; do
  "$PY" -c "import $pkg" 2>/dev/null || missing+=("$pkg")
done
if ((${#missing[@]})); then
  names=("${missing[@]/yaml/pyyaml}")
  echo "learner_check: installing ${names[*]} from $WHEELS (no network)"
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "${names[@]}"
fi
export DS_ACCELERATOR=cuda DS_BUILD_OPS=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -m system.benchmarks.learner_check --json "$@"
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_learner_gpu.py
