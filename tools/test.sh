#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every test twice,
# once optimised and once under AddressSanitizer + UndefinedBehaviorSanitizer,
# plus the Python package's tests (pytest, on the wheel) and the fuzz targets
# (a bounded time each), and ends with one summary line
# "N passed, N failed, N skipped" counting all of them.
# GPU tests skip (with the reason) where no GPU is present.
set -uo pipefail
cd "$(dirname "$0")/.."

tools/install_deps.sh || exit 1

BAZEL_FLAGS=(--color=no --curses=no --show_progress_rate_limit=30)
start=$(date +%s)
status=0

# run_suite NAME [bazel test flags...]: runs the tests, then counts GoogleTest
# cases from the XML reports of that configuration's tests.
total_pass=0 total_fail=0 total_skip=0
run_suite() {
  local name=$1; shift
  echo "=== ${name}: bazel test $* //..."
  if ! bazel test "${BAZEL_FLAGS[@]}" "$@" //...; then status=1; fi
  local logs
  logs=$(bazel info "${BAZEL_FLAGS[@]}" "$@" bazel-testlogs 2>/dev/null)
  local pass=0 fail=0 skip=0
  while IFS= read -r xml; do
    local t f e s
    t=$(grep -o -m1 '<testsuites[^>]* tests="[0-9]*"' "$xml" | grep -o 'tests="[0-9]*"' | tr -dc 0-9)
    f=$(grep -o -m1 '<testsuites[^>]* failures="[0-9]*"' "$xml" | grep -o 'failures="[0-9]*"' | tr -dc 0-9)
    e=$(grep -o -m1 '<testsuites[^>]* errors="[0-9]*"' "$xml" | grep -o 'errors="[0-9]*"' | tr -dc 0-9)
    s=$(grep -c 'result="skipped"' "$xml")
    pass=$((pass + ${t:-0} - ${f:-0} - ${e:-0} - s))
    fail=$((fail + ${f:-0} + ${e:-0}))
    skip=$((skip + s))
  done < <(find "$logs" -name test.xml 2>/dev/null)
  echo "=== ${name}: ${pass} passed, ${fail} failed, ${skip} skipped (test cases)"
  total_pass=$((total_pass + pass)); total_fail=$((total_fail + fail)); total_skip=$((total_skip + skip))
}

# The Python package (python/, docs/python.md): the one-command wheel, built
# from the optimised build, installed with pip into a scratch directory, and
# its pytest suite run against the server binary on loopback. pytest's cases
# count in the summary like GoogleTest's (its JUnit XML report).
run_python() {
  echo "=== python: tools/build_wheel.sh, pip install --target, pytest python/tests"
  local tmp bin py=/usr/bin/python3
  tmp=$(mktemp -d)
  bin=$(bazel info "${BAZEL_FLAGS[@]}" bazel-bin 2>/dev/null)
  local pass=0 fail=0 skip=0
  if tools/build_wheel.sh -o "$tmp/dist" &&
     PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps \
       --target "$tmp/site" "$tmp"/dist/dcpmerge-*.whl; then
    PYTHONPATH="$tmp/site" DCPMERGE_EXPECT_INSTALLED=1 DCPMERGE_SERVER_BIN="$bin/server/dcpmerge_server" \
      timeout 600 "$py" -m pytest -q -p no:cacheprovider --junitxml="$tmp/pytest.xml" \
      --ignore=python/tests/gpu python/tests || status=1
  else
    status=1
  fi
  if [[ -f "$tmp/pytest.xml" ]]; then
    local head t f e s
    head=$(grep -o -m1 '<testsuite [^>]*>' "$tmp/pytest.xml")
    t=$(grep -o ' tests="[0-9]*"' <<<"$head" | tr -dc 0-9)
    f=$(grep -o ' failures="[0-9]*"' <<<"$head" | tr -dc 0-9)
    e=$(grep -o ' errors="[0-9]*"' <<<"$head" | tr -dc 0-9)
    s=$(grep -o ' skipped="[0-9]*"' <<<"$head" | tr -dc 0-9)
    pass=$((${t:-0} - ${f:-0} - ${e:-0} - ${s:-0})); fail=$((${f:-0} + ${e:-0})); skip=${s:-0}
  else
    fail=1  # no report: the wheel or the run itself failed
  fi
  echo "=== python: ${pass} passed, ${fail} failed, ${skip} skipped (pytest cases)"
  total_pass=$((total_pass + pass)); total_fail=$((total_fail + fail)); total_skip=$((total_skip + skip))
  rm -rf "$tmp"
}

