"""The fused-convolution ops of the fully fused block: backend choice.

    conv_bn_act(x, weight, bias, scale, shift, negative_slope, transposed, stride,
                padding, output_padding, dilation, stats) -> (z, mean, var)
        z = conv(leaky(x * scale + shift)) + bias, the producing block's BatchNorm and
        activation applied as x is read (no prologue when scale is None), and z's
        per-channel batch mean and biased variance when `stats`; for inference without
        autograd, out_scale / out_shift / out_slope apply the block's own (eval)
        BatchNorm and activation in the epilogue, so that z is never written
    affine_act(z, scale, shift, negative_slope) -> leaky(z * scale + shift)

Both are differentiable in every argument that is a tensor (mean and var too), so a
chain of blocks is plain autograd over them: fastgan/nn/fused_chain.py. Kernels: the
`triton` backend (fastgan/ops/conv_bn_act_triton.py; CUDA tensors, or CPU tensors
under TRITON_INTERPRET=1); `reference` (fastgan/ops/conv_bn_act_reference.py) elsewhere.
"""

from __future__ import annotations

from torch import Tensor

from fastgan import _backend
from fastgan.ops.conv_bn_act_reference import reference_affine_act, reference_conv_bn_act

OP = "conv_bn_act"
KERNELS: tuple[str, ...] = ("triton",) if _backend.triton_installed() else ()


def backend(x: Tensor) -> str:
    """The backend conv_bn_act and affine_act run on for tensors like x."""
    return _backend.select(OP, x.device, KERNELS)


def _triton():
    from fastgan.ops import conv_bn_act_triton  # imports triton; registers the ops once
    return conv_bn_act_triton


def conv_bn_act(x: Tensor, weight: Tensor, bias: Tensor | None, scale: Tensor | None,
                shift: Tensor | None, negative_slope: float, transposed: bool, stride,
                padding, output_padding, dilation, stats: bool,
                out_scale: Tensor | None = None, out_shift: Tensor | None = None,
                out_slope: float = 0.0):
    args = (x, weight, bias, scale, shift, float(negative_slope), bool(transposed),
            list(stride), list(padding), list(output_padding), list(dilation), bool(stats),
            out_scale, out_shift, float(out_slope))
    if backend(x) == "triton":
        return _triton().triton_conv_bn_act(*args)
    return reference_conv_bn_act(*args)


def affine_act(z: Tensor, scale: Tensor, shift: Tensor, negative_slope: float) -> Tensor:
    if backend(z) == "triton":
        return _triton().triton_affine_act(z, scale, shift, float(negative_slope))
    return reference_affine_act(z, scale, shift, float(negative_slope))


@_backend.constant_result
def _chain_requested() -> bool:
    return (_backend.requested_backend() == "triton"
            and _backend.getenv("FASTGAN_FUSED_CONV") != "0")


def chain_enabled(x: Tensor) -> bool:
    """Whether fused modules run their conv -> BN -> act blocks through these ops
    (fastgan/nn/fused_chain.py) for input x: when the triton backend is forced
    (use_backend("triton") or FASTGAN_BACKEND=triton) and runs on x's device, unless
    FASTGAN_FUSED_CONV=0 asks for the ATen convolutions (for comparison). Under `auto`
    the blocks keep the ATen convolution until the chain has been measured on a GPU.
    Under torch.compile the answer is fixed when the graph is traced."""
    return _chain_requested() and backend(x) == "triton"
