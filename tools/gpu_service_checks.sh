#!/usr/bin/env bash
# The service's GPU checks, from a bundle made by
#   tools/make_gpu_bundle.sh //tests/server:compute_backend_test \
#     //tests/transport:nccl_transport_test //tools:dcpmerge_demo
# run on a one-GPU host. Logs go to $OUT (default ./gpu-logs):
#   backend_test.log   CUDA backend (host buffers staged through the GPU)
#                      against the CPU reference, every output mode
#   nccl_test.log      the real NCCL transport on one GPU (the two-GPU
#                      cases skip with the reason)
#   demo_*.log         the README's demo with --backend=cuda: server + 4
#                      ranks over the gRPC data plane, several output modes
# Prints a short table last.
set -uo pipefail
bundle=${BUNDLE:-dist/gpu-bundle}
out=${OUT:-gpu-logs}
mkdir -p "$out"

rows=()
check() {  # check NAME LOG CMD...: runs CMD, logs it, records a table row
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  timeout 300 "$@" > "$out/$log" 2>&1
  local rc=$?
  local summary
  summary=$(grep -E "PASSED|FAILED|^PASS|^FAIL|accuracy|CUDA backend vs CPU|backend " "$out/$log" | tr '\n' ' ' | cut -c1-200)
  rows+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$summary")")
}

check "compute_backend_test" backend_test.log "$bundle/run.sh" compute_backend_test
check "nccl_transport_test" nccl_test.log "$bundle/run.sh" nccl_transport_test
for mode in fp8_per_tensor fp8_per_token fp8_per_group; do
  check "demo cuda $mode" "demo_$mode.log" "$bundle/run.sh" dcpmerge_demo \
    --backend=cuda --output_mode="$mode" --steps=200
done

echo "== service checks on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
printf '%s\n' "${rows[@]}"
