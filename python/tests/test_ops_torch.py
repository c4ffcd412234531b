"""The eager path with real PyTorch tensors, on the CPU: ops._DEVICE_TYPE is
set to "cpu" and the C functions of the launches are replaced by the CPU
reference (fake_torch.CpuLauncher), so everything the Python side does per
call (the cached plans keyed by tensor signature, pointers, allocation,
the raw stream) runs on torch tensors. Also: the FlashInfer-compatible
functions against a float64 reference of FlashInfer's semantics, and the
registered ops' presence per PyTorch version. Skipped without PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import dcpmerge  # noqa: E402
import dcpmerge.ops as ops  # noqa: E402
import fake_torch as ft  # noqa: E402
from dcpmerge import flashinfer_compat as fi  # noqa: E402

T, H, D = 8, 4, 128


class CpuTorchBackend(ops._TorchBackend):
    def raw_stream(self):
        return lambda index: 0  # no CUDA stream on the CPU


@pytest.fixture
def cpu(monkeypatch):
    launcher = ft.CpuLauncher()
    monkeypatch.setattr(ops, "_DEVICE_TYPE", "cpu")
    monkeypatch.setattr(ops, "_backend", CpuTorchBackend())
    monkeypatch.setattr(ops, "_gpu_reason", [])
    monkeypatch.setattr(ops, "_gpu_entry", launcher.entry)
    monkeypatch.setattr(ops, "_plans", {})
    return launcher


def ref_merge(vs, ss, base):
    """float64 merge; vs [N,T,H,D], ss [N,T,H] -> V [T,H,D], S [T,H]."""
    v, s = vs.double(), ss.double()
    m = s.amax(0)
    w = torch.pow(torch.tensor(base, dtype=torch.float64), s - m)
    tot = w.sum(0)
    return (w.unsqueeze(-1) * v).sum(0) / tot.unsqueeze(-1), m + torch.log(tot) / math.log(base)


def attn_inputs(seed=0, dtype=torch.bfloat16, T=T):
    g = torch.Generator().manual_seed(seed)
    return dict(output=torch.empty(T, H, D, dtype=dtype),
                prefix_output=torch.randn(T, H, D, generator=g).to(dtype),
                prefix_lse=torch.randn(H, T, generator=g) * 2,
                suffix_output=torch.randn(T, H, D, generator=g).to(dtype),
                suffix_lse=torch.randn(H, T, generator=g) * 2,
                output_lse=torch.empty(H, T))


def attn_expected(kw):
    v, s = ref_merge(torch.stack([kw["prefix_output"], kw["suffix_output"]]),
                     torch.stack([kw["prefix_lse"].t(), kw["suffix_lse"].t()]), math.e)
    return v, s.t()


def test_merge_attn_states_cached_calls_take_new_pointers(cpu):
    for seed in range(4):  # one signature: the first call validates, the next three use the plan
        kw = attn_inputs(seed)
        dcpmerge.merge_attn_states(**kw)
        v, s = attn_expected(kw)
        assert torch.allclose(kw["output"].double(), v, rtol=2 ** -7, atol=1e-3)
        assert torch.allclose(kw["output_lse"].double(), s, atol=1e-5)
    assert len(ops._plans) == 1 and len(cpu.calls) == 4


def test_merge_states_cached_calls_allocate_new_outputs(cpu):
    outs = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        parts, lses = torch.randn(3, T, H, D, generator=g), torch.randn(3, T, H, generator=g)
        r = dcpmerge.merge_states(parts, lses, lse_layout="tokens_heads", lse_base="2", output_mode="passthrough",
                                  return_lse=True)
        v, s = ref_merge(parts, lses, 2.0)
        assert torch.allclose(r.output.double(), v, rtol=1e-5, atol=1e-5)
        assert torch.allclose(r.lse.double(), s, atol=1e-5)
        outs.append(r.output)
    assert len(ops._plans) == 1
    assert len({o.data_ptr() for o in outs}) == 3  # a new output each call, not one reused buffer


def _error(fn):
    try:
        fn()
    except (TypeError, ValueError) as e:
        return type(e), str(e)
    raise AssertionError("no error")


def _attn_bad_variants():
    """Each variant changes one tensor's dtype, shape, stride, device or alignment."""
    def misaligned(kw):
        buf = torch.empty(T * H * D + 8, dtype=torch.bfloat16)
        kw["prefix_output"] = buf[1:1 + T * H * D].view(T, H, D)

    def meta(kw):
        kw["suffix_lse"] = torch.empty(H, T, device="meta")

    return {
        "dtype": lambda kw: kw.update(suffix_output=kw["suffix_output"].half()),
        "shape": lambda kw: kw.update(prefix_lse=torch.randn(H, T + 1)),
        "stride": lambda kw: kw.update(output=torch.empty(T, H, 2 * D, dtype=torch.bfloat16)[..., :D]),
        "lse stride": lambda kw: kw.update(suffix_lse=torch.randn(T, H).t()),
        "device": meta,
        "alignment": misaligned,
        "output dtype": lambda kw: kw.update(output=torch.empty(T, H, D, dtype=torch.float16)),
        "prefill bool": lambda kw: kw.update(prefill_tokens_with_context=True),
        "prefill float": lambda kw: kw.update(prefill_tokens_with_context=float(T)),
    }


