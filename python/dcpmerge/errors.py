"""Exceptions of the dcpmerge package.

- :class:`Error`: a call to the service or the library failed; carries the
  gRPC status code (:class:`StatusCode`) and the message, as the server or
  the C++ client said them.
- :class:`GpuUnavailableError`: the in-process merge cannot run here (no
  PyTorch, no CUDA device, a library built without CUDA); the message says
  which.
- Bad arguments raise the built-in :class:`ValueError` (wrong value, shape,
  stride, device) or :class:`TypeError` (wrong type or dtype), naming the
  argument, before anything is sent or launched.
"""

from __future__ import annotations

import enum

__all__ = ["StatusCode", "Error", "GpuUnavailableError"]


class StatusCode(enum.IntEnum):
    """gRPC / google.rpc status codes (the same numbers absl uses)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class Error(Exception):
    """A failed call: ``code`` (:class:`StatusCode`) and ``message``.

    ``str(e)`` is ``"CODE: message"``. Codes that reach Python: from the
    server (``INVALID_ARGUMENT`` naming the field of a bad step,
    ``UNAVAILABLE`` when a peer or the server is gone, ``PERMISSION_DENIED``
    for a wrong admin token, ...) and from the client library
    (``DEADLINE_EXCEEDED`` when a merge got no answer in time,
    ``FAILED_PRECONDITION`` when not joined, ...).
    """

    def __init__(self, code: int, message: str) -> None:
        try:
            self.code = StatusCode(code)
        except ValueError:
            self.code = StatusCode.UNKNOWN
        self.message = message
        super().__init__(f"{self.code.name}: {message}")


class GpuUnavailableError(RuntimeError):
    """The in-process GPU merge cannot run here; the message says why."""
