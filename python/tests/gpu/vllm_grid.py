#!/usr/bin/env python3
"""vLLM's test grid for merge_attn_states (tests/kernels/attention/
test_merge_attn_states.py: tokens 256, 512, 613, 1024, 1536, 4096 x heads
4..64 x head sizes 32..256 x fp32/fp16/bf16 x prefill_tokens_with_context
None / 128 x FP8 output or not: 2,592 cases, LSEs with ~10% +inf as there)
on dcpmerge.merge_attn_states, each against a float64 merge of vLLM's
semantics (an LSE of +inf is an empty part; tokens >= p take the suffix
and its LSE as they are):
FP8 within one E4M3 step, else within the dtype's rounding. Then vLLM's
timing table: per shape, the merge in plain torch ops (as vLLM's test
writes it) against dcpmerge, CUDA events, mean of 20 calls after 2 warm-ups.

    PYTHONPATH=/tmp/dcpmerge-site python3 python/tests/gpu/vllm_grid.py [--quick]

(tools/python_gpu_checks.sh runs it after gpu_checks.py.) Exit status 1
when a case failed.
"""

from __future__ import annotations

import itertools
import math
import sys
import time

import torch

import dcpmerge
from gpu_checks import assert_close, assert_fp8_close, ref_merge

NUM_BATCH_TOKENS = [256, 512, 613, 1024, 1536, 4096]
NUM_QUERY_HEADS = [4, 8, 16, 32, 48, 64]
HEAD_SIZES = [32, 48, 64, 96, 128, 256]
DTYPES = [torch.float32, torch.half, torch.bfloat16]
FP8 = torch.float8_e4m3fn


def torch_merge(output, prefix, p_lse, suffix, s_lse, output_lse, p, scale):
    """The merge in plain torch ops, as vLLM's test times it."""
    T = output.shape[0]
    p = T if p is None else p
    p_lse = torch.where(p_lse == math.inf, -math.inf, p_lse)
    s_lse = torch.where(s_lse == math.inf, -math.inf, s_lse)
    m = torch.maximum(p_lse, s_lse)
    pe, se = torch.exp(p_lse - m), torch.exp(s_lse - m)
    tot = pe + se
    mask = torch.ones((T, 1, 1), device=output.device)
    mask[p:] = 0
    ps, ss = (pe / tot).t().unsqueeze(2), (se / tot).t().unsqueeze(2)
    out = prefix * ps * mask + suffix * (ss * mask + (1 - mask))
    if output_lse is not None:
        output_lse.copy_(torch.log(tot) + m)
        output_lse[:, p:] = s_lse[:, p:]
    if scale is not None:
        out = (out.float() / scale).clamp(-448.0, 448.0).to(FP8)
    output.copy_(out)


def mean_ms(fn, warmup=2, repeat=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    total = 0.0
    for _ in range(repeat):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        total += start.elapsed_time(end)
    return total / repeat


def main() -> int:
    quick = "--quick" in sys.argv  # one token count and head count: a smoke run
    grid = itertools.product([False, True], [None, 128], NUM_BATCH_TOKENS[2:3] if quick else NUM_BATCH_TOKENS,
                             NUM_QUERY_HEADS[3:4] if quick else NUM_QUERY_HEADS, HEAD_SIZES, DTYPES)
    passed, failed, rows = 0, [], []
    t0 = time.monotonic()
    device = torch.cuda.get_device_name().removeprefix("NVIDIA").strip()
    for use_fp8, p, T, H, D, dtype in grid:
        name = f"fp8={use_fp8} p={p} T={T} H={H} D={D} {str(dtype).removeprefix('torch.')}"
        g = torch.Generator(device="cuda").manual_seed(len(rows) + len(failed))
        p_lse = torch.randn(H, T, device="cuda", generator=g)
        s_lse = torch.randn(H, T, device="cuda", generator=g)
        mp = torch.rand(H, T, device="cuda", generator=g) < 0.1
        ms = torch.rand(H, T, device="cuda", generator=g) < 0.1
        both = mp & ms  # as vLLM's test: never both parts empty
        p_lse[mp & ~both] = math.inf
        s_lse[ms & ~both] = math.inf
        prefix = torch.randn(T, H, D, device="cuda", generator=g).to(dtype)
        suffix = torch.randn(T, H, D, device="cuda", generator=g).to(dtype)
        out_dtype = FP8 if use_fp8 else dtype
        scale = torch.tensor([0.05], device="cuda") if use_fp8 else None
        output = torch.zeros(T, H, D, device="cuda", dtype=out_dtype)
        output_lse = torch.zeros(H, T, device="cuda")
        try:
            dcpmerge.merge_attn_states(output, prefix, p_lse, suffix, s_lse, output_lse, p, scale)
            torch.cuda.synchronize()
            k = T if p is None else min(p, T)
            ref, ref_lse = ref_merge(torch.stack([prefix, suffix]), torch.stack([p_lse, s_lse]), "e",
                                     "heads_tokens")
            ref[k:] = suffix[k:].double()
            ref_lse[:, k:] = s_lse[:, k:].double()  # the suffix's LSE as it is (docs/python.md), +inf included
            if use_fp8:
                assert_fp8_close(output, scale.double(), ref, name)
            else:
                rtol = {torch.bfloat16: 2 ** -8, torch.half: 2 ** -11, torch.float32: 1e-5}[dtype]
                assert_close(output, ref, rtol, 1e-5, name)
            finite = torch.isfinite(ref_lse)
            assert_close(output_lse[finite], ref_lse[finite], 1e-5, 1e-5, name + " lse")
            if not torch.equal(output_lse[~finite].double(), ref_lse[~finite]):
                raise AssertionError(f"{name}: a copied +inf suffix LSE is not +inf in output_lse")
            passed += 1
        except Exception as e:  # noqa: BLE001 - every case is reported
            failed.append(f"{name}: {type(e).__name__}: {e}")
            print(f"FAIL {failed[-1]}", flush=True)
            continue
        if p is None:  # one timing row per shape and output dtype, as vLLM's table
            o2, l2 = output.clone(), output_lse.clone()
            t_torch = mean_ms(lambda: torch_merge(o2, prefix, p_lse, suffix, s_lse, l2, p, scale))
            t_ours = mean_ms(lambda: dcpmerge.merge_attn_states(output, prefix, p_lse, suffix, s_lse, output_lse, p,
                                                                scale))
            rows.append((T, H, D, str(out_dtype).removeprefix("torch."), device, t_torch, t_ours))
    print("| tokens | heads | headsize | dtype | device | torch | dcpmerge | speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for T, H, D, dt, dev, tt, to in rows:
        print(f"| {T} | {H} | {D} | {dt} | {dev} | {tt:.5f}ms | {to:.5f}ms | {tt / to:.4f}x |")
    print(f"\nvllm_grid: {passed} passed, {len(failed)} failed in {time.monotonic() - t0:.0f} s on "
          f"{torch.cuda.get_device_name()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