@pytest.mark.parametrize("what", list(_attn_bad_variants()))
def test_merge_attn_states_cached_signature_then_a_bad_tensor_raises_as_a_first_call(cpu, what, monkeypatch):
    change = _attn_bad_variants()[what]
    good = attn_inputs(1)
    good["prefill_tokens_with_context"] = T
    bad = attn_inputs(2)
    bad["prefill_tokens_with_context"] = T
    change(bad)
    first = _error(lambda: dcpmerge.merge_attn_states(**bad))  # empty cache: a first call
    assert ops._plans == {}
    dcpmerge.merge_attn_states(**good)
    dcpmerge.merge_attn_states(**good)  # cached now
    assert len(ops._plans) == 1
    n = len(cpu.calls)
    assert _error(lambda: dcpmerge.merge_attn_states(**bad)) == first
    assert len(cpu.calls) == n  # nothing launched


def _states_bad_variants():
    return {
        "dtype": lambda kw: kw.update(outputs=[t.half() for t in kw["outputs"]]),
        "part dtype": lambda kw: kw["outputs"].__setitem__(1, kw["outputs"][1].float()),
        "shape": lambda kw: kw.update(lses=[torch.randn(H, T + 1) for _ in range(2)]),
        "stride": lambda kw: kw["outputs"].__setitem__(1, torch.empty(T, H, 2 * D, dtype=torch.bfloat16)[..., :D]),
        "device": lambda kw: kw.update(out=torch.empty(T, H, D, dtype=torch.bfloat16, device="meta")),
        "out dtype": lambda kw: kw.update(out=torch.empty(T, H, D, dtype=torch.float16)),
        "count": lambda kw: kw.update(lses=kw["lses"][:1]),
        "scale tensor": lambda kw: kw.update(output_mode="fp8_per_tensor", scale=torch.ones(2)),
        "lse_base 2.0": lambda kw: kw.update(lse_base=2.0),
        "group_size float": lambda kw: kw.update(output_mode="fp8_per_group", group_size=128.0),
    }


def _states_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return dict(outputs=[torch.randn(T, H, D, generator=g).bfloat16() for _ in range(2)],
                lses=[torch.randn(H, T, generator=g) for _ in range(2)], output_mode="passthrough",
                out=torch.empty(T, H, D, dtype=torch.bfloat16), lse_base=2)


@pytest.mark.parametrize("what", list(_states_bad_variants()))
def test_merge_states_cached_signature_then_a_bad_tensor_raises_as_a_first_call(cpu, what):
    bad = _states_inputs(2)
    _states_bad_variants()[what](bad)
    first = _error(lambda: dcpmerge.merge_states(**bad))
    assert ops._plans == {}
    for seed in (0, 1):
        dcpmerge.merge_states(**_states_inputs(seed))
    assert len(ops._plans) == 1
    n = len(cpu.calls)
    assert _error(lambda: dcpmerge.merge_states(**bad)) == first
    assert len(cpu.calls) == n


# --------------------------------------------------- FlashInfer's functions ---

