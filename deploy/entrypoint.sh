#!/usr/bin/env bash
# Container entrypoint of the dcpmerge merge server: maps DCPMERGE_* environment
# variables to the server's flags, then execs the server (it becomes the
# container's main process and gets SIGTERM directly: graceful drain, exit 0).
#
#   entrypoint.sh [EXTRA_SERVER_FLAGS...]   (appended after the mapped flags)
#
# Every variable is optional; unset or empty leaves the server's default,
# except the listeners, which default to all interfaces here (a
# container is reached through its pod IP; the NetworkPolicy and the admin
# token guard the admin port, the join secret or mutual TLS the rank port:
# without either the server refuses to start on 0.0.0.0):
#   DCPMERGE_RANK_ADDRESS      --rank_address      (default 0.0.0.0:50051)
#   DCPMERGE_ADMIN_ADDRESS     --admin_address     (default 0.0.0.0:50052)
#   DCPMERGE_METRICS_ADDRESS   --metrics_address   (default 0.0.0.0:9400; "off": none)
#   DCPMERGE_HEALTH_ADDRESS    --health_address    (default 0.0.0.0:50053; "off": none):
#                              plaintext grpc.health.v1 only, for kubelet gRPC probes
#   DCPMERGE_ADMIN_TOKEN_FILE  --admin_token_file  (a mounted Secret; DCPMERGE_ADMIN_TOKEN
#                                                   also works, read by the server itself)
#   DCPMERGE_TLS_CERT_FILE, DCPMERGE_TLS_KEY_FILE, DCPMERGE_TLS_CLIENT_CA_FILE
#   DCPMERGE_LOG_FORMAT        --log_format        (text | json)
#   DCPMERGE_WORLD_SIZE, DCPMERGE_NUM_HEADS, DCPMERGE_HEAD_SIZE, DCPMERGE_MAX_TOKENS,
#   DCPMERGE_INPUT_DTYPE, DCPMERGE_LSE_BASE, DCPMERGE_LSE_LAYOUT, DCPMERGE_OUTPUT_MODE,
#   DCPMERGE_GROUP_SIZE, DCPMERGE_POWER_OF_TWO_SCALES, DCPMERGE_RETURN_MODE,
#   DCPMERGE_RETURN_LSE, DCPMERGE_DEFAULT_SCALE        initial configuration
#   DCPMERGE_BACKEND, DCPMERGE_CPU_THREADS, DCPMERGE_DATA_PLANE,
#   DCPMERGE_NCCL_DEVICE, DCPMERGE_NCCL_INIT_TIMEOUT_MS, DCPMERGE_NCCL_FIXED_TOKENS,
#   DCPMERGE_HEARTBEAT_TIMEOUT_MS, DCPMERGE_STEP_TIMEOUT_MS, DCPMERGE_DRAIN_TIMEOUT_MS,
#   DCPMERGE_MAX_PENDING_STEPS, DCPMERGE_READY_FILE, DCPMERGE_QUIET
#   Limits and security (docs/server.md, "Limits and security"):
#   DCPMERGE_JOIN_SECRET_FILE  --join_secret_file  (a mounted Secret; DCPMERGE_JOIN_SECRET
#                                                   also works, read by the server itself)
#   DCPMERGE_ALLOW_INSECURE_RANK_ADDRESS, DCPMERGE_MAX_MESSAGE_BYTES, DCPMERGE_MAX_BUFFERED_BYTES,
#   DCPMERGE_MAX_RPC_THREADS, DCPMERGE_MAX_STREAMS, DCPMERGE_MAX_RESPONSE_QUEUE,
#   DCPMERGE_STREAM_BIND_TIMEOUT_MS, DCPMERGE_MAX_PENDING_STEPS_PER_RANK,
#   DCPMERGE_MAX_PENDING_BYTES, DCPMERGE_MAX_LAYERS, DCPMERGE_HEAP_RETAIN_BYTES,
#   DCPMERGE_SHUTDOWN_GRACE_MS, DCPMERGE_STATE_FILE, DCPMERGE_STATE_MISSING, DCPMERGE_STATE_FSYNC,
#   DCPMERGE_JOIN_SECRET_GRACE_MS, DCPMERGE_HANDSHAKE_TIMEOUT_MS, DCPMERGE_LISTENER_STALL_TIMEOUT_MS
#   DCPMERGE_HOME              where the bundle lives (default /opt/dcpmerge)
# A DCPMERGE_* variable not in this list is refused (exit 2): a typo must not
# silently fall back to a default.
set -euo pipefail

