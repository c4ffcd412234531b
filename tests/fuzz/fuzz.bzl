"""libFuzzer targets: built only with --config=fuzz (clang, see .bazelrc)."""

load("@rules_cc//cc:defs.bzl", "cc_binary")

def dcpmerge_fuzzer(name, srcs, deps = []):
    """A fuzz target: a binary whose main is libFuzzer's.

    Tagged manual (//... never builds it: gcc has no libFuzzer) and fuzz
    (tools/test.sh finds the targets by that tag). Its seed corpus is
    corpus/<name>/, its dictionary <name>.dict when there is one.
    """
    cc_binary(
        name = name,
        testonly = True,
        srcs = srcs + ["fuzz_check.h"],
        linkopts = ["-fsanitize=fuzzer"],
        tags = [
            "fuzz",
            "manual",
        ],
        deps = deps,
    )
