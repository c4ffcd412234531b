#!/bin/sh
# Bazel's --workspace_status_command (.bazelrc): the build commit that
# base/version.h reports. Prints "STABLE_DCPMERGE_COMMIT <12 hex digits>"
# (+ "-dirty" when tracked files differ from it), or "unknown" without git or
# outside a git checkout. Local only (no network); always exits 0, since a
# failing status command would fail the build.
commit=unknown
if command -v git >/dev/null 2>&1 && git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  if head=$(git rev-parse --short=12 HEAD 2>/dev/null) && [ -n "$head" ]; then
    commit=$head
    if ! git diff --quiet HEAD -- 2>/dev/null; then commit="$head-dirty"; fi
  fi
fi
echo "STABLE_DCPMERGE_COMMIT $commit"
exit 0
