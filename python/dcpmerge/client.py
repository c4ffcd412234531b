"""The rank side of the merge service from Python: :class:`RankClient`.

A DCP rank joins its group, keeps its session with background heartbeats
(the C++ client's heartbeat thread, client/rank_client.h), and merges its
partial output of each step with the other ranks':

- host arrays (numpy, CPU tensors) over the gRPC data plane
  (``--data_plane=grpc``), returning numpy arrays / CPU tensors;
- CUDA tensors over the NCCL data plane (``--data_plane=nccl``; builds with
  CUDA), enqueued on PyTorch's current stream, returning CUDA tensors.

Failures raise :class:`dcpmerge.Error` with the gRPC status code and the
server's message (INVALID_ARGUMENT naming the field of a bad step,
UNAVAILABLE when the server or a peer is gone, DEADLINE_EXCEEDED when no
result came in time). Bad arguments raise ValueError / TypeError before
anything is sent; the rank's part is then not sent, so the step fails for
the other ranks of the group when it times out.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
from typing import Any, Optional

from . import _capi
from ._closeable import Closeable
from ._host import empty_like_kind, host_buffer, is_torch_tensor, numpy
from .config import DATA_PLANES, DTYPE_SIZE, GroupConfig, short_name
from .errors import Error, StatusCode

__all__ = ["RankClient", "Session", "MergeResult", "DeviceMerge"]


@dataclasses.dataclass
class Session:
    """This rank's session: what Join answered (control.proto JoinResponse)."""

    config: GroupConfig
    config_version: int
    config_hash: int
    session_id: int
    data_plane: str  # "grpc" | "nccl"
    backend: str  # the server's compute backend, "cpu" | "cuda"
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    step_timeout_ms: int
    nccl_generation: int
    nccl_fixed_shape: bool
    nccl_fixed_tokens: int

    @classmethod
    def from_json(cls, d: dict) -> "Session":
        return cls(
            config=GroupConfig.from_json(d.get("config", {})),
            config_version=int(d.get("config_version", 0)),
            config_hash=int(d.get("config_hash", 0)),
            session_id=int(d.get("session_id", 0)),
            data_plane=short_name(DATA_PLANES, d.get("data_plane", "")),
            backend=d.get("backend", ""),
            heartbeat_interval_ms=int(d.get("heartbeat_interval_ms", 0)),
            heartbeat_timeout_ms=int(d.get("heartbeat_timeout_ms", 0)),
            step_timeout_ms=int(d.get("step_timeout_ms", 0)),
            nccl_generation=int(d.get("nccl_generation", 0)),
            nccl_fixed_shape=bool(d.get("nccl_fixed_shape", False)),
            nccl_fixed_tokens=int(d.get("nccl_fixed_tokens", 0)),
        )


@dataclasses.dataclass
class MergeResult:
    """One merged step, as this rank gets it back.

    ``output``: ``[T, head_count, D]``, FP8 E4M3 (numpy ``uint8`` codes, or
    ``torch.float8_e4m3fn``) or the input dtype (passthrough; numpy bf16 is
    ``uint16`` bits); ``value = decode(code) * scale``. ``scales``: fp32, one
    per tensor (per-tensor mode: the layer's scale the step used), ``[T]``
    per token, ``[T, head_count, D/G]`` per group. ``lse``: fp32 in the
    group's layout, when the group has ``return_lse``.
    """

    step: int
    layer: int
    num_tokens: int
    config_version: int  # the configuration the step ran with
    head_begin: int  # heads [head_begin, head_begin + head_count)
    head_count: int
    output: Any
    scales: Any
    lse: Any
    output_mode: str = "fp8_per_tensor"
    group_size: int = 128
    input_dtype: str = "bf16"

    def dequantize(self) -> Any:
        """The output as a float32 numpy array (codes times their scales)."""
        from .reference import dequantize  # noqa: PLC0415

        out, scales = self.output, self.scales
        if is_torch_tensor(out):
            torch = __import__("torch")
            out = out.cpu()
            if self.output_mode != "passthrough":
                out = out.view(torch.uint8).numpy()
            elif self.input_dtype == "bf16":
                out = out.view(torch.int16).numpy().view("uint16")
            else:
                out = out.numpy()
            scales = scales.cpu().numpy() if scales is not None else None
        return dequantize(out, scales, output_mode=self.output_mode, group_size=self.group_size,
                          dtype=self.input_dtype)


