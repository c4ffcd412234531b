"""Loads libdcpmerge_c.so (capi/dcpmerge_c.h) with ctypes and declares its
functions. Internal: the public API is in ops, client and admin.

Where the library is looked for, first match wins:
  1. ``$DCPMERGE_LIBRARY`` (a path),
  2. ``dcpmerge/lib/libdcpmerge_c.so`` inside the package (the wheel; the
     gRPC, protobuf and abseil libraries it needs lie next to it and are
     found through its RPATH ``$ORIGIN``),
  3. ``bazel-bin/capi/libdcpmerge_c.so`` of the source tree this package is
     in (``python/dcpmerge`` used from a checkout after
     ``bazel build //capi:libdcpmerge_c.so``).
The library is loaded on first use, so ``import dcpmerge`` works without it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import Optional

from .errors import Error, StatusCode

ABI_VERSION = 1

c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p
i32 = ctypes.c_int32
i64 = ctypes.c_int64
u64 = ctypes.c_uint64
f32 = ctypes.c_float
c_float_p = ctypes.POINTER(ctypes.c_float)


class MergeArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", u64),
        ("num_parts", i32),
        ("num_heads", i32),
        ("num_tokens", i64),
        ("head_size", i32),
        ("input_dtype", i32),
        ("lse_base", i32),
        ("lse_layout", i32),
        ("output_mode", i32),
        ("group_size", i32),
        ("power_of_two_scales", i32),
        ("enable_pdl", i32),
        ("partial_out", ctypes.POINTER(c_void_p)),
        ("partial_lse", ctypes.POINTER(c_void_p)),
        ("partial_out_bytes", u64),
        ("partial_lse_bytes", u64),
        ("token_stride", i64),
        ("head_stride", i64),
        ("static_scale", c_void_p),
        ("out", c_void_p),
        ("out_bytes", u64),
        ("out_scales", c_void_p),
        ("out_scales_bytes", u64),
        ("out_lse", c_void_p),
        ("out_lse_bytes", u64),
    ]


class ClientOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", u64),
        ("target", c_char_p),
        ("rank", i32),
        ("num_parts", i32),
        ("device", c_char_p),
        ("expected_config_hash", u64),
        ("replace_existing", i32),
        ("use_tls", i32),
        ("tls_root_ca_file", c_char_p),
        ("tls_client_cert_file", c_char_p),
        ("tls_client_key_file", c_char_p),
        ("tls_server_name_override", c_char_p),
        ("rpc_timeout_ms", i64),
        ("merge_timeout_ms", i64),
        ("heartbeat", i32),
        ("reserved0", i32),
        ("join_secret", c_char_p),
    ]


class ResultView(ctypes.Structure):
    _fields_ = [
        ("struct_size", u64),
        ("step", u64),
        ("layer", i32),
        ("head_begin", i32),
        ("num_tokens", i64),
        ("config_version", u64),
        ("head_count", i32),
        ("reserved0", i32),
        ("output", c_void_p),
        ("output_bytes", u64),
        ("scales", c_void_p),
        ("scale_count", u64),
        ("lse", c_void_p),
        ("lse_bytes", u64),
    ]


class StepInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", u64),
        ("step", u64),
        ("layer", i32),
        ("head_begin", i32),
        ("num_tokens", i64),
        ("config_version", u64),
        ("head_count", i32),
        ("scale_count", ctypes.c_uint32),
        ("static_scale", f32),
        ("reserved0", i32),
    ]


class AdminOptions(ctypes.Structure):
    _fields_ = [
        ("struct_size", u64),
        ("target", c_char_p),
        ("token", c_char_p),
        ("token_file", c_char_p),
        ("tls_ca_file", c_char_p),
        ("tls_cert_file", c_char_p),
        ("tls_key_file", c_char_p),
        ("tls_server_name", c_char_p),
        ("deadline_ms", i64),
    ]


def new_struct(cls):
    s = cls()
    s.struct_size = ctypes.sizeof(cls)
    return s


# name: (restype, argtypes)
_FUNCTIONS = {
    "dcpmerge_abi_version": (i32, []),
    "dcpmerge_version": (c_char_p, []),
    "dcpmerge_build_commit": (c_char_p, []),
    "dcpmerge_last_error_message": (c_char_p, []),
    "dcpmerge_free": (None, [c_void_p]),
    "dcpmerge_built_with_cuda": (i32, []),
    "dcpmerge_cuda_device_count": (i32, [ctypes.POINTER(i32)]),
    "dcpmerge_merge_gpu": (i32, [ctypes.POINTER(MergeArgs), i32, c_void_p]),
    "dcpmerge_copy_part_gpu": (i32, [ctypes.POINTER(MergeArgs), i64, i32, c_void_p]),
    "dcpmerge_merge_gpu_repeat": (i32, [ctypes.POINTER(MergeArgs), i32, c_void_p, i32, ctypes.POINTER(ctypes.c_double)]),
    "dcpmerge_merge_cpu": (i32, [ctypes.POINTER(MergeArgs), i32]),
    "dcpmerge_client_connect": (i32, [ctypes.POINTER(ClientOptions), ctypes.POINTER(c_void_p)]),
    "dcpmerge_client_close": (None, [c_void_p]),
    "dcpmerge_client_join": (i32, [c_void_p]),
    "dcpmerge_client_wait_ready": (i32, [c_void_p, i64]),
    "dcpmerge_client_leave": (i32, [c_void_p]),
    "dcpmerge_client_session_json": (i32, [c_void_p, ctypes.POINTER(c_void_p)]),
    "dcpmerge_client_heartbeat_status": (i32, [c_void_p, ctypes.POINTER(u64)]),
    "dcpmerge_client_merge": (
        i32,
        [c_void_p, u64, i32, i64, c_void_p, u64, c_void_p, u64, ctypes.POINTER(c_void_p)],
    ),
    "dcpmerge_result_view_of": (i32, [c_void_p, ctypes.POINTER(ResultView)]),
    "dcpmerge_result_free": (None, [c_void_p]),
    "dcpmerge_device_create": (i32, [c_void_p, i32, i64, ctypes.POINTER(c_void_p)]),
    "dcpmerge_device_close": (None, [c_void_p]),
    "dcpmerge_device_connect": (i32, [c_void_p]),
    "dcpmerge_device_sizes": (i32, [c_void_p, i64, ctypes.POINTER(u64)]),
    "dcpmerge_device_merge": (
        i32,
        [c_void_p, u64, i32, i64, u64, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p, c_void_p,
         ctypes.POINTER(c_void_p)],
    ),
    "dcpmerge_device_wait": (i32, [c_void_p, c_void_p, i64, ctypes.POINTER(StepInfo)]),
    "dcpmerge_device_check": (i32, [c_void_p, c_void_p, ctypes.POINTER(StepInfo)]),
    "dcpmerge_ticket_free": (None, [c_void_p]),
    "dcpmerge_admin_open": (i32, [ctypes.POINTER(AdminOptions), ctypes.POINTER(c_void_p)]),
    "dcpmerge_admin_close": (None, [c_void_p]),
    "dcpmerge_admin_get_config_json": (i32, [c_void_p, ctypes.POINTER(c_void_p)]),
    "dcpmerge_admin_get_stats_json": (i32, [c_void_p, ctypes.POINTER(c_void_p)]),
    "dcpmerge_admin_set_scales": (
        i32,
        [c_void_p, ctypes.POINTER(i32), ctypes.POINTER(f32), u64, i32, f32, ctypes.POINTER(u64)],
    ),
    "dcpmerge_admin_configure_json": (
        i32, [c_void_p, c_char_p, f32, ctypes.POINTER(u64), ctypes.POINTER(u64)]),
    "dcpmerge_admin_drain": (i32, [c_void_p, i64, ctypes.POINTER(i32), ctypes.POINTER(u64)]),
}


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("DCPMERGE_LIBRARY")
    if env:
        out.append(Path(env))
    here = Path(__file__).resolve().parent
    out.append(here / "lib" / "libdcpmerge_c.so")
    # python/dcpmerge -> the checkout's bazel-bin
    out.append(here.parent.parent / "bazel-bin" / "capi" / "libdcpmerge_c.so")
    return out


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_load_error: Optional[str] = None


def _load() -> ctypes.CDLL:
    tried = []
    for path in _candidates():
        if not path.exists():
            tried.append(f"{path} (missing)")
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError as e:  # a dependency missing, wrong architecture, ...
            tried.append(f"{path} ({e})")
            if os.environ.get("DCPMERGE_LIBRARY"):
                break
            continue
        try:
            for name, (restype, argtypes) in _FUNCTIONS.items():
                fn = getattr(lib, name)
                fn.restype = restype
                fn.argtypes = argtypes
        except AttributeError as e:
            raise ImportError(f"{path}: {e}; the library is from another build than this package") from None
        abi = lib.dcpmerge_abi_version()
        if abi != ABI_VERSION:
            raise ImportError(f"{path}: C ABI version {abi}, this package needs {ABI_VERSION} "
                              "(package and library come from different builds)")
        return lib
    raise ImportError("libdcpmerge_c.so could not be loaded; tried: " + "; ".join(tried) +
                      ". Install the dcpmerge wheel (tools/build_wheel.sh), or build the library "
                      "with `bazel build //capi:libdcpmerge_c.so` in the checkout, or set "
                      "DCPMERGE_LIBRARY to its path.")


def lib() -> ctypes.CDLL:
    """The loaded library (ImportError saying what was tried when it cannot load)."""
    global _lib, _load_error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            if _load_error is not None:
                raise ImportError(_load_error)
            try:
                _lib = _load()
            except ImportError as e:
                _load_error = str(e)
                raise
    return _lib


def load_error() -> Optional[str]:
    """Why the library cannot be loaded, or None when it can."""
    try:
        lib()
        return None
    except ImportError as e:
        return str(e)


def last_message() -> str:
    return lib().dcpmerge_last_error_message().decode("utf-8", "replace")


def check(code: int) -> None:
    """Raises dcpmerge.Error for a non-zero status code from the library."""
    if code != 0:
        raise Error(code, last_message())


def take_string(ptr: c_void_p) -> str:
    """A string the library returned (char**), released here."""
    if not ptr.value:
        return ""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8")
    finally:
        lib().dcpmerge_free(ptr)


def encode(s: Optional[str]) -> Optional[bytes]:
    return None if s is None else os.fsencode(s) if isinstance(s, os.PathLike) else str(s).encode("utf-8")


__all__ = ["lib", "check", "Error", "StatusCode"]
