#!/usr/bin/env bash
# The runtime stage of deploy/Dockerfile, assembled without a container
# engine: the same bundle script, the same paths, the same entrypoint and
# environment variables. Starts the server from it with a clean
# environment, checks health and config with the bundled CLI, stops it with
# SIGTERM (exit 0). Where possible (root + unshare), repeats that with the
# server as PID 1 of its own PID namespace, as in a container.
set -euo pipefail

ws="${TEST_SRCDIR}/${TEST_WORKSPACE}"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
dockerfile="$ws/deploy/Dockerfile"
fail() { echo "FAIL: $*" >&2; exit 1; }

# --- 1. The Dockerfile's runtime stage has the layout this test rebuilds.
runtime=$(awk '/^FROM .* AS runtime/{on=1} on' "$dockerfile")
[[ -n "$runtime" ]] || fail "no runtime stage in deploy/Dockerfile"
for line in \
  'COPY --from=build /out/dcpmerge /opt/dcpmerge' \
  'COPY --from=build /out/entrypoint.sh /usr/local/bin/entrypoint.sh' \
  'ENV DCPMERGE_HOME=/opt/dcpmerge' \
  'EXPOSE 50051 50052 50053 9400' \
  'ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]'; do
  grep -qxF -- "$line" <<<"$runtime" || fail "runtime stage lacks: $line"
done
grep -qE '^USER [1-9][0-9]*' <<<"$runtime" || fail "runtime stage must run as a non-root numeric USER"
grep -q 'tools/make_gpu_bundle.sh -o /out/dcpmerge --no-build //server:dcpmerge_server //tools/dcpmergectl' \
  "$dockerfile" || fail "build stage does not bundle the server and the CLI with tools/make_gpu_bundle.sh"
grep -q 'tools/install_deps.sh' "$dockerfile" || fail "build stage does not run tools/install_deps.sh"
# Base images: build arguments with a pinned tag (not latest, not untagged).
for arg in BUILD_BASE RUNTIME_BASE; do
  img=$(sed -n "s/^ARG ${arg}=//p" "$dockerfile")
  [[ -n "$img" ]] || fail "ARG $arg missing"
  [[ "$img" == *:* && "$img" != *:latest ]] || fail "ARG $arg=$img is not pinned by tag"
  grep -q "^FROM \${${arg}} AS " "$dockerfile" || fail "no stage FROM \${$arg}"
done

# --- 2. Assemble the runtime file system.
root="$tmp/rootfs"
rm -rf "$root"
mkdir -p "$root/usr/local/bin"
bash "$ws/tools/make_gpu_bundle.sh" -o "$root/opt/dcpmerge" \
  "$ws/server/dcpmerge_server" "$ws/tools/dcpmergectl/dcpmergectl" >/dev/null
install -m 0755 "$ws/deploy/entrypoint.sh" "$root/usr/local/bin/entrypoint.sh"
home="$root/opt/dcpmerge"
[[ -x "$home/bin/dcpmerge_server" && -x "$home/bin/dcpmergectl" && -x "$home/run.sh" ]] || fail "bundle incomplete"
ls "$home/lib" | grep -q '^libgrpc++\.so' || fail "bundle lacks libgrpc++"
if ls "$home/lib" | grep -qE '^(libc\.so|ld-linux|libcuda\.so|libnccl\.so)'; then
  fail "bundle must not carry glibc, the driver or NCCL"
fi
# Every library the bundled binaries need resolves with the bundle's lib/ only
# (plus the system's glibc).
for exe in "$home/bin/"*; do
  if LD_LIBRARY_PATH="$home/lib" ldd "$exe" | grep -q 'not found'; then
    fail "$(basename "$exe"): unresolved libraries: $(LD_LIBRARY_PATH="$home/lib" ldd "$exe" | grep 'not found')"
  fi
done

# --- 3. Run it the way the container does: entrypoint + env vars only.
token="deploy-test-token"
mkdir -p "$tmp/secrets"
printf '%s\n' "$token" > "$tmp/secrets/admin-token"
ctl() { env -i PATH=/usr/bin:/bin "$home/run.sh" dcpmergectl "$@"; }

