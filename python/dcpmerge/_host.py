"""Host buffers (numpy arrays, CPU torch tensors) as raw pointers for the C
ABI, and numpy arrays of the formats numpy lacks (bf16 as uint16 bits, FP8
E4M3 as uint8 codes). Internal."""

from __future__ import annotations

from typing import Any, Optional, Tuple

_NUMPY_DTYPES = {"float32": "fp32", "float16": "fp16", "uint16": "bf16", "bfloat16": "bf16"}
_TORCH_DTYPES = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}


def numpy():
    try:
        import numpy as np  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - numpy ships with every supported setup
        raise ImportError("dcpmerge's host paths need numpy (apt install python3-numpy / pip install "
                          "numpy)") from e
    return np


def is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr") and hasattr(x, "device")


class HostBuffer:
    """A C-contiguous host array: pointer, byte size, dcpmerge dtype name
    ("fp32" | "fp16" | "bf16" | "f32" for LSEs), shape, and the object that
    keeps the memory alive."""

    def __init__(self, ptr: int, nbytes: int, dtype: str, shape: Tuple[int, ...], keep: Any,
                 torch_like: bool) -> None:
        self.ptr, self.nbytes, self.dtype, self.shape, self.keep = ptr, nbytes, dtype, shape, keep
        self.torch_like = torch_like


def host_buffer(x: Any, name: str, *, lse: bool = False) -> HostBuffer:
    """Checks that `x` is a C-contiguous host array of a supported dtype.

    Inputs: fp32 / fp16 / bf16 (numpy: float32, float16, and uint16 holding
    bf16 bits or ml_dtypes' bfloat16); LSEs: float32.
    """
    if is_torch_tensor(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name}: a {x.device.type} tensor; this path takes host memory")
        dt = str(x.dtype)
        if lse:
            if dt != "torch.float32":
                raise TypeError(f"{name}: dtype {x.dtype}, expected torch.float32")
            d = "f32"
        else:
            d = _TORCH_DTYPES.get(dt)
            if d is None:
                raise TypeError(f"{name}: dtype {x.dtype}; use torch.float32, torch.float16 or "
                                "torch.bfloat16")
        if not x.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")
        shape = tuple(int(s) for s in x.shape)
        return HostBuffer(int(x.data_ptr()), int(x.numel()) * int(x.element_size()), d, shape, x, True)
    np = numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or a CPU torch tensor, got {type(x).__name__}")
    if lse:
        if x.dtype != np.float32:
            raise TypeError(f"{name}: dtype {x.dtype}, expected float32")
        d = "f32"
    else:
        d = _NUMPY_DTYPES.get(x.dtype.name)
        if d is None:
            raise TypeError(f"{name}: dtype {x.dtype}; use float32, float16, or uint16 holding bf16 bits")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous (np.ascontiguousarray)")
    return HostBuffer(int(x.ctypes.data), int(x.nbytes), d, tuple(int(s) for s in x.shape), x, False)


def empty_like_kind(torch_like: bool, shape: Tuple[int, ...], kind: str) -> Any:
    """An empty host array; kind: "fp8" (codes), "fp32", "fp16", "bf16"."""
    if torch_like:
        import torch  # noqa: PLC0415

        dt = {"fp8": torch.float8_e4m3fn, "fp32": torch.float32, "fp16": torch.float16,
              "bf16": torch.bfloat16}[kind]
        return torch.empty(shape, dtype=dt)
    np = numpy()
    dt = {"fp8": np.uint8, "fp32": np.float32, "fp16": np.float16, "bf16": np.uint16}[kind]
    return np.empty(shape, dtype=dt)


def pointer_of(a: Any) -> int:
    return int(a.data_ptr()) if is_torch_tensor(a) else int(a.ctypes.data)


def nbytes_of(a: Any) -> int:
    if is_torch_tensor(a):
        return int(a.numel()) * int(a.element_size())
    return int(a.nbytes)


def optional_str(x: Optional[str]) -> Optional[str]:
    return None if x is None else str(x)
