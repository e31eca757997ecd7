"""The `triton` backend of the combined GAN loss op.

Registers, with torch.library.triton_op (so torch.compile traces into the kernels),
    fastgan::triton_gan_loss_forward   same schema and semantics as fastgan::gan_loss_forward
    fastgan::triton_gan_loss_backward  same schema and semantics as fastgan::gan_loss_backward
with the kernels of fastgan.kernels.gan_loss, and the autograd of the forward, which
behaves as the compiled op's (csrc/gan_loss.cpp): it keeps only the two inputs and
recomputes the derivatives from them; d_real / d_fake are not differentiable; real
logits get a gradient only from d_loss, and g_loss requires grad only if the fake
logits do (except for the paired kind, rpgan, whose g_loss depends on both inputs: it
sends gradient to both and requires grad if either does); d_loss and g_loss may be backpropagated separately. Double backward is not
supported: differentiating the gradients raises instead of returning a wrong zero.

Imported on first use by fastgan/ops/gan_loss.py (it imports triton), never by
`import fastgan`. Under TRITON_INTERPRET=1 the kernels run on CPU tensors (tests only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan.kernels import gan_loss as K
from fastgan.ops.gan_loss_reference import PAIRED_KINDS, check_args

FORWARD = "fastgan::triton_gan_loss_forward"
BACKWARD = "fastgan::triton_gan_loss_backward"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check(name: str, real: Tensor, fake: Tensor, kind: str, reduction: str,
           real_label: float) -> None:
    check_args(real, fake, kind, reduction, real_label)
    if real.dtype not in _DTYPES:
        raise TypeError(f"{name}: real_logits dtype must be float32, float16, bfloat16 or "
                        f"float64, got {real.dtype}")
    if fake.dtype != real.dtype:
        raise TypeError(f"{name}: fake_logits has dtype {fake.dtype} but real_logits has "
                        f"dtype {real.dtype}; both must have the same dtype")


@torch.library.triton_op(
    FORWARD, mutates_args=(),
    schema="(Tensor real_logits, Tensor fake_logits, str kind, str reduction, "
           "float real_label) -> (Tensor d_loss, Tensor g_loss, Tensor d_real, Tensor d_fake)")
def triton_gan_loss_forward(real_logits: Tensor, fake_logits: Tensor, kind: str,
                            reduction: str, real_label: float):
    _check(FORWARD, real_logits, fake_logits, kind, reduction, real_label)
    return K.forward(real_logits, fake_logits, kind, reduction, real_label)


@torch.library.triton_op(
    BACKWARD, mutates_args=(),
    schema="(Tensor grad_d_loss, Tensor grad_g_loss, Tensor real_logits, "
           "Tensor fake_logits, str kind, str reduction, float real_label, "
           "bool[2] output_mask) -> (Tensor grad_real, Tensor grad_fake)")
def triton_gan_loss_backward(grad_d_loss: Tensor, grad_g_loss: Tensor, real_logits: Tensor,
                             fake_logits: Tensor, kind: str, reduction: str,
                             real_label: float, output_mask: list[bool]):
    _check(BACKWARD, real_logits, fake_logits, kind, reduction, real_label)
    for name, g in (("grad_d_loss", grad_d_loss), ("grad_g_loss", grad_g_loss)):
        if g.numel() != 1 or not g.is_floating_point() or g.device != real_logits.device:
            raise ValueError(f"{BACKWARD}: {name} must be one floating-point value (the "
                             f"losses are scalars) on {real_logits.device}, got shape "
                             f"{tuple(g.shape)} {g.dtype} on {g.device}")
    return K.backward(grad_d_loss, grad_g_loss, real_logits, fake_logits, kind, reduction,
                      real_label, output_mask)


def _setup_context(ctx, inputs, output):
    real, fake, kind, reduction, real_label = inputs
    _d_loss, g_loss, d_real, d_fake = output
    # Kept on ctx rather than with save_for_backward, which frees them after the first
    # backward: d_loss and g_loss share this node and, as with eager's separate
    # expressions (and the C++ node, whose release_variables keeps them), each may be
    # backpropagated on its own. Inputs only, so no reference cycle; freed with the node.
    # save_for_backward's check against in-place changes is done by hand (_saved_logits).
    ctx.logits = (real, fake)
    ctx.versions = (real._version, fake._version)
    ctx.kind, ctx.reduction, ctx.real_label = kind, reduction, real_label
    ctx.set_materialize_grads(False)  # tell "no gradient" from a zero one, as the C++ node
    ctx.mark_non_differentiable(d_real, d_fake)
    # as eager: g_loss depends on the fake logits only (on both for a paired kind)
    if not (fake.requires_grad or (kind in PAIRED_KINDS and real.requires_grad)):
        ctx.mark_non_differentiable(g_loss)


def _saved_logits(ctx) -> tuple[Tensor, Tensor]:
    for name, t, version in zip(("real_logits", "fake_logits"), ctx.logits, ctx.versions):
        if t._version != version:
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been modified by "
                f"an inplace operation: {name} of {FORWARD} is at version {t._version}; "
                f"expected version {version} instead")
    return ctx.logits


def _backward(ctx, grad_d_loss, grad_g_loss, _grad_d_real, _grad_d_fake):
    real, fake = _saved_logits(ctx)
    # real logits reach d_loss only (both losses for a paired kind); the fake ones both
    any_grad = grad_d_loss is not None or grad_g_loss is not None
    real_grad = any_grad if ctx.kind in PAIRED_KINDS else grad_d_loss is not None
    mask = [bool(ctx.needs_input_grad[0]) and real_grad,
            bool(ctx.needs_input_grad[1]) and any_grad]
    if not (mask[0] or mask[1]):
        return None, None, None, None, None
    if grad_d_loss is None:
        grad_d_loss = torch.zeros_like(grad_g_loss)
    elif grad_g_loss is None:
        grad_g_loss = torch.zeros_like(grad_d_loss)
    create_graph = torch.is_grad_enabled()
    with torch.no_grad():
        grad_real, grad_fake = triton_gan_loss_backward(
            grad_d_loss, grad_g_loss, real, fake, ctx.kind, ctx.reduction, ctx.real_label,
            mask)
    if create_graph:  # the gradients depend on the logits, through nothing differentiable
        grad_real, grad_fake = _no_double_backward(grad_real, grad_fake)
    return (grad_real if mask[0] else None, grad_fake if mask[1] else None, None, None, None)


def _no_double_backward(*grads: Tensor) -> tuple[Tensor, ...]:
    """`grads` with a history that raises if differentiated (what @once_differentiable
    does), instead of a silently wrong zero."""
    err = torch._C._functions.DelayedError(
        f"{FORWARD}: double backward is not implemented (the first-order gradients were "
        "computed with create_graph=True); use the 'reference' backend for gradient "
        "penalties through the loss".encode(), len(grads))
    return err(*[g.detach().requires_grad_() for g in grads])


triton_gan_loss_forward.register_autograd(_backward, setup_context=_setup_context)
