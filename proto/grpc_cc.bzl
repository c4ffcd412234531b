"""grpc_cc_library: C++ messages + gRPC stubs from .proto files, offline.

Runs the system protoc with Debian's grpc_cpp_plugin in one genrule. Protos
are compiled relative to this package (proto/), so `dcpmerge/v1/x.proto` is
both the import path and the C++ include path (`dcpmerge/v1/x.pb.h`).
"""

load("@rules_cc//cc:defs.bzl", "cc_library")

_PROTOC = "protoc"
_GRPC_PLUGIN = "/usr/bin/grpc_cpp_plugin"

def grpc_cc_library(name, srcs, deps = [], **kwargs):
    """srcs: .proto files under this package; all are compiled together."""
    stems = [s[:-len(".proto")] for s in srcs]
    outs = []
    for stem in stems:
        outs += [stem + ".pb.h", stem + ".pb.cc", stem + ".grpc.pb.h", stem + ".grpc.pb.cc"]
    native.genrule(
        name = name + "_protoc",
        srcs = srcs,
        outs = outs,
        cmd = ("%s --proto_path=%s --cpp_out=$(GENDIR)/%s --grpc_out=$(GENDIR)/%s " +
               "--plugin=protoc-gen-grpc=%s $(SRCS)") % (
            _PROTOC,
            native.package_name(),
            native.package_name(),
            native.package_name(),
            _GRPC_PLUGIN,
        ),
    )
    cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        includes = ["."],
        deps = deps + ["//third_party/system:grpc", "//third_party/system:protobuf"],
        **kwargs
    )
