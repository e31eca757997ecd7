"""Functional API of fastgan's fused ops."""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor

from fastgan.ops import bias_act as _bias_act
from fastgan.ops import bn_act as _bn_act
from fastgan.ops import cbn_act as _cbn_act
from fastgan.ops import gan_loss as _gan_loss
from fastgan.ops import upfirdn2d as _upfirdn2d


def batch_norm_act(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                   weight: Tensor | None = None, bias: Tensor | None = None,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   negative_slope: float = 0.2) -> Tensor:
    """`leaky_relu(batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
    eps), negative_slope)` as one fused op; `negative_slope=0` is ReLU.

    Same semantics as torch.nn.functional.batch_norm: in training (or when the running
    stats are None) batch statistics normalise, and running stats, when given, are
    updated in place with `momentum` and the unbiased variance. Statistics are computed
    in fp32 (fp64 for fp64 input). Backward saves only `x` and per-channel statistics.
    """
    return _bn_act.batch_norm_act(x, running_mean, running_var, weight, bias, training,
                                  momentum, eps, negative_slope)


__all__ = ["batch_norm_act"]


def conditional_batch_norm_act(input: Tensor, scale: Tensor, shift: Tensor,
                               running_mean: Tensor | None = None,
                               running_var: Tensor | None = None, training: bool = True,
                               momentum: float = 0.1, eps: float = 1e-5,
                               negative_slope: float = 0.0) -> Tensor:
    """Conditional BatchNorm + LeakyReLU as one fused op:
    `leaky_relu(batch_norm(input, running_mean, running_var, None, None, training, momentum,
    eps) * scale[:, :, None, None] + shift[:, :, None, None], negative_slope)`, with
    per-sample `scale` and `shift` of shape (N, C) (e.g. `weight[labels]`, `bias[labels]`).

    BatchNorm semantics are F.batch_norm's (batch statistics in training or without
    running statistics, which are then updated in place; fp32 statistics, fp64 for fp64
    input). Backward saves only the input, scale, shift and per-channel statistics.
    `negative_slope=0` (the default) is ReLU, 1 the identity.
    """
    return _cbn_act.conditional_batch_norm_act(input, scale, shift, running_mean, running_var,
                                               training, momentum, eps, negative_slope)


__all__ += ["conditional_batch_norm_act"]


_tuple_new = tuple.__new__  # GANLosses._make without its checks


class GANLosses(NamedTuple):
    """What fastgan.functional.gan_loss returns: four 0-dim tensors, fp32 (fp64 for fp64
    logits) whatever the logits' dtype."""

    d_loss: Tensor  # discriminator loss (differentiable)
    g_loss: Tensor  # generator loss (differentiable)
    d_real: Tensor  # mean of sigmoid(real_logits): "D(x)" (no gradient)
    d_fake: Tensor  # mean of sigmoid(fake_logits): "D(G(z))" (no gradient)


def gan_loss(real_logits: Tensor, fake_logits: Tensor, kind: str = "ns",
             reduction: str = "mean", *, real_label: float = 1.0) -> GANLosses:
    """Discriminator and generator losses of one GAN step, fused into one op.

    `real_logits` and `fake_logits` are the discriminator's outputs on real and generated
    samples (logits for the logistic kinds, raw scores for the others), of any shape
    (they are flattened) and of different batch sizes if need be (except for rpgan).
    `kind` is one of

        kind      d_loss                           g_loss
        minimax   softplus(-r) + softplus(f)       -softplus(f)
        ns        softplus(-r) + softplus(f)       softplus(-f)     (non-saturating)
        lsgan     (r - 1)^2 / 2 + f^2 / 2          (f - 1)^2 / 2
        hinge     relu(1 - r) + relu(1 + f)        -f
        wgan      f - r                            -f
        rpgan     softplus(f - r)                  softplus(r - f)  (relativistic pairing)

    where each term is reduced over its own batch: `reduction="mean"` (default) or
    `"sum"`. rpgan (R3GAN's relativistic pairing loss) pairs r[i] with f[i]: the two
    inputs must have the same number of elements, each loss is one mean (or sum) over
    the pairs, and its g_loss depends on the real logits too. `real_label < 1` is one-sided label smoothing for minimax / ns: the real
    term becomes binary_cross_entropy_with_logits(r, real_label).

    Returns GANLosses(d_loss, g_loss, d_real, d_fake); d_real and d_fake are the batch
    means of sigmoid(logits) (pytorch/examples' D(x) and D(G(z))), without gradient.

    Gradients flow from d_loss, g_loss or both, into whichever of the logits require
    grad, as they would through the eager expressions: g_loss reaches only the fake
    logits (and does not require grad when they do not) except with rpgan, whose g_loss
    reaches both (and requires grad when either does), and d_loss and g_loss may be
    backpropagated together or one after the other. Pass `fake_logits.detach()` for the
    discriminator step as usual. Backward recomputes the per-element derivatives from
    the logits, so nothing but the logits is kept for it. Double backward
    (create_graph=True through this op, e.g. a gradient penalty on the loss) is not
    supported: differentiating the gradients raises.

    Numerics: stable softplus / sigmoid forms (finite for logits of +-1e4 in every
    dtype); bf16 / fp16 logits are read as they are and everything is computed and
    accumulated in fp32, and the four results are fp32 (fp64 for fp64 logits), as eager
    binary_cross_entropy_with_logits and mse_loss return under autocast. Logits of
    different dtypes are promoted first. Works under torch.autocast and torch.compile.
    """
    out = _gan_loss.try_eager_fast_path(real_logits, fake_logits, kind, reduction, real_label)
    if out is None:
        out = _gan_loss.gan_loss(real_logits, fake_logits, kind, reduction, real_label)
    return _tuple_new(GANLosses, out)


