#!/usr/bin/env bash
# Builds merge_bench and merge_gpu_test for one GPU architecture without
# Bazel, in two halves, for iterating on the kernel with a GPU host that has
# nvcc but no absl or gtest (the lent machines):
#
#   tools/nvcc_gpu_build.sh host DIR     here: the g++ objects (absl, gtest
#                                         users) and the static absl/gtest
#                                         libraries they need, into DIR
#   tools/nvcc_gpu_build.sh device DIR   on the GPU host: nvcc compiles the
#                                         .cu files (in parallel) and links
#                                         DIR/bin/merge_bench, merge_gpu_test
#                                         and DIR/run.sh, laid out as a bundle
#                                         (BUNDLE=DIR tools/gpu_kernel_checks.sh)
#
# ARCH (default 90a) picks the one architecture. The release build and the
# bundle stay Bazel's (tools/make_gpu_bundle.sh); this is for turnaround.
set -euo pipefail
stage=${1:?usage: $0 host|device DIR}
dir=${2:?usage: $0 host|device DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cuda=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$dir/obj" "$dir/lib" "$dir/bin"

if [[ "$stage" == host ]]; then
  srcs=(kernels/merge_contract.cc kernels/merge_reference.cc kernels/cuda/merge_launcher.cc
        bench/bench_check.cc tests/kernels/cuda/merge_gpu_test.cc)
  pids=()
  for s in "${srcs[@]}"; do
    g++ -std=c++17 -O2 -DNDEBUG -I. -I"$cuda/include" -c "$s" \
      -o "$dir/obj/$(basename "${s%.cc}").o" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  cp /usr/lib/x86_64-linux-gnu/libabsl_*.a /usr/lib/x86_64-linux-gnu/libgtest.a \
    /usr/lib/x86_64-linux-gnu/libgtest_main.a "$dir/lib/"
  exit 0
fi

[[ "$stage" == device ]] || { echo "unknown stage $stage" >&2; exit 2; }
arch=${ARCH:-90a}
nvcc_flags=(-std=c++17 -O3 -I. --expt-relaxed-constexpr -lineinfo
            "-gencode=arch=compute_$arch,code=sm_$arch")
cus=(kernels/cuda/merge_kernel.cu kernels/cuda/merge_kernel_bf16.cu
     kernels/cuda/merge_kernel_f16.cu kernels/cuda/merge_kernel_f32.cu
     tests/kernels/cuda/fp8_exhaustive.cu bench/merge_bench.cu)
pids=()
for s in "${cus[@]}"; do
  nvcc "${nvcc_flags[@]}" -Xptxas -v -c "$s" -o "$dir/obj/$(basename "${s%.cu}").cu.o" \
    > "$dir/ptxas_$(basename "${s%.cu}").txt" 2>&1 & pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
if [[ $rc -ne 0 ]]; then
  cat "$dir"/ptxas_*.txt | grep -iE "error|warning" | head -40
  exit 1
fi
o=$dir/obj
kernel_objs=("$o/merge_kernel.cu.o" "$o/merge_kernel_bf16.cu.o" "$o/merge_kernel_f16.cu.o"
             "$o/merge_kernel_f32.cu.o")
libs=(-Xlinker --start-group "$dir"/lib/libabsl_*.a -Xlinker --end-group -lpthread)
nvcc -o "$dir/bin/merge_bench" "$o/merge_bench.cu.o" "${kernel_objs[@]}" "$o/bench_check.o" \
  "$o/merge_reference.o" "$o/merge_contract.o" "${libs[@]}"
nvcc -o "$dir/bin/merge_gpu_test" "$o/merge_gpu_test.o" "$o/fp8_exhaustive.cu.o" \
  "${kernel_objs[@]}" "$o/merge_launcher.o" "$o/merge_reference.o" "$o/merge_contract.o" \
  "$dir/lib/libgtest_main.a" "$dir/lib/libgtest.a" "${libs[@]}"
printf '#!/usr/bin/env bash\nexec "$(dirname "$0")/bin/$1" "${@:2}"\n' > "$dir/run.sh"
chmod +x "$dir/run.sh"
