"""The fused merge on CUDA tensors, in this process: :func:`merge_states`
(N-way, every output mode) and :func:`merge_attn_states` (vLLM's function
of that name, argument for argument).

Both enqueue on PyTorch's current stream of the tensors' device and never
synchronise with the host, so they may be captured in a CUDA graph
(``torch.cuda.graph``). Outputs you pass (``out=``, ``out_scales=``,
``out_lse=``; merge_attn_states' ``output`` / ``output_lse``) are written in
place and nothing is allocated; outputs you leave out are allocated with
``torch.empty`` on the current stream, which during capture comes from the
graph's private memory pool (allocate them before capture if you want to
read them outside the graph). A per-tensor scale given as a tensor is read
by the kernel at run time, so a captured graph picks up a new value written
into that tensor before a replay; a scale given as a Python float is copied
to the device at the call (use a tensor inside graphs).

Arguments are checked in Python before anything is launched: a wrong type
or dtype raises TypeError, a wrong device, shape, stride, alignment or value
raises ValueError; the message starts with the argument's name. Where the
GPU merge cannot run (no PyTorch, no CUDA device, a library built without
CUDA) every call raises GpuUnavailableError saying why;
:func:`gpu_unavailable_reason` says it without calling.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
import threading
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _capi
from .config import DTYPE_CODE, DTYPE_SIZE, LSE_BASE_CODE, LSE_LAYOUT_CODE, OUTPUT_MODE_CODE
from .errors import Error, GpuUnavailableError, StatusCode

__all__ = ["merge_states", "merge_attn_states", "MergeOutput", "gpu_available", "gpu_unavailable_reason",
           "MAX_PARTS"]

MAX_PARTS = 64  # base/limits.h kMaxParts
_FP8 = "torch.float8_e4m3fn"
_INPUT_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}
_MIN_SCALE = 1.1754943508222875e-38  # 2^-126: IsValidFp8Scale
_MAX_SCALE = 8.5070591730234616e37  # 2^126


class MergeOutput(NamedTuple):
    """What :func:`merge_states` returns."""

    output: Any  # [T,H,D]: torch.float8_e4m3fn, or the input dtype (passthrough)
    scales: Any  # fp32: [T] per token, [T,H,D/G] per group; None otherwise
    lse: Any  # fp32 merged LSE in the input's layout, when asked; else None


# ------------------------------------------------------------- PyTorch ---

class _TorchBackend:
    """The few PyTorch calls the ops make (the tests substitute a fake)."""

    def __init__(self) -> None:
        self._torch = None
        self._error: Optional[str] = None

    def torch(self):
        if self._torch is None and self._error is None:
            try:
                import torch  # noqa: PLC0415 (optional dependency)

                self._torch = torch
            except Exception as e:  # ImportError, or a broken install
                self._error = f"PyTorch is not installed or cannot be imported ({e})"
            else:
                _torch_loaded(torch)
        return self._torch

    def unavailable(self) -> Optional[str]:
        self.torch()
        return self._error

    def empty(self, shape: Tuple[int, ...], dtype_name: str, device: Any) -> Any:
        torch = self.torch()
        return torch.empty(shape, dtype=getattr(torch, dtype_name.split(".", 1)[1]), device=device)

    def scalar(self, value: float, device: Any) -> Any:
        torch = self.torch()
        return torch.full((1,), value, dtype=torch.float32, device=device)

    def allocator(self, shape: Tuple[int, ...], dtype_name: str, device: Any) -> Callable[[], Any]:
        """A call that allocates like empty(shape, dtype_name, device), with
        the lookups done once (the cached plans allocate per call)."""
        torch = self.torch()
        return functools.partial(torch.empty, shape, dtype=getattr(torch, dtype_name.split(".", 1)[1]),
                                 device=device)

    def raw_stream(self) -> Callable[[int], int]:
        """device index -> the current cudaStream_t as an int. PyTorch's raw
        accessor skips building a torch.cuda.Stream per call (~5 us)."""
        torch = self.torch()
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
        return raw if raw is not None else lambda index: torch.cuda.current_stream(index).cuda_stream


_backend = _TorchBackend()


def _never_compiling() -> bool:
    return False


# torch.compiler.is_compiling once PyTorch is loaded (and has it): while
# Dynamo traces, the public functions call the registered torch ops instead
# of the ctypes fast path, which it cannot trace.
_is_compiling: Callable[[], bool] = _never_compiling


def _torch_loaded(torch: Any) -> None:
    global _is_compiling
    if _torch_ops.register(torch):
        _is_compiling = torch.compiler.is_compiling


def _load_torch_if_imported() -> None:
    """Registers the torch ops at `import dcpmerge` when the process already
    imported PyTorch (otherwise at the first merge call, which loads it)."""
    if "torch" in sys.modules:
        _backend.torch()
_gpu_lock = threading.Lock()
_gpu_reason: Optional[List[str]] = None  # None: not checked yet; []: usable


def gpu_unavailable_reason() -> Optional[str]:
    """Why :func:`merge_states` / :func:`merge_attn_states` cannot run here,
    or None when they can (the library has the CUDA kernel, PyTorch imports
    and a CUDA device is present). Cheap after the first call."""
    global _gpu_reason
    if _gpu_reason is None:
        with _gpu_lock:
            if _gpu_reason is None:
                reasons = []
                err = _capi.load_error()
                if err is not None:
                    reasons.append(err)
                else:
                    lib = _capi.lib()
                    if not lib.dcpmerge_built_with_cuda():
                        reasons.append("this libdcpmerge_c was built without CUDA (no nvcc at build time)")
                    else:
                        n = _capi.i32(0)
                        if lib.dcpmerge_cuda_device_count(ctypes.byref(n)) != 0:
                            reasons.append(_capi.last_message())
                torch_err = _backend.unavailable()
                if torch_err is not None:
                    reasons.append(torch_err + "; merge_states and merge_attn_states take torch tensors")
                _gpu_reason = reasons
    return "; ".join(_gpu_reason) if _gpu_reason else None


def gpu_available() -> bool:
    """True when the in-process GPU merge can run here."""
    return gpu_unavailable_reason() is None


def _require_gpu(what: str) -> None:
    reason = gpu_unavailable_reason()
    if reason is not None:
        raise GpuUnavailableError(f"dcpmerge.{what} is unavailable here: {reason}")


# ---------------------------------------------------------- validation ---

def _is_tensor(x: Any) -> bool:
    return hasattr(x, "data_ptr") and hasattr(x, "stride") and hasattr(x, "dtype") and hasattr(x, "device")


def _tensor(x: Any, name: str) -> Any:
    if not _is_tensor(x):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


_DEVICE_TYPE = "cuda"  # the CPU tests run the real-torch path on "cpu" tensors (python/tests/test_ops_torch.py)


def _cuda_device(t: Any, name: str, device: Any = None) -> Any:
    dev = t.device
    if dev.type != _DEVICE_TYPE:
        raise ValueError(f"{name}: a {dev.type} tensor; the GPU merge takes CUDA tensors "
                         "(host arrays: dcpmerge.merge_states_cpu or a RankClient on the gRPC plane)")
    if device is not None and dev != device:
        raise ValueError(f"{name}: on {dev}, but the other tensors are on {device}")
    return dev


def _input_dtype(t: Any, name: str) -> str:
    d = _INPUT_DTYPES.get(str(t.dtype))
    if d is None:
        raise TypeError(f"{name}: dtype {t.dtype} is not supported; use torch.float32, torch.float16 "
                        "or torch.bfloat16")
    return d


def _f32(t: Any, name: str) -> None:
    if str(t.dtype) != "torch.float32":
        raise TypeError(f"{name}: dtype {t.dtype}, expected torch.float32")


def _shape(t: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def _strides(t: Any) -> Tuple[int, ...]:
    return tuple(int(s) for s in t.stride())


def _contiguous(t: Any, name: str, shape: Tuple[int, ...]) -> None:
    if _shape(t) != shape:
        raise ValueError(f"{name}: shape {list(_shape(t))}, expected {list(shape)}")
    expect, acc = [], 1
    for s in reversed(shape):
        expect.append(acc)
        acc *= s
    expect.reverse()
    for dim, (have, want) in enumerate(zip(_strides(t), expect)):
        if shape[dim] > 1 and have != want:
            raise ValueError(f"{name}: must be contiguous (strides {list(_strides(t))}, expected "
                             f"{expect})")


def _aligned(ptr: int, align: int, name: str) -> None:
    if ptr % align != 0:
        raise ValueError(f"{name}: data must be {align}-byte aligned for the GPU kernel "
                         f"(address ends in {ptr % align:#x}); a freshly allocated tensor is")


def _span_bytes(T: int, H: int, D: int, ts: int, hs: int, size: int) -> int:
    if T == 0:
        return 0
    return ((T - 1) * ts + (H - 1) * hs + D) * size


class _Parts:
    """N partial outputs [T,H,D] sharing dtype, device and strides."""

    def __init__(self, outputs: Any, name: str) -> None:
        if _is_tensor(outputs):
            t = outputs
            if len(t.shape) != 4:
                raise ValueError(f"{name}: a single tensor must be [N,T,H,D], got shape {list(_shape(t))}")
            self.device = _cuda_device(t, name)
            self.dtype = _input_dtype(t, name)
            n, self.T, self.H, self.D = _shape(t)
            sn, self.ts, self.hs, sd = _strides(t)
            size = DTYPE_SIZE[self.dtype]
            if n < 1 or n > MAX_PARTS:
                raise ValueError(f"{name}: N={n} parts; 1..{MAX_PARTS} are supported")
            if sd != 1 and self.D > 1:
                raise ValueError(f"{name}: the last (head_size) dimension must be contiguous (stride "
                                 f"{sd})")
            base = int(t.data_ptr())
            self.ptrs = [base + i * sn * size for i in range(n)]
        else:
            if not isinstance(outputs, (list, tuple)):
                raise TypeError(f"{name}: expected a list of N tensors [T,H,D] or one tensor [N,T,H,D], "
                                f"got {type(outputs).__name__}")
            n = len(outputs)
            if n < 1 or n > MAX_PARTS:
                raise ValueError(f"{name}: N={n} parts; 1..{MAX_PARTS} are supported")
            first = _tensor(outputs[0], f"{name}[0]")
            if len(first.shape) != 3:
                raise ValueError(f"{name}[0]: expected [T,H,D], got shape {list(_shape(first))}")
            self.device = _cuda_device(first, f"{name}[0]")
            self.dtype = _input_dtype(first, f"{name}[0]")
            self.T, self.H, self.D = _shape(first)
            self.ts, self.hs, sd = _strides(first)
            if sd != 1 and self.D > 1:
                raise ValueError(f"{name}[0]: the last (head_size) dimension must be contiguous "
                                 f"(stride {sd})")
            self.ptrs = []
            for i, t in enumerate(outputs):
                t = _tensor(t, f"{name}[{i}]")
                _cuda_device(t, f"{name}[{i}]", self.device)
                if str(t.dtype) != str(first.dtype):
                    raise TypeError(f"{name}[{i}]: dtype {t.dtype}, {name}[0] is {first.dtype}")
                if _shape(t) != _shape(first):
                    raise ValueError(f"{name}[{i}]: shape {list(_shape(t))}, {name}[0] is "
                                     f"{list(_shape(first))}")
                if _strides(t) != _strides(first) and self.T > 0:
                    raise ValueError(f"{name}[{i}]: strides {list(_strides(t))} differ from {name}[0]'s "
                                     f"{list(_strides(first))}; every part must share its token and head "
                                     "strides")
                self.ptrs.append(int(t.data_ptr()))
        self.n = len(self.ptrs)
        self.check_kernel_layout(name)

    def check_kernel_layout(self, name: str) -> None:
        """What the kernel's 16-byte vector loads need (kernels/cuda/merge_launcher.cc)."""
        size = DTYPE_SIZE[self.dtype]
        vec = 16 // size
        if self.H < 1 or self.D < 1:
            raise ValueError(f"{name}: H={self.H}, D={self.D}; both must be >= 1")
        if self.D % vec != 0:
            raise ValueError(f"{name}: head_size D={self.D} must be a multiple of {vec} for {self.dtype} "
                             "(16-byte vectors)")
        if self.T == 0:
            return
        if self.hs < self.D or self.ts < self.D:
            raise ValueError(f"{name}: strides token={self.ts}, head={self.hs} must be >= head_size {self.D}")
        if self.hs % vec != 0 or self.ts % vec != 0:
            raise ValueError(f"{name}: strides token={self.ts}, head={self.hs} must be multiples of {vec} "
                             f"elements (16 bytes of {self.dtype})")
        for i, p in enumerate(self.ptrs):
            _aligned(p, 16, f"{name}[{i}]")

    @property
    def span_bytes(self) -> int:
        return _span_bytes(self.T, self.H, self.D, self.ts, self.hs, DTYPE_SIZE[self.dtype])


