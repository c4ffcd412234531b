#!/usr/bin/env bash
# Installs the Debian 12 packages dcpmerge builds with, if any is missing.
# Everything comes from Debian's archive: the Bazel build is fully offline.
# CUDA is optional: with nvcc in the toolkit's default prefix (or on PATH)
# the GPU kernel and NCCL data plane are built too.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap        # Bazel 4.2.3, uses the system JDK
  bazel-rules-java       # local rules_java (see WORKSPACE)
  g++
  pkg-config
  libabsl-dev
  libgrpc++-dev
  libprotobuf-dev
  protobuf-compiler
  protobuf-compiler-grpc # grpc_cpp_plugin
  libgtest-dev
  libgmock-dev
  prometheus-cpp-dev
  clang                  # the fuzz targets (--config=fuzz): libFuzzer is clang's
  libclang-rt-14-dev     # libFuzzer and clang's sanitizer runtimes
  curl                   # metrics endpoint checks in the test suite
  python3                # manifest checks in the test suite
  python3-yaml
  python3-pip            # the Python package's tests: pip installs the wheel
  python3-pytest
  python3-numpy
  python3-torch          # the eager path on real (CPU) tensors: python/tests/test_ops_torch.py
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "dcpmerge: all build dependencies are installed."
  exit 0
fi

echo "dcpmerge: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
