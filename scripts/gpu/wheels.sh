#!/usr/bin/env bash
# The wheels scripts/gpu/learner_check.sh installs on a GPU machine without network: DeepSpeed
# built without compiled ops (they build on first use if ever needed) and the small pure
# packages the learner imports. Run where the package registry is reachable, with the same
# Python version as the GPU machine's:  bash scripts/gpu/wheels.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: bash scripts/gpu/wheels.sh OUT_DIR}
PY=${PYTHON:-python}
mkdir -p "$OUT"
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps -w "$OUT" "deepspeed>=0.18,<0.20"
"$PY" -m pip download --quiet --only-binary=:all: -d "$OUT" \
  msgpack pydantic pyyaml hjson py-cpuinfo ninja einops pytest
du -sh "$OUT"
