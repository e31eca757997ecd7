"""The `triton` backend of the bias_act op.

Registers, with torch.library.triton_op (so torch.compile traces into the kernels),
    fastgan::triton_bias_act_forward   same schema and semantics as fastgan::bias_act_forward
    fastgan::triton_bias_act_backward  same schema and semantics as fastgan::bias_act_backward
with the kernels of fastgan.kernels.bias_act, and the autograd of both, which behaves as
the compiled op's (csrc/bias_act.cpp): the forward saves the one tensor `ref` (y for the
activations whose derivative is a function of their output, and for linear when it
clamps; x, and b, for swish; nothing for linear without clamp) and calls the backward op
of order 1. That call, made with create_graph, is differentiable again through the
backward op's own autograd: with respect to grad it is an order-1 call (it is linear in
grad), with respect to ref (and b, for swish) the order-2 call (zeros for the piecewise-
linear activations, as eager gives). Differentiating an order-2
result raises (third-order gradients are not supported).

Imported on first use by fastgan/ops/bias_act.py (it imports triton), never by
`import fastgan`. Under TRITON_INTERPRET=1 the kernels run on CPU tensors (tests only;
fake-tensor tracing needs compiled kernels, i.e. a CUDA device). Each triton_op is its
own fake kernel: it only allocates, launches and sums the small grad_b partials.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.kernels import bias_act as K
from fastgan.ops.bias_act_reference import check_args

FORWARD = "fastgan::triton_bias_act_forward"
BACKWARD = "fastgan::triton_bias_act_backward"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(name: str, x: Tensor, b: Tensor | None, dim: int, act: str, alpha: float,
           gain: float, clamp: float) -> None:
    """The reference's checks (clamp < 0 is no clamp here), then what the kernels need."""
    check_args(x, b, dim, act, alpha, gain, None if clamp < 0 else clamp)
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name}: x dtype must be float32, float16, bfloat16 or float64, got "
                        f"{x.dtype}")
    if b is not None:
        if not 0 <= dim < x.dim():
            raise ValueError(f"{name}: dim must be in [0, {x.dim()}) for {x.dim()}-D x, got "
                             f"{dim}")
        if b.dtype != x.dtype:
            raise TypeError(f"{name}: b has dtype {b.dtype} but x has dtype {x.dtype}")


@torch.library.triton_op(
    FORWARD, mutates_args=(),
    schema="(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float clamp) "
           "-> Tensor")
def triton_bias_act_forward(x: Tensor, b: Tensor | None, dim: int, act: str, alpha: float,
                            gain: float, clamp: float) -> Tensor:
    _check(FORWARD, x, b, dim, act, alpha, gain, clamp)
    return K.forward(x, b, dim, act, alpha, gain, clamp)


@torch.library.triton_op(
    BACKWARD, mutates_args=(),
    schema="(Tensor grad, Tensor? ref, Tensor? b, int dim, str act, float alpha, float gain, "
           "float clamp, int order, bool[2] output_mask) -> (Tensor grad_x, Tensor grad_b)")
def triton_bias_act_backward(grad: Tensor, ref: Tensor | None, b: Tensor | None, dim: int,
                             act: str, alpha: float, gain: float, clamp: float, order: int,
                             output_mask: list[bool]) -> tuple[Tensor, Tensor]:
    _check(BACKWARD, grad, b, dim, act, alpha, gain, clamp)
    if order not in (1, 2):
        raise ValueError(f"{BACKWARD}: order must be 1 or 2, got {order}")
    kind = K.ref_kind(act, clamp >= 0)
    if kind and ref is None:
        what = "x" if kind == "x" else "the forward's output y"
        raise ValueError(f"{BACKWARD}: ref ({what}) is required for act={act!r} "
                         f"{'with' if clamp >= 0 else 'without'} clamp, got None")
    if ref is not None and (ref.shape != grad.shape or ref.dtype != grad.dtype
                            or ref.device != grad.device):
        raise ValueError(f"{BACKWARD}: ref must match grad's shape {tuple(grad.shape)}, dtype "
                         f"{grad.dtype} and device {grad.device}, got {tuple(ref.shape)} "
                         f"{ref.dtype} on {ref.device}")
    if output_mask[1] and not 0 <= dim < grad.dim():
        raise ValueError(f"{BACKWARD}: dim must be in [0, {grad.dim()}) for {grad.dim()}-D "
                         f"grad (grad_b is summed over every other dimension), got {dim}")
    return K.backward(grad, ref, b, dim, act, alpha, gain, clamp, order, output_mask)