home=${DCPMERGE_HOME:-/opt/dcpmerge}

# variable suffix -> server flag
mapped=(
  RANK_ADDRESS ADMIN_ADDRESS METRICS_ADDRESS HEALTH_ADDRESS ADMIN_TOKEN_FILE
  TLS_CERT_FILE TLS_KEY_FILE TLS_CLIENT_CA_FILE
  LOG_FORMAT
  WORLD_SIZE NUM_HEADS HEAD_SIZE MAX_TOKENS INPUT_DTYPE LSE_BASE LSE_LAYOUT
  OUTPUT_MODE GROUP_SIZE POWER_OF_TWO_SCALES RETURN_MODE RETURN_LSE DEFAULT_SCALE
  BACKEND CPU_THREADS DATA_PLANE NCCL_DEVICE NCCL_INIT_TIMEOUT_MS NCCL_FIXED_TOKENS
  HEARTBEAT_TIMEOUT_MS STEP_TIMEOUT_MS DRAIN_TIMEOUT_MS MAX_PENDING_STEPS
  READY_FILE QUIET
  JOIN_SECRET_FILE ALLOW_INSECURE_RANK_ADDRESS MAX_MESSAGE_BYTES MAX_BUFFERED_BYTES
  MAX_RPC_THREADS MAX_STREAMS MAX_RESPONSE_QUEUE STREAM_BIND_TIMEOUT_MS
  MAX_PENDING_STEPS_PER_RANK MAX_PENDING_BYTES MAX_LAYERS HEAP_RETAIN_BYTES
  SHUTDOWN_GRACE_MS STATE_FILE STATE_MISSING STATE_FSYNC
  JOIN_SECRET_GRACE_MS HANDSHAKE_TIMEOUT_MS LISTENER_STALL_TIMEOUT_MS
)
# Read by something other than this mapping.
known_other=(HOME ADMIN_TOKEN JOIN_SECRET)

declare -A known=()
for v in "${mapped[@]}" "${known_other[@]}"; do known[$v]=1; done
while IFS='=' read -r name _; do
  suffix=${name#DCPMERGE_}
  if [[ -z "${known[$suffix]:-}" ]]; then
    echo "entrypoint: unknown variable $name (known: ${mapped[*]/#/DCPMERGE_} DCPMERGE_HOME DCPMERGE_ADMIN_TOKEN DCPMERGE_JOIN_SECRET)" >&2
    exit 2
  fi
done < <(env | grep -E '^DCPMERGE_[A-Z0-9_]*=' || true)

: "${DCPMERGE_RANK_ADDRESS:=0.0.0.0:50051}"
: "${DCPMERGE_ADMIN_ADDRESS:=0.0.0.0:50052}"
: "${DCPMERGE_METRICS_ADDRESS:=0.0.0.0:9400}"
: "${DCPMERGE_HEALTH_ADDRESS:=0.0.0.0:50053}"
if [[ "$DCPMERGE_METRICS_ADDRESS" == "off" ]]; then DCPMERGE_METRICS_ADDRESS=""; fi
if [[ "$DCPMERGE_HEALTH_ADDRESS" == "off" ]]; then DCPMERGE_HEALTH_ADDRESS=""; fi

flags=()
for suffix in "${mapped[@]}"; do
  var="DCPMERGE_${suffix}"
  value=${!var:-}
  [[ -n "$value" ]] || continue
  flags+=("--${suffix,,}=${value}")
done

if [[ -n "${DCPMERGE_ADMIN_TOKEN_FILE:-}" && ! -r "$DCPMERGE_ADMIN_TOKEN_FILE" ]]; then
  echo "entrypoint: DCPMERGE_ADMIN_TOKEN_FILE=$DCPMERGE_ADMIN_TOKEN_FILE is not readable" >&2
  exit 2
fi
if [[ -n "${DCPMERGE_JOIN_SECRET_FILE:-}" && ! -r "$DCPMERGE_JOIN_SECRET_FILE" ]]; then
  echo "entrypoint: DCPMERGE_JOIN_SECRET_FILE=$DCPMERGE_JOIN_SECRET_FILE is not readable" >&2
  exit 2
fi

exec "$home/run.sh" dcpmerge_server "${flags[@]}" "$@"