# start_server READY_FILE [wrapper...]: env -i: nothing leaks in from here.
start_server() {
  local ready=$1; shift
  rm -f "$ready"
  env -i PATH=/usr/bin:/bin \
    DCPMERGE_HOME="$home" \
    DCPMERGE_RANK_ADDRESS=127.0.0.1:0 \
    DCPMERGE_ADMIN_ADDRESS=127.0.0.1:0 \
    DCPMERGE_METRICS_ADDRESS=127.0.0.1:0 \
    DCPMERGE_HEALTH_ADDRESS=127.0.0.1:0 \
    DCPMERGE_ADMIN_TOKEN_FILE="$tmp/secrets/admin-token" \
    DCPMERGE_WORLD_SIZE=2 DCPMERGE_NUM_HEADS=4 DCPMERGE_HEAD_SIZE=128 DCPMERGE_MAX_TOKENS=16 \
    DCPMERGE_INPUT_DTYPE=bf16 DCPMERGE_OUTPUT_MODE=fp8_per_tensor DCPMERGE_DEFAULT_SCALE=0.25 \
    DCPMERGE_BACKEND=cpu DCPMERGE_DRAIN_TIMEOUT_MS=2000 DCPMERGE_QUIET=true \
    DCPMERGE_READY_FILE="$ready" \
    "$@" "$root/usr/local/bin/entrypoint.sh" &
  server_pid=$!
  for _ in $(seq 1 300); do
    [[ -s "$ready" ]] && break
    kill -0 "$server_pid" 2>/dev/null || fail "server exited before it was ready"
    sleep 0.1
  done
  [[ -s "$ready" ]] || fail "server not ready within 30 s"
  read -r rank_port admin_port metrics_port health_port < "$ready"
}

# check_running: health, config and metrics through the bundled tools.
check_running() {
  local out
  out=$(ctl --server="127.0.0.1:$admin_port" health) || fail "health exit $?: $out"
  grep -q 'liveness  ("")\: SERVING' <<<"$out" || fail "liveness: $out"
  grep -q 'NOT_SERVING' <<<"$out" || fail "readiness must be NOT_SERVING without ranks: $out"
  # The plaintext health-only listener answers the same (what kubelet probes use).
  [[ "$health_port" -gt 0 ]] || fail "health listener not enabled by DCPMERGE_HEALTH_ADDRESS"
  out=$(ctl --server="127.0.0.1:$health_port" health) || fail "health on the health port: exit $?: $out"
  grep -q 'readiness ("dcpmerge.v1.MergeData"): NOT_SERVING' <<<"$out" || fail "health port: $out"
  out=$(ctl --server="127.0.0.1:$admin_port" --token_file="$tmp/secrets/admin-token" get-config) \
    || fail "get-config exit $?: $out"
  grep -q 'world_size 2, num_heads 4, head_size 128, max_tokens 16' <<<"$out" || fail "config: $out"
  grep -q 'default scale    0.25' <<<"$out" || fail "default scale: $out"
  [[ "$metrics_port" -gt 0 ]] || fail "metrics not enabled by DCPMERGE_METRICS_ADDRESS"
  if command -v curl >/dev/null; then
    local body
    body=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics") || fail "metrics endpoint: curl exit $?"
    grep -q '^dcpmerge_world_size 2$' <<<"$body" || fail "metrics endpoint: no dcpmerge_world_size 2"
  fi
}

# stop_server PID: SIGTERM, exit 0 within 20 s.
stop_server() {
  local pid=$1 rc=0
  kill -TERM "$pid"
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fail "no exit within 20 s of SIGTERM"; fi
  wait "$pid" || rc=$?
  [[ $rc -eq 0 ]] || fail "exit code $rc after SIGTERM (want 0)"
}

start_server "$tmp/ready1"
check_running
stop_server "$server_pid"
echo "ok: entrypoint + env vars, health, get-config, metrics, SIGTERM -> 0"

# DCPMERGE_LOG_FORMAT=json reaches the server: a start that fails (an
# unknown data plane) logs JSON lines, with the year in the time.
rc=0
out=$(env -i PATH=/usr/bin:/bin DCPMERGE_HOME="$home" DCPMERGE_LOG_FORMAT=json DCPMERGE_DATA_PLANE=bogus \
  DCPMERGE_RANK_ADDRESS=127.0.0.1:0 DCPMERGE_ADMIN_ADDRESS=127.0.0.1:0 DCPMERGE_METRICS_ADDRESS=off \
  DCPMERGE_HEALTH_ADDRESS=off DCPMERGE_BACKEND=cpu "$root/usr/local/bin/entrypoint.sh" 2>&1) || rc=$?