def _lse_parts(lses: Any, n: int, T: int, H: int, layout: str, device: Any, name: str) -> List[int]:
    shape2 = _lse_shape(layout, T, H)
    if _is_tensor(lses):
        t = lses
        _cuda_device(t, name, device)
        _f32(t, name)
        if _shape(t) != (n,) + shape2:
            raise ValueError(f"{name}: shape {list(_shape(t))}, expected {[n, *shape2]} "
                             f"(N, then {layout})")
        s0, s1, s2 = _strides(t)
        if (s2 != 1 and shape2[1] > 1) or (s1 != shape2[1] and shape2[0] > 1):
            raise ValueError(f"{name}: each part must be contiguous (strides {[s0, s1, s2]})")
        base = int(t.data_ptr())
        ptrs = [base + i * s0 * 4 for i in range(n)]
    else:
        if not isinstance(lses, (list, tuple)):
            raise TypeError(f"{name}: expected a list of N fp32 tensors or one [N,...] tensor, got "
                            f"{type(lses).__name__}")
        if len(lses) != n:
            raise ValueError(f"{name}: {len(lses)} tensors for {n} outputs")
        ptrs = []
        for i, t in enumerate(lses):
            t = _tensor(t, f"{name}[{i}]")
            _cuda_device(t, f"{name}[{i}]", device)
            _f32(t, f"{name}[{i}]")
            _contiguous(t, f"{name}[{i}]", shape2)
            ptrs.append(int(t.data_ptr()))
    for i, p in enumerate(ptrs):
        _aligned(p, 4, f"{name}[{i}]")
    return ptrs


