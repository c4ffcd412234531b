"""FlashInfer's attention-state merges on the dcpmerge kernel, drop-in:
:func:`merge_state`, :func:`merge_state_in_place` and :func:`merge_states`
take FlashInfer's arguments, shapes and LSE convention
(``flashinfer.merge_state`` etc., flashinfer/cascade.py), plus an optional
FP8 output (``out`` / ``scale``) and ``enable_pdl``.

Shapes: ``v`` ``[seq_len, num_heads, head_dim]``, ``s`` ``[seq_len,
num_heads]`` fp32 (``merge_states``: ``[seq_len, num_states, num_heads,
head_dim]`` and ``[seq_len, num_states, num_heads]``).

LSE convention: base 2, as FlashInfer's merge kernels take and return it
(include/flashinfer/attention/cascade.cuh: "Both s_a and s_b are logsumexp
values with base 2"; state.cuh merges with exp2 and returns m + log2(d)):

    V = sum_i 2^(s_i - m) v_i / sum_i 2^(s_i - m),   S = m + log2(sum_i 2^(s_i - m)),   m = max_i s_i

Where FlashInfer and dcpmerge differ: a state whose LSE is -inf (or +inf,
NaN) is empty here (weight 0; all empty: V = 0, S = -inf), where
FlashInfer's kernels compute NaN when every state is -inf; at least one
state (FlashInfer's merge_states also takes num_states = 0).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from . import ops

__all__ = ["merge_state", "merge_state_in_place", "merge_states"]

_FLASHINFER = dict(lse_base="2", lse_layout="tokens_heads", return_lse=True)


def _output_mode(out: Any, scale: Any) -> str:
    if scale is not None:
        return "fp8_per_tensor"
    if out is not None and str(out.dtype) == ops._FP8:
        raise ValueError(f"scale: required when out is {out.dtype} (out = fp8(V / scale))")
    return "passthrough"


def merge_state(v_a: Any, s_a: Any, v_b: Any, s_b: Any, *, out: Any = None, scale: Any = None,
                enable_pdl: bool = False) -> Tuple[Any, Any]:
    """FlashInfer's ``merge_state``: merges two states, returns ``(V, S)``.

    ``v_a``, ``v_b``: ``[seq_len, num_heads, head_dim]`` (fp16, bf16, fp32;
    same strides); ``s_a``, ``s_b``: fp32 ``[seq_len, num_heads]``, base 2.
    ``V`` has the inputs' dtype; with ``scale`` (a one-element fp32 tensor
    or a float) it is FP8 E4M3, ``fp8(V / scale)``, written into ``out``
    when given. ``S`` is fp32 ``[seq_len, num_heads]``, base 2.
    """
    r = ops.merge_states([v_a, v_b], [s_a, s_b], output_mode=_output_mode(out, scale), scale=scale, out=out,
                         enable_pdl=enable_pdl, **_FLASHINFER)
    return r.output, r.lse


def merge_state_in_place(v: Any, s: Any, v_other: Any, s_other: Any, mask: Optional[Any] = None, *,
                         enable_pdl: bool = False) -> None:
    """FlashInfer's ``merge_state_in_place``: ``(v, s)`` becomes the merge of
    ``(v, s)`` and ``(v_other, s_other)``; with ``mask`` (bool ``[seq_len]``)
    only the tokens where it is true change."""
    # Merged into new tensors, then copied: the kernel cannot write over its
    # inputs (one CTA writes a row's LSE while another may still read it).
    v_m, s_m = merge_state(v, s, v_other, s_other, enable_pdl=enable_pdl)
    if mask is None:
        v.copy_(v_m)
        s.copy_(s_m)
        return
    torch = ops._backend.torch()
    keep = mask.to(torch.bool).view(-1, 1)
    s.copy_(torch.where(keep, s_m, s))
    v.copy_(torch.where(keep.unsqueeze(-1), v_m, v))


def merge_states(v: Any, s: Any, *, out: Any = None, scale: Any = None, enable_pdl: bool = False) -> Tuple[Any, Any]:
    """FlashInfer's ``merge_states``: merges ``num_states`` states (1..64).

    ``v``: ``[seq_len, num_states, num_heads, head_dim]`` (head_dim
    contiguous); ``s``: fp32 ``[seq_len, num_states, num_heads]``, base 2.
    Returns ``(V [seq_len, num_heads, head_dim], S [seq_len, num_heads])``;
    ``out`` / ``scale`` as in :func:`merge_state`.
    """
    ops._tensor(v, "v")
    ops._tensor(s, "s")
    if len(v.shape) != 4 or len(s.shape) != 3:
        raise ValueError(f"v, s: shapes {list(v.shape)}, {list(s.shape)}; expected [seq_len, num_states, num_heads, "
                         "head_dim] and [seq_len, num_states, num_heads]")
    # State i is v[:, i], a strided [T,H,D] view the kernel reads as it is;
    # its LSEs must be contiguous per state, hence the (small) copy of s.
    r = ops.merge_states(v.transpose(0, 1), s.transpose(0, 1).contiguous(), output_mode=_output_mode(out, scale),
                         scale=scale, out=out, enable_pdl=enable_pdl, **_FLASHINFER)
    return r.output, r.lse
