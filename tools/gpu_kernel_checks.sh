#!/usr/bin/env bash
# Runs the kernel's GPU checks from a bundle (tools/make_gpu_bundle.sh) on a
# GPU host and writes logs to $OUT (default ./gpu-logs):
#   sass.txt       per-kernel SASS instruction counts (LDG.E.128, local memory)
#   gpu_test.log   merge_gpu_test, full grid (all 2^32 FP8 patterns)
#   memcheck.log   compute-sanitizer memcheck, DCPMERGE_GPU_TEST_QUICK=1
#   sass_sample.txt  loads, stores, branches of the bf16 per-tensor 1-vector
#                  NB = 8 kernel
#   bench.txt      merge_bench (pass BENCH_ARGS=--quick for the small grid,
#                  --csv for CSV)
# SKIP_MEMCHECK=1 skips the compute-sanitizer step.
# Prints a short table last.
set -uo pipefail
bundle=${BUNDLE:-dist/gpu-bundle}
out=${OUT:-gpu-logs}
mkdir -p "$out"
run() { "$bundle/run.sh" "$@"; }
sec() { date +%s; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/device.txt" 2>&1

cuobjdump=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
if [[ -x "$cuobjdump" ]]; then
  "$cuobjdump" -sass "$bundle/bin/merge_gpu_test" > /tmp/sass.txt 2>&1
  awk '/Function :/ {f=$3} /MergeKernel/ && /Function :/ {k=1} /LDG.E.128/ {l[f]++} /STG.E.64/ {s8[f]++} /STG.E.128/ {s16[f]++} /LDL|STL/ {loc[f]++}
       END {for (f in l) if (f ~ /MergeKernel/) printf "%s LDG.E.128=%d STG.E.64=%d STG.E.128=%d local=%d\n", f, l[f], s8[f], s16[f], loc[f]+0}' /tmp/sass.txt | sort > "$out/sass.txt"
  grep -m3 -E "LDC.*\[R" /tmp/sass.txt >> "$out/sass.txt" || true
  awk '/Function :/ {keep = ($3 ~ /MergeKernelI13__nv_bfloat16Li0ELi1ELi1ELi8E/)} keep' \
    /tmp/sass.txt | grep -E "Function|LDG|STG|LDC|EXIT|BRA|MUFU|BAR|DEPBAR" > "$out/sass_sample.txt"
fi

t0=$(sec)
timeout ${TEST_TIMEOUT:-200} "$bundle/run.sh" merge_gpu_test > "$out/gpu_test.log" 2>&1
test_rc=$?
t1=$(sec)
if [[ "${SKIP_MEMCHECK:-0}" == 1 ]]; then
  echo "skipped (SKIP_MEMCHECK=1)" > "$out/memcheck.log"; mc_rc=0
else
timeout ${MEMCHECK_TIMEOUT:-180} compute-sanitizer --tool memcheck --error-exitcode 99 \
  env DCPMERGE_GPU_TEST_QUICK=1 LD_LIBRARY_PATH="$bundle/lib" "$bundle/bin/merge_gpu_test" \
  --gtest_filter=-*AllPatterns* > "$out/memcheck.log" 2>&1
mc_rc=$?
fi
t2=$(sec)
timeout ${BENCH_TIMEOUT:-180} "$bundle/run.sh" merge_bench ${BENCH_ARGS:-} > "$out/bench.txt" 2>&1
bench_rc=$?
t3=$(sec)

echo "== device"; cat "$out/device.txt"
echo "== sass (MergeKernel)"; head -30 "$out/sass.txt" 2>/dev/null
echo "== gpu test rc=$test_rc ($((t1 - t0)) s)"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[ (fp8|sweep|fp8 codes) \]|Failure|error" "$out/gpu_test.log" | head -30
echo "== memcheck rc=$mc_rc ($((t2 - t1)) s)"
grep -E "ERROR SUMMARY|^\[  (PASSED|FAILED) " "$out/memcheck.log" | head
echo "== bench rc=$bench_rc ($((t3 - t2)) s)"
sed -n '/# SUMMARY/,$p' "$out/bench.txt"
