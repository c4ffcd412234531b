"""dcpmerge: the fused N-way attention-state merge + FP8 quantization, from Python.

Three uses (docs/python.md):

- in process, on CUDA tensors: :func:`merge_states` (N-way, every output
  mode) and :func:`merge_attn_states` (vLLM's function, argument for
  argument), on PyTorch's current stream, safe in CUDA graphs;
- a DCP rank against the merge server: :class:`RankClient`;
- the server's admin API: :class:`Admin`.

``import dcpmerge`` needs neither PyTorch nor a GPU; where the GPU merge
cannot run, :func:`gpu_unavailable_reason` says why and the ops raise
:class:`GpuUnavailableError` saying the same.
"""

from __future__ import annotations

from .admin import Admin, DrainResult, LatencySummary, Member, ServerConfig, Stats
from .client import DeviceMerge, MergeResult, RankClient, Session
from .config import GroupConfig
from .errors import Error, GpuUnavailableError, StatusCode
from . import flashinfer_compat, ops
from .ops import MAX_PARTS, MergeOutput, gpu_available, gpu_unavailable_reason, merge_attn_states, merge_states
from .reference import merge_states_cpu

__all__ = [
    "Admin", "DeviceMerge", "DrainResult", "Error", "GpuUnavailableError", "GroupConfig", "LatencySummary",
    "MAX_PARTS", "Member", "MergeOutput", "MergeResult", "RankClient", "ServerConfig", "Session", "Stats",
    "StatusCode", "gpu_available", "gpu_unavailable_reason", "library_info", "merge_attn_states",
    "merge_states", "merge_states_cpu", "__version__",
]


def _version() -> str:
    try:
        from ._version import __version__ as v  # written into the wheel by tools/build_wheel.sh

        return v
    except ImportError:
        pass
    from . import _capi

    try:
        return _capi.lib().dcpmerge_version().decode()
    except ImportError:
        return "0+unknown"


__version__ = _version()

ops._load_torch_if_imported()  # registers torch.ops.dcpmerge.* now when PyTorch is already loaded


def library_info() -> dict:
    """Where libdcpmerge_c.so was loaded from and what it contains."""
    import ctypes  # noqa: PLC0415

    from . import _capi  # noqa: PLC0415

    lib = _capi.lib()
    return {
        "path": lib._name,
        "version": lib.dcpmerge_version().decode(),
        "build_commit": lib.dcpmerge_build_commit().decode(),
        "abi_version": int(lib.dcpmerge_abi_version()),
        "built_with_cuda": bool(lib.dcpmerge_built_with_cuda()),
        "gpu_unavailable_reason": gpu_unavailable_reason(),
        "pointer_size": ctypes.sizeof(ctypes.c_void_p),
    }
