#!/usr/bin/env python3
"""Host time per eager call of dcpmerge.merge_attn_states / merge_states
against torch.add(x, y, out=o) on a [32,128] bf16 tensor, in one process,
on the CPU (a proxy for the GPU host, where python/tests/gpu/gpu_checks.py
measures the real thing):

    PYTHONPATH=<site or python> /usr/bin/python3 python/tests/eager_bench.py

What runs: the package's whole Python side on real torch CPU tensors (the
signature lookup, pointer binding, allocation, the plan), with the C
function of the launch replaced by a no-op C function called the same way
(libc memcmp with length 0, through ctypes.CDLL with the same argument
types), so the foreign call is counted but no merge is computed. Not
counted: reading the CUDA stream (no CUDA here; torch's raw accessor is one
more C call on the GPU host). bf16 in, bf16 out (passthrough): Debian's
torch 1.13 has no float8_e4m3fn; FP8 output adds one pointer write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import timeit

import torch

import dcpmerge
import dcpmerge.ops as ops

H, D = 32, 128


@functools.lru_cache(maxsize=None)
def _noop_entry(fn_name):
    fn = ctypes.CDLL(ctypes.util.find_library("c"))["memcmp"]
    fn.restype = ctypes.c_int32
    # merge: (args, device 0, stream 0) -> memcmp(args, NULL, 0); copy: (args, first, 0, 0) -> n = 0 too
    fn.argtypes = ([ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p] if fn_name == "merge" else
                   [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p])
    return fn


class _CpuBackend(ops._TorchBackend):
    def raw_stream(self):
        return lambda index: 0


def per_call_us(fn, number=20000):
    return timeit.timeit(fn, number=number) / number * 1e6


def against_add(fn, add, rounds=9, number=20000):
    """(min us per call of fn, min us of torch.add) over rounds that
    alternate the two, so a load change on this shared machine hits both."""
    fn()
    mine, base = [], []
    for _ in range(rounds):
        mine.append(per_call_us(fn, number))
        base.append(per_call_us(add, number))
    return min(mine), min(base)


def main() -> int:
    ops._DEVICE_TYPE = "cpu"
    ops._backend = _CpuBackend()
    ops._gpu_reason = []
    ops._gpu_entry = _noop_entry
    x = torch.randn(32, 128).bfloat16()
    y, o = x.clone(), x.clone()

    def add():
        torch.add(x, y, out=o)

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, dcpmerge {dcpmerge.__version__}; host us "
          "per call (min of 9 rounds of 20000 calls, each round followed by one of torch.add(x, y, out=o) on a "
          "[32,128] bf16 tensor: 'add' and the ratio)")
    print(f"{'T':>5} | {'merge_attn_states':>17} {'add':>5} {'ratio':>5} | {'merge_states N=2':>16} {'add':>5} "
          f"{'ratio':>5} | {'[4,T,H,D] alloc+lse':>19} {'add':>5} {'ratio':>5} | {'uncached attn':>13}")
    for T in (1, 8, 64, 1024):
        prefix = torch.randn(T, H, D).bfloat16()
        suffix = torch.randn(T, H, D).bfloat16()
        p_lse, s_lse = torch.randn(H, T), torch.randn(H, T)
        out = torch.empty(T, H, D, dtype=torch.bfloat16)
        parts, lses = [prefix, suffix], [p_lse, s_lse]
        big, big_lse = torch.randn(4, T, H, D).bfloat16(), torch.randn(4, H, T)
        rows = [against_add(lambda: dcpmerge.merge_attn_states(out, prefix, p_lse, suffix, s_lse), add),
                against_add(lambda: dcpmerge.merge_states(parts, lses, output_mode="passthrough", out=out), add),
                against_add(lambda: dcpmerge.merge_states(big, big_lse, output_mode="passthrough", return_lse=True),
                            add, number=5000)]

        def uncached():
            ops._plans.clear()  # every call validates in full, as a first call does
            dcpmerge.merge_attn_states(out, prefix, p_lse, suffix, s_lse)

        first = min(per_call_us(uncached, 2000) for _ in range(3))
        cells = " | ".join(f"{m:{w}.2f} {a:5.2f} {m / a:5.2f}" for (m, a), w in zip(rows, (17, 16, 19)))
        print(f"{T:>5} | {cells} | {first:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
