#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the merge service
# demo (server + simulated DCP ranks on this machine; CPU when no GPU).
# Extra arguments go to the demo (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install_deps.sh
exec bazel run --color=no --curses=no //tools:dcpmerge_demo -- "$@"
