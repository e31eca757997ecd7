"""Combined GAN loss: argument checks and the pure-PyTorch reference.

What every backend of the loss shares, in a module that imports no backend:
fastgan/ops/gan_loss.py (backend choice, the compiled op) and
fastgan/ops/gan_loss_triton.py (the Triton op) both import it. The reference is plain
torch ops, differentiable to any order: the test oracle and the `reference` backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("minimax", "ns", "lsgan", "hinge", "wgan", "rpgan")
LOGISTIC_KINDS = ("minimax", "ns")
# Kinds whose terms pair real_logits[i] with fake_logits[i] (so the two need as many
# elements) and whose g_loss depends on the real logits too.
PAIRED_KINDS = ("rpgan",)
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
    if kind == "rpgan" and real_logits.numel() != fake_logits.numel():
        raise ValueError(f"gan_loss: kind='rpgan' pairs real and fake logits element-wise, so "
                         f"they must have the same number of elements; got real_logits of "
                         f"shape {tuple(real_logits.shape)} and fake_logits of shape "
                         f"{tuple(fake_logits.shape)}")


def acc_dtype(x: Tensor) -> torch.dtype:
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
    acc = acc_dtype(real_logits)
    r = real_logits.reshape(-1).to(acc)
    f = fake_logits.reshape(-1).to(acc)
    reduce = torch.mean if reduction == "mean" else torch.sum
    with torch.no_grad():
        d_real = torch.sigmoid(r).mean()
        d_fake = torch.sigmoid(f).mean()
    if kind == "rpgan":
        # one reduction over the pairs; f - r and r - f are separate expressions so that
        # the two losses share no graph (see below)
        return reduce(_softplus(f - r)), reduce(_softplus(r - f)), d_real, d_fake
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
    return reduce(d_r) + reduce(d_f), reduce(g_f), d_real, d_fake
