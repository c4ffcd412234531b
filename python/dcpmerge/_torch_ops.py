"""torch.ops.dcpmerge.merge_attn_states and torch.ops.dcpmerge.merge_states:
the two merges registered with PyTorch's dispatcher (torch.library.custom_op,
PyTorch 2.4 and later), so that torch.compile traces them as ops instead of
breaking the graph at a ctypes call. Each mutates only the outputs it is
given; the fake implementations do nothing (no output is allocated inside
an op), so shapes flow through Dynamo and AOTAutograd unchanged.

The public functions (dcpmerge.merge_attn_states / merge_states) call these
ops only while torch.compiler.is_compiling(); in eager mode they take the
cached ctypes path directly, because a Python custom op's dispatch costs
more than the whole eager target (docs/python.md, "Eager cost").

No annotations future-import here: custom_op reads these functions'
annotations as types to infer the schema.
"""

from typing import Any, List, Optional

from . import ops

_registered = False
_torch: Any = None  # the torch module, once registered (no import statement in traced code)


def register(torch: Any) -> bool:
    """Registers the ops once; False when this PyTorch lacks custom_op."""
    global _registered, _torch
    if _registered:
        return True
    library = torch.library
    if not (hasattr(library, "custom_op") and hasattr(library, "register_fake")
            and hasattr(getattr(torch, "compiler", None), "is_compiling")):
        return False
    Tensor = torch.Tensor
    if hasattr(torch.ops.dcpmerge, "merge_attn_states"):  # another copy of the package registered them
        _torch, _registered = torch, True
        return True

    @library.custom_op("dcpmerge::merge_attn_states", mutates_args=("output", "output_lse"))
    def merge_attn_states(output: Tensor, prefix_output: Tensor, prefix_lse: Tensor, suffix_output: Tensor,
                          suffix_lse: Tensor, output_lse: Optional[Tensor], prefill_tokens_with_context: Optional[int],
                          output_scale: Optional[Tensor], enable_pdl: bool) -> None:
        ops.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse,
                              prefill_tokens_with_context, output_scale, enable_pdl)

    @library.register_fake("dcpmerge::merge_attn_states")
    def _(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse, prefill_tokens_with_context,
          output_scale, enable_pdl):
        return None

    @library.custom_op("dcpmerge::merge_states", mutates_args=("out", "out_scales", "out_lse"))
    def merge_states(outputs: List[Tensor], lses: List[Tensor], scale: Optional[Tensor], out: Tensor,
                     out_scales: Optional[Tensor], out_lse: Optional[Tensor], lse_base: str, lse_layout: str,
                     output_mode: str, group_size: int, power_of_two_scales: bool, enable_pdl: bool) -> None:
        ops.merge_states(outputs, lses, lse_base=lse_base, lse_layout=lse_layout, output_mode=output_mode,
                         scale=scale, group_size=group_size, power_of_two_scales=power_of_two_scales, out=out,
                         out_scales=out_scales, out_lse=out_lse, enable_pdl=enable_pdl)

    @library.register_fake("dcpmerge::merge_states")
    def _(outputs, lses, scale, out, out_scales, out_lse, lse_base, lse_layout, output_mode, group_size,
          power_of_two_scales, enable_pdl):
        return None

    _torch = torch
    _registered = True
    return True


def merge_attn_states_traced(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse,
                             prefill_tokens_with_context, output_scale, enable_pdl) -> None:
    """merge_attn_states while torch.compile traces: the registered op (the
    arguments are checked when the compiled graph runs it)."""
    _torch.ops.dcpmerge.merge_attn_states(output, prefix_output, prefix_lse, suffix_output, suffix_lse, output_lse,
                                         prefill_tokens_with_context, output_scale, bool(enable_pdl))


def merge_states_traced(outputs, lses, lse_base, lse_layout, output_mode, scale, group_size, power_of_two_scales,
                        out, out_scales, out_lse, return_lse, enable_pdl) -> "ops.MergeOutput":
    """merge_states while torch.compile traces: the outputs left out are
    allocated here (traced torch.empty), then the registered op fills them."""
    torch = _torch
    parts = list(outputs.unbind(0)) if isinstance(outputs, torch.Tensor) else list(outputs)
    lse_parts = list(lses.unbind(0)) if isinstance(lses, torch.Tensor) else list(lses)
    first = parts[0]
    T, H, D = first.shape
    dev = first.device
    if scale is not None and not isinstance(scale, torch.Tensor):
        scale = torch.full((1,), ops._scale_value(scale, "scale"), dtype=torch.float32, device=dev)
    if out is None:
        out = torch.empty((T, H, D), dtype=first.dtype if output_mode == "passthrough" else torch.float8_e4m3fn,
                          device=dev)
    sshape = ops._scales_shape(output_mode, T, H, D, group_size)
    if sshape is not None and out_scales is None:
        out_scales = torch.empty(sshape, dtype=torch.float32, device=dev)
    if return_lse and out_lse is None:
        out_lse = torch.empty(ops._lse_shape(lse_layout, T, H), dtype=torch.float32, device=dev)
    torch.ops.dcpmerge.merge_states(parts, lse_parts, scale, out, out_scales, out_lse, str(lse_base), lse_layout,
                                    output_mode, int(group_size), bool(power_of_two_scales), bool(enable_pdl))
    return ops.MergeOutput(out, out_scales if sshape is not None else None, out_lse)
