#!/usr/bin/env bash
# The Python package's GPU checks, on a GPU host with its own PyTorch (no
# Bazel, gRPC or protobuf needed there): installs the wheel made here by
# tools/build_wheel.sh into a scratch directory and runs
# python/tests/gpu/gpu_checks.py with the host's python3 (which must import
# torch with CUDA). Carry dist/dcpmerge-*.whl, python/tests/gpu/ and this
# script. About a minute on an H200 for gpu_checks.py; the vLLM grid after
# it is 2,592 cases plus a timing row per shape (its time not measured yet;
# GRID_TIMEOUT, default 900 s).
#
#   tools/python_gpu_checks.sh              # logs to ${OUT:-gpu-logs}/python_gpu_checks.log
#   PYTHON=/path/to/python3 SITE=/tmp/site tools/python_gpu_checks.sh
#   DCPMERGE_SERVER_CMD="dist/gpu-bundle/run.sh dcpmerge_server" ...  # + the NCCL-plane check (2 GPUs)
#
# Prints the checks (PASS / FAIL / SKIP), the timing tables (per call: Python
# against C++ and plain PyTorch; eager host time against torch.add(out=)),
# "N passed, N failed, N skipped", then vLLM's merge_attn_states grid
# (python/tests/gpu/vllm_grid.py) with vLLM's timing table; exits non-zero
# when a check or a grid case failed or the wheel did not install.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
site=${SITE:-/tmp/dcpmerge-site}
out=${OUT:-gpu-logs}
mkdir -p "$out"
log="$(cd "$out" && pwd)/python_gpu_checks.log"

wheels=("$repo"/dist/dcpmerge-*-py3-none-linux_x86_64.whl)
if [[ ! -f "${wheels[0]}" ]]; then
  echo "python_gpu_checks: no wheel in $repo/dist (make it with tools/build_wheel.sh and carry dist/)" >&2
  exit 2
fi
{
  echo "== python: $("$py" --version 2>&1) at $(command -v "$py")"
  "$py" -c 'import torch; print("== torch", torch.__version__, "cuda", torch.version.cuda, "available",
torch.cuda.is_available(), torch.cuda.device_count(), "GPU(s)")' 2>&1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/== /'
  echo "== wheel: ${wheels[0]##*/}"
} | tee "$log"
rm -rf "$site"
if ! "$py" -m pip install --no-index --no-deps --target "$site" "${wheels[0]}" >> "$log" 2>&1; then
  echo "python_gpu_checks: pip install of ${wheels[0]} failed (see $log)" | tee -a "$log" >&2
  tail -20 "$log" >&2
  exit 1
fi
# Run from / so that only the installed package is importable.
(cd / && PYTHONPATH="$site" timeout "${TIMEOUT:-300}" "$py" "$repo/python/tests/gpu/gpu_checks.py") 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
# vLLM's merge_attn_states grid (2,592 cases) and its timing table;
# VLLM_GRID=quick: one token and head count, VLLM_GRID=0: skipped.
if [[ ${VLLM_GRID:-full} != 0 ]]; then
  grid_args=()
  [[ ${VLLM_GRID:-full} == quick ]] && grid_args=(--quick)
  (cd / && PYTHONPATH="$site:$repo/python/tests/gpu" timeout "${GRID_TIMEOUT:-900}" "$py" \
    "$repo/python/tests/gpu/vllm_grid.py" "${grid_args[@]}") 2>&1 | tee -a "$log"
  grid_rc=${PIPESTATUS[0]}
  [[ $rc -eq 0 ]] && rc=$grid_rc
fi
echo "python_gpu_checks: exit $rc, log $log"
exit "$rc"
