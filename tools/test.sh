#!/usr/bin/env bash
# The whole test suite: installs what is missing, then runs every test twice,
# once optimised and once under AddressSanitizer + UndefinedBehaviorSanitizer,
# plus the Python package's tests (pytest, on the wheel), and ends with one
# summary line "N passed, N failed, N skipped" counting all of them.
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

run_suite "optimised"
run_python
# GPU tests are left out under the sanitizers: ASan and the CUDA runtime do
# not mix, and they only skip here anyway. compute-sanitizer covers them on
# a GPU host (docs/gpu-validation.md).
run_suite "asan+ubsan" --config=asan --test_tag_filters=-gpu,-no_asan --build_tag_filters=-gpu,-no_asan

elapsed=$(( $(date +%s) - start ))
echo
echo "dcpmerge test suite finished in ${elapsed}s ($([ $status -eq 0 ] && echo PASS || echo FAIL))"
echo "${total_pass} passed, ${total_fail} failed, ${total_skip} skipped"
exit $status
