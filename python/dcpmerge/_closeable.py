"""The resource protocol shared by RankClient and Admin."""

from __future__ import annotations

from typing import Any, TypeVar

_T = TypeVar("_T", bound="Closeable")


class Closeable:
    """Calls ``close()`` (defined by the subclass, idempotent) on leaving a
    ``with`` block and when garbage-collected."""

    def close(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone
            pass