# The fuzz targets (tests/fuzz; --config=fuzz: clang, libFuzzer, ASan +
# UBSan): each runs FUZZ_SECONDS from a scratch copy of its seed corpus, two
# at a time, and counts as one test case, failed by a crash, a sanitizer
# report or a broken property (its input is kept and its report printed).
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
run_fuzz() {
  echo "=== fuzz: bazel build --config=fuzz, then each target for ${FUZZ_SECONDS}s"
  local fuzz_start tmp bin labels names=() name runs pass=0 fail=0
  fuzz_start=$(date +%s)
  labels=$(bazel query "${BAZEL_FLAGS[@]}" 'attr(tags, "\bfuzz\b", //tests/fuzz:*)' 2>/dev/null)
  if [[ -z "$labels" ]] || ! bazel build "${BAZEL_FLAGS[@]}" --config=fuzz $labels; then
    echo "=== fuzz: build failed"
    status=1; total_fail=$((total_fail + 1)); return
  fi
  for name in $labels; do names+=("${name##*:}"); done
  bin=$(bazel info "${BAZEL_FLAGS[@]}" --config=fuzz bazel-bin 2>/dev/null)
  tmp=$(mktemp -d)
  for name in "${names[@]}"; do
    while (( $(jobs -rp | wc -l) >= 2 )); do wait -n; done
    fuzz_one "$name" &
  done
  wait
  for name in "${names[@]}"; do
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$tmp/$name.log" 2>/dev/null | tr -dc 0-9)
    if [[ "$(cat "$tmp/$name.rc")" == 0 && -n "$runs" ]]; then
      pass=$((pass + 1)); echo "  ${name}: ${runs} executions, no crash"
    else
      fail=$((fail + 1)); status=1
      echo "  ${name}: FAILED after ${runs:-?} executions; its report:"; tail -n 40 "$tmp/$name.log"
      echo "  (its input is kept in ${tmp}: rerun with ${bin}/tests/fuzz/${name} INPUT)"
    fi
  done
  echo "=== fuzz: ${pass} passed, ${fail} failed (targets) in $(( $(date +%s) - fuzz_start ))s"
  total_pass=$((total_pass + pass)); total_fail=$((total_fail + fail))
  (( fail > 0 )) || rm -rf "$tmp"
}
# fuzz_one NAME: runs one target (run_fuzz's $tmp and $bin); NAME.log, NAME.rc.
fuzz_one() {
  local name=$1 dict=()
  cp -r "tests/fuzz/corpus/$name" "$tmp/$name" || { echo 1 >"$tmp/$name.rc"; return; }
  [[ -e "tests/fuzz/$name.dict" ]] && dict=("-dict=tests/fuzz/$name.dict")
  "$bin/tests/fuzz/$name" "${dict[@]}" -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 \
    -artifact_prefix="$tmp/$name-" "$tmp/$name" >"$tmp/$name.log" 2>&1
  echo $? >"$tmp/$name.rc"
}

run_suite "optimised"
run_python
# GPU tests are left out under the sanitizers: ASan and the CUDA runtime do
# not mix, and they only skip here anyway. compute-sanitizer covers them on
# a GPU host (docs/gpu-validation.md).
run_suite "asan+ubsan" --config=asan --test_tag_filters=-gpu,-no_asan --build_tag_filters=-gpu,-no_asan
run_fuzz

elapsed=$(( $(date +%s) - start ))
echo
echo "dcpmerge test suite finished in ${elapsed}s ($([ $status -eq 0 ] && echo PASS || echo FAIL))"
echo "${total_pass} passed, ${total_fail} failed, ${total_skip} skipped"
exit $status
