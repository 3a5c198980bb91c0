#!/usr/bin/env bash
# Submit a reelrl run to an existing Ray cluster (RayCluster from raycluster.yaml, or any Ray
# cluster whose dashboard is reachable at RAY_ADDRESS). Point the run at the cluster's Redis with
# queue.url; its password is read from REELRL_REDIS_PASSWORD in the cluster's environment.
#   RAY_ADDRESS=http://127.0.0.1:8265 cluster/submit.sh configs/videoauto_r1_qwen2_5_vl_7b.yaml \
#     model.path=/models/Qwen2.5-VL-7B-Instruct queue.url=redis://reelrl-redis:6379/0
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: cluster/submit.sh CONFIG [a.b=c ...]}
shift
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir . --runtime-env cluster/runtime_env.yaml \
  -- reelrl train "$config" "$@"