class DeviceMerge:
    """A step enqueued on the NCCL data plane (``RankClient.merge(...,
    wait=False)``): its output tensors are valid once the stream work has
    completed and :meth:`check` (or :meth:`wait`) returned without raising."""

    def __init__(self, client: "RankClient", ticket: ctypes.c_void_p, result: MergeResult) -> None:
        self._client, self._ticket, self._result = client, ticket, result

    def _info(self, wait_timeout: Optional[float]) -> MergeResult:
        if self._ticket is None:
            return self._result
        lib = _capi.lib()
        info = _capi.new_struct(_capi.StepInfo)
        dev = self._client._device
        if dev is None:
            raise Error(StatusCode.FAILED_PRECONDITION, "the rank client was closed")
        try:
            if wait_timeout is None:
                code = lib.dcpmerge_device_check(dev, self._ticket, ctypes.byref(info))
            else:
                code = lib.dcpmerge_device_wait(dev, self._ticket, int(wait_timeout * 1000), ctypes.byref(info))
            _capi.check(code)
        finally:
            lib.dcpmerge_ticket_free(self._ticket)
            self._ticket = None
        r = self._result
        r.config_version, r.head_begin, r.head_count = info.config_version, info.head_begin, info.head_count
        if r.output_mode == "fp8_per_tensor":
            torch = __import__("torch")
            r.scales = torch.tensor([info.static_scale], dtype=torch.float32)
        return r

    def wait(self, timeout: float = 60.0) -> MergeResult:
        """Waits for the stream work (host sync), then the server's status."""
        return self._info(timeout)

    def check(self) -> MergeResult:
        """The server's status, once the stream work completed (after your own sync)."""
        return self._info(None)

    def __del__(self) -> None:
        if getattr(self, "_ticket", None) is not None:
            try:
                _capi.lib().dcpmerge_ticket_free(self._ticket)
            except Exception:  # interpreter shutdown
                pass


