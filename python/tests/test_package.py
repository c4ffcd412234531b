"""The package itself: imports without PyTorch or a GPU, says why the GPU
merge is unavailable, loads the library it ships with, and reports the
version of base/version.h."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dcpmerge

ROOT = Path(__file__).resolve().parents[2]


def test_version_is_base_version_h():
    text = (ROOT / "base" / "version.h").read_text()
    want = re.search(r'kVersion\[\]\s*=\s*"([^"]+)"', text).group(1)
    assert dcpmerge.__version__ == want
    info = dcpmerge.library_info()
    assert info["version"] == want
    assert info["abi_version"] == 1


def test_imports_without_torch_and_gpu_in_a_fresh_interpreter():
    # A fresh interpreter where `import torch` fails whatever is installed.
    code = ("import sys; sys.modules['torch'] = None\n"
            "import dcpmerge\n"
            "r = dcpmerge.gpu_unavailable_reason()\n"
            "assert r is not None and 'PyTorch' in r, r\n"
            "try:\n"
            "    dcpmerge.merge_states([], [])\n"
            "except dcpmerge.GpuUnavailableError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
    assert "dcpmerge.merge_states is unavailable here" in out.stdout
    assert "PyTorch is not installed" in out.stdout


@pytest.mark.skipif(dcpmerge.gpu_available(), reason="a GPU is usable here")
def test_gpu_ops_say_why_they_are_unavailable():
    reason = dcpmerge.gpu_unavailable_reason()
    assert reason
    for call in (lambda: dcpmerge.merge_states([object()], [object()], scale=1.0),
                 lambda: dcpmerge.merge_attn_states(None, None, None, None, None)):
        with pytest.raises(dcpmerge.GpuUnavailableError) as e:
            call()
        assert reason in str(e.value)
    # This machine has no NVIDIA driver: the reason names it, not only the
    # CUDA runtime's "driver version is insufficient".
    if dcpmerge.library_info()["built_with_cuda"] and not Path("/dev/nvidiactl").exists():
        assert "no usable CUDA device" in reason


def test_errors_carry_code_and_message():
    e = dcpmerge.Error(14, "server gone")
    assert e.code is dcpmerge.StatusCode.UNAVAILABLE
    assert e.message == "server gone"
    assert str(e) == "UNAVAILABLE: server gone"
    assert dcpmerge.Error(99, "x").code is dcpmerge.StatusCode.UNKNOWN


@pytest.mark.skipif(os.environ.get("DCPMERGE_EXPECT_INSTALLED") != "1", reason="testing the source tree")
def test_installed_wheel_loads_its_own_libraries():
    """The wheel's gRPC / protobuf / abseil, not the system's: what makes it
    run on a host without them. In a fresh interpreter: a process that
    imported Debian's torch first (test_ops_torch.py) already holds the
    system's libprotobuf.so.32, and the loader reuses a loaded SONAME."""
    code = """
import os, sys
from pathlib import Path
import dcpmerge._capi as capi

lib_dir = Path(capi.lib()._name).resolve().parent
assert lib_dir.name == "lib" and lib_dir.parent.name == "dcpmerge"
assert sys.argv[1] not in str(lib_dir), "loaded from the checkout, not from the installed wheel"
maps = Path("/proc/self/maps").read_text().splitlines()
loaded = {line.split()[-1] for line in maps if ".so" in line}
for prefix in ("libgrpc++.so", "libgrpc.so", "libprotobuf.so", "libabsl_base.so", "libcares.so",
               "libre2.so", "libupb.so"):
    paths = [p for p in loaded if os.path.basename(p).startswith(prefix)]
    assert paths, f"{prefix} not loaded"
    assert all(Path(p).resolve().parent == lib_dir for p in paths), paths
# Nothing of CUDA's shared runtime or NCCL: the runtime is static, NCCL loads on use.
assert not [p for p in loaded if "libcudart.so" in p or "libnccl" in p]
"""
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0, out.stderr
