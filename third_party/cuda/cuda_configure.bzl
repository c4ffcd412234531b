"""Finds the host's CUDA toolkit (nvcc, cudart, NCCL) without any download.

Creates the repository @local_cuda with:
  //:defs.bzl   CUDA_ENABLED, NVCC, CUDA_ARCHS (the one place the GPU
                architectures are listed)
  //:cuda       headers + static cudart, for host code that calls the runtime
  //:nccl       NCCL headers + library
When nvcc is absent (or DCPMERGE_DISABLE_CUDA=1), CUDA_ENABLED is False, the
targets still exist but are empty, and GPU code is compiled out.
"""

# Machine code for A100 (sm_80), L40S (sm_89), H100/H200 (sm_90a) and B200
# (sm_100a); PTX of the last entry without its "a" (compute_100) is embedded
# too, so later GPUs compile it at load time. Override with
# DCPMERGE_CUDA_ARCHS="90a" (a comma-separated list) to build faster for one
# chip.
_DEFAULT_ARCHS = "80,89,90a,100a"

def _find_cuda_root(ctx):
    if ctx.os.environ.get("DCPMERGE_DISABLE_CUDA", "0") == "1":
        return None
    for var in ["CUDA_PATH", "CUDA_HOME"]:
        root = ctx.os.environ.get(var, "")
        if root and ctx.path(root + "/bin/nvcc").exists:
            return root
    if ctx.path("/usr/local/cuda/bin/nvcc").exists:
        return "/usr/local/cuda"
    nvcc = ctx.which("nvcc")
    if nvcc:
        return str(nvcc.dirname.dirname)
    return None

def _lib_dir(ctx, root, name):
    for sub in ["lib64", "lib", "targets/x86_64-linux/lib"]:
        if ctx.path(root + "/" + sub + "/" + name).exists:
            return root + "/" + sub
    return None

def _cuda_configure_impl(ctx):
    root = _find_cuda_root(ctx)
    archs = [a.strip() for a in ctx.os.environ.get("DCPMERGE_CUDA_ARCHS", _DEFAULT_ARCHS).split(",") if a.strip()]
    if root == None:
        why = "DCPMERGE_DISABLE_CUDA=1" if ctx.os.environ.get("DCPMERGE_DISABLE_CUDA", "0") == "1" else "nvcc not found"
        print("dcpmerge: %s; building WITHOUT the CUDA kernel and NCCL data plane (CPU only)." % why)
        ctx.file("defs.bzl", "CUDA_ENABLED = False\nNVCC = \"\"\nCUDA_ARCHS = []\n")
        ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])
exports_files(["defs.bzl"])
cc_library(name = "cuda")
cc_library(name = "nccl")
""")
        return

    ctx.symlink(root + "/include", "include")
    cudart_dir = _lib_dir(ctx, root, "libcudart_static.a")
    nccl_dir = _lib_dir(ctx, root, "libnccl.so")
    if cudart_dir == None:
        fail("dcpmerge: nvcc found under %s but libcudart_static.a is missing" % root)
    nccl_linkopts = ["-L" + nccl_dir, "-lnccl"] if nccl_dir else []
    ctx.file("defs.bzl", "CUDA_ENABLED = True\nNVCC = %r\nCUDA_ARCHS = %r\nHAVE_NCCL = %r\n" % (
        root + "/bin/nvcc",
        archs,
        nccl_dir != None,
    ))
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])
exports_files(["defs.bzl"])

cc_library(
    name = "cuda_headers",
    # All of include/: some headers (nv/target, cccl) have no extension.
    hdrs = glob(["include/**"]),
    includes = ["include"],
)

# Static cudart: the binaries then need only the driver on a GPU host.
cc_library(
    name = "cuda",
    linkopts = ["-L{cudart_dir}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
    deps = [":cuda_headers"],
)

cc_library(
    name = "nccl",
    linkopts = {nccl_linkopts},
    deps = [":cuda_headers"],
)
""".format(cudart_dir = cudart_dir, nccl_linkopts = repr(nccl_linkopts)))

cuda_configure = repository_rule(
    implementation = _cuda_configure_impl,
    environ = ["CUDA_PATH", "CUDA_HOME", "DCPMERGE_DISABLE_CUDA", "DCPMERGE_CUDA_ARCHS", "PATH"],
    local = True,
)
