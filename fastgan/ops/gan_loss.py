"""Combined GAN loss: validation, reference, registration, backend choice.

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

Kinds (DESIGN.md): each term is a mean (or sum) over its own batch; with
real_label = t the logistic kinds' real term is binary_cross_entropy_with_logits(r, t).

    kind      d_loss                           g_loss
    minimax   softplus(-r) + softplus(f)       -softplus(f)
    ns        softplus(-r) + softplus(f)       softplus(-f)
    lsgan     (r - 1)^2 / 2 + f^2 / 2          (f - 1)^2 / 2
    hinge     relu(1 - r) + relu(1 + f)        -f
    wgan      f - r                            -f
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastgan import _backend, _ext

OP = "gan_loss"
KINDS = ("minimax", "ns", "lsgan", "hinge", "wgan")
LOGISTIC_KINDS = ("minimax", "ns")
REDUCTIONS = ("mean", "sum")
_KIND_SET = frozenset(KINDS)
_REDUCTION_SET = frozenset(REDUCTIONS)


# ---------------------------------------------------------------------------
# Validation (clear errors, naming the argument)

def _check_tensor(name: str, t: object) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"gan_loss: {name} must be a Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"gan_loss: {name} must be a floating-point tensor (float32, float64, "
                        f"bfloat16 or float16), got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"gan_loss: {name} is empty (shape {tuple(t.shape)}); a loss needs "
                         "at least one logit")


def check_kind(kind: str, reduction: str, real_label: float) -> None:
    """Checks the non-tensor arguments (also used by fastgan.nn.GANLoss at construction)."""
    if kind not in _KIND_SET:
        raise ValueError(f"gan_loss: unknown kind {kind!r}; expected one of "
                         + ", ".join(repr(k) for k in KINDS))
    if reduction not in _REDUCTION_SET:
        raise ValueError(f"gan_loss: unknown reduction {reduction!r}; expected 'mean' or 'sum'")
    if real_label != 1.0:
        if isinstance(real_label, bool) or not isinstance(real_label, (int, float)):
            raise TypeError(f"gan_loss: real_label must be a float, got "
                            f"{type(real_label).__name__}")
        if not 0.0 <= real_label <= 1.0:
            raise ValueError(f"gan_loss: real_label must be in [0, 1], got {real_label}")
        if kind not in LOGISTIC_KINDS:
            raise ValueError(f"gan_loss: real_label (label smoothing) applies to the logistic "
                             f"kinds {LOGISTIC_KINDS}, not to kind={kind!r}; got {real_label}")


def check_args(real_logits: Tensor, fake_logits: Tensor, kind: str, reduction: str,
               real_label: float) -> None:
    # The common case is tested in one expression; the helpers above say what is wrong.
    if kind not in _KIND_SET or reduction not in _REDUCTION_SET or real_label != 1.0:
        check_kind(kind, reduction, real_label)
    if not (isinstance(real_logits, Tensor) and isinstance(fake_logits, Tensor)
            and real_logits.is_floating_point() and fake_logits.is_floating_point()
            and real_logits.numel() != 0 and fake_logits.numel() != 0):
        _check_tensor("real_logits", real_logits)
        _check_tensor("fake_logits", fake_logits)
    if real_logits.device != fake_logits.device:
        raise ValueError(f"gan_loss: real_logits is on {real_logits.device} but fake_logits is "
                         f"on {fake_logits.device}; both must be on the same device")


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# Reference: plain torch ops, differentiable to any order. The test oracle and the
# `reference` backend.

def _softplus(x: Tensor) -> Tensor:
    # -logsigmoid(-x) is log(1 + exp(x)) without overflow and without F.softplus's
    # linear cut-off at x > 20.
    return -torch.nn.functional.logsigmoid(-x)


def reference_forward(real_logits: Tensor, fake_logits: Tensor, kind: str, reduction: str,
                      real_label: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(d_loss, g_loss, d_real, d_fake) with the meaning of fastgan::gan_loss_forward's outputs."""
    acc = _acc_dtype(real_logits)
    r = real_logits.reshape(-1).to(acc)
    f = fake_logits.reshape(-1).to(acc)
    if kind in LOGISTIC_KINDS:
        d_r = _softplus(-r) + (1.0 - real_label) * r
        d_f = _softplus(f)
        # g's terms are their own expressions (not -d_f), so that d_loss and g_loss
        # share no graph and each can be backpropagated on its own, as with the C++ op
        g_f = -_softplus(f) if kind == "minimax" else _softplus(-f)
    elif kind == "lsgan":
        d_r, d_f, g_f = 0.5 * (r - 1.0) ** 2, 0.5 * f ** 2, 0.5 * (f - 1.0) ** 2
    elif kind == "hinge":
        d_r, d_f, g_f = torch.relu(1.0 - r), torch.relu(1.0 + f), -f
    else:  # wgan
        d_r, d_f, g_f = -r, f, -f
    reduce = torch.mean if reduction == "mean" else torch.sum
    with torch.no_grad():
        d_real = torch.sigmoid(r).mean()
        d_fake = torch.sigmoid(f).mean()
    return reduce(d_r) + reduce(d_f), reduce(g_f), d_real, d_fake


# ---------------------------------------------------------------------------
# Registration of the compiled op: fake kernels (autograd is in csrc/gan_loss.cpp).

def _register_compiled() -> None:
    @torch.library.register_fake("fastgan::gan_loss_forward")
    def _(real_logits, fake_logits, kind, reduction, real_label):
        acc = _acc_dtype(real_logits)
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
    _eager = getattr(_ext._C, "gan_loss_eager", None)  # see try_eager_fast_path
if _backend._triton_installed():  # registered on first use: fastgan/ops/gan_loss_triton.py
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
    op, so this halves the forward's overhead (BENCHMARKS.md, GAN loss). A forced
    backend that is the one auto would pick for the device (cpu for CPU tensors, cuda
    for CUDA ones) takes the fast path too."""
    if _eager is None or torch.compiler.is_compiling():
        return None
    # anything but auto / cpu / cuda is deferred; C++ runs cpu / cuda only on their devices
    return _eager(real_logits, fake_logits, kind, reduction, real_label, _backend._stack)
