"""The merge server's Admin service from Python: :class:`Admin`.

The same calls as ``dcpmergectl`` (proto/dcpmerge/v1/admin.proto):
:meth:`Admin.get_config`, :meth:`Admin.set_scales`, :meth:`Admin.stats`,
:meth:`Admin.drain`, and :meth:`Admin.configure`. Every call carries the
bearer token and a deadline; failures raise :class:`dcpmerge.Error` with the
gRPC code (UNAUTHENTICATED without a token, PERMISSION_DENIED with a wrong
one, UNAVAILABLE when the server cannot be reached, INVALID_ARGUMENT for a
configuration the server refuses).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import _capi
from ._closeable import Closeable
from .config import DATA_PLANES, GroupConfig, short_name
from .errors import StatusCode

__all__ = ["Admin", "ServerConfig", "Member", "Stats", "LatencySummary", "DrainResult"]


@dataclasses.dataclass
class Member:
    rank: int
    host: str
    device: str
    pid: int
    session_id: int
    last_heartbeat_age_ms: int


@dataclasses.dataclass
class ServerConfig:
    """GetConfig's answer."""

    configured: bool
    config: GroupConfig
    config_version: int
    config_hash: int
    layer_scales: Dict[int, float]  # layer -> scale, in layer order
    default_scale: float
    members: List[Member]
    group_ready: bool
    backend: str  # "cpu" | "cuda"
    data_plane: str  # "grpc" | "nccl"
    draining: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ServerConfig":
        return cls(
            configured=bool(d.get("configured", False)),
            config=GroupConfig.from_json(d.get("config") or {}),
            config_version=int(d.get("config_version", 0)),
            config_hash=int(d.get("config_hash", 0)),
            layer_scales=dict(sorted((int(k), float(v)) for k, v in (d.get("layer_scales") or {}).items())),
            default_scale=float(d.get("default_scale", 0.0)),
            members=[Member(rank=int(m.get("rank", 0)), host=m.get("host", ""), device=m.get("device", ""),
                            pid=int(m.get("pid", 0)), session_id=int(m.get("session_id", 0)),
                            last_heartbeat_age_ms=int(m.get("last_heartbeat_age_ms", 0)))
                     for m in d.get("members") or []],
            group_ready=bool(d.get("group_ready", False)),
            backend=d.get("backend", ""),
            data_plane=short_name(DATA_PLANES, d.get("data_plane", "")),
            draining=bool(d.get("draining", False)),
        )


@dataclasses.dataclass
class LatencySummary:
    """One phase's latency over a recent window, microseconds."""

    count: int = 0
    p50_us: float = 0.0
    p90_us: float = 0.0
    p99_us: float = 0.0
    max_us: float = 0.0

    @classmethod
    def from_json(cls, d: Optional[Mapping[str, Any]]) -> "LatencySummary":
        d = d or {}
        return cls(count=int(d.get("count", 0)), p50_us=float(d.get("p50_us", 0)), p90_us=float(d.get("p90_us", 0)),
                   p99_us=float(d.get("p99_us", 0)), max_us=float(d.get("max_us", 0)))


@dataclasses.dataclass
class Stats:
    """GetStats' answer."""

    steps_ok: int
    steps_failed: int
    bytes_in: int
    bytes_out: int
    receive: LatencySummary
    merge: LatencySummary
    send: LatencySummary
    total: LatencySummary
    errors_by_code: Dict[str, int]
    fp8_saturated: int
    steps_in_flight: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Stats":
        return cls(
            steps_ok=int(d.get("steps_ok", 0)), steps_failed=int(d.get("steps_failed", 0)),
            bytes_in=int(d.get("bytes_in", 0)), bytes_out=int(d.get("bytes_out", 0)),
            receive=LatencySummary.from_json(d.get("receive")), merge=LatencySummary.from_json(d.get("merge")),
            send=LatencySummary.from_json(d.get("send")), total=LatencySummary.from_json(d.get("total")),
            errors_by_code={k: int(v) for k, v in (d.get("errors_by_code") or {}).items()},
            fp8_saturated=int(d.get("fp8_saturated", 0)), steps_in_flight=int(d.get("steps_in_flight", 0)))


@dataclasses.dataclass
class DrainResult:
    drained: bool  # no step was in flight when the call returned
    steps_in_flight: int


