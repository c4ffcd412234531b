"""The group configuration (``dcpmerge.v1.GroupConfig``) in Python terms.

Enum values use the names of the tools (common/names.h: the server's flags,
dcpmergectl): dtype ``bf16 | fp16 | fp32``, LSE base ``e | 2``, LSE layout
``heads_tokens | tokens_heads``, output mode ``fp8_per_tensor |
fp8_per_token | fp8_per_group | passthrough``, return mode
``full | head_slice``, data plane ``grpc | nccl``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

__all__ = ["GroupConfig", "DTYPES", "LSE_BASES", "LSE_LAYOUTS", "OUTPUT_MODES", "RETURN_MODES",
           "DATA_PLANES"]

# short name <-> proto enum name
DTYPES = {"fp32": "DTYPE_FLOAT32", "fp16": "DTYPE_FLOAT16", "bf16": "DTYPE_BFLOAT16"}
LSE_BASES = {"e": "LSE_BASE_E", "2": "LSE_BASE_2"}
LSE_LAYOUTS = {"heads_tokens": "LSE_LAYOUT_HEADS_TOKENS", "tokens_heads": "LSE_LAYOUT_TOKENS_HEADS"}
OUTPUT_MODES = {
    "fp8_per_tensor": "OUTPUT_MODE_FP8_PER_TENSOR",
    "fp8_per_token": "OUTPUT_MODE_FP8_PER_TOKEN",
    "fp8_per_group": "OUTPUT_MODE_FP8_PER_GROUP",
    "passthrough": "OUTPUT_MODE_PASSTHROUGH",
}
RETURN_MODES = {"full": "RETURN_MODE_FULL", "head_slice": "RETURN_MODE_HEAD_SLICE"}
DATA_PLANES = {"grpc": "DATA_PLANE_GRPC", "nccl": "DATA_PLANE_NCCL"}

# The C ABI's numbers (kernels/merge_contract.h).
DTYPE_CODE = {"fp32": 0, "fp16": 1, "bf16": 2}
LSE_BASE_CODE = {"e": 0, "2": 1}
LSE_LAYOUT_CODE = {"heads_tokens": 0, "tokens_heads": 1}
OUTPUT_MODE_CODE = {"fp8_per_tensor": 0, "fp8_per_token": 1, "fp8_per_group": 2, "passthrough": 3}
DTYPE_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2}

_ENUM_FIELDS = {
    "input_dtype": DTYPES,
    "lse_base": LSE_BASES,
    "lse_layout": LSE_LAYOUTS,
    "output_mode": OUTPUT_MODES,
    "return_mode": RETURN_MODES,
}


def short_name(table: Mapping[str, str], proto_name: str) -> str:
    """'DTYPE_BFLOAT16' -> 'bf16'; '' for an unspecified value."""
    for short, long in table.items():
        if long == proto_name:
            return short
    return ""


def check_name(table: Mapping[str, str], field: str, value: Any) -> str:
    text = str(value).lower()
    if text not in table:
        raise ValueError(f"{field}: {value!r} is not one of {' | '.join(table)}")
    return text


@dataclasses.dataclass
class GroupConfig:
    """One DCP group's configuration (proto/dcpmerge/v1/config.proto)."""

    world_size: int = 0  # N, the ranks of the group
    num_heads: int = 0  # H
    head_size: int = 0  # D
    max_tokens: int = 0  # largest T per step
    input_dtype: str = "bf16"
    lse_base: str = "e"
    lse_layout: str = "heads_tokens"
    output_mode: str = "fp8_per_tensor"
    group_size: int = 128
    power_of_two_scales: bool = False
    return_mode: str = "full"
    return_lse: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GroupConfig":
        kw: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in _ENUM_FIELDS:
                v = short_name(_ENUM_FIELDS[f.name], v)
            elif f.type in ("int", int):
                v = int(v)
            elif f.type in ("bool", bool):
                v = bool(v)
            kw[f.name] = v
        return cls(**kw)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _ENUM_FIELDS:
                v = _ENUM_FIELDS[f.name][check_name(_ENUM_FIELDS[f.name], f.name, v)]
            elif isinstance(v, bool):
                v = bool(v)
            elif f.type in ("int", int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError(f"{f.name}: {v!r} is not an int")
                v = str(v) if f.name == "max_tokens" else v  # int64: a string in proto3 JSON
            out[f.name] = v
        return out
