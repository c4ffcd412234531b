"""A stand-in for the few torch.Tensor features dcpmerge.ops reads (dtype,
device, shape, stride(), data_ptr()), backed by numpy host memory, and a
"GPU" that runs the ops' launches on the CPU: the merge through the C ABI's
CPU reference (MergeOnCpu, the same contract the kernel implements), the
one-part copy as a one-part MergeOnCpu (identical for finite LSEs). With it
the CI machine (no GPU, no PyTorch) exercises everything merge_states and
merge_attn_states do in Python: validation, pointers, strides, byte
counts, the launch plan."""

from __future__ import annotations

import ctypes

import numpy as np

import dcpmerge._capi as capi

_NP = {"torch.float32": np.float32, "torch.float16": np.float16, "torch.bfloat16": np.uint16,
       "torch.float8_e4m3fn": np.uint8, "torch.float64": np.float64, "torch.int32": np.int32}


class Device:
    def __init__(self, type_="cuda", index=0):
        self.type, self.index = type_, index

    def __eq__(self, other):
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self):
        return hash((self.type, self.index))

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    __repr__ = __str__


class DType:
    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, DType) and self.name == other.name

    def __hash__(self):
        return hash(self.name)

    def __str__(self):
        return self.name

    __repr__ = __str__


class Tensor:
    """shape/strides in elements over `buf` (numpy, 1-D) from `offset`."""

    def __init__(self, buf, dtype, shape, strides=None, offset=0, device=None):
        self.buf, self.dtype, self.shape = buf, DType(dtype), tuple(shape)
        if strides is None:
            strides, acc = [], 1
            for s in reversed(self.shape):
                strides.append(acc)
                acc *= s
            strides.reverse()
        self._strides, self.offset = tuple(strides), offset
        self.device = device or Device()

    def stride(self):
        return self._strides

    def data_ptr(self):
        return int(self.buf.ctypes.data) + self.offset * self.buf.itemsize

    def array(self):
        """A numpy view with the tensor's shape and strides."""
        item = self.buf.itemsize
        return np.lib.stride_tricks.as_strided(self.buf[self.offset:], self.shape,
                                               [s * item for s in self._strides])

    def t(self):
        assert len(self.shape) == 2
        return Tensor(self.buf, self.dtype.name, self.shape[::-1], self._strides[::-1], self.offset, self.device)

    def __getitem__(self, i):  # first dimension only
        return Tensor(self.buf, self.dtype.name, self.shape[1:], self._strides[1:],
                      self.offset + i * self._strides[0], self.device)


def tensor(array, dtype=None, device=None):
    a = np.ascontiguousarray(array)
    dtype = dtype or {np.float32: "torch.float32", np.float16: "torch.float16"}[a.dtype.type]
    return Tensor(a.reshape(-1).copy(), dtype, a.shape, device=device)


def empty(shape, dtype, device=None, pad=0):
    n = int(np.prod(shape)) + pad
    return Tensor(np.zeros(n, dtype=_NP[dtype]), dtype, shape, device=device)


class Backend:
    """ops._backend's interface; allocations are host arrays."""

    def __init__(self):
        self.allocations = []

    def unavailable(self):
        return None

    def empty(self, shape, dtype_name, device):
        t = empty(shape, dtype_name, device)
        self.allocations.append(t)
        return t

    def scalar(self, value, device):
        return tensor(np.array([value], np.float32), device=device)

    def allocator(self, shape, dtype_name, device):
        return lambda: self.empty(shape, dtype_name, device)

    def raw_stream(self):
        return lambda index: 0


class CpuLauncher:
    """ops._gpu_entry on the CPU: the C functions' stand-ins run the CPU
    reference on the argument block; records every launch."""

    def __init__(self):
        self.calls = []
        self.pdl = []  # enable_pdl of each launch

    def entry(self, fn_name):
        if fn_name == "merge":
            return lambda addr, index, stream: self.run(fn_name, capi.MergeArgs.from_address(addr))
        return lambda addr, first, index, stream: self.run(fn_name, capi.MergeArgs.from_address(addr), first)

    def run(self, fn_name, args, *extra):
        a = args
        self.calls.append((fn_name, a.num_parts, a.num_tokens, a.output_mode, extra))
        self.pdl.append(a.enable_pdl)
        lib = capi.lib()
        if fn_name == "merge":
            return lib.dcpmerge_merge_cpu(ctypes.byref(a), 1)
        # The copy: tokens [first, T) of part 0 through a one-part merge.
        first = extra[0]
        T, H, D = a.num_tokens, a.num_heads, a.head_size
        size = {0: 4, 1: 2, 2: 2}[a.input_dtype]
        npt = {0: np.float32, 1: np.float16, 2: np.uint16}[a.input_dtype]
        span = a.partial_out_bytes // size
        part = np.ctypeslib.as_array((ctypes.c_uint8 * a.partial_out_bytes).from_address(a.partial_out[0]))
        part = part.view(npt)[:span]
        view = np.lib.stride_tricks.as_strided(part, (T, H, D), (a.token_stride * size, a.head_stride * size, size))
        tail = np.ascontiguousarray(view[first:])
        n = T - first
        sub = capi.new_struct(capi.MergeArgs)
        for f, _ in capi.MergeArgs._fields_:
            setattr(sub, f, getattr(a, f))
        po = (ctypes.c_void_p * 1)(tail.ctypes.data)
        zeros = np.zeros(n * H, np.float32)
        pl = (ctypes.c_void_p * 1)(zeros.ctypes.data)
        sub.partial_out = ctypes.cast(po, ctypes.POINTER(ctypes.c_void_p))
        sub.partial_lse = ctypes.cast(pl, ctypes.POINTER(ctypes.c_void_p))
        sub.num_tokens = n
        sub.partial_out_bytes = tail.nbytes
        sub.partial_lse_bytes = zeros.nbytes
        sub.token_stride, sub.head_stride = H * D, D
        out_elem = 1 if a.output_mode == 0 else size
        sub.out = a.out + first * H * D * out_elem
        sub.out_bytes = n * H * D * out_elem
        sub.out_lse, sub.out_lse_bytes = None, 0
        code = lib.dcpmerge_merge_cpu(ctypes.byref(sub), 1)
        if code:
            return code
        if a.out_lse:
            src = np.ctypeslib.as_array((ctypes.c_float * (T * H)).from_address(a.partial_lse[0]))
            dst = np.ctypeslib.as_array((ctypes.c_float * (T * H)).from_address(a.out_lse))
            if a.lse_layout == 0:
                dst.reshape(H, T)[:, first:] = src.reshape(H, T)[:, first:]
            else:
                dst.reshape(T, H)[first:] = src.reshape(T, H)[first:]
        return 0
