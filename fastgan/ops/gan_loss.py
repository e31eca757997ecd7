"""Combined GAN loss: backend choice, and the compiled op's registration.

The compiled op (csrc/gan_loss.cpp) is
    fastgan::gan_loss_forward(real_logits, fake_logits, kind, reduction, real_label)
        -> (d_loss, g_loss, d_real, d_fake)
four 0-dim tensors from one pass over each input, in fp32 (fp64 for fp64 input).
Its autograd is registered in C++ next to the schema (a Python autograd.Function
would cost more than the whole op at GAN batch sizes); backward recomputes the
per-element derivatives from the saved logits (fastgan::gan_loss_backward), so the
op keeps nothing but its inputs for backward. Double backward is not supported: it
raises instead of returning a wrong zero. The `triton` backend
(fastgan/ops/gan_loss_triton.py, kernels/gan_loss.py) has the same schema and behaviour.
Checks and the reference are in fastgan/ops/gan_loss_reference.py.

Kinds (docs/ARCHITECTURE.md, "Loss kinds"): each term is a mean (or sum) over its own batch; with
real_label = t the logistic kinds' real term is binary_cross_entropy_with_logits(r, t).

    kind      d_loss                           g_loss
    minimax   softplus(-r) + softplus(f)       -softplus(f)
    ns        softplus(-r) + softplus(f)       softplus(-f)
    lsgan     (r - 1)^2 / 2 + f^2 / 2          (f - 1)^2 / 2
    hinge     relu(1 - r) + relu(1 + f)        -f
    wgan      f - r                            -f
    rpgan     softplus(f - r)                  softplus(r - f)

rpgan (R3GAN's relativistic pairing loss) is paired: r[i] goes with f[i], both inputs must
have as many elements, each loss is one mean (or sum) over the pairs, and g_loss depends
on the real logits as well (it gives them a gradient; the kernels walk the pairs in one
pass).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext
from fastgan.ops.gan_loss_reference import (KINDS, LOGISTIC_KINDS, PAIRED_KINDS, REDUCTIONS,
                                            acc_dtype, check_args, check_kind,
                                            reference_forward)

OP = "gan_loss"


# ---------------------------------------------------------------------------
# Registration of the compiled op: fake kernels (autograd is in csrc/gan_loss.cpp).

def _register_compiled() -> None:
    @torch.library.register_fake("fastgan::gan_loss_forward")
    def _(real_logits, fake_logits, kind, reduction, real_label):
        acc = acc_dtype(real_logits)
        return tuple(real_logits.new_empty((), dtype=acc) for _ in range(4))

    @torch.library.register_fake("fastgan::gan_loss_backward")
    def _(grad_d_loss, grad_g_loss, real_logits, fake_logits, kind, reduction, real_label,
          output_mask):
        gr = real_logits.new_empty(real_logits.shape if output_mask[0] else (0,))
        gf = fake_logits.new_empty(fake_logits.shape if output_mask[1] else (0,))
        return gr, gf


KERNELS: tuple[str, ...] = ()
_eager = None
if _ext.ext_loaded() and hasattr(torch.ops.fastgan, "gan_loss_forward"):
    _register_compiled()
    KERNELS = ("cpu", "cuda") if _ext.build_info().get("cuda") else ("cpu",)
    _forward = torch.ops.fastgan.gan_loss_forward.default
    _eager = _ext.fast_path("gan_loss_eager")  # see try_eager_fast_path
if _backend.triton_installed():  # registered on first use: fastgan/ops/gan_loss_triton.py
    KERNELS += ("triton",)


def _triton_forward():
    from fastgan.ops import gan_loss_triton  # imports triton; registers the ops once
    return gan_loss_triton.triton_gan_loss_forward


# ---------------------------------------------------------------------------
# The op as the rest of fastgan calls it.

def gan_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "ns",
             reduction: str = "mean",
             real_label: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(d_loss, g_loss, d_real, d_fake); see fastgan.functional.gan_loss."""
    check_args(real_logits, fake_logits, kind, reduction, real_label)
    if real_logits.dtype != fake_logits.dtype:  # as eager's d_loss = bce(r) + bce(f) would
        dtype = torch.promote_types(real_logits.dtype, fake_logits.dtype)
        real_logits, fake_logits = real_logits.to(dtype), fake_logits.to(dtype)
    backend = _backend.select(OP, real_logits.device, KERNELS)
    if backend == "reference":
        return reference_forward(real_logits, fake_logits, kind, reduction, real_label)
    if backend == "triton":
        return _triton_forward()(real_logits, fake_logits, kind, reduction, float(real_label))
    return _forward(real_logits, fake_logits, kind, reduction, float(real_label))


def try_eager_fast_path(real_logits: Tensor, fake_logits: Tensor, kind: str, reduction: str,
                        real_label: float) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """gan_loss() for the common case in one C++ call (fastgan._C.gan_loss_eager: the
    checks, and the compiled op with its autograd), or None when the case is not common:
    another backend forced, torch.compile tracing, or anything gan_loss() would reject,
    promote or send elsewhere. At GAN batch sizes the Python wrapper costs as much as the
    op, so this halves the forward's overhead (BENCHMARKS.md, GAN loss). The backend is
    chosen by fastgan._backend as for gan_loss(): the C++ side runs only on the device
    types where that choice is the compiled kernel (_backend.compiled_devices)."""
    if _eager is None or torch.compiler.is_compiling():
        return None
    return _eager(real_logits, fake_logits, kind, reduction, real_label,
                  _backend.compiled_devices(OP, KERNELS))


__all__ = ["KINDS", "LOGISTIC_KINDS", "PAIRED_KINDS", "REDUCTIONS", "KERNELS", "check_args", "check_kind",
           "gan_loss", "reference_forward", "try_eager_fast_path"]