def fi_inputs(seed, n=2, dtype=torch.float16):
    g = torch.Generator().manual_seed(seed)
    v = [(torch.randn(T, H, D, generator=g) * 2).to(dtype) for _ in range(n)]
    s = [torch.randn(T, H, generator=g) * 4 for _ in range(n)]
    return v, s


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_flashinfer_merge_state_base_2(cpu, dtype):
    (va, vb), (sa, sb) = fi_inputs(3, dtype=dtype)
    v, s = fi.merge_state(va, sa, vb, sb)
    want_v, want_s = ref_merge(torch.stack([va, vb]), torch.stack([sa, sb]), 2.0)
    assert v.dtype == dtype and v.shape == (T, H, D) and s.shape == (T, H)
    rtol = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7, torch.float32: 1e-5}[dtype]
    assert torch.allclose(v.double(), want_v, rtol=rtol, atol=1e-3)
    assert torch.allclose(s.double(), want_s, atol=1e-5)
    # base 2, not e: the base-e merge of the same inputs is measurably different
    other_v, _ = ref_merge(torch.stack([va, vb]), torch.stack([sa, sb]), math.e)
    assert not torch.allclose(v.double(), other_v, rtol=rtol, atol=1e-3)


@pytest.mark.parametrize("masked", [False, True])
def test_flashinfer_merge_state_in_place(cpu, masked):
    (v, vo), (s, so) = fi_inputs(4)
    v0, s0 = v.clone(), s.clone()
    mask = torch.arange(T) % 3 != 0 if masked else None
    fi.merge_state_in_place(v, s, vo, so, mask)
    want_v, want_s = ref_merge(torch.stack([v0, vo]), torch.stack([s0, so]), 2.0)
    if masked:
        keep = mask.view(-1, 1)
        want_v = torch.where(keep.unsqueeze(-1), want_v, v0.double())
        want_s = torch.where(keep, want_s, s0.double())
        assert torch.equal(v[~mask], v0[~mask]) and torch.equal(s[~mask], s0[~mask])
    assert torch.allclose(v.double(), want_v, rtol=2 ** -10, atol=1e-3)
    assert torch.allclose(s.double(), want_s, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_flashinfer_merge_states(cpu, n):
    g = torch.Generator().manual_seed(n)
    v = torch.randn(T, n, H, D, generator=g).half()
    s = torch.randn(T, n, H, generator=g) * 4
    vm, sm = fi.merge_states(v, s)
    want_v, want_s = ref_merge(v.transpose(0, 1), s.transpose(0, 1), 2.0)
    assert vm.shape == (T, H, D) and sm.shape == (T, H)
    assert torch.allclose(vm.double(), want_v, rtol=2 ** -10, atol=1e-3)
    assert torch.allclose(sm.double(), want_s, atol=1e-5)


def test_flashinfer_merge_states_bad_shape(cpu):
    with pytest.raises(ValueError, match=r"v, s: shapes \[8, 4, 128\], \[8, 4\]"):
        fi.merge_states(torch.randn(T, H, D), torch.randn(T, H))


# ------------------------------------------------------ the registered ops ---

def test_registered_ops_follow_the_torch_version():
    has_custom_op = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")
    dcpmerge.gpu_unavailable_reason()  # loads torch in the package
    from dcpmerge import _torch_ops

    assert _torch_ops._registered == has_custom_op
    if has_custom_op:
        assert hasattr(torch.ops.dcpmerge, "merge_attn_states") and hasattr(torch.ops.dcpmerge, "merge_states")
        assert ops._is_compiling is torch.compiler.is_compiling
    else:  # e.g. Debian's 1.13: the package works, without the registered ops
        assert ops._is_compiling is ops._never_compiling


def test_plans_are_per_thread(cpu):
    import threading

    kw = attn_inputs(5)
    dcpmerge.merge_attn_states(**kw)
    other = attn_inputs(6)
    t = threading.Thread(target=lambda: dcpmerge.merge_attn_states(**other))
    t.start()
    t.join()
    assert len(ops._plans) == 2  # one block per thread: no thread rewrites another's between write and launch
    v, _ = attn_expected(other)
    assert torch.allclose(other["output"].double(), v, rtol=2 ** -7, atol=1e-3)
