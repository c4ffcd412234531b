#!/usr/bin/env bash
# Runs the manifest checks with the system python3 (python3-yaml from
# tools/install_deps.sh).
exec python3 "${TEST_SRCDIR}/${TEST_WORKSPACE}/tests/deploy/manifests_test.py"
