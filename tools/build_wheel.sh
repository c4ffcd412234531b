#!/usr/bin/env bash
# Builds the Python wheel: one command, here on Debian 12, for every Python
# 3.8+ and every PyTorch on Linux x86_64 (the package talks to the C ABI
# through ctypes; docs/python.md).
#
#   tools/build_wheel.sh [--no-build] [-o DIR]
#     -> DIR/dcpmerge-<version>-py3-none-linux_x86_64.whl   (default DIR: dist)
#
# Builds //capi:libdcpmerge_c.so with Bazel (optimised; with the CUDA kernel
# when nvcc is in /usr/local/cuda or on PATH, as the rest of the build), then
# python/build_wheel.py (Python standard library only) packs python/dcpmerge,
# the library and the shared libraries it needs into the wheel. Install it
# anywhere with
#   python3 -m pip install --no-index --no-deps --target DIR dist/dcpmerge-*.whl
# (or into a virtual environment without --target).
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
build=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--no-build] [-o DIR]" >&2; exit 2 ;;
  esac
done

if [[ $build -eq 1 ]]; then
  tools/install_deps.sh
  bazel build --color=no --curses=no //capi:libdcpmerge_c.so
fi
lib="$(bazel info --color=no bazel-bin 2>/dev/null)/capi/libdcpmerge_c.so"
rm -f "$out"/dcpmerge-*.whl
exec "${PYTHON:-/usr/bin/python3}" python/build_wheel.py --lib "$lib" --out "$out"