def _scale(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: {value!r}; an FP8 scale must be finite and > 0")
    return v


class Admin(Closeable):
    """A connection to a merge server's admin listener.

    ::

        with dcpmerge.Admin("127.0.0.1:50052", token_file="/run/secrets/admin") as admin:
            print(admin.get_config().config_version)
            admin.set_scales({0: 0.05, 1: 0.04})

    Args:
      address: the admin listener, ``"host:port"`` (``--admin_address``).
      token: the bearer token; token_file: a file holding it (re-read before
        every call, so a rotated token is picked up). Neither:
        ``$DCPMERGE_ADMIN_TOKEN`` (as dcpmergectl).
      tls_ca_file, tls_cert_file, tls_key_file, tls_server_name: TLS to the
        admin listener (CA to verify it; cert + key for mTLS).
      deadline: seconds per call.
    """

    def __init__(self, address: str, *, token: Optional[str] = None, token_file: Optional[str] = None,
                 tls_ca_file: Optional[str] = None, tls_cert_file: Optional[str] = None,
                 tls_key_file: Optional[str] = None, tls_server_name: Optional[str] = None,
                 deadline: float = 10.0) -> None:
        self._handle = None
        if not isinstance(address, str) or not address:
            raise ValueError(f"address: {address!r}; expected 'host:port'")
        if token is not None and token_file is not None:
            raise ValueError("token, token_file: give at most one")
        if token_file is not None and not os.path.isfile(token_file):
            raise ValueError(f"token_file: {token_file} is not a readable file")
        if token is None and token_file is None:
            token = os.environ.get("DCPMERGE_ADMIN_TOKEN")
        if token is not None:
            token = str(token).strip()
        if deadline is None or deadline <= 0:
            raise ValueError(f"deadline: {deadline!r}; must be > 0 seconds")
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("tls_cert_file, tls_key_file: give both or neither")
        for name, path in (("tls_ca_file", tls_ca_file), ("tls_cert_file", tls_cert_file),
                           ("tls_key_file", tls_key_file)):
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: {path} is not a readable file")
        o = _capi.new_struct(_capi.AdminOptions)
        o.target = address.encode()
        o.token = _capi.encode(token)
        o.token_file = _capi.encode(token_file)
        o.tls_ca_file = _capi.encode(tls_ca_file)
        o.tls_cert_file = _capi.encode(tls_cert_file)
        o.tls_key_file = _capi.encode(tls_key_file)
        o.tls_server_name = _capi.encode(tls_server_name)
        o.deadline_ms = max(1, int(deadline * 1000))
        handle = ctypes.c_void_p()
        code = _capi.lib().dcpmerge_admin_open(ctypes.byref(o), ctypes.byref(handle))
        if code == StatusCode.INVALID_ARGUMENT:
            raise ValueError(_capi.last_message())
        _capi.check(code)
        self._handle = handle
        self.address = address

    def _h(self) -> ctypes.c_void_p:
        if self._handle is None:
            from .errors import Error  # noqa: PLC0415

            raise Error(StatusCode.FAILED_PRECONDITION, "the admin client is closed")
        return self._handle

    def _json(self, fn) -> Dict[str, Any]:
        out = ctypes.c_void_p()
        _capi.check(fn(self._h(), ctypes.byref(out)))
        return json.loads(_capi.take_string(out))

    def get_config(self) -> ServerConfig:
        """The configuration, scale table, members and state (GetConfig)."""
        return ServerConfig.from_json(self._json(_capi.lib().dcpmerge_admin_get_config_json))

    def stats(self) -> Stats:
        """Step counters and latency summaries (GetStats)."""
        return Stats.from_json(self._json(_capi.lib().dcpmerge_admin_get_stats_json))

    def set_scales(self, scales: Optional[Mapping[int, float]] = None, *, replace: bool = False,
                   default_scale: Optional[float] = None) -> int:
        """Updates static FP8 scales per layer (SetScales); returns the new
        config version. They apply from the next step on.

        Args:
          scales: layer -> scale (finite, > 0); ``value = decode(code) * scale``.
          replace: drop the layers not listed (they fall back to the default).
          default_scale: a new default scale; None keeps the current one.
        """
        scales = dict(scales or {})
        layers, values = [], []
        for layer, s in scales.items():
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"scales: layer {layer!r} is not an int")
            if layer < 0:
                raise ValueError(f"scales: layer {layer} < 0")
            layers.append(layer)
            values.append(_scale(s, f"scales[{layer}]"))
        d = 0.0 if default_scale is None else _scale(default_scale, "default_scale")
        if not layers and not replace and default_scale is None:
            raise ValueError("scales: nothing to set (no layers, replace=False, no default_scale)")
        n = len(layers)
        version = _capi.u64()
        _capi.check(_capi.lib().dcpmerge_admin_set_scales(
            self._h(), (_capi.i32 * n)(*layers), (_capi.f32 * n)(*values), n, 1 if replace else 0, d,
            ctypes.byref(version)))
        return int(version.value)

    def configure(self, config: Optional[GroupConfig] = None, *, default_scale: Optional[float] = None,
                  **fields: Any) -> Tuple[int, int]:
        """Replaces the group configuration (Configure); returns (config
        version, config hash). ``config`` defaults to the server's current
        one; keyword fields (``output_mode="fp8_per_token"``, ...) change it.
        A change of world size or shape drops every member (they rejoin)."""
        if config is None:
            current = self.get_config()
            config = current.config if current.configured else GroupConfig()
        names = {f.name for f in dataclasses.fields(GroupConfig)}
        for k in fields:
            if k not in names:
                raise TypeError(f"configure: unknown field {k!r}; fields: {', '.join(sorted(names))}")
        config = dataclasses.replace(config, **fields)
        payload = json.dumps(config.to_json())
        d = 0.0 if default_scale is None else _scale(default_scale, "default_scale")
        version, chash = _capi.u64(), _capi.u64()
        _capi.check(_capi.lib().dcpmerge_admin_configure_json(self._h(), payload.encode(), d,
                                                              ctypes.byref(version), ctypes.byref(chash)))
        return int(version.value), int(chash.value)

    def drain(self, timeout: Optional[float] = None) -> DrainResult:
        """Stops accepting steps and waits (up to ``timeout`` seconds; None:
        the server's --drain_timeout_ms) for those in flight. New steps fail
        with UNAVAILABLE until the next configure()."""
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout: {timeout!r}; must be >= 0 seconds or None")
        drained, in_flight = _capi.i32(), _capi.u64()
        _capi.check(_capi.lib().dcpmerge_admin_drain(self._h(), 0 if timeout is None else max(1, int(timeout * 1000)),
                                                     ctypes.byref(drained), ctypes.byref(in_flight)))
        return DrainResult(drained=bool(drained.value), steps_in_flight=int(in_flight.value))

    def close(self) -> None:
        """Closes the channel. Idempotent."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            _capi.lib().dcpmerge_admin_close(handle)

