#!/usr/bin/env bash
# Builds deploy/Dockerfile without a container engine or registry and smoke-
# tests the image, as far as a machine without a GPU allows:
#   1. debootstrap a Debian 12 minbase root and import it as a local image
#      (stands in for both pinned base images);
#   2. buildah bud the Dockerfile with WITH_CUDA=0 (CPU-only build; the CUDA
#      build stage needs NVIDIA's apt repository);
#   3. check the image's OCI version labels (build args VERSION, REVISION);
#   4. run the entrypoint inside the image (non-root, env vars only, a join
#      secret for the rank port on 0.0.0.0), check health and get-config
#      with dcpmergectl, a wrong token, the join secret and a wrong one on
#      the rank port, then SIGTERM must give exit status 0.
# Needs root, Debian's archive, and the packages buildah podman debootstrap.
# Takes about 6 minutes on 2 cores. Not part of tools/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
S=(--storage-driver vfs)
base=localhost/dcpmerge-base:bookworm
image=localhost/dcpmerge:cpu-verify

if ! podman "${S[@]}" image exists "$base"; then
  root=$(mktemp -d)
  chmod 0755 "$root"  # mktemp's 0700 would become the image's /: the non-root user could not exec
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | podman "${S[@]}" import - "$base" >/dev/null
  rm -rf "$root"
fi

version=0.0.0-verify
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
buildah "${S[@]}" bud --isolation chroot -f deploy/Dockerfile \
  --build-arg BUILD_BASE="$base" --build-arg RUNTIME_BASE="$base" \
  --build-arg WITH_CUDA=0 --build-arg VERSION="$version" --build-arg REVISION="$revision" \
  -t "$image" .

label() { podman "${S[@]}" image inspect --format "{{index .Labels \"org.opencontainers.image.$1\"}}" "$image"; }
[ "$(label version)" = "$version" ] || { echo "FAIL: version label '$(label version)' != $version"; exit 1; }
[ "$(label revision)" = "$revision" ] || { echo "FAIL: revision label '$(label revision)' != $revision"; exit 1; }
[ "$(label licenses)" = "Apache-2.0" ] || { echo "FAIL: licenses label '$(label licenses)'"; exit 1; }
echo "image labels: version $(label version), revision $(label revision), licenses $(label licenses)"

smoke=$(mktemp)
chmod 0644 "$smoke"
cat > "$smoke" <<'SMOKE'
set -u
[ "$(id -u)" = 10001 ] || { echo "FAIL: runs as uid $(id -u), not 10001"; exit 1; }
echo tok-verify > /tmp/token
echo join-verify > /tmp/join
export DCPMERGE_WORLD_SIZE=2 DCPMERGE_NUM_HEADS=16 DCPMERGE_HEAD_SIZE=128 \
  DCPMERGE_MAX_TOKENS=64 DCPMERGE_ADMIN_TOKEN_FILE=/tmp/token \
  DCPMERGE_JOIN_SECRET_FILE=/tmp/join DCPMERGE_METRICS_ADDRESS=127.0.0.1:9400
/usr/local/bin/entrypoint.sh & pid=$!
sleep 3
fail=0
DCPMERGE_ADMIN_TOKEN=tok-verify dcpmergectl health || fail=1
DCPMERGE_ADMIN_TOKEN=tok-verify dcpmergectl get-config || fail=1
DCPMERGE_ADMIN_TOKEN=wrong dcpmergectl get-config; [ $? = 1 ] || fail=1
# The rank port (0.0.0.0 in the image) takes rank tokens of the join
# secret, each for its own rank only.
dcpmergectl --server=127.0.0.1:50051 check-join --join_secret_file=/tmp/join || fail=1
dcpmergectl rank-token --rank=1 --join_secret_file=/tmp/join > /tmp/rank-1 || fail=1
dcpmergectl --server=127.0.0.1:50051 check-join --join_secret_file=/tmp/rank-1 || fail=1
dcpmergectl --server=127.0.0.1:50051 check-join --join_secret_file=/tmp/rank-1 --rank=0; [ $? = 1 ] || fail=1
DCPMERGE_JOIN_SECRET=wrong dcpmergectl --server=127.0.0.1:50051 check-join; [ $? = 1 ] || fail=1
kill -TERM "$pid"; wait "$pid"; [ $? = 0 ] || fail=1
[ $fail = 0 ] && echo "image smoke test: PASS" || { echo "image smoke test: FAIL"; exit 1; }
SMOKE
c=$(buildah "${S[@]}" from "$image")
trap 'buildah "${S[@]}" rm "$c" >/dev/null; rm -f "$smoke"' EXIT
buildah "${S[@]}" copy "$c" "$smoke" /tmp/smoke.sh >/dev/null
buildah "${S[@]}" run --isolation chroot "$c" -- /bin/bash /tmp/smoke.sh
