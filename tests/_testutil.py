"""Helpers shared by the test files (imported as a plain module: pytest puts tests/ on
sys.path)."""

from __future__ import annotations

import torch


def randomise_bn(bn: torch.nn.BatchNorm2d) -> None:
    """Non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        if bn.track_running_stats:
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)


def assert_close_scaled(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """max |a - b| <= tol * max(1, max |b|), compared in fp64 on the CPU."""
    a, b = a.double().cpu(), b.double().cpu()
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= tol * scale, f"max error {err:.3e} > {tol:.1e} * {scale:.3g}"


def round_bf16_like_the_gpu() -> None:
    """Triton 3.8's interpreter truncates fp32 -> bf16 casts; GPUs round to nearest even
    (cvt.rn.bf16.f32). Make the interpreter round like the hardware, so that bf16 results
    are held to the same tolerance as on a GPU."""
    import numpy as np
    from triton import language as tl
    from triton.runtime import interpreter

    cast = interpreter.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16)
            data = bits.view(torch.int16).numpy().view(np.uint16)
            return interpreter.TensorHandle(data, dst_type.scalar)
        return cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = cast_impl
