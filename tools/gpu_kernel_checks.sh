#!/usr/bin/env bash
# Runs the kernel's GPU checks from a bundle (tools/make_gpu_bundle.sh
# //tests/kernels/cuda:merge_gpu_test //bench:merge_bench) on a GPU host and
# writes logs to $OUT (default ./gpu-logs):
#   device.txt     nvidia-smi's name, driver, memory, clocks
#   sass.txt       per-kernel SASS counts (16-byte loads, local memory)
#   gpu_test.log   merge_gpu_test, full grid (all 2^32 FP8 patterns)
#   memcheck.log   compute-sanitizer memcheck, DCPMERGE_GPU_TEST_QUICK=1
#   racecheck.log  compute-sanitizer racecheck (shared memory), quick sweep
#   sweep.txt      merge_bench --sweep (launch options), when SWEEP=1
#   bench.txt, bench.csv  merge_bench (BENCH_ARGS, e.g. --quick)
# SKIP_SANITIZERS=1 skips the compute-sanitizer steps, SKIP_TEST=1 the test,
# TEST_QUICK=1 runs the test's reduced grid, SKIP_BENCH=1 the benchmark.
# Prints a short table last.
set -uo pipefail
bundle=${BUNDLE:-dist/gpu-bundle}
out=${OUT:-gpu-logs}
mkdir -p "$out"
sec() { date +%s; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$out/device.txt" 2>&1

cuobjdump=$(command -v cuobjdump || echo /usr/local/cuda/bin/cuobjdump)
if [[ -x "$cuobjdump" ]]; then
  "$cuobjdump" -sass "$bundle/bin/merge_bench" > /tmp/sass.txt 2>&1
  awk '/Function :/ {f=$3} /LDG.E.128/ {l[f]++} /STG.E.64/ {s8[f]++} /LDL|STL/ {loc[f]++}
       END {for (f in l) if (f ~ /Merge(Rows|Token)Kernel/) printf "%s LDG.E.128=%d STG.E.64=%d local=%d\n", f, l[f], s8[f], loc[f]+0}' \
    /tmp/sass.txt | sort | uniq > "$out/sass.txt"
  # The bf16 per-tensor and per-group kernels with 4 parts per thread, whole.
  for k in MergeRowsKernelI13__nv_bfloat16Li0ELi4ELi16E MergeRowsKernelI13__nv_bfloat16Li2ELi4ELi16E; do
    awk -v k="$k" '/Function :/ {keep = index($0, k) > 0} keep' /tmp/sass.txt > "$out/sass_$k.txt"
  done
fi

t0=$(sec)
test_rc=0
if [[ "${SKIP_TEST:-0}" != 1 ]]; then
  timeout ${TEST_TIMEOUT:-240} env DCPMERGE_GPU_TEST_QUICK=${TEST_QUICK:-0} \
    "$bundle/run.sh" merge_gpu_test > "$out/gpu_test.log" 2>&1
  test_rc=$?
fi
t1=$(sec)
mc_rc=0 rc_rc=0
if [[ "${SKIP_SANITIZERS:-0}" == 1 ]]; then
  echo "skipped (SKIP_SANITIZERS=1)" | tee "$out/memcheck.log" > "$out/racecheck.log"
else
  timeout ${MEMCHECK_TIMEOUT:-240} compute-sanitizer --tool memcheck --error-exitcode 99 \
    env DCPMERGE_GPU_TEST_QUICK=1 LD_LIBRARY_PATH="$bundle/lib" "$bundle/bin/merge_gpu_test" \
    --gtest_filter=-*AllPatterns* > "$out/memcheck.log" 2>&1
  mc_rc=$?
  timeout ${RACECHECK_TIMEOUT:-240} compute-sanitizer --tool racecheck --error-exitcode 99 \
    env DCPMERGE_GPU_TEST_QUICK=1 LD_LIBRARY_PATH="$bundle/lib" "$bundle/bin/merge_gpu_test" \
    --gtest_filter=*Sweep* > "$out/racecheck.log" 2>&1
  rc_rc=$?
fi
t2=$(sec)
if [[ "${SWEEP:-0}" == 1 ]]; then
  timeout ${SWEEP_TIMEOUT:-240} "$bundle/run.sh" merge_bench --sweep > "$out/sweep.txt" 2>&1
fi
t3=$(sec)
bench_rc=0
if [[ "${SKIP_BENCH:-0}" != 1 ]]; then
  timeout ${BENCH_TIMEOUT:-400} "$bundle/run.sh" merge_bench --csv "$out/bench.csv" ${BENCH_ARGS:-} \
    > "$out/bench.txt" 2>&1
  bench_rc=$?
fi
t4=$(sec)

echo "== device"; cat "$out/device.txt"
echo "== sass: $(wc -l < "$out/sass.txt" 2>/dev/null) kernels, $(awk '$NF != "local=0"' "$out/sass.txt" 2>/dev/null | wc -l) with local memory"
echo "== gpu test rc=$test_rc ($((t1 - t0)) s)"
grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[ (fp8|sweep|fp8 codes) \]|Failure|error" "$out/gpu_test.log" 2>/dev/null | head -30
echo "== memcheck rc=$mc_rc, racecheck rc=$rc_rc ($((t2 - t1)) s)"
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|^\[  (PASSED|FAILED) " "$out/memcheck.log" "$out/racecheck.log" | head
[[ -f "$out/sweep.txt" ]] && { echo "== sweep ($((t3 - t2)) s)"; tail -30 "$out/sweep.txt"; }
echo "== bench rc=$bench_rc ($((t4 - t3)) s)"
sed -n '/# SUMMARY/,$p' "$out/bench.txt" 2>/dev/null