def _scale_pointer(scale: Any, device: Any, name: str) -> Tuple[int, Any]:
    """(device pointer, the tensor holding it) of a per-tensor scale."""
    if _is_tensor(scale):
        _cuda_device(scale, name, device)
        _f32(scale, name)
        numel = 1
        for s in _shape(scale):
            numel *= s
        if numel != 1:
            raise ValueError(f"{name}: {numel} elements; one scale (a one-element tensor) is expected")
        ptr = int(scale.data_ptr())
        _aligned(ptr, 4, name)
        return ptr, scale
    t = _backend.scalar(_scale_value(scale, name), device)
    return int(t.data_ptr()), t


def _scale_value(scale: Any, name: str) -> float:
    """A per-tensor scale given as a Python number, checked."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{name}: expected a float or a one-element torch.float32 CUDA tensor, got "
                        f"{type(scale).__name__}")
    value = float(scale)
    if not (math.isfinite(value) and _MIN_SCALE <= value <= _MAX_SCALE):
        raise ValueError(f"{name}: {value!r}; a per-tensor FP8 scale must be finite and > 0 "
                         "(a normal float, 2^-126 .. 2^126)")
    return value


def _scales_shape(output_mode: str, T: int, H: int, D: int, group_size: int) -> Optional[Tuple[int, ...]]:
    """The dynamic scales' shape, None for modes without them."""
    if output_mode == "fp8_per_token":
        return (T,)
    if output_mode == "fp8_per_group":
        return (T, H, D // group_size)
    return None


def _lse_shape(lse_layout: str, T: int, H: int) -> Tuple[int, int]:
    return (H, T) if lse_layout == "heads_tokens" else (T, H)


def _out_buffer(t: Any, name: str, device: Any, dtype_name: str, shape: Tuple[int, ...]) -> int:
    t = _tensor(t, name)
    _cuda_device(t, name, device)
    if str(t.dtype) != dtype_name:
        raise TypeError(f"{name}: dtype {t.dtype}, expected {dtype_name}")
    _contiguous(t, name, shape)
    return int(t.data_ptr())


def _raise_status(code: int) -> None:
    if code == StatusCode.INVALID_ARGUMENT:
        raise ValueError(_capi.last_message())
    raise Error(code, _capi.last_message())


@functools.lru_cache(maxsize=None)
def _gpu_entry(fn_name: str) -> Callable[..., int]:
    """The C function of a launch, taking the argument block's address as a
    plain int (cheaper to convert than a byref of the struct). A function
    object of its own: the library's shared one keeps its declared types."""
    lib = _capi.lib()
    fn = lib["dcpmerge_merge_gpu" if fn_name == "merge" else "dcpmerge_copy_part_gpu"]
    fn.restype = _capi.i32
    fn.argtypes = ([ctypes.c_void_p, _capi.i32, ctypes.c_void_p] if fn_name == "merge" else
                   [ctypes.c_void_p, _capi.i64, _capi.i32, ctypes.c_void_p])
    return fn


class _Launch:
    """One launch with its C ABI argument block built once; a call writes
    only the data pointers (and the stream), then makes one foreign call."""

    __slots__ = ("args", "addr", "part_ptrs", "lse_ptrs", "fn", "first_token", "index", "stream")

    def __init__(self, fn_name: str, args: _capi.MergeArgs, device: Any, first_token: int = 0) -> None:
        self.args = args
        self.addr = ctypes.addressof(args)
        self.part_ptrs = args._keep[0]  # the c_void_p arrays args.partial_out / partial_lse point at
        self.lse_ptrs = args._keep[1]
        self.fn = _gpu_entry(fn_name)
        self.first_token = first_token if fn_name == "copy" else None
        self.index = device.index if device.index is not None else 0
        self.stream = _backend.raw_stream()

    def __call__(self) -> None:
        index = self.index
        if self.first_token is None:
            code = self.fn(self.addr, index, self.stream(index))
        else:
            code = self.fn(self.addr, self.first_token, index, self.stream(index))
        if code:
            _raise_status(code)


def _args(n: int, T: int, H: int, D: int, dtype: str, lse_base: str, lse_layout: str, mode: str,
          group_size: int, pow2: bool, out_ptrs: Sequence[int], lse_ptrs: Sequence[int], span: int,
          ts: int, hs: int, scale_ptr: int, out: int, out_bytes: int, scales: int, scales_bytes: int,
          lse_out: int, lse_out_bytes: int) -> _capi.MergeArgs:
    a = _capi.new_struct(_capi.MergeArgs)
    a.num_parts = n
    a.num_heads = H
    a.num_tokens = T
    a.head_size = D
    a.input_dtype = DTYPE_CODE[dtype]
    a.lse_base = LSE_BASE_CODE[lse_base]
    a.lse_layout = LSE_LAYOUT_CODE[lse_layout]
    a.output_mode = OUTPUT_MODE_CODE[mode]
    a.group_size = group_size
    a.power_of_two_scales = 1 if pow2 else 0
    po = (ctypes.c_void_p * n)(*out_ptrs)
    pl = (ctypes.c_void_p * n)(*lse_ptrs)
    a.partial_out = ctypes.cast(po, ctypes.POINTER(ctypes.c_void_p))
    a.partial_lse = ctypes.cast(pl, ctypes.POINTER(ctypes.c_void_p))
    a._keep = (po, pl)  # the arrays live as long as the struct
    a.partial_out_bytes = span
    a.partial_lse_bytes = T * H * 4
    a.token_stride = ts
    a.head_stride = hs
    a.static_scale = scale_ptr or None
    a.out = out or None
    a.out_bytes = out_bytes
    a.out_scales = scales or None
    a.out_scales_bytes = scales_bytes
    a.out_lse = lse_out or None
    a.out_lse_bytes = lse_out_bytes
    return a


# ------------------------------------------------------------- the ops ---

def merge_states(
    outputs: Union[Sequence[Any], Any],
    lses: Union[Sequence[Any], Any],
    *,
    lse_base: str = "e",
    lse_layout: str = "heads_tokens",
    output_mode: str = "fp8_per_tensor",
    scale: Union[float, Any, None] = None,
    group_size: int = 128,
    power_of_two_scales: bool = False,
    out: Any = None,
    out_scales: Any = None,
    out_lse: Any = None,
    return_lse: bool = False,
    enable_pdl: bool = False,
) -> MergeOutput:
    """Merges N partial attention outputs and quantizes, in one kernel.

    ``O = sum_i exp(L_i - m) O_i / sum_i exp(L_i - m)`` in fp32 per token
    and head (kernels/merge_contract.h: empty parts, NaN, rounding).

    Args:
      outputs: N CUDA tensors ``[T,H,D]`` (fp32, fp16 or bf16; same dtype,
        shape and strides; the last dimension contiguous; strides and D
        multiples of 16 bytes; 16-byte aligned) or one tensor ``[N,T,H,D]``.
        1 <= N <= 64.
      lses: N fp32 tensors ``[H,T]`` (``lse_layout="heads_tokens"``, vLLM)
        or ``[T,H]`` (``"tokens_heads"``, FlashInfer), each contiguous, or
        one tensor ``[N,H,T]`` / ``[N,T,H]``.
      lse_base: ``"e"`` (FlashAttention, vLLM) or ``"2"`` (FlashInfer).
      output_mode: ``"fp8_per_tensor"`` (static ``scale``),
        ``"fp8_per_token"``, ``"fp8_per_group"`` (dynamic scales, returned)
        or ``"passthrough"`` (the input dtype).
      scale: fp8_per_tensor only, required: a one-element fp32 CUDA tensor
        (read by the kernel at run time) or a float; codes are
        ``e4m3(O / scale)``.
      group_size: fp8_per_group: 64 or 128, dividing D.
      power_of_two_scales: dynamic modes: scales rounded up to 2^k.
      out, out_scales, out_lse: preallocated outputs (contiguous, on the
        inputs' device): ``out`` ``[T,H,D]`` float8_e4m3fn (or the input
        dtype for passthrough); ``out_scales`` fp32 ``[T]`` per token or
        ``[T,H,D/G]`` per group; ``out_lse`` fp32 in ``lse_layout``.
      return_lse: also compute the merged LSE (implied by ``out_lse``).
      enable_pdl: programmatic dependent launch (as FlashInfer's
        ``enable_pdl``; Hopper and later, ignored before): the merge may
        start while the kernel before it on the stream finishes. It pays
        when that kernel triggers its dependents early and costs about
        0.2 us per call when it does not (docs/benchmarks.md).

    Returns:
      MergeOutput(output, scales, lse); scales is None for fp8_per_tensor
      and passthrough, lse None unless asked.

    Raises:
      TypeError / ValueError naming the argument; GpuUnavailableError;
      dcpmerge.Error for a launch failure.
    """
    if _is_compiling():
        return _torch_ops.merge_states_traced(outputs, lses, lse_base, lse_layout, output_mode, scale, group_size,
                                              power_of_two_scales, out, out_scales, out_lse, return_lse,
                                              enable_pdl)
    try:
        key = ("merge_states", _thread(), _sigs(outputs), _sigs(lses), lse_base.__class__, lse_base, lse_layout,
               output_mode, _sig(scale), group_size.__class__, group_size, bool(power_of_two_scales), _sig(out),
               _sig(out_scales), _sig(out_lse), bool(return_lse), bool(enable_pdl))
        plan = _plans.get(key)
    except (AttributeError, TypeError):  # not a tensor, unhashable: the full validation says what is wrong
        key = plan = None
    if plan is not None:
        result = plan(outputs, lses, scale, out, out_scales, out_lse)
        if result is not None:
            return result
    # First call with this signature (or a pointer the plan cannot take):
    # validate everything, launch, and keep the plan for the next call.
    _require_gpu("merge_states")
    args, dev, result = _prepare_merge_states(outputs, lses, lse_base, lse_layout, output_mode, scale, group_size,
                                              power_of_two_scales, out, out_scales, out_lse, return_lse)
    if args is None:
        return result
    args.enable_pdl = 1 if enable_pdl else 0
    launch = _Launch("merge", args, dev)
    launch()
    if key is not None and _is_tensor_or_none(scale):  # a float scale is copied to the device per call
        _remember(key, _StatesPlan(launch, outputs, lses, out, out_scales, out_lse, result, dev))
    return result


# (op, thread, signature) -> a validated plan (_StatesPlan / _AttnPlan). Per
# thread: a plan's argument block is written, then read by the library, and
# another thread could run between the two.
_plans: Dict[tuple, Any] = {}
_thread = threading.get_ident
_MAX_PLANS = 4096


def _remember(key: tuple, plan: Any) -> None:
    if len(_plans) >= _MAX_PLANS:  # a workload with ever-new shapes: start over rather than grow
        _plans.clear()
    _plans[key] = plan


def _sig(t: Any) -> Any:
    """What a tensor's validation depends on, all but its data pointer;
    anything else (None, a float scale) is its own key, with its type."""
    if t is None:
        return None
    try:
        return t.dtype, t.shape, t.stride(), t.device
    except AttributeError:
        return t.__class__, t


def _sigs(ts: Any) -> Any:
    """_sig of one tensor, or of each of a list or tuple of them (a tuple of
    _sig tuples: never equal to one tensor's, which starts with a dtype)."""
    if ts.__class__ is list or ts.__class__ is tuple:
        return tuple(map(_sig, ts))
    return _sig(ts)


def _is_tensor_or_none(x: Any) -> bool:
    return x is None or _is_tensor(x)


def _bind(view: Any, ts: Any, offsets: Optional[List[int]], align: int) -> bool:
    """Writes the data pointers of N parts into the c_void_p array `view`:
    from a list of tensors, or one tensor's pointer plus fixed offsets (its
    part strides). False when one is not `align`-byte aligned. (A plain
    loop: cheaper than building a list for a slice assignment.)"""
    if offsets is None:
        acc = 0
        for i, t in enumerate(ts):
            p = t.data_ptr()
            view[i] = p
            acc |= p
    else:
        acc = base = ts.data_ptr()  # part 0 aligned and validated offsets: every part aligned
        for i, off in enumerate(offsets):
            view[i] = base + off
    return not acc & (align - 1)


def _part_offsets(ts: Any, ptrs: Sequence[int]) -> Optional[List[int]]:
    return None if not _is_tensor(ts) else [p - ptrs[0] for p in ptrs]


class _StatesPlan:
    """merge_states for one validated signature: per call, the pointers
    (alignment re-checked), the outputs left out allocated, one launch."""

    __slots__ = ("launch", "part_offsets", "lse_offsets", "alloc", "want_scales", "want_lse")

    def __init__(self, launch: _Launch, outputs: Any, lses: Any, out: Any, out_scales: Any, out_lse: Any,
                 result: MergeOutput, dev: Any) -> None:
        self.launch = launch
        self.part_offsets = _part_offsets(outputs, list(launch.part_ptrs))
        self.lse_offsets = _part_offsets(lses, list(launch.lse_ptrs))
        self.want_scales = result.scales is not None
        self.want_lse = result.lse is not None
        # Allocations of the outputs the caller left out (None: passed in).
        self.alloc = tuple(None if given is not None or got is None else
                           _backend.allocator(tuple(got.shape), str(got.dtype), dev)
                           for given, got in ((out, result.output), (out_scales, result.scales),
                                              (out_lse, result.lse)))

    def __call__(self, outputs: Any, lses: Any, scale: Any, out: Any, out_scales: Any,
                 out_lse: Any) -> Optional[MergeOutput]:
        launch, a = self.launch, self.launch.args
        alloc_out, alloc_scales, alloc_lse = self.alloc
        if alloc_out is not None:
            out = alloc_out()
        if alloc_scales is not None:
            out_scales = alloc_scales()
        if alloc_lse is not None:
            out_lse = alloc_lse()
        o = out.data_ptr()
        sp = 0 if scale is None else scale.data_ptr()
        if not (_bind(launch.part_ptrs, outputs, self.part_offsets, 16)
                and _bind(launch.lse_ptrs, lses, self.lse_offsets, 4)) or o & 15 or sp & 3:
            return None  # the full validation raises the error a first call would
        a.out = o
        a.static_scale = sp
        if self.want_scales:
            a.out_scales = out_scales.data_ptr()
        if self.want_lse:
            a.out_lse = out_lse.data_ptr()
        launch()
        return MergeOutput(out, out_scales if self.want_scales else None, out_lse if self.want_lse else None)


def _prepare_merge_states(outputs, lses, lse_base, lse_layout, output_mode, scale, group_size,
                          power_of_two_scales, out, out_scales, out_lse, return_lse):
    """Validates merge_states' arguments and allocates what is missing:
    (the C ABI arguments or None when there is nothing to do, the device,
    the MergeOutput). The GPU benchmark reuses it (gpu_checks.py)."""
    base = "2" if str(lse_base) == "2" else str(lse_base)
    if base not in LSE_BASE_CODE:
        raise ValueError(f"lse_base: {lse_base!r} is not one of e | 2")
    if lse_layout not in LSE_LAYOUT_CODE:
        raise ValueError(f"lse_layout: {lse_layout!r} is not one of heads_tokens | tokens_heads")
    if output_mode not in OUTPUT_MODE_CODE:
        raise ValueError(f"output_mode: {output_mode!r} is not one of {' | '.join(OUTPUT_MODE_CODE)}")
    parts = _Parts(outputs, "outputs")
    T, H, D, dev = parts.T, parts.H, parts.D, parts.device
    lse_ptrs = _lse_parts(lses, parts.n, T, H, lse_layout, dev, "lses")

    scale_ptr, _scale_keep = 0, None
    if output_mode == "fp8_per_tensor":
        if scale is None:
            raise ValueError("scale: required in output_mode fp8_per_tensor (a one-element fp32 CUDA "
                             "tensor or a float)")
        scale_ptr, _scale_keep = _scale_pointer(scale, dev, "scale")
    elif scale is not None:
        raise ValueError(f"scale: only fp8_per_tensor takes a static scale, output_mode is {output_mode}")
    if output_mode == "fp8_per_group":
        if isinstance(group_size, bool) or group_size not in (64, 128):
            raise ValueError(f"group_size: {group_size!r}; 64 or 128 are supported")
        if D % group_size != 0:
            raise ValueError(f"group_size: {group_size} does not divide head_size {D}")

    out_dtype = _FP8 if output_mode != "passthrough" else next(k for k, v in _INPUT_DTYPES.items()
                                                               if v == parts.dtype)
    if out is None:
        out = _backend.empty((T, H, D), out_dtype, dev)
    out_ptr = _out_buffer(out, "out", dev, out_dtype, (T, H, D))
    if T > 0:
        _aligned(out_ptr, 16, "out")
    out_bytes = T * H * D * (1 if output_mode != "passthrough" else DTYPE_SIZE[parts.dtype])

    scales_ptr, scales_bytes = 0, 0
    sshape = _scales_shape(output_mode, T, H, D, group_size)
    if sshape is not None:
        if out_scales is None:
            out_scales = _backend.empty(sshape, "torch.float32", dev)
        scales_ptr = _out_buffer(out_scales, "out_scales", dev, "torch.float32", sshape)
        scales_bytes = math.prod(sshape) * 4
    elif out_scales is not None:
        raise ValueError(f"out_scales: output_mode {output_mode} has no dynamic scales")

    lse_ptr, lse_bytes = 0, 0
    if out_lse is not None or return_lse:
        lshape = _lse_shape(lse_layout, T, H)
        if out_lse is None:
            out_lse = _backend.empty(lshape, "torch.float32", dev)
        lse_ptr = _out_buffer(out_lse, "out_lse", dev, "torch.float32", lshape)
        lse_bytes = T * H * 4

    args = None
    if T > 0:
        args = _args(parts.n, T, H, D, parts.dtype, base, lse_layout, output_mode,
                     group_size if output_mode == "fp8_per_group" else 128, bool(power_of_two_scales),
                     parts.ptrs, lse_ptrs, parts.span_bytes, parts.ts, parts.hs, scale_ptr, out_ptr,
                     out_bytes, scales_ptr, scales_bytes, lse_ptr, lse_bytes)
        args._keep = args._keep + (_scale_keep,)  # a float scale's device copy lives with the arguments
    return args, dev, MergeOutput(out, out_scales if scales_ptr else None, out_lse if lse_ptr else None)


def _attn_lse_layout(t: Any, name: str, H: int, T: int, device: Any) -> str:
    """vLLM's LSE is [H,T]: contiguous (heads_tokens), or the transpose of a
    contiguous [T,H] (tokens_heads, as some attention kernels return it)."""
    t = _tensor(t, name)
    _cuda_device(t, name, device)
    _f32(t, name)
    if _shape(t) != (H, T):
        raise ValueError(f"{name}: shape {list(_shape(t))}, expected [NUM_HEADS, NUM_TOKENS] = {[H, T]}")
    sh, st = _strides(t)
    if (st == 1 or T <= 1) and (sh == T or H <= 1):
        return "heads_tokens"
    if (sh == 1 or H <= 1) and (st == H or T <= 1):
        return "tokens_heads"
    raise ValueError(f"{name}: strides {[sh, st]}; expected a contiguous [H,T] ({[T, 1]}) or the "
                     f"transpose of a contiguous [T,H] ({[1, H]})")


def merge_attn_states(
    output: Any,
    prefix_output: Any,
    prefix_lse: Any,
    suffix_output: Any,
    suffix_lse: Any,
    output_lse: Any = None,
    prefill_tokens_with_context: Optional[int] = None,
    output_scale: Any = None,
    enable_pdl: bool = False,
) -> None:
    """vLLM's ``merge_attn_states`` (vllm/v1/attention/ops/merge_attn_states.py)
    on the dcpmerge kernel: the same arguments, order and semantics.

    Args:
      output: ``[NUM_TOKENS, NUM_HEADS, HEAD_SIZE]``, contiguous, written in
        place: ``torch.float8_e4m3fn`` (then ``output_scale`` is required)
        or the inputs' dtype.
      prefix_output, suffix_output: ``[T,H,D]`` partial outputs (fp32, fp16
        or bf16, same dtype and strides: prefix and suffix share their head
        stride; the head size contiguous).
      prefix_lse, suffix_lse: fp32 ``[NUM_HEADS, NUM_TOKENS]``, base e.
      output_lse: optional fp32 ``[H,T]``, written with the merged LSE.
      prefill_tokens_with_context: tokens at index >= this take the suffix
        output as it is (quantized when ``output`` is FP8) and its LSE; None:
        every token is merged.
      output_scale: one-element fp32 tensor, the static FP8 scale
        (``output = fp8(O / output_scale)``); only with an FP8 ``output``.
      enable_pdl: programmatic dependent launch of the merge, as in
        ``merge_states`` (not part of vLLM's signature; off by default).

    Differences from vLLM's kernels: ``output`` must be contiguous (vLLM
    also accepts a padded head stride), rounding is the dcpmerge contract's
    (values beyond the FP8 range saturate to +-448, NaN stays NaN), and an
    LSE of +inf or NaN also marks an empty part.
    """
    if _is_compiling():
        return _torch_ops.merge_attn_states_traced(output, prefix_output, prefix_lse, suffix_output, suffix_lse,
                                                   output_lse, prefill_tokens_with_context, output_scale,
                                                   enable_pdl)
    p = prefill_tokens_with_context
    try:
        key = ("merge_attn_states", _thread(), _sig(output), _sig(prefix_output), _sig(prefix_lse),
               _sig(suffix_output), _sig(suffix_lse), _sig(output_lse), p.__class__, p, _sig(output_scale),
               bool(enable_pdl))
        plan = _plans.get(key)
    except (AttributeError, TypeError):  # unhashable: the full validation says what is wrong
        key = plan = None
    if plan is not None and plan(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse,
                                 output_scale):
        return
    # First call with this signature (or a pointer the plan cannot take):
    # validate everything, launch, and keep the plan for the next call.
    plan = _plan_attn(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, p, output_scale,
                      enable_pdl)
    if plan is not None:
        plan.run()
        if key is not None:
            _remember(key, plan)


class _AttnPlan:
    """merge_attn_states for one validated signature: the merge launch
    and/or the suffix copy (prefill_tokens_with_context), sharing pointers."""

    __slots__ = ("merge", "copy")

    def __init__(self, merge: Optional[_Launch], copy: Optional[_Launch]) -> None:
        self.merge, self.copy = merge, copy

    def __call__(self, output: Any, prefix: Any, prefix_lse: Any, suffix: Any, suffix_lse: Any, output_lse: Any,
                 scale: Any) -> bool:
        o, pp, sp = output.data_ptr(), prefix.data_ptr(), suffix.data_ptr()
        pl, sl = prefix_lse.data_ptr(), suffix_lse.data_ptr()
        sc = 0 if scale is None else scale.data_ptr()
        if (o | pp | sp) & 15 or (pl | sl | sc) & 3:
            return False  # the full validation raises the error a first call would
        ol = 0 if output_lse is None else output_lse.data_ptr()
        merge, copy = self.merge, self.copy
        if merge is not None:  # written element by element: the cheapest ctypes writes
            a, parts, lses = merge.args, merge.part_ptrs, merge.lse_ptrs
            parts[0], parts[1], lses[0], lses[1] = pp, sp, pl, sl
            a.out, a.static_scale, a.out_lse = o, sc, ol
            merge()
        if copy is not None:
            a, parts, lses = copy.args, copy.part_ptrs, copy.lse_ptrs
            parts[0], lses[0] = sp, sl
            a.out, a.static_scale, a.out_lse = o, sc, ol
            copy()
        return True

    def run(self) -> None:
        if self.merge is not None:
            self.merge()
        if self.copy is not None:
            self.copy()


def _plan_attn(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, prefill_tokens_with_context,
               output_scale, enable_pdl) -> Optional[_AttnPlan]:
    """Validates merge_attn_states' arguments: its launches with these
    tensors' pointers, or None when there is nothing to launch (T = 0)."""
    _require_gpu("merge_attn_states")
    out = _tensor(output, "output")
    if len(out.shape) != 3:
        raise ValueError(f"output: expected [NUM_TOKENS, NUM_HEADS, HEAD_SIZE], got shape "
                         f"{list(_shape(out))}")
    dev = _cuda_device(out, "output")
    T, H, D = _shape(out)
    prefix = _tensor(prefix_output, "prefix_output")
    suffix = _tensor(suffix_output, "suffix_output")
    _cuda_device(prefix, "prefix_output", dev)
    _cuda_device(suffix, "suffix_output", dev)
    dtype = _input_dtype(prefix, "prefix_output")
    if str(suffix.dtype) != str(prefix.dtype):
        raise TypeError(f"suffix_output: dtype {suffix.dtype}, prefix_output is {prefix.dtype}")
    for name, t in (("prefix_output", prefix), ("suffix_output", suffix)):
        if _shape(t) != (T, H, D):
            raise ValueError(f"{name}: shape {list(_shape(t))}, output is {[T, H, D]}")
    if _strides(prefix)[1] != _strides(suffix)[1]:
        raise ValueError(f"suffix_output: head stride {_strides(suffix)[1]}, prefix_output's is "
                         f"{_strides(prefix)[1]}; prefix and suffix must share their head stride")
    if _strides(prefix) != _strides(suffix) and T > 1:
        raise ValueError(f"suffix_output: strides {list(_strides(suffix))}, prefix_output's are "
                         f"{list(_strides(prefix))}; they must match")
    parts = _Parts([prefix, suffix], "prefix_output/suffix_output")

    fp8 = str(out.dtype) == _FP8
    if fp8:
        if output_scale is None:
            raise ValueError(f"output_scale: required when output is {out.dtype}")
        scale_ptr, _keep = _scale_pointer(_tensor(output_scale, "output_scale"), dev, "output_scale")
        mode = "fp8_per_tensor"
    else:
        if output_scale is not None:
            raise ValueError(f"output_scale: given, but output is {out.dtype}; FP8 output needs "
                             "output.dtype == torch.float8_e4m3fn")
        if str(out.dtype) != str(prefix.dtype):
            raise TypeError(f"output: dtype {out.dtype}; expected torch.float8_e4m3fn or the inputs' dtype "
                            f"{prefix.dtype}")
        scale_ptr, mode = 0, "passthrough"
    out_ptr = _out_buffer(out, "output", dev, str(out.dtype), (T, H, D))
    if T > 0:
        _aligned(out_ptr, 16, "output")
    out_bytes = T * H * D * (1 if fp8 else DTYPE_SIZE[dtype])

    layout = _attn_lse_layout(prefix_lse, "prefix_lse", H, T, dev)
    if _attn_lse_layout(suffix_lse, "suffix_lse", H, T, dev) != layout:
        raise ValueError(f"suffix_lse: strides {list(_strides(suffix_lse))}, prefix_lse's are "
                         f"{list(_strides(prefix_lse))}; both LSEs must have one layout")
    lse_ptr, lse_bytes = 0, 0
    if output_lse is not None:
        if _attn_lse_layout(output_lse, "output_lse", H, T, dev) != layout:
            raise ValueError(f"output_lse: strides {list(_strides(output_lse))}, the input LSEs' are "
                             f"{list(_strides(prefix_lse))}; output_lse must have their layout")
        lse_ptr, lse_bytes = int(output_lse.data_ptr()), T * H * 4
    for name, t in (("prefix_lse", prefix_lse), ("suffix_lse", suffix_lse)):
        _aligned(int(t.data_ptr()), 4, name)

    if prefill_tokens_with_context is None:
        p = T
    else:
        if isinstance(prefill_tokens_with_context, bool) or not isinstance(prefill_tokens_with_context, int):
            raise TypeError(f"prefill_tokens_with_context: expected an int or None, got "
                            f"{type(prefill_tokens_with_context).__name__}")
        if prefill_tokens_with_context < 0:
            raise ValueError(f"prefill_tokens_with_context: {prefill_tokens_with_context} < 0")
        p = min(prefill_tokens_with_context, T)
    if T == 0:
        return None

    prefix_ptr, suffix_ptr = parts.ptrs
    lse_ptrs = [int(prefix_lse.data_ptr()), int(suffix_lse.data_ptr())]
    merge = copy = None
    if p > 0:
        # Every token merged (tokens >= p are rewritten right after, on the
        # same stream: the kernel's LSE indexing has no token offset).
        args = _args(2, T, H, D, dtype, "e", layout, mode, 128, False, [prefix_ptr, suffix_ptr], lse_ptrs,
                     parts.span_bytes, parts.ts, parts.hs, scale_ptr, out_ptr, out_bytes, 0, 0, lse_ptr,
                     lse_bytes)
        args.enable_pdl = 1 if enable_pdl else 0
        merge = _Launch("merge", args, dev)
    if p < T:
        # Tokens without prefix context: the suffix as it is (a one-part
        # merge, quantized when FP8), and its LSE.
        args = _args(1, T, H, D, dtype, "e", layout, mode, 128, False, [suffix_ptr], lse_ptrs[1:],
                     parts.span_bytes, parts.ts, parts.hs, scale_ptr, out_ptr, out_bytes, 0, 0, lse_ptr,
                     lse_bytes)
        copy = _Launch("copy", args, dev, p)
    return _AttnPlan(merge, copy)


from . import _torch_ops  # noqa: E402 (it imports this module; torch itself is loaded lazily)
