"""merge_states and merge_attn_states without a GPU: fake tensors over host
memory and a CPU "launcher" (fake_torch.py) run the ops' whole Python side,
validation, pointers, strides, byte counts and the launch plan, against the
CPU reference and a float64 merge. The CUDA kernels themselves are checked
on a GPU by python/tests/gpu/test_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

import dcpmerge
import dcpmerge.ops as ops
import fake_torch as ft
from dcpmerge.reference import dequantize, float_to_bf16, merge_reference
from test_reference import fp8_step

T, H, D = 6, 4, 128


@pytest.fixture
def gpu(monkeypatch):
    launcher = ft.CpuLauncher()
    backend = ft.Backend()
    monkeypatch.setattr(ops, "_backend", backend)
    monkeypatch.setattr(ops, "_gpu_reason", [])
    monkeypatch.setattr(ops, "_gpu_entry", launcher.entry)
    monkeypatch.setattr(ops, "_plans", {})
    launcher.backend = backend
    return launcher


def host_parts(n, dtype="bf16", layout="heads_tokens", seed=0, T=T):
    rng = np.random.default_rng(seed)
    outs, lses = [], []
    for _ in range(n):
        x = rng.standard_normal((T, H, D)).astype(np.float32)
        outs.append(float_to_bf16(x) if dtype == "bf16" else x.astype(np.float16 if dtype == "fp16" else np.float32))
        lse = (rng.standard_normal((H, T) if layout == "heads_tokens" else (T, H)) * 2).astype(np.float32)
        lse[rng.random(lse.shape) < 0.15] = -np.inf
        lses.append(lse)
    return outs, lses


TORCH_DTYPE = {"bf16": "torch.bfloat16", "fp16": "torch.float16", "fp32": "torch.float32"}


def as_tensors(outs, lses, dtype):
    return ([ft.tensor(o, TORCH_DTYPE[dtype]) for o in outs], [ft.tensor(l) for l in lses])


@pytest.mark.parametrize("mode", ["fp8_per_tensor", "fp8_per_token", "fp8_per_group", "passthrough"])
@pytest.mark.parametrize("dtype,layout,base", [("bf16", "heads_tokens", "e"), ("fp16", "tokens_heads", "2"),
                                               ("fp32", "heads_tokens", "2")])
def test_merge_states_equals_cpu_reference(gpu, mode, dtype, layout, base):
    outs, lses = host_parts(3, dtype, layout, seed=hash((mode, dtype)) % 1000)
    to, tl = as_tensors(outs, lses, dtype)
    scale = 0.03 if mode == "fp8_per_tensor" else None
    r = dcpmerge.merge_states(to, tl, lse_base=base, lse_layout=layout, output_mode=mode, scale=scale, group_size=64,
                              return_lse=True)
    cpu = dcpmerge.merge_states_cpu(outs, lses, lse_base=base, lse_layout=layout, output_mode=mode, scale=scale,
                                    group_size=64, return_lse=True)
    assert str(r.output.dtype) == ("torch.float8_e4m3fn" if mode != "passthrough" else TORCH_DTYPE[dtype])
    assert r.output.shape == (T, H, D)
    assert np.array_equal(r.output.array(), cpu.output)
    assert np.array_equal(r.lse.array(), cpu.lse)
    if mode in ("fp8_per_token", "fp8_per_group"):
        assert r.scales.shape == ((T,) if mode == "fp8_per_token" else (T, H, D // 64))
        assert np.array_equal(r.scales.array(), cpu.scales)
    else:
        assert r.scales is None
    ref, _ = merge_reference(np.stack(outs), np.stack(lses), lse_base=base, lse_layout=layout, dtype=dtype)
    if mode == "fp8_per_tensor":
        got = dequantize(r.output.array(), np.array([scale], np.float32), output_mode=mode)
        assert np.all(np.abs(got - ref) <= fp8_step(ref / scale) * scale + 1e-6)
    assert gpu.calls == [("merge", 3, T, ops.OUTPUT_MODE_CODE[mode], ())]


def test_merge_states_one_tensor_padded_head_stride_and_preallocated_outputs(gpu):
    n, Dp = 4, 144  # head stride 144 (a multiple of 8 bf16 = 16 bytes), D = 128 used
    outs, lses = host_parts(n, "bf16", "heads_tokens", seed=3)
    padded = np.zeros((n, T, H, Dp), np.uint16)
    padded[..., :D] = np.stack(outs)
    big = ft.Tensor(padded.reshape(-1).copy(), "torch.bfloat16", (n, T, H, D), (T * H * Dp, H * Dp, Dp, 1))
    lse3 = ft.tensor(np.stack(lses))
    out = ft.empty((T, H, D), "torch.float8_e4m3fn")
    out_lse = ft.empty((H, T), "torch.float32")
    scale = ft.tensor(np.array([0.05], np.float32))
    r = dcpmerge.merge_states(big, lse3, scale=scale, out=out, out_lse=out_lse)
    assert r.output is out and r.lse is out_lse and r.scales is None
    assert gpu.backend.allocations == []  # nothing allocated when the outputs are given
    cpu = dcpmerge.merge_states_cpu(outs, lses, scale=0.05, return_lse=True)
    assert np.array_equal(out.array(), cpu.output) and np.array_equal(out_lse.array(), cpu.lse)


@pytest.mark.parametrize("p", [None, 0, 1, T // 2, T - 1, T, T + 5])
@pytest.mark.parametrize("fp8", [True, False])
@pytest.mark.parametrize("lse_view", ["contiguous", "transposed"])
def test_merge_attn_states_vllm_semantics(gpu, p, fp8, lse_view):
    outs, lses = host_parts(2, "bf16", "heads_tokens", seed=11)
    lses[0][:, T - 1] = np.nan  # garbage prefix LSE where there is no context is never used
    prefix, suffix = (ft.tensor(o, "torch.bfloat16") for o in outs)
    if lse_view == "contiguous":
        p_lse, s_lse = ft.tensor(lses[0]), ft.tensor(lses[1])
        out_lse = ft.empty((H, T), "torch.float32")
    else:  # [H,T] views of contiguous [T,H] buffers, as some attention kernels return them
        p_lse, s_lse = ft.tensor(lses[0].T.copy()).t(), ft.tensor(lses[1].T.copy()).t()
        out_lse = ft.empty((T, H), "torch.float32").t()
    output = ft.empty((T, H, D), "torch.float8_e4m3fn" if fp8 else "torch.bfloat16")
    scale = ft.tensor(np.array([0.04], np.float32)) if fp8 else None
    dcpmerge.merge_attn_states(output, prefix, p_lse, suffix, s_lse, out_lse, p, scale)

    k = T if p is None else min(p, T)
    mode = "fp8_per_tensor" if fp8 else "passthrough"
    got, got_lse = output.array(), out_lse.array()
    if k > 0:
        merged = dcpmerge.merge_states_cpu(outs, lses, output_mode=mode, scale=0.04 if fp8 else None, return_lse=True)
        assert np.array_equal(got[:k], merged.output[:k])
        assert np.array_equal(got_lse[:, :k], merged.lse[:, :k])
    if k < T:
        copied = dcpmerge.merge_states_cpu([outs[1]], [np.zeros((H, T), np.float32)], output_mode=mode,
                                           scale=0.04 if fp8 else None)
        assert np.array_equal(got[k:], copied.output[k:])
        if not fp8:
            assert np.array_equal(got[k:], outs[1][k:])  # the suffix as it is
        assert np.array_equal(got_lse[:, k:], lses[1][:, k:], equal_nan=True)
    want = []
    if k > 0:
        want.append(("merge", 2, T, ops.OUTPUT_MODE_CODE[mode], ()))
    if k < T:
        want.append(("copy", 1, T, ops.OUTPUT_MODE_CODE[mode], (k,)))
    assert gpu.calls == want


def _attn_args():
    outs, lses = host_parts(2, "bf16", "heads_tokens", seed=5)
    return dict(output=ft.empty((T, H, D), "torch.float8_e4m3fn"), prefix_output=ft.tensor(outs[0], "torch.bfloat16"),
                prefix_lse=ft.tensor(lses[0]), suffix_output=ft.tensor(outs[1], "torch.bfloat16"),
                suffix_lse=ft.tensor(lses[1]), output_lse=None, prefill_tokens_with_context=None,
                output_scale=ft.tensor(np.array([1.0], np.float32)))


def _cpu_tensor(t):
    return ft.Tensor(t.buf, t.dtype.name, t.shape, t.stride(), t.offset, ft.Device("cpu", None))


ATTN_BAD = [
    ("output_scale", None, ValueError, "output_scale: required"),
    ("output_scale", ft.tensor(np.array([1.0, 2.0], np.float32)), ValueError, "output_scale: 2 elements"),
    ("output_scale", ft.tensor(np.array([1.0], np.float16), "torch.float16"), TypeError, "output_scale: dtype"),
    ("output_scale", 1.0, TypeError, "output_scale: expected a torch.Tensor"),
    ("output", ft.empty((T, H, D), "torch.float16"), ValueError, "output_scale: given, but output is torch.float16"),
    ("output", ft.empty((T, H, D, 1), "torch.float8_e4m3fn"), ValueError, "output: expected"),
    ("output", ft.Tensor(np.zeros(T * H * D * 2, np.uint8), "torch.float8_e4m3fn", (T, H, D), (H * D * 2, D * 2, 1)),
     ValueError, "output: must be contiguous"),
    ("prefix_output", ft.empty((T, H, D), "torch.float64"), TypeError, "prefix_output: dtype"),
    ("prefix_output", ft.empty((T + 1, H, D), "torch.bfloat16"), ValueError, "prefix_output: shape"),
    ("suffix_output", ft.empty((T, H, D), "torch.float16"), TypeError, "suffix_output: dtype"),
    ("suffix_output", ft.Tensor(np.zeros(T * H * 136, np.uint16), "torch.bfloat16", (T, H, D), (H * 136, 136, 1)),
     ValueError, "suffix_output: head stride"),
    ("suffix_output", "x", TypeError, "suffix_output: expected a torch.Tensor"),
    ("prefix_lse", ft.empty((T, H), "torch.float32"), ValueError, "prefix_lse: shape"),
    ("prefix_lse", ft.empty((H, T), "torch.float16"), TypeError, "prefix_lse: dtype"),
    ("suffix_lse", ft.empty((T, H), "torch.float32").t(), ValueError, "both LSEs must have one layout"),
    ("output_lse", ft.empty((H, T + 1), "torch.float32"), ValueError, "output_lse: shape"),
    ("prefill_tokens_with_context", -1, ValueError, "prefill_tokens_with_context: -1 < 0"),
    ("prefill_tokens_with_context", 2.0, TypeError, "prefill_tokens_with_context"),
    ("prefix_output", "cpu", ValueError, "prefix_output: a cpu tensor"),
    ("suffix_lse", "cuda1", ValueError, "suffix_lse: on cuda:1"),
]


@pytest.mark.parametrize("name,value,exc,needle", ATTN_BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(ATTN_BAD)])
def test_merge_attn_states_bad_input(gpu, name, value, exc, needle):
    kw = _attn_args()
    if value == "cpu":
        value = _cpu_tensor(kw[name])
    elif value == "cuda1":
        t = kw[name]
        value = ft.Tensor(t.buf, t.dtype.name, t.shape, t.stride(), t.offset, ft.Device("cuda", 1))
    kw[name] = value
    with pytest.raises(exc) as e:
        dcpmerge.merge_attn_states(**kw)
    assert needle in str(e.value), str(e.value)
    assert gpu.calls == []  # nothing launched


def test_merge_attn_states_passthrough_output_dtype(gpu):
    kw = _attn_args()
    kw["output"] = ft.empty((T, H, D), "torch.bfloat16")
    with pytest.raises(ValueError, match="output_scale: given, but output is torch.bfloat16"):
        dcpmerge.merge_attn_states(**kw)
    kw["output"], kw["output_scale"] = ft.empty((T, H, D), "torch.float16"), None
    with pytest.raises(TypeError, match="output: dtype torch.float16; expected torch.float8_e4m3fn or the inputs'"):
        dcpmerge.merge_attn_states(**kw)
    assert gpu.calls == []


def _states_args(n=2):
    outs, lses = host_parts(n, "bf16", "heads_tokens", seed=9)
    to, tl = as_tensors(outs, lses, "bf16")
    return dict(outputs=to, lses=tl, scale=1.0)


def _misaligned():
    buf = np.zeros(T * H * D + 8, np.uint16)
    return ft.Tensor(buf, "torch.bfloat16", (T, H, D), offset=1)


STATES_BAD = [
    (dict(outputs=[]), ValueError, "outputs: N=0"),
    (dict(outputs="x"), TypeError, "outputs: expected a list"),
    (dict(outputs=[ft.empty((T, H, D), "torch.bfloat16")] * 65, lses=[ft.empty((H, T), "torch.float32")] * 65),
     ValueError, "outputs: N=65 parts; 1..64"),
    (dict(outputs=[ft.empty((T, H, D), "torch.float64")] * 2), TypeError, "outputs[0]: dtype torch.float64"),
    (dict(outputs=[ft.empty((T, H, D), "torch.bfloat16"), ft.empty((T, H, D), "torch.float16")]), TypeError,
     "outputs[1]: dtype"),
    (dict(outputs=[ft.empty((T, H, D), "torch.bfloat16"), ft.empty((T, H + 1, D), "torch.bfloat16")]), ValueError,
     "outputs[1]: shape"),
    (dict(outputs=[ft.empty((T, H, 100), "torch.bfloat16")] * 2, lses=[ft.empty((H, T), "torch.float32")] * 2),
     ValueError, "head_size D=100 must be a multiple of 8"),
    (dict(outputs=[_misaligned(), _misaligned()]), ValueError, "16-byte aligned"),
    (dict(outputs=[ft.Tensor(np.zeros(T * H * D * 2, np.uint16), "torch.bfloat16", (T, H, D), (H * D, D, 2))] * 2),
     ValueError, "last (head_size) dimension must be contiguous"),
    (dict(lses=[ft.empty((T, H), "torch.float32")] * 2), ValueError, "lses[0]: shape"),
    (dict(lses=[ft.empty((H, T), "torch.float32")]), ValueError, "lses: 1 tensors for 2 outputs"),
    (dict(lses=[ft.empty((H, T), "torch.float16")] * 2), TypeError, "lses[0]: dtype"),
    (dict(scale=0.0), ValueError, "scale: 0.0"),
    (dict(scale=-2.0), ValueError, "scale: -2.0"),
    (dict(scale=float("nan")), ValueError, "scale: nan"),
    (dict(scale=None), ValueError, "scale: required"),
    (dict(scale="1"), TypeError, "scale: expected a float"),
    (dict(output_mode="fp8_per_token"), ValueError, "scale: only fp8_per_tensor"),
    (dict(output_mode="int8"), ValueError, "output_mode"),
    (dict(lse_base="10"), ValueError, "lse_base"),
    (dict(lse_layout="ht"), ValueError, "lse_layout"),
    (dict(scale=None, output_mode="fp8_per_group", group_size=32), ValueError, "group_size: 32"),
    (dict(out=ft.empty((T, H, D), "torch.bfloat16")), TypeError, "out: dtype torch.bfloat16"),
    (dict(out=ft.empty((T, H, D + 8), "torch.float8_e4m3fn")), ValueError, "out: shape"),
    (dict(scale=None, output_mode="fp8_per_token", out_scales=ft.empty((T + 1,), "torch.float32")), ValueError,
     "out_scales: shape"),
    (dict(out_scales=ft.empty((T,), "torch.float32")), ValueError, "out_scales: output_mode fp8_per_tensor"),
    (dict(out_lse=ft.empty((T, H), "torch.float32")), ValueError, "out_lse: shape"),
    (dict(scale=ft.tensor(np.array([1.0], np.float32), device=ft.Device("cuda", 1))), ValueError,
     "scale: on cuda:1"),
]


@pytest.mark.parametrize("bad,exc,needle", STATES_BAD, ids=[str(i) for i in range(len(STATES_BAD))])
def test_merge_states_bad_input(gpu, bad, exc, needle):
    kw = _states_args()
    kw.update(bad)
    with pytest.raises(exc) as e:
        dcpmerge.merge_states(kw.pop("outputs"), kw.pop("lses"), **kw)
    assert needle in str(e.value), str(e.value)
    assert gpu.calls == []


def test_merge_states_cpu_tensor_is_rejected(gpu):
    kw = _states_args()
    kw["outputs"] = [_cpu_tensor(t) for t in kw["outputs"]]
    with pytest.raises(ValueError, match=r"outputs\[0\]: a cpu tensor; the GPU merge takes CUDA tensors"):
        dcpmerge.merge_states(kw.pop("outputs"), kw.pop("lses"), **kw)


def test_empty_step_launches_nothing(gpu):
    to = [ft.empty((0, H, D), "torch.bfloat16")] * 2
    tl = [ft.empty((H, 0), "torch.float32")] * 2
    r = dcpmerge.merge_states(to, tl, scale=1.0)
    assert r.output.shape == (0, H, D) and gpu.calls == []


def test_enable_pdl_reaches_the_launch_and_changes_no_result(gpu):
    outs, lses = host_parts(2)
    to, tl = as_tensors(outs, lses, "bf16")
    plain = dcpmerge.merge_states(to, tl, scale=0.05)
    pdl = dcpmerge.merge_states(to, tl, scale=0.05, enable_pdl=True)
    assert gpu.pdl == [0, 1]
    assert np.array_equal(pdl.output.array(), plain.output.array())


def test_flashinfer_merge_state_fp8_out(gpu):
    # FP8 (not in Debian's torch 1.13, hence fake tensors): FlashInfer's layout
    # and base 2, quantized per tensor into the given out.
    outs, lses = host_parts(2, "fp16", "tokens_heads", seed=21)
    (va, vb), (sa, sb) = as_tensors(outs, lses, "fp16")
    out = ft.empty((T, H, D), "torch.float8_e4m3fn")
    v, s = dcpmerge.flashinfer_compat.merge_state(va, sa, vb, sb, out=out, scale=0.02)
    cpu = dcpmerge.merge_states_cpu(outs, lses, lse_base="2", lse_layout="tokens_heads", scale=0.02, return_lse=True)
    assert v is out and np.array_equal(out.array(), cpu.output) and np.array_equal(s.array(), cpu.lse)
    with pytest.raises(ValueError, match="scale: required when out is torch.float8_e4m3fn"):
        dcpmerge.flashinfer_compat.merge_state(va, sa, vb, sb, out=out)