# ---------------------------------------------------------------------------
# Autograd of the forward: BiasActBackward of csrc/bias_act.cpp.

def _forward_setup_context(ctx, inputs, output):
    x, b, dim, act, alpha, gain, clamp = inputs
    ctx.params = (dim, act, alpha, gain, clamp)
    kind = K.ref_kind(act, clamp >= 0)
    # the one activation-sized tensor, and b (a parameter), as the C++ node
    ctx.save_for_backward(output if kind == "y" else x if kind == "x" else None, b)
    ctx.set_materialize_grads(False)


def _forward_backward(ctx, grad):
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
    if grad is None or not (mask[0] or mask[1]):
        return None, None, None, None, None, None, None
    ref, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp = ctx.params
    gx, gb = triton_bias_act_backward(grad, ref, b, dim, act, alpha, gain, clamp, 1, mask)
    return (gx if mask[0] else None, gb if mask[1] else None, None, None, None, None, None)


triton_bias_act_forward.register_autograd(_forward_backward,
                                          setup_context=_forward_setup_context)


# ---------------------------------------------------------------------------
# Autograd of the backward: BiasActGradBackward (order 1) of csrc/bias_act.cpp; order 2
# is not differentiable.

def _backward_setup_context(ctx, inputs, output):
    grad, ref, b, dim, act, alpha, gain, clamp, order, output_mask = inputs
    ctx.params = (dim, act, alpha, gain, clamp)
    ctx.order = order
    ctx.output_mask = (bool(output_mask[0]), bool(output_mask[1]))
    ctx.save_for_backward(grad, ref, b)
    ctx.set_materialize_grads(False)


def _backward_backward(ctx, gg_x, gg_b):
    dim, act, alpha, gain, clamp = ctx.params
    if ctx.order != 1:
        raise RuntimeError(f"{BACKWARD}: third-order gradients of bias_act are not supported "
                           f"(an order-{ctx.order} result was differentiated)")
    nothing = (None,) * 10
    grad, ref, b = ctx.saved_tensors
    # grad_b is grad_x summed over every dim but `dim`: its gradient joins grad_x's,
    # broadcast back along `dim`
    u = gg_x if ctx.output_mask[0] else None
    if ctx.output_mask[1] and gg_b is not None:
        shape = [1] * grad.dim()
        shape[dim] = -1
        gb = gg_b.reshape(shape).to(grad.dtype)
        u = gb.expand(grad.shape) if u is None else u + gb
    if u is None:
        return nothing
    needs = ctx.needs_input_grad
    d_grad = d_ref = d_b = None
    if needs[0]:
        d_grad = triton_bias_act_backward(u, ref, b, dim, act, alpha, gain, clamp, 1,
                                          [True, False])[0]
    want_b = K.ref_kind(act, clamp >= 0) == "x" and bool(needs[2])
    if act not in K.HAS_2ND_GRAD and needs[1] and ref is not None:
        # piecewise-linear: a zero tensor, not none, as eager (and the C++ node) gives
        d_ref = torch.zeros_like(ref)
    if act in K.HAS_2ND_GRAD and (needs[1] or want_b):
        d_ref, gb2 = triton_bias_act_backward(u * grad, ref, b, dim, act, alpha, gain, clamp,
                                              2, [True, want_b])
        d_ref = d_ref if needs[1] else None
        d_b = gb2 if want_b else None
    return (d_grad, d_ref, d_b, None, None, None, None, None, None, None)


triton_bias_act_backward.register_autograd(_backward_backward,
                                           setup_context=_backward_setup_context)
