#!/usr/bin/env python3
"""Writes the dcpmerge wheel from a built libdcpmerge_c.so and python/dcpmerge.

Standard library only (a wheel is a zip with METADATA, WHEEL and RECORD), so
it runs with Debian's python3 and nothing from PyPI. tools/build_wheel.sh
builds the library with Bazel and calls this; see it for the one command.

  build_wheel.py --lib bazel-bin/capi/libdcpmerge_c.so --out dist [--no-strip]

What goes in:
  dcpmerge/*.py, py.typed        the package (python/dcpmerge)
  dcpmerge/_version.py           version (base/version.h) and build commit
  dcpmerge/lib/libdcpmerge_c.so  the C ABI library (RPATH $ORIGIN)
  dcpmerge/lib/lib*.so*          every shared library it needs that `ldd`
                                 resolves here, except glibc's own (libc,
                                 libm, libdl, librt, libpthread, ld-linux),
                                 libstdc++ and libgcc_s (every Linux has a
                                 compatible one; a second copy could clash
                                 with PyTorch's), and the CUDA driver / NCCL
                                 (the GPU host provides them)
  dcpmerge/lib/licenses/*        the Debian copyright files of those libraries
  dcpmerge-<v>.dist-info/        METADATA, WHEEL, RECORD, top_level.txt, LICENSE
Tag: py3-none-linux_x86_64 (ctypes: no Python ABI; built on glibc 2.36).
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|librt\.so|libpthread\.so|libstdc\+\+\.so|"
                  r"libgcc_s\.so|libcuda\.so|libnvidia-|libnccl\.so)")
TAG = "py3-none-linux_x86_64"


def version_from_header() -> str:
    text = (ROOT / "base" / "version.h").read_text()
    m = re.search(r'kVersion\[\]\s*=\s*"([^"]+)"', text)
    if not m:
        sys.exit("build_wheel: no kVersion in base/version.h")
    return m.group(1)


def ldd(lib: Path) -> list[tuple[str, Path]]:
    out = subprocess.run(["ldd", str(lib)], check=True, capture_output=True, text=True).stdout
    deps = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>":
            if parts[2] == "not":
                sys.exit(f"build_wheel: {lib.name} needs {parts[0]}, which is not found here")
            deps.append((parts[0], Path(parts[2])))
    return deps


def required_versions(paths: list[Path]) -> dict[str, str]:
    """Highest GLIBC_ / GLIBCXX_ / CXXABI_ symbol versions the files import."""
    best: dict[str, tuple[int, ...]] = {}
    for p in paths:
        out = subprocess.run(["objdump", "-T", str(p)], check=True, capture_output=True, text=True).stdout
        for line in out.splitlines():
            if "*UND*" not in line:
                continue
            for prefix, ver in re.findall(r"\b(GLIBC|GLIBCXX|CXXABI)_([0-9.]+)\b", line):
                v = tuple(int(x) for x in ver.split("."))
                if v > best.get(prefix, ()):
                    best[prefix] = v
    return {k: ".".join(map(str, v)) for k, v in sorted(best.items())}


def debian_copyright(path: Path) -> tuple[str, Path] | None:
    try:
        out = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True)
        if out.returncode != 0:
            real = path.resolve()
            out = subprocess.run(["dpkg", "-S", str(real)], capture_output=True, text=True)
        pkg = out.stdout.split(":", 1)[0].strip()
    except FileNotFoundError:
        return None
    f = Path("/usr/share/doc") / pkg / "copyright"
    return (pkg, f) if pkg and f.exists() else None


def record_line(arc: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arc},sha256={digest},{len(data)}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, type=Path, help="the built libdcpmerge_c.so")
    ap.add_argument("--out", default=ROOT / "dist", type=Path, help="output directory (default dist/)")
    ap.add_argument("--no-strip", action="store_true", help="keep the library's symbol tables")
    args = ap.parse_args()

    version = version_from_header()
    lib = ctypes.CDLL(str(args.lib.resolve()))
    lib.dcpmerge_version.restype = ctypes.c_char_p
    lib.dcpmerge_build_commit.restype = ctypes.c_char_p
    lib_version = lib.dcpmerge_version().decode()
    commit = lib.dcpmerge_build_commit().decode()
    cuda = bool(lib.dcpmerge_built_with_cuda())
    if lib_version != version:
        sys.exit(f"build_wheel: {args.lib} reports version {lib_version}, base/version.h says {version}: rebuild")

    files: dict[str, bytes] = {}  # archive name -> content
    modes: dict[str, int] = {}
    pkg = ROOT / "python" / "dcpmerge"
    for f in sorted(pkg.iterdir()):
        if f.suffix == ".py" and f.name != "_version.py" or f.name == "py.typed":
            files[f"dcpmerge/{f.name}"] = f.read_bytes()
    files["dcpmerge/_version.py"] = (
        '"""Written by python/build_wheel.py."""\n'
        f'__version__ = "{version}"\nbuild_commit = "{commit}"\nbuilt_with_cuda = {cuda}\n').encode()

    with tempfile.TemporaryDirectory() as tmp:
        main_lib = Path(tmp) / "libdcpmerge_c.so"
        shutil.copyfile(args.lib, main_lib)
        os.chmod(main_lib, 0o755)
        if not args.no_strip:
            subprocess.run(["strip", "--strip-unneeded", str(main_lib)], check=True)
        files["dcpmerge/lib/libdcpmerge_c.so"] = main_lib.read_bytes()
        modes["dcpmerge/lib/libdcpmerge_c.so"] = 0o755
    carried = []
    licenses: dict[str, Path] = {}
    for name, path in ldd(args.lib):
        if SKIP.match(name):
            continue
        files[f"dcpmerge/lib/{name}"] = path.read_bytes()
        modes[f"dcpmerge/lib/{name}"] = 0o755
        carried.append(path)
        c = debian_copyright(path)
        if c:
            licenses[c[0]] = c[1]
    for pkgname, f in sorted(licenses.items()):
        files[f"dcpmerge/lib/licenses/{pkgname}.copyright"] = f.read_bytes()
    needs = required_versions([args.lib] + carried)

    dist = f"dcpmerge-{version}.dist-info"
    readme = (
        "dcpmerge: the fused N-way attention-state merge + FP8 quantization of decode-context-parallel "
        "ranks, from Python: in process on CUDA tensors (merge_states, merge_attn_states), a rank client "
        "and an admin client for the merge server. See docs/python.md in the repository.\n\n"
        f"Build: commit {commit}, CUDA kernel {'included' if cuda else 'NOT included (built without nvcc)'}. "
        "Needs Linux x86_64 with " + ", ".join(f"{k} >= {v}" for k, v in needs.items()) +
        "; the GPU path needs an NVIDIA driver (CUDA 13) and PyTorch, the NCCL data plane libnccl.so.2.\n")
    files[f"{dist}/METADATA"] = (
        "Metadata-Version: 2.1\n"
        "Name: dcpmerge\n"
        f"Version: {version}\n"
        "Summary: Fused N-way attention-state merge + FP8 quantization for decode context parallelism\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.8\n"
        "Requires-Dist: numpy\n"
        "Provides-Extra: torch\n"
        "Requires-Dist: torch; extra == \"torch\"\n"
        "Classifier: Operating System :: POSIX :: Linux\n"
        "Classifier: Programming Language :: Python :: 3\n"
        "Description-Content-Type: text/plain\n\n" + readme).encode()
    files[f"{dist}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: dcpmerge python/build_wheel.py\n"
                              f"Root-Is-Purelib: false\nTag: {TAG}\n").encode()
    files[f"{dist}/top_level.txt"] = b"dcpmerge\n"
    files[f"{dist}/LICENSE"] = (ROOT / "LICENSE").read_bytes()
    record = [record_line(arc, data) for arc, data in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()

    args.out.mkdir(parents=True, exist_ok=True)
    wheel = args.out / f"dcpmerge-{version}-{TAG}.whl"
    tmp_wheel = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp_wheel, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for arc, data in files.items():
            info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o100000 | modes.get(arc, 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    tmp_wheel.replace(wheel)
    print(f"wheel: {wheel} ({wheel.stat().st_size / 1e6:.1f} MB; {len(files)} files, {len(carried)} carried "
          f"libraries; commit {commit}; CUDA kernel {'yes' if cuda else 'no'}; needs "
          + ", ".join(f"{k} >= {v}" for k, v in needs.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
