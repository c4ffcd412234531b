#!/usr/bin/env bash
# Builds GPU binaries here (Bazel, nvcc) and bundles them with the shared
# libraries a bare CUDA host lacks, for hosts with a driver but no toolchain.
#
#   tools/make_gpu_bundle.sh [-o DIR] [--no-build] [--tar] LABEL|PATH...
#   e.g. tools/make_gpu_bundle.sh //tests/kernels/cuda:merge_gpu_test //bench:merge_bench
#   A PATH (an existing executable file, not a //label) is bundled as it is,
#   without Bazel (the container build and tests/deploy use this).
#
# Result (default DIR: dist/gpu-bundle, git-ignored):
#   DIR/bin/NAME      the binaries
#   DIR/lib/*.so*     every library `ldd` lists except glibc's own (libc,
#                     libm, libdl, librt, libpthread, ld-linux, vdso), the
#                     CUDA driver (libcuda, libnvidia-*) and NCCL (the GPU
#                     host provides these)
#   DIR/run.sh NAME [ARGS...]   runs bin/NAME with LD_LIBRARY_PATH=DIR/lib
#   DIR/MANIFEST      binaries, libraries, build commit
#   DIR.tar.gz        with --tar: the bundle as one archive (fat binaries
#                     for five GPU targets compress about 5x), for copying
#                     to a GPU host: tar -xzf DIR.tar.gz
# Binaries are stripped of host symbols (the GPU code keeps its line tables).
# Generic: any cc_binary / cc_test label works (the server bundle reuses it).
set -euo pipefail

out=dist/gpu-bundle
build=1
archive=0
labels=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --tar) archive=1; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    //*) labels+=("$1"); shift ;;
    *) labels+=("$(readlink -f "$1" || echo "$1")"); shift ;;  # a path: absolute before the cd below
  esac
done
if [[ ${#labels[@]} -eq 0 ]]; then
  echo "usage: $0 [-o DIR] [--no-build] LABEL..." >&2
  exit 2
fi

root=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
cd "$root"
bazel_labels=()
for label in "${labels[@]}"; do
  [[ "$label" == //* ]] && bazel_labels+=("$label")
done
bin_dir=""
if [[ ${#bazel_labels[@]} -gt 0 ]]; then
  if [[ $build -eq 1 ]]; then
    bazel build "${bazel_labels[@]}"
  fi
  bin_dir=$(bazel info bazel-bin 2>/dev/null)
fi

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"

# Libraries the GPU host provides (or that must come from its driver).
skip_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libcuda\.so|libnvidia-|libnccl\.so)'

declare -A seen=()
for label in "${labels[@]}"; do
  if [[ "$label" == //* ]]; then
    pkg=${label#//}; pkg=${pkg%%:*}
    name=${label##*:}
    [[ "$label" == *:* ]] || name=${pkg##*/}
    exe="$bin_dir/$pkg/$name"
  else
    exe=$label
    name=$(basename "$label")
  fi
  if [[ ! -x "$exe" ]]; then
    echo "error: $label: no executable at $exe" >&2
    exit 1
  fi
  install -m 0755 "$exe" "$out/bin/$name"
  strip --strip-unneeded "$out/bin/$name"
  # `name => /path (addr)` lines; the path is what the loader resolved here.
  while read -r lib path; do
    [[ -n "$path" && -f "$path" ]] || continue
    if [[ "$lib" =~ $skip_re ]]; then continue; fi
    if [[ -z "${seen[$lib]:-}" ]]; then
      seen[$lib]=1
      cp -L "$path" "$out/lib/$lib"
    fi
  done < <(ldd "$exe" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
done

cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a bundled binary with the bundled libraries first on the search path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ $# -lt 1 ]]; then
  echo "usage: $0 NAME [ARGS...]; binaries: $(ls "$here/bin" | tr '\n' ' ')" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exe="$here/bin/$1"
shift
exec "$exe" "$@"
RUN
chmod 0755 "$out/run.sh"

{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
  echo "binaries:"; ls -1 "$out/bin" | sed 's/^/  /'
  echo "libraries:"; ls -1 "$out/lib" | sed 's/^/  /'
} > "$out/MANIFEST"
echo "bundle: $out ($(du -sh "$out" | cut -f1)); run: $out/run.sh NAME [ARGS...]"
if [[ $archive -eq 1 ]]; then
  tar -C "$(dirname "$out")" -czf "$out.tar.gz" "$(basename "$out")"
  echo "archive: $out.tar.gz ($(du -sh "$out.tar.gz" | cut -f1))"
fi
