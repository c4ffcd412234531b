"""Host-side reference and helpers (numpy): the merge in float64, the FP8
E4M3 and bf16 formats numpy lacks, dequantization of merged outputs, and
:func:`merge_states_cpu`, the project's CPU reference (MergeOnCpu,
kernels/merge_reference.h) through the C ABI.

numpy has no bf16 or FP8 type: bf16 arrays are ``uint16`` holding the bits
(:func:`bf16_to_float`, :func:`float_to_bf16`), FP8 E4M3 outputs are
``uint8`` codes (:func:`fp8_e4m3_to_float`).
"""

from __future__ import annotations

import ctypes
import math
from typing import Any, Optional, Sequence

from . import _capi
from ._host import host_buffer, numpy
from .config import DTYPE_SIZE, LSE_BASE_CODE, LSE_LAYOUT_CODE, OUTPUT_MODE_CODE
from .ops import MergeOutput, _args

__all__ = ["fp8_e4m3_to_float", "bf16_to_float", "float_to_bf16", "merge_reference", "dequantize",
           "merge_states_cpu"]


def fp8_e4m3_to_float(codes: Any) -> Any:
    """uint8 E4M3 (fn) codes -> float32 (0x7F / 0xFF: NaN)."""
    np = numpy()
    c = np.asarray(codes, dtype=np.uint8)
    m = (c & 0x7F).astype(np.int32)
    exp = m >> 3
    man = (m & 7).astype(np.float64)
    val = np.where(exp == 0, man * 2.0 ** -9, (1.0 + man / 8.0) * np.exp2(exp - 7.0))
    val = np.where(m == 0x7F, np.nan, val)
    return np.where(c & 0x80, -val, val).astype(np.float32)


def bf16_to_float(bits: Any) -> Any:
    """uint16 bf16 bits -> float32 (exact)."""
    np = numpy()
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def float_to_bf16(x: Any) -> Any:
    """float -> uint16 bf16 bits, round to nearest even (NaN stays NaN)."""
    np = numpy()
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = ((u >> 16) | 0x40).astype(np.uint16)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    return np.where(is_nan, nan, rounded).astype(np.uint16)


def _to_float64(a: Any, dtype: str) -> Any:
    np = numpy()
    if dtype == "bf16":
        return bf16_to_float(a).astype(np.float64)
    return np.asarray(a).astype(np.float64)


def merge_reference(outputs: Any, lses: Any, *, lse_base: str = "e", lse_layout: str = "heads_tokens",
                    dtype: Optional[str] = None):
    """The merge in float64: (O [T,H,D], L in ``lse_layout``), both float64.

    outputs: [N,T,H,D] (bf16 as uint16 bits: pass ``dtype="bf16"``);
    lses: [N,H,T] or [N,T,H]. Empty parts (LSE -inf, +inf or NaN) weigh 0;
    a row with every part empty gives O = 0 and L = -inf.
    """
    np = numpy()
    o = np.asarray(outputs)
    o = _to_float64(o, dtype or ("bf16" if o.dtype == np.uint16 else "x"))
    lse = np.asarray(lses, dtype=np.float64)
    if lse_layout == "heads_tokens":
        lse = lse.transpose(0, 2, 1)  # -> [N,T,H]
    live = np.isfinite(lse)
    masked = np.where(live, lse, -np.inf)
    m = masked.max(axis=0)  # [T,H]
    any_live = live.any(axis=0)
    m_safe = np.where(any_live, m, 0.0)
    b = 2.0 if str(lse_base) == "2" else math.e
    w = np.where(live, np.power(b, masked - m_safe), 0.0)  # [N,T,H]
    s = w.sum(axis=0)
    o_safe = np.where(live[..., None], o, 0.0)
    num = (w[..., None] * o_safe).sum(axis=0)
    out = np.where(any_live[..., None], num / np.where(s > 0, s, 1.0)[..., None], 0.0)
    lse_out = np.where(any_live, m_safe + np.log(np.where(s > 0, s, 1.0)) / math.log(b), -np.inf)
    if lse_layout == "heads_tokens":
        lse_out = lse_out.T
    return out, lse_out


