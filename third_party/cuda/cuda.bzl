"""cuda_library: compiles .cu files with the host's nvcc into a cc_library.

Without CUDA (see cuda_configure.bzl) it yields an empty library, so callers
select GPU code with `if_cuda`.
"""

load("@local_cuda//:defs.bzl", "CUDA_ARCHS", "CUDA_ENABLED", "NVCC")

def if_cuda(if_true, if_false = []):
    return if_true if CUDA_ENABLED else if_false

def cuda_library(name, srcs, hdrs = [], cu_hdrs = [], deps = [], copts = [], **kwargs):
    """srcs: .cu files; hdrs: public headers; cu_hdrs: other headers nvcc reads."""
    if not CUDA_ENABLED:
        native.cc_library(name = name, hdrs = hdrs, deps = deps, **kwargs)
        return
    gencode = " ".join([
        "-gencode=arch=compute_%s,code=sm_%s" % (a, a)
        for a in CUDA_ARCHS
    ] + [
        # PTX for GPUs newer than the list: the newest arch, minus any
        # arch-specific "a" suffix (such PTX would not run elsewhere).
        "-gencode=arch=compute_{0},code=compute_{0}".format(CUDA_ARCHS[-1].rstrip("af")),
    ])
    objs = []
    for src in srcs:
        obj = name + "_" + src.replace("/", "_").replace(".cu", ".o")
        native.genrule(
            name = obj.replace(".", "_") + "_nvcc",
            srcs = [src] + hdrs + cu_hdrs,
            outs = [obj],
            # Each nvcc run gets its own TMPDIR: parallel runs in the sandbox
            # otherwise collide on temporary file names.
            cmd = ("TMPDIR=$$(mktemp -d) %s -c $(location %s) -o $@ " +
                   "-std=c++17 -O3 -I. -I$(GENDIR) -Xcompiler -fPIC " +
                   "--expt-relaxed-constexpr -lineinfo %s %s") % (
                NVCC,
                src,
                gencode,
                " ".join(copts),
            ),
        )
        objs.append(obj)
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cuda"],
        alwayslink = True,
        # Static: the objects then resolve against the static cudart in the
        # final binary (a shared object of them would not).
        linkstatic = True,
        **kwargs
    )
