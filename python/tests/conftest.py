"""Fixtures of the Python tests: a real dcpmerge_server process on loopback.

The server binary: $DCPMERGE_SERVER_BIN, else the checkout's
bazel-bin/server/dcpmerge_server (tools/test.sh builds it). The package
under test is whatever `import dcpmerge` finds: tools/test.sh installs the
wheel into a temporary directory and puts it first on PYTHONPATH (set
DCPMERGE_EXPECT_INSTALLED=1 then, so the tests check the wheel's own
libraries are the ones loaded).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_BIN = Path(os.environ.get("DCPMERGE_SERVER_BIN", ROOT / "bazel-bin" / "server" / "dcpmerge_server"))
TOKEN = "py-test-token"


class Server:
    """One dcpmerge_server process (CPU backend, loopback, ports picked)."""

    def __init__(self, world_size: int = 2, num_heads: int = 4, head_size: int = 128, max_tokens: int = 16,
                 extra: Optional[List[str]] = None, token_file: Optional[str] = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="dcpmerge-py-")
        ready = os.path.join(self.dir, "ready")
        args = [str(SERVER_BIN), "--rank_address=127.0.0.1:0", "--admin_address=127.0.0.1:0",
                f"--world_size={world_size}", f"--num_heads={num_heads}", f"--head_size={head_size}",
                f"--max_tokens={max_tokens}", "--backend=cpu", "--cpu_threads=2", "--quiet",
                "--step_timeout_ms=3000", "--heartbeat_timeout_ms=3000", f"--ready_file={ready}"]
        args += extra or []
        env = dict(os.environ)
        if token_file:
            args.append(f"--admin_token_file={token_file}")
            env.pop("DCPMERGE_ADMIN_TOKEN", None)
        else:
            env["DCPMERGE_ADMIN_TOKEN"] = TOKEN
        self.log = open(os.path.join(self.dir, "server.log"), "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dcpmerge_server exited with {self.proc.returncode}: {self.log_text()}")
            try:
                with open(ready) as f:
                    ports = f.read().split()
                if len(ports) >= 2:
                    self.rank_port, self.admin_port = int(ports[0]), int(ports[1])
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        else:
            self.kill()
            raise RuntimeError("dcpmerge_server did not become ready in 30 s")
        self.target = f"127.0.0.1:{self.rank_port}"
        self.admin_target = f"127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def start_server():
    """start_server(**kwargs) -> Server; every server is stopped afterwards."""
    if not SERVER_BIN.exists():
        pytest.fail(f"no server binary at {SERVER_BIN}: bazel build //server:dcpmerge_server "
                    "(or set DCPMERGE_SERVER_BIN)")
    servers: List[Server] = []

    def start(**kwargs) -> Server:
        s = Server(**kwargs)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def run_ranks(n: int, fn: Callable[[int], object], timeout: float = 60.0) -> list:
    """Runs fn(rank) for ranks 0..n-1 in threads; returns the results (an
    exception is re-raised)."""
    results: list = [None] * n
    errors: list = [None] * n

    def body(r: int) -> None:
        try:
            results[r] = fn(r)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors[r] = e

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a rank thread did not finish"
    for e in errors:
        if e is not None:
            raise e
    return results