def dequantize(output: Any, scales: Any, *, output_mode: str, group_size: int = 128,
               dtype: str = "bf16") -> Any:
    """A merged output back to float32: FP8 codes times their scale (per
    tensor: one scale; per token: [T]; per group: [T,H,D/G]), or the
    passthrough dtype converted. numpy arrays as the rank client returns
    them."""
    np = numpy()
    if output_mode == "passthrough":
        return _to_float64(output, dtype).astype(np.float32)
    vals = fp8_e4m3_to_float(output)  # [T,H,D]
    s = np.asarray(scales, dtype=np.float32)
    if output_mode == "fp8_per_tensor":
        return vals * s.reshape(-1)[0]
    if output_mode == "fp8_per_token":
        return vals * s.reshape(-1, 1, 1)
    T, H, D = vals.shape
    return (vals.reshape(T, H, D // group_size, group_size) * s.reshape(T, H, D // group_size, 1)).reshape(
        T, H, D)


def merge_states_cpu(outputs: Sequence[Any], lses: Sequence[Any], *, lse_base: str = "e",
                     lse_layout: str = "heads_tokens", output_mode: str = "fp8_per_tensor",
                     scale: Optional[float] = None, group_size: int = 128, power_of_two_scales: bool = False,
                     return_lse: bool = False, num_threads: int = 0) -> MergeOutput:
    """:func:`dcpmerge.merge_states` on host arrays with the CPU reference
    (MergeOnCpu): the same results the server's CPU backend produces.

    outputs: N contiguous [T,H,D] arrays (numpy float32 / float16 / uint16
    bf16 bits, or CPU tensors); lses: N fp32 [H,T] or [T,H]. Returns numpy
    arrays (FP8 as uint8 codes, bf16 as uint16 bits).
    """
    np = numpy()
    if not isinstance(outputs, (list, tuple)) or not isinstance(lses, (list, tuple)):
        raise TypeError("outputs, lses: expected lists of N arrays")
    n = len(outputs)
    if n < 1 or n > 64:
        raise ValueError(f"outputs: N={n} parts; 1..64 are supported")
    if len(lses) != n:
        raise ValueError(f"lses: {len(lses)} arrays for {n} outputs")
    if output_mode not in OUTPUT_MODE_CODE:
        raise ValueError(f"output_mode: {output_mode!r} is not one of {' | '.join(OUTPUT_MODE_CODE)}")
    if lse_layout not in LSE_LAYOUT_CODE:
        raise ValueError(f"lse_layout: {lse_layout!r} is not one of heads_tokens | tokens_heads")
    base = str(lse_base)
    if base not in LSE_BASE_CODE:
        raise ValueError(f"lse_base: {lse_base!r} is not one of e | 2")
    bufs = [host_buffer(o, f"outputs[{i}]") for i, o in enumerate(outputs)]
    first = bufs[0]
    if len(first.shape) != 3:
        raise ValueError(f"outputs[0]: expected [T,H,D], got shape {list(first.shape)}")
    T, H, D = first.shape
    for i, b in enumerate(bufs):
        if b.shape != first.shape or b.dtype != first.dtype:
            raise ValueError(f"outputs[{i}]: {b.dtype} {list(b.shape)}, outputs[0] is {first.dtype} "
                             f"{list(first.shape)}")
    lshape = (H, T) if lse_layout == "heads_tokens" else (T, H)
    lbufs = [host_buffer(x, f"lses[{i}]", lse=True) for i, x in enumerate(lses)]
    for i, b in enumerate(lbufs):
        if b.shape != lshape:
            raise ValueError(f"lses[{i}]: shape {list(b.shape)}, expected {list(lshape)} ({lse_layout})")
    scale_arr = None
    if output_mode == "fp8_per_tensor":
        if scale is None:
            raise ValueError("scale: required in output_mode fp8_per_tensor")
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool)):
            raise TypeError(f"scale: expected a float, got {type(scale).__name__}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale: {scale!r}; must be finite and > 0")
        scale_arr = np.array([scale], dtype=np.float32)
    elif scale is not None:
        raise ValueError(f"scale: only fp8_per_tensor takes a static scale, output_mode is {output_mode}")
    size = DTYPE_SIZE[first.dtype]
    if output_mode == "passthrough":
        out = np.empty((T, H, D), dtype={"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[first.dtype])
    else:
        out = np.empty((T, H, D), dtype=np.uint8)
    scales = None
    if output_mode == "fp8_per_token":
        scales = np.empty((T,), dtype=np.float32)
    elif output_mode == "fp8_per_group":
        if group_size not in (64, 128) or D % group_size:
            raise ValueError(f"group_size: {group_size}; 64 or 128, dividing head_size {D}")
        scales = np.empty((T, H, D // group_size), dtype=np.float32)
    lse_out = np.empty(lshape, dtype=np.float32) if return_lse else None
    args = _args(n, T, H, D, first.dtype, base, lse_layout, output_mode, group_size, power_of_two_scales,
                 [b.ptr for b in bufs], [b.ptr for b in lbufs], T * H * D * size, H * D, D,
                 int(scale_arr.ctypes.data) if scale_arr is not None else 0, int(out.ctypes.data), out.nbytes,
                 int(scales.ctypes.data) if scales is not None else 0, scales.nbytes if scales is not None else 0,
                 int(lse_out.ctypes.data) if lse_out is not None else 0,
                 lse_out.nbytes if lse_out is not None else 0)
    code = _capi.lib().dcpmerge_merge_cpu(ctypes.byref(args), int(num_threads))
    if code == 3:
        raise ValueError(_capi.last_message())
    _capi.check(code)
    return MergeOutput(out, scales, lse_out)