def _int(value: Any, name: str, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < lo:
        raise ValueError(f"{name}: {value} < {lo}")
    return value


def _read_secret(path: Any) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ValueError(f"join_secret_file: cannot read {os.fspath(path)}: {e.strerror}") from None
    secret = text.rstrip("\r\n\t ")
    if not secret:
        raise ValueError(f"join_secret_file: {os.fspath(path)} is empty")
    return secret


class RankClient(Closeable):
    """One DCP rank's connection to its merge server.

    ::

        with dcpmerge.RankClient("merge-server:50051", rank=0, num_parts=4) as c:
            c.join()                  # + heartbeats in the background
            c.wait_ready(timeout=30)  # every rank joined
            r = c.merge(step, layer, output, lse)   # host arrays: gRPC plane

    Args:
      target: the server's rank listener, ``"host:port"``.
      rank: this rank, 0..num_parts-1.
      num_parts: N, the ranks of the group.
      device: reported at Join (``"cpu"``, ``"cuda:0"``, ...).
      expected_config_hash: 0, or the config hash this rank expects (Join
        fails with FAILED_PRECONDITION on another).
      replace_existing: take over a live slot (a restarted rank).
      tls_root_ca_file, tls_client_cert_file, tls_client_key_file: TLS (the
        CA verifies the server; cert + key for mTLS); any of them enables
        TLS. tls_server_name_override: tests only.
      rpc_timeout: seconds for Join, Leave, heartbeats.
      merge_timeout: seconds a merge waits for its result (None: the
        server's step timeout + rpc_timeout).
      heartbeat: run the heartbeat thread after join().
      join_secret, join_secret_file: the group's join secret (docs/server.md,
        "Limits and security"), given or read from a file (trailing newline
        dropped); at most one of them.
    """

    def __init__(self, target: str, rank: int, num_parts: int, *, device: str = "cpu",
                 expected_config_hash: int = 0, replace_existing: bool = False,
                 tls_root_ca_file: Optional[str] = None, tls_client_cert_file: Optional[str] = None,
                 tls_client_key_file: Optional[str] = None, tls_server_name_override: Optional[str] = None,
                 rpc_timeout: float = 5.0, merge_timeout: Optional[float] = None, heartbeat: bool = True,
                 join_secret: Optional[str] = None, join_secret_file: Optional[str] = None) -> None:
        self._client = None
        self._device = None
        self._device_index: Optional[int] = None
        self._device_connected = False
        self._session: Optional[Session] = None
        if not isinstance(target, str) or not target:
            raise ValueError(f"target: {target!r}; expected 'host:port'")
        _int(num_parts, "num_parts", 1)
        _int(rank, "rank")
        if rank >= num_parts:
            raise ValueError(f"rank: {rank} is not in 0..{num_parts - 1}")
        if rpc_timeout is None or rpc_timeout <= 0:
            raise ValueError(f"rpc_timeout: {rpc_timeout!r}; must be > 0 seconds")
        if merge_timeout is not None and merge_timeout <= 0:
            raise ValueError(f"merge_timeout: {merge_timeout!r}; must be > 0 seconds or None")
        if join_secret is not None and join_secret_file is not None:
            raise ValueError("join_secret, join_secret_file: give at most one")
        if join_secret_file is not None:
            join_secret = _read_secret(join_secret_file)
        if join_secret is not None and not isinstance(join_secret, str):
            raise TypeError(f"join_secret: expected a str, got {type(join_secret).__name__}")
        if (tls_client_cert_file is None) != (tls_client_key_file is None):
            raise ValueError("tls_client_cert_file, tls_client_key_file: give both or neither")
        for name, path in (("tls_root_ca_file", tls_root_ca_file), ("tls_client_cert_file", tls_client_cert_file),
                           ("tls_client_key_file", tls_client_key_file)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: {path} is not a readable file")
        o = _capi.new_struct(_capi.ClientOptions)
        o.target = target.encode()
        o.rank = rank
        o.num_parts = num_parts
        o.device = str(device).encode()
        o.expected_config_hash = int(expected_config_hash)
        o.replace_existing = 1 if replace_existing else 0
        o.use_tls = 1 if (tls_root_ca_file or tls_client_cert_file) else 0
        o.tls_root_ca_file = _capi.encode(tls_root_ca_file)
        o.tls_client_cert_file = _capi.encode(tls_client_cert_file)
        o.tls_client_key_file = _capi.encode(tls_client_key_file)
        o.tls_server_name_override = _capi.encode(tls_server_name_override)
        o.rpc_timeout_ms = max(1, int(rpc_timeout * 1000))
        o.merge_timeout_ms = 0 if merge_timeout is None else max(1, int(merge_timeout * 1000))
        o.heartbeat = 1 if heartbeat else 0
        o.join_secret = _capi.encode(join_secret)
        handle = ctypes.c_void_p()
        code = _capi.lib().dcpmerge_client_connect(ctypes.byref(o), ctypes.byref(handle))
        if code == StatusCode.INVALID_ARGUMENT:
            raise ValueError(_capi.last_message())
        _capi.check(code)
        self._client = handle
        self.rank, self.num_parts, self.target = rank, num_parts, target

    # ------------------------------------------------------------ session

    def _handle(self) -> ctypes.c_void_p:
        if self._client is None:
            raise Error(StatusCode.FAILED_PRECONDITION, "the rank client is closed")
        return self._client

    def join(self) -> Session:
        """Joins the group (waits up to rpc_timeout for the server) and starts
        the heartbeat thread. Joining again replaces the session (and, on the
        NCCL plane, the communicator: the next CUDA merge connects again)."""
        _capi.check(_capi.lib().dcpmerge_client_join(self._handle()))
        self._device_connected = False
        self._session = self._read_session()
        return self._session

    def _read_session(self) -> Session:
        out = ctypes.c_void_p()
        _capi.check(_capi.lib().dcpmerge_client_session_json(self._handle(), ctypes.byref(out)))
        return Session.from_json(json.loads(_capi.take_string(out)))

    @property
    def session(self) -> Session:
        """The current session (FAILED_PRECONDITION Error when not joined)."""
        return self._read_session()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits until every rank of the group joined (DEADLINE_EXCEEDED Error
        naming the ranks that did join)."""
        _capi.check(_capi.lib().dcpmerge_client_wait_ready(self._handle(), int(timeout * 1000)))

    def heartbeat_error(self) -> Optional[Error]:
        """The latest heartbeat's failure (None while they succeed)."""
        v = _capi.u64()
        code = _capi.lib().dcpmerge_client_heartbeat_status(self._handle(), ctypes.byref(v))
        return None if code == 0 else Error(code, _capi.last_message())

    @property
    def last_config_version(self) -> int:
        """The config version the latest heartbeat reported."""
        v = _capi.u64()
        _capi.lib().dcpmerge_client_heartbeat_status(self._handle(), ctypes.byref(v))
        return int(v.value)

    def leave(self) -> None:
        """Leaves the group (the session ends; join() again to come back)."""
        self._close_device()
        _capi.check(_capi.lib().dcpmerge_client_leave(self._handle()))
        self._session = None

    def close(self) -> None:
        """Stops heartbeats, leaves the group when joined, closes the channel.
        Idempotent."""
        self._close_device()
        if self._client is not None:
            handle, self._client = self._client, None
            _capi.lib().dcpmerge_client_close(handle)

    def _close_device(self) -> None:
        if self._device is not None:
            handle, self._device = self._device, None
            self._device_connected = False
            _capi.lib().dcpmerge_device_close(handle)


    # -------------------------------------------------------------- merge

    def merge(self, step: int, layer: int, output: Any, lse: Any, *, out: Any = None, out_scales: Any = None,
              out_lse: Any = None, wait: bool = True, timeout: float = 60.0):
        """Merges this rank's partial output of ``step`` with the others'.

        Args:
          step: the step id (the same on every rank for one merge; at most
            one merge per step in flight per client).
          layer: the layer id (selects the per-tensor FP8 scale).
          output: this rank's partial output ``[T,H,D]`` in the group's
            input dtype, contiguous: a numpy array (bf16 as uint16 bits) or
            CPU tensor (gRPC plane), or a CUDA tensor (NCCL plane).
          lse: fp32, contiguous, ``[H,T]`` or ``[T,H]`` as the group's
            lse_layout.
          out, out_scales, out_lse: NCCL plane only: preallocated CUDA
            outputs (sizes as the step returns them).
          wait, timeout: NCCL plane only: wait for the step (host sync, up to
            ``timeout`` seconds) and check the server's status; with
            ``wait=False`` a :class:`DeviceMerge` is returned instead.

        Returns:
          MergeResult (or DeviceMerge with wait=False on the NCCL plane).
        """
        _int(step, "step")
        _int(layer, "layer")
        session = self._session
        if session is None or self._client is None:
            raise Error(StatusCode.FAILED_PRECONDITION, "not joined: call join() first")
        if is_torch_tensor(output) and output.device.type == "cuda":
            return self._merge_device(session, step, layer, output, lse, out, out_scales, out_lse, wait, timeout)
        for name, v in (("out", out), ("out_scales", out_scales), ("out_lse", out_lse)):
            if v is not None:
                raise ValueError(f"{name}: preallocated outputs are for CUDA tensors (NCCL plane)")
        if session.data_plane == "nccl":
            raise ValueError("output: a host array, but the group runs the NCCL data plane: pass CUDA tensors")
        return self._merge_host(session, step, layer, output, lse)

    def _check_shapes(self, cfg: GroupConfig, shape, dtype: str, lse_shape, name: str = "output") -> int:
        if dtype != cfg.input_dtype:
            raise TypeError(f"{name}: dtype {dtype}, the group's input_dtype is {cfg.input_dtype}")
        if len(shape) != 3 or shape[1] != cfg.num_heads or shape[2] != cfg.head_size:
            raise ValueError(f"{name}: shape {list(shape)}, expected [T, {cfg.num_heads}, {cfg.head_size}] "
                             "(the group's num_heads, head_size)")
        T = shape[0]
        if T > cfg.max_tokens:
            raise ValueError(f"{name}: T={T} tokens, the group's max_tokens is {cfg.max_tokens}")
        want = (cfg.num_heads, T) if cfg.lse_layout == "heads_tokens" else (T, cfg.num_heads)
        if tuple(lse_shape) != want:
            raise ValueError(f"lse: shape {list(lse_shape)}, expected {list(want)} ({cfg.lse_layout})")
        return T

    def _merge_host(self, session: Session, step: int, layer: int, output: Any, lse: Any) -> MergeResult:
        cfg = session.config
        ob = host_buffer(output, "output")
        lb = host_buffer(lse, "lse", lse=True)
        T = self._check_shapes(cfg, ob.shape, ob.dtype, lb.shape)
        lib = _capi.lib()
        res = ctypes.c_void_p()
        _capi.check(lib.dcpmerge_client_merge(self._handle(), step, layer, T, ob.ptr, ob.nbytes, lb.ptr,
                                              lb.nbytes // 4, ctypes.byref(res)))
        try:
            v = _capi.new_struct(_capi.ResultView)
            _capi.check(lib.dcpmerge_result_view_of(res, ctypes.byref(v)))
            hc, D = int(v.head_count), cfg.head_size
            elems = int(v.num_tokens) * hc * D
            if elems == 0:
                mode = cfg.output_mode
                kind = "fp8" if mode != "passthrough" else cfg.input_dtype
            elif v.output_bytes == elems:  # one byte per value: FP8 codes
                kind, mode = "fp8", (cfg.output_mode if cfg.output_mode != "passthrough" else "fp8_per_tensor")
            else:
                kind, mode = cfg.input_dtype, "passthrough"
            out = empty_like_kind(ob.torch_like, (int(v.num_tokens), hc, D), kind)
            if v.output_bytes:
                ctypes.memmove(_ptr(out), v.output, int(v.output_bytes))
            np = numpy()
            scales = np.empty((int(v.scale_count),), dtype=np.float32)
            if v.scale_count:
                ctypes.memmove(scales.ctypes.data, v.scales, int(v.scale_count) * 4)
            if mode == "fp8_per_group" and v.scale_count:
                scales = scales.reshape(int(v.num_tokens), hc, D // cfg.group_size)
            lse_out = None
            if v.lse_bytes:
                lshape = (hc, int(v.num_tokens)) if cfg.lse_layout == "heads_tokens" else (int(v.num_tokens), hc)
                lse_out = np.empty(lshape, dtype=np.float32)
                ctypes.memmove(lse_out.ctypes.data, v.lse, int(v.lse_bytes))
            if ob.torch_like:
                torch = __import__("torch")
                scales = torch.from_numpy(scales)
                lse_out = torch.from_numpy(lse_out) if lse_out is not None else None
            return MergeResult(step=int(v.step), layer=int(v.layer), num_tokens=int(v.num_tokens),
                               config_version=int(v.config_version), head_begin=int(v.head_begin),
                               head_count=hc, output=out, scales=scales, lse=lse_out, output_mode=mode,
                               group_size=cfg.group_size, input_dtype=cfg.input_dtype)
        finally:
            lib.dcpmerge_result_free(res)

    # ---------------------------------------------------- NCCL data plane

    def connect_device(self, cuda_device: Optional[int] = None, init_timeout: float = 60.0) -> None:
        """Forms this rank's party of the group's NCCL communicator (blocks
        until all N ranks and the server joined it). merge() with CUDA
        tensors calls it on first use; call it yourself to choose when."""
        session = self._session
        if session is None:
            raise Error(StatusCode.FAILED_PRECONDITION, "not joined: call join() first")
        if session.data_plane != "nccl":
            raise Error(StatusCode.FAILED_PRECONDITION,
                        "the group runs the gRPC data plane; connect_device is for --data_plane=nccl")
        if cuda_device is None:
            torch = __import__("torch")
            cuda_device = torch.cuda.current_device()
        lib = _capi.lib()
        if self._device is not None and self._device_index != cuda_device:
            self._close_device()
        if self._device is None:
            handle = ctypes.c_void_p()
            _capi.check(lib.dcpmerge_device_create(self._handle(), int(cuda_device), int(init_timeout * 1000),
                                                   ctypes.byref(handle)))
            self._device, self._device_index = handle, int(cuda_device)
        _capi.check(lib.dcpmerge_device_connect(self._device))
        self._device_connected = True

    def _merge_device(self, session: Session, step: int, layer: int, output: Any, lse: Any, out: Any,
                      out_scales: Any, out_lse: Any, wait: bool, timeout: float):
        torch = __import__("torch")
        if session.data_plane != "nccl":
            raise ValueError("output: a CUDA tensor, but the group runs the gRPC data plane: pass host arrays "
                             "(output.cpu())")
        cfg = session.config
        dtype = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(output.dtype))
        if dtype is None:
            raise TypeError(f"output: dtype {output.dtype}, the group's input_dtype is {cfg.input_dtype}")
        if not output.is_contiguous():
            raise ValueError("output: must be contiguous")
        if not is_torch_tensor(lse):
            raise TypeError(f"lse: expected a CUDA tensor, got {type(lse).__name__}")
        if lse.device != output.device:
            raise ValueError(f"lse: on {lse.device}, output is on {output.device}")
        if str(lse.dtype) != "torch.float32":
            raise TypeError(f"lse: dtype {lse.dtype}, expected torch.float32")
        if not lse.is_contiguous():
            raise ValueError("lse: must be contiguous")
        T = self._check_shapes(cfg, tuple(output.shape), dtype, tuple(lse.shape))
        dev = output.device
        if not self._device_connected or self._device_index != dev.index:
            self.connect_device(dev.index)
        lib = _capi.lib()
        sizes = (_capi.u64 * 5)()
        _capi.check(lib.dcpmerge_device_sizes(self._device, T, sizes))
        D = cfg.head_size
        fp8 = cfg.output_mode != "passthrough"
        elem = 1 if fp8 else DTYPE_SIZE[dtype]
        hc = int(sizes[2]) // (T * D * elem) if T else 0
        out_dtype = torch.float8_e4m3fn if fp8 else output.dtype
        if out is None:
            out = torch.empty((T, hc, D), dtype=out_dtype, device=dev)
        elif out.dtype != out_dtype or out.device != dev or not out.is_contiguous() or \
                out.numel() * out.element_size() != int(sizes[2]):
            raise ValueError(f"out: expected a contiguous {out_dtype} tensor of {int(sizes[2])} bytes on {dev}")
        nscales = int(sizes[3]) // 4
        if nscales:
            if out_scales is None:
                shape = (nscales,) if cfg.output_mode != "fp8_per_group" else (T, hc, D // cfg.group_size)
                out_scales = torch.empty(shape, dtype=torch.float32, device=dev)
            elif str(out_scales.dtype) != "torch.float32" or out_scales.numel() != nscales or \
                    not out_scales.is_contiguous() or out_scales.device != dev:
                raise ValueError(f"out_scales: expected a contiguous float32 tensor of {nscales} on {dev}")
        nlse = int(sizes[4]) // 4
        if nlse:
            if out_lse is None:
                shape = (hc, T) if cfg.lse_layout == "heads_tokens" else (T, hc)
                out_lse = torch.empty(shape, dtype=torch.float32, device=dev)
            elif str(out_lse.dtype) != "torch.float32" or out_lse.numel() != nlse or \
                    not out_lse.is_contiguous() or out_lse.device != dev:
                raise ValueError(f"out_lse: expected a contiguous float32 tensor of {nlse} on {dev}")
        stream = torch.cuda.current_stream(dev).cuda_stream
        ticket = ctypes.c_void_p()
        _capi.check(lib.dcpmerge_device_merge(
            self._device, step, layer, T, 0, output.data_ptr(), lse.data_ptr(), out.data_ptr(),
            out_scales.data_ptr() if nscales else None, out_lse.data_ptr() if nlse else None, stream,
            ctypes.byref(ticket)))
        result = MergeResult(step=step, layer=layer, num_tokens=T, config_version=0, head_begin=0, head_count=hc,
                             output=out, scales=out_scales if nscales else None,
                             lse=out_lse if nlse else None,
                             output_mode=cfg.output_mode, group_size=cfg.group_size, input_dtype=cfg.input_dtype)
        pending = DeviceMerge(self, ticket, result)
        return pending.wait(timeout) if wait else pending


def _ptr(a: Any) -> int:
    return int(a.data_ptr()) if is_torch_tensor(a) else int(a.ctypes.data)
