"""merge_states_cpu (the CPU reference MergeOnCpu through the C ABI) against
a float64 numpy merge, over every output mode, dtype, LSE base and layout."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import dcpmerge
from dcpmerge.reference import bf16_to_float, dequantize, float_to_bf16, fp8_e4m3_to_float, merge_reference


def make_parts(rng, n, T, H, D, dtype, layout, empty_frac=0.1):
    outs, lses = [], []
    for _ in range(n):
        x = rng.standard_normal((T, H, D)).astype(np.float32) * 2
        if dtype == "bf16":
            outs.append(float_to_bf16(x))
        elif dtype == "fp16":
            outs.append(x.astype(np.float16))
        else:
            outs.append(x)
        lse = rng.standard_normal((H, T) if layout == "heads_tokens" else (T, H)).astype(np.float32) * 3
        lse[rng.random(lse.shape) < empty_frac] = -np.inf
        lses.append(lse)
    return outs, lses


def fp8_step(x):
    """One FP8 E4M3 step (ulp) at |x|: 2^(floor(log2|x|) - 3), at least 2^-9."""
    ax = np.maximum(np.abs(x), 2.0 ** -6)
    return np.exp2(np.floor(np.log2(ax)) - 3)


@pytest.mark.parametrize("mode,dtype,base,layout", [
    (m, d, b, l) for m, d, b, l in itertools.product(
        ["fp8_per_tensor", "fp8_per_token", "fp8_per_group", "passthrough"], ["bf16", "fp16", "fp32"], ["e", "2"],
        ["heads_tokens", "tokens_heads"])
    if (b == "e" or d == "bf16")])  # both bases with one dtype keep it quick
def test_cpu_reference_matches_float64(mode, dtype, base, layout):
    rng = np.random.default_rng(hash((mode, dtype, base, layout)) % 2**32)
    n, T, H, D = 3, 5, 4, 128
    outs, lses = make_parts(rng, n, T, H, D, dtype, layout)
    for i, v in enumerate([-np.inf, np.inf, np.nan]):  # one (t,h) where every part is empty
        lses[i][1, 1] = v
    scale = 0.02 if mode == "fp8_per_tensor" else None
    r = dcpmerge.merge_states_cpu(outs, lses, lse_base=base, lse_layout=layout, output_mode=mode, scale=scale,
                                  group_size=64, return_lse=True)
    ref, ref_lse = merge_reference(np.stack(outs), np.stack(lses), lse_base=base, lse_layout=layout, dtype=dtype)
    got = dequantize(r.output, r.scales if mode != "fp8_per_tensor" else np.array([scale], np.float32),
                     output_mode=mode, group_size=64, dtype=dtype)
    if mode == "passthrough":
        tol = np.abs(ref) * (2.0 ** -7 if dtype == "bf16" else 2.0 ** -10) + 1e-6
    else:
        s = {"fp8_per_tensor": lambda: scale,
             "fp8_per_token": lambda: r.scales.reshape(-1, 1, 1),
             "fp8_per_group": lambda: np.repeat(r.scales, 64, axis=-1)}[mode]()
        tol = fp8_step(ref / s) * s + 1e-6  # one FP8 step
    assert np.all(np.abs(got - ref) <= tol), np.max(np.abs(got - ref) - tol)
    finite = np.isfinite(ref_lse)
    assert np.allclose(r.lse[finite], ref_lse[finite], rtol=1e-5, atol=1e-5)
    assert np.all(r.lse[~finite] == -np.inf)
    t, h = (1, 1) if layout == "tokens_heads" else (1, 1)
    assert np.all(got[t, h] == 0) and r.lse[1, 1] == -np.inf  # all parts empty: 0, never NaN


def test_fp8_decode_table():
    codes = np.arange(256, dtype=np.uint8)
    vals = fp8_e4m3_to_float(codes)
    assert vals[0x7E] == 448 and vals[0xFE] == -448
    assert np.isnan(vals[0x7F]) and np.isnan(vals[0xFF])
    assert vals[0x01] == 2.0 ** -9 and vals[0x08] == 2.0 ** -6 and vals[0x38] == 1.0


def test_bf16_round_trip():
    x = np.array([1.0, -2.5, 3.140625, np.inf, 1e-40], dtype=np.float32)
    assert np.array_equal(bf16_to_float(float_to_bf16(x))[:4], x[:4])
    assert np.isnan(bf16_to_float(float_to_bf16(np.array([np.nan], np.float32))))[0]


@pytest.mark.parametrize("bad,exc,needle", [
    (dict(outputs="x"), TypeError, "outputs"),
    (dict(output_mode="fp4"), ValueError, "output_mode"),
    (dict(lse_base="10"), ValueError, "lse_base"),
    (dict(scale=0.0), ValueError, "scale"),
    (dict(scale=-1.0), ValueError, "scale"),
    (dict(scale=None), ValueError, "scale"),
    (dict(lse_layout="tokens_heads"), ValueError, "lses[0]"),
    (dict(outputs=[np.zeros((2, 4, 128), np.float64)] * 2), TypeError, "outputs[0]"),
    (dict(lses=[np.zeros((4, 2), np.float64)] * 2), TypeError, "lses[0]"),
    (dict(outputs=[np.zeros((2, 4, 128), np.float32)] * 65, lses=[np.zeros((4, 2), np.float32)] * 65), ValueError,
     "N=65"),
])
def test_cpu_reference_bad_input(bad, exc, needle):
    kw = dict(outputs=[np.zeros((2, 4, 128), np.float32)] * 2, lses=[np.zeros((4, 2), np.float32)] * 2,
              output_mode="fp8_per_tensor", scale=1.0)
    kw.update(bad)
    outputs, lses = kw.pop("outputs"), kw.pop("lses")
    with pytest.raises(exc) as e:
        dcpmerge.merge_states_cpu(outputs, lses, **kw)
    assert needle in str(e.value)