[[ $rc -eq 1 ]] || fail "data plane bogus: exit $rc, want 1 ($out)"
grep -qE '^\{"time":"20[0-9]{2}-[0-9]{2}-[0-9]{2}T[^"]*Z","level":"error","component":"dcpmerge","message":"cannot start: .*data_plane' <<<"$out" \
  || fail "DCPMERGE_LOG_FORMAT=json: not a JSON error line: $out"
# The bundled binaries answer --version.
out=$("$home/run.sh" dcpmerge_server --version) || fail "dcpmerge_server --version: exit $?"
grep -qE '^dcpmerge_server [0-9]+\.[0-9]+\.[0-9]+ \(commit ' <<<"$out" || fail "dcpmerge_server --version: $out"
out=$(ctl --version) || fail "dcpmergectl --version: exit $?"
grep -qE '^dcpmergectl [0-9]+\.[0-9]+\.[0-9]+ \(commit ' <<<"$out" || fail "dcpmergectl --version: $out"
echo "ok: DCPMERGE_LOG_FORMAT=json gives JSON log lines; --version in the bundle"

# A mistyped variable is refused, not ignored.
rc=0
out=$(env -i PATH=/usr/bin:/bin DCPMERGE_HOME="$home" DCPMERGE_WORLDSIZE=2 \
  "$root/usr/local/bin/entrypoint.sh" 2>&1) || rc=$?
[[ $rc -eq 2 ]] || fail "unknown DCPMERGE_WORLDSIZE: exit $rc, want 2 ($out)"
grep -q 'unknown variable DCPMERGE_WORLDSIZE' <<<"$out" || fail "message: $out"
# A token file that is not there stops the start.
rc=0
out=$(env -i PATH=/usr/bin:/bin DCPMERGE_HOME="$home" DCPMERGE_ADMIN_TOKEN_FILE=/nonexistent \
  "$root/usr/local/bin/entrypoint.sh" 2>&1) || rc=$?
[[ $rc -eq 2 ]] || fail "missing token file: exit $rc, want 2 ($out)"
# So does a join secret file that is not there, and the rank port beyond
# loopback without a join secret or mutual TLS (docs/server.md, "Limits and
# security").
rc=0
out=$(env -i PATH=/usr/bin:/bin DCPMERGE_HOME="$home" DCPMERGE_JOIN_SECRET_FILE=/nonexistent \
  "$root/usr/local/bin/entrypoint.sh" 2>&1) || rc=$?
[[ $rc -eq 2 ]] || fail "missing join secret file: exit $rc, want 2 ($out)"
rc=0
out=$(env -i PATH=/usr/bin:/bin DCPMERGE_HOME="$home" DCPMERGE_RANK_ADDRESS=0.0.0.0:0 \
  DCPMERGE_ADMIN_ADDRESS=127.0.0.1:0 DCPMERGE_METRICS_ADDRESS=off DCPMERGE_HEALTH_ADDRESS=off \
  DCPMERGE_BACKEND=cpu DCPMERGE_QUIET=true "$root/usr/local/bin/entrypoint.sh" 2>&1) || rc=$?
[[ $rc -eq 1 ]] || fail "rank port beyond loopback without a join secret: exit $rc, want 1 ($out)"
grep -q 'allow_insecure_rank_address' <<<"$out" || fail "message: $out"
echo "ok: entrypoint refuses unknown variables, unreadable token and secret files, an open rank port"

# --- 4. As PID 1 (a container's main process): SIGTERM must still work.
if [[ $(id -u) -eq 0 ]] && unshare --pid --fork --mount-proc true 2>/dev/null; then
  start_server "$tmp/ready2" unshare --pid --fork --mount-proc
  check_running
  # The server is PID 1 inside; signal it through its host PID.
  inner=$(pgrep -P "$server_pid" | head -1)
  [[ -n "$inner" ]] || fail "no child of unshare"
  kill -TERM "$inner"
  rc=0
  for _ in $(seq 1 200); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fail "PID 1 server ignored SIGTERM"; fi
  wait "$server_pid" || rc=$?
  [[ $rc -eq 0 ]] || fail "PID 1 server: exit $rc after SIGTERM (want 0)"
  echo "ok: as PID 1 of a PID namespace, SIGTERM -> 0"
else
  echo "note: PID-1 check not run (needs root and unshare --pid)"
fi
echo PASS
