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
