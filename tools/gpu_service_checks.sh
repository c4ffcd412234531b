#!/usr/bin/env bash
# The service's GPU checks, from a bundle made by
#   tools/make_gpu_bundle.sh --tar //tests/server:compute_backend_test \
#     //tests/transport:nccl_transport_test //tools:dcpmerge_demo \
#     //bench:grpc_plane_bench
# run on a one-GPU host. Logs go to $OUT (default ./gpu-logs):
#   backend_test.log   CUDA backend (parts staged through pinned memory, one
#                      stream each) against the CPU reference, every output
#                      mode
#   backend_memcheck.log  the same under compute-sanitizer memcheck
#   nccl_test.log      the real NCCL transport on one GPU (the two-GPU
#                      cases skip with the reason)
#   demo_*.log         the README's demo with --backend=cuda: server + 4
#                      ranks over the gRPC data plane, several output modes;
#                      demo_cpu.log the same with the CPU backend
#   plane_cpu.log, plane_cuda.log  grpc_plane_bench --quick with each
#                      backend (the CUDA one prints the merge phase next to
#                      the last part's H2D, the kernel and the D2H)
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
  summary=$(grep -E "PASSED|FAILED|^PASS|^FAIL|accuracy|CUDA backend vs CPU|backend |ERROR SUMMARY|step/echo|cuda merge|device " \
    "$out/$log" | tr '\n' ' ' | cut -c1-300)
  rows+=("$(printf '%-28s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$summary")")
}

check "compute_backend_test" backend_test.log "$bundle/run.sh" compute_backend_test
check "backend memcheck" backend_memcheck.log compute-sanitizer --tool memcheck --error-exitcode 99 \
  env LD_LIBRARY_PATH="$bundle/lib" "$bundle/bin/compute_backend_test"
check "nccl_transport_test" nccl_test.log "$bundle/run.sh" nccl_transport_test
for mode in fp8_per_tensor fp8_per_token fp8_per_group; do
  check "demo cuda $mode" "demo_$mode.log" "$bundle/run.sh" dcpmerge_demo \
    --backend=cuda --output_mode="$mode" --steps=200
done
check "demo cpu fp8_per_tensor" demo_cpu.log "$bundle/run.sh" dcpmerge_demo --backend=cpu --steps=200
check "grpc_plane_bench cpu" plane_cpu.log "$bundle/run.sh" grpc_plane_bench --quick --backend=cpu
check "grpc_plane_bench cuda" plane_cuda.log "$bundle/run.sh" grpc_plane_bench --quick --backend=cuda

echo "== service checks on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null)"
printf '%s\n' "${rows[@]}"
