"""The rank-client and admin examples of docs/python.md, run as the page
shows them (saved as files, run with python3) against a server started
with the page's flags (on ports picked here instead of 50051/50052)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

DOC = ROOT / "docs" / "python.md"


def example(name: str) -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- docs-test: " + re.escape(name) + r" -->\n```python\n(.*?)```", text, re.S)
    assert m, f"no example '{name}' in {DOC}"
    return m.group(1)


def server_flags() -> list:
    text = DOC.read_text()
    m = re.search(r"bazel-bin/server/dcpmerge_server (.*?)\n\n", text, re.S)
    assert m, "no server command in docs/python.md"
    flags = shlex.split(m.group(1).replace("\\\n", " "))
    return [f for f in flags if not f.startswith("--admin_token_file")]


def test_rank_client_and_admin_examples(start_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("my-admin-token\n")
    flags = server_flags()
    world = int(next(f for f in flags if f.startswith("--world_size=")).split("=")[1])
    heads = int(next(f for f in flags if f.startswith("--num_heads=")).split("=")[1])
    size = int(next(f for f in flags if f.startswith("--head_size=")).split("=")[1])
    tokens = int(next(f for f in flags if f.startswith("--max_tokens=")).split("=")[1])
    extra = [f for f in flags if not re.match(r"--(world_size|num_heads|head_size|max_tokens|backend)=", f)]
    server = start_server(world_size=world, num_heads=heads, head_size=size, max_tokens=tokens, extra=extra,
                          token_file=str(token_file))
    import dcpmerge  # the package under test: the examples import the same one

    site = str(Path(dcpmerge.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=site, DCPMERGE_RANK_ADDRESS=server.target, DCPMERGE_ADMIN_ADDRESS=server.admin_target,
               DCPMERGE_ADMIN_TOKEN_FILE=str(token_file))
    for name in ("rank_client", "admin"):
        script = tmp_path / f"{name}_example.py"
        script.write_text(example(name))
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60,
                             cwd=tmp_path)
        assert out.returncode == 0, f"{name}: {out.stdout}\n{out.stderr}"
        if name == "rank_client":
            for r in range(2):
                for step in range(3):
                    assert f"rank {r} step {step}: FP8 codes (16, 8, 128), scale 0.050, config v1" in out.stdout
                assert f"rank {r}: refused: output: shape [16, 4, 128]" in out.stdout
                assert f"rank {r}: left (grpc data plane, cpu backend)" in out.stdout
        else:
            assert "config v1: 2 ranks, bf16 -> fp8_per_tensor, backend cpu, members []" in out.stdout
            assert "scales set in v2: {0: 0.04, 1: 0.06}" in out.stdout
            assert "steps ok 3, failed 0" in out.stdout
            assert "refused: scales[0]: 0.0" in out.stdout
            assert "wrong token: PERMISSION_DENIED" in out.stdout
