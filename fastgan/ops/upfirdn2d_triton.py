"""The `triton` backend of the upfirdn2d op.

Registers, with torch.library.triton_op (so torch.compile traces into the kernel),
    fastgan::triton_upfirdn2d   same schema and semantics as fastgan::upfirdn2d
with the kernel of fastgan.kernels.upfirdn2d, and its autograd, which behaves as the
compiled op's (csrc/upfirdn2d.cpp): the op is linear in x, its gradient is the same op on
the incoming gradient with up and down swapped, the filter flipped and the padding that
maps the output grid back onto the input; the node saves the filter only, and the
gradient is computed by this op again, so gradients of any order run the kernel.

Imported on first use by fastgan/ops/upfirdn2d.py (it imports triton), never by
`import fastgan`. Under TRITON_INTERPRET=1 the kernel runs on CPU tensors (tests only;
fake-tensor tracing needs the compiled kernel, i.e. a CUDA device). The triton_op is its
own fake kernel: it only allocates and launches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.kernels import upfirdn2d as K
from fastgan.ops.upfirdn2d_reference import check_args

OP = "fastgan::triton_upfirdn2d"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(x: Tensor, f: Tensor, up: list[int], down: list[int], padding: list[int],
           gain: float) -> None:
    """The reference's checks, plus what the compiled op requires (csrc/upfirdn2d_checks.h):
    a 2-D filter on x's device, up / down as two ints, padding as four."""
    if isinstance(f, Tensor) and f.dim() != 2:
        raise ValueError(f"{OP}: f must be a non-empty 2-D (fh, fw) filter, got shape "
                         f"{tuple(f.shape)}")
    if len(up) != 2 or len(down) != 2:
        name, got = ("up", up) if len(up) != 2 else ("down", down)
        raise ValueError(f"{OP}: {name} must be two ints >= 1 [x, y], got {list(got)}")
    if len(padding) != 4:
        raise ValueError(f"{OP}: padding must be four ints [x0, x1, y0, y1], got "
                         f"{list(padding)}")
    check_args(x, f, list(up), list(down), list(padding), gain)
    if x.dtype not in _DTYPES:
        raise TypeError(f"{OP}: x dtype must be float32, float16, bfloat16 or float64, got "
                        f"{x.dtype}")
    if f.device != x.device:
        raise ValueError(f"{OP}: f is on {f.device} but x is on {x.device}")


@torch.library.triton_op(
    OP, mutates_args=(),
    schema="(Tensor x, Tensor f, int[2] up, int[2] down, int[4] padding, bool flip_filter, "
           "float gain) -> Tensor")
def triton_upfirdn2d(x: Tensor, f: Tensor, up: list[int], down: list[int],
                     padding: list[int], flip_filter: bool, gain: float) -> Tensor:
    _check(x, f, up, down, padding, gain)
    return K.upfirdn2d(x, f, list(up), list(down), list(padding), flip_filter, gain)


def grad_padding(x_hw: tuple[int, int], y_hw: tuple[int, int], f_hw: tuple[int, int],
                 up, down, padding) -> list[int]:
    """The padding of the gradient's upfirdn2d (csrc/upfirdn2d.cpp, NVlabs' derivation)."""
    (ih, iw), (oh, ow), (fh, fw) = x_hw, y_hw, f_hw
    px0, _, py0, _ = padding
    return [fw - px0 - 1, iw * up[0] - ow * down[0] + px0 - up[0] + 1,
            fh - py0 - 1, ih * up[1] - oh * down[1] + py0 - up[1] + 1]


def _setup_context(ctx, inputs, output):
    x, f, up, down, padding, flip_filter, gain = inputs
    ctx.save_for_backward(f)
    ctx.up, ctx.down = list(up), list(down)
    ctx.pad = grad_padding(tuple(x.shape[2:]), tuple(output.shape[2:]), tuple(f.shape),
                           up, down, padding)
    ctx.flip_filter, ctx.gain = bool(flip_filter), float(gain)
    ctx.in_hw = tuple(x.shape[2:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad):
    if grad is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None, None
    (f,) = ctx.saved_tensors
    # through the op (and its autograd when create_graph): gradients of any order
    gx = triton_upfirdn2d(grad, f, ctx.down, ctx.up, ctx.pad, not ctx.flip_filter, ctx.gain)
    if tuple(gx.shape[2:]) != ctx.in_hw:
        raise RuntimeError(f"{OP} backward: gradient of shape {tuple(gx.shape)} for an input "
                           f"of spatial size {ctx.in_hw}")
    return gx, None, None, None, None, None, None


triton_upfirdn2d.register_autograd(_backward, setup_context=_setup_context)