__all__ += ["gan_loss", "GANLosses"]


# ---------------------------------------------------------------------------
# StyleGAN-family ops (NVlabs' torch_utils.ops semantics; fastgan.compat.stylegan is the
# drop-in module form), on fused kernels: C++ CPU, Triton, CUDA, or the reference.

def bias_act(x: Tensor, b: Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None,
             clamp: float | None = None) -> Tensor:
    """StyleGAN's biased activation: `act(x + b, alpha) * gain`, then clamped to
    [-clamp, clamp] when `clamp` is given.

    `b` (1-D, of length x.shape[dim]) is added along dimension `dim` of `x` (any shape,
    any floating dtype; the result has x's shape and dtype). `act` is one of linear, relu,
    lrelu, tanh, sigmoid, elu, selu, softplus, swish; `alpha` (lrelu's negative slope) and
    `gain` default to the activation's own (`fastgan.ops.bias_act.ACTIVATIONS[act]`: lrelu
    0.2 and sqrt(2), relu and swish gain sqrt(2), the others 1). One fused pass forward
    and one backward (which also sums the bias gradient); backward keeps one tensor (y, or
    x for swish). Gradients to second order (R1 penalties); third order raises on the
    fused backends (the `reference` backend, plain torch ops, goes further).
    """
    return _bias_act.bias_act(x, b, dim, act, alpha, gain, clamp)


def upfirdn2d(x: Tensor, f: Tensor | None, up: Any = 1, down: Any = 1, padding: Any = 0,
              flip_filter: bool = False, gain: float = 1) -> Tensor:
    """StyleGAN's resampling op on an (N, C, H, W) tensor, per channel: upsample by zero
    insertion (`up`), pad (`padding`, relative to the upsampled image; negative crops),
    convolve with the FIR filter `f` (1-D separable or 2-D (fh, fw); None is identity;
    `flip_filter=True` correlates instead), downsample (`down`), times `gain`. `up`,
    `down`: an int or [x, y]; `padding`: an int, [x, y] or [x0, x1, y0, y1]. Build `f`
    with `setup_filter`. Gradients of any order (to `x`; `f` must not require grad).
    The fused kernels visit only the taps that land on input pixels (polyphase) and keep
    nothing but the filter for backward.
    """
    return _upfirdn2d.upfirdn2d(x, f, up, down, padding, flip_filter, gain)


def setup_filter(f: Any, device: Any = "cpu", normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> Tensor:
    """A float32 FIR filter for `upfirdn2d` (e.g. `setup_filter([1, 3, 3, 1])`): normalised
    to unit DC gain, optionally flipped and scaled; a 1-D list becomes its (n, n) outer
    product unless `separable` (default: separable from 8 taps)."""
    return _upfirdn2d.setup_filter(f, device, normalize, flip_filter, gain, separable)


def filter2d(x: Tensor, f: Tensor | None, padding: Any = 0, flip_filter: bool = False,
             gain: float = 1) -> Tensor:
    """`upfirdn2d` with the padding that keeps the image size (plus `padding`)."""
    return _upfirdn2d.filter2d(x, f, padding, flip_filter, gain)


def upsample2d(x: Tensor, f: Tensor | None, up: Any = 2, padding: Any = 0,
               flip_filter: bool = False, gain: float = 1) -> Tensor:
    """FIR upsampling by `up`: the output is `up` times the input (plus `padding`)."""
    return _upfirdn2d.upsample2d(x, f, up, padding, flip_filter, gain)


def downsample2d(x: Tensor, f: Tensor | None, down: Any = 2, padding: Any = 0,
                 flip_filter: bool = False, gain: float = 1) -> Tensor:
    """FIR downsampling by `down`: the output is the input divided by `down` (the input
    plus `padding`, divided)."""
    return _upfirdn2d.downsample2d(x, f, down, padding, flip_filter, gain)


__all__ += ["bias_act", "upfirdn2d", "setup_filter", "filter2d", "upsample2d", "downsample2d"]
