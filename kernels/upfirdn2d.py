"""Triton kernel of the upfirdn2d op (StyleGAN's upsample, pad, FIR filter, downsample),
and its host-side launcher.

The launcher `upfirdn2d` has the semantics of fastgan::upfirdn2d (csrc/upfirdn2d.cpp);
fastgan/ops/upfirdn2d_triton.py registers it as the torch.library.triton_op op
fastgan::triton_upfirdn2d.

Polyphase, per axis (csrc/upfirdn2d_checks.h): output o reads the upsampled, padded input
at u = o * down - pad0 + k for taps k in [0, taps); only u divisible by `up` are input
pixels (u / up), so the taps of output o are k0, k0 + up, k0 + 2 up, ... with
k0 = (pad0 - o * down) mod up, and input pixel i0 + j for the j-th of them
(i0 = (o * down - pad0 + k0) / up). A program runs cdiv(taps, up) taps per axis instead of
`taps`, each a masked load (zero outside the input: the padding) times the filter tap
f[taps - 1 - k] (f[k] with flip_filter), gathered from the small filter (in the cache).
The phase is per output pixel, so a tile mixes phases freely.

Tiles (a 1-D grid over planes x tiles; x read through its strides, so any layout and
expanded gradients are read in place):
  NCHW           one (n, c) plane per program, a BLOCK_A x BLOCK_B tile of (oy, ox).
  channels_last  one image per program, BLOCK_A output pixels x BLOCK_B channels, so the
                 loads and stores run along C.
The output has x's memory format (channels_last for a channels_last x, else contiguous).
Arithmetic in fp32 for fp32 / bf16 / fp16 (the filter cast to it), fp64 for fp64; gain is
applied once to the sum and travels as an fp32 (hi, lo) pair. Offsets are 64-bit when x
or the output has >= INDEX64_MIN_NUMEL elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastgan.kernels.common import acc_dtype, f64, split_f64

# Tunables, module attributes so that tests can lower them.
TILE = 512  # outputs per program (4 warps: 4 per thread)
MAX_BLOCK_W = 64  # NCHW: outputs along a row per tile
MAX_BLOCK_C = 64  # channels_last: channels per tile
NUM_WARPS = 4
INDEX64_MIN_NUMEL = 2**31


@triton.jit
def _phase(o, down, pad0, up):
    """(first tap k0, input index of that tap) of outputs o along one axis."""
    a = pad0 - o * down
    k0 = ((a % up) + up) % up
    return k0, (k0 - a) // up


@triton.jit
def _upfirdn2d_kernel(x_ptr, f_ptr, y_ptr, C, H, W, OH, OW,
                      sxn, sxc, sxh, sxw, syn, syc, syh, syw,
                      upx, upy, downx, downy, px0, py0, fh, fw, taps_x, taps_y,
                      tiles_a, tiles_b, gain_hi, gain_lo,
                      FLIP: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                      INDEX_64: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    acc_ty: tl.constexpr = tl.float64 if y_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    if INDEX_64:
        pid = pid.to(tl.int64)
    tiles = tiles_a * tiles_b
    plane = pid // tiles
    t = pid - plane * tiles
    ta = t // tiles_b
    tb = t - ta * tiles_b
    a = ta * BLOCK_A + tl.arange(0, BLOCK_A)[:, None]  # [BLOCK_A, 1]
    b = tb * BLOCK_B + tl.arange(0, BLOCK_B)[None, :]  # [1, BLOCK_B]
    if CHANNELS_LAST:  # a: output pixel of image `plane`, b: channel
        n = plane
        oy = a // OW
        ox = a - oy * OW
        c = b
        out_mask = (a < OH * OW) & (c < C)
    else:  # plane = n * C + c; a: output row, b: output column
        n = plane // C
        c = plane - n * C
        oy = a
        ox = b
        out_mask = (oy < OH) & (ox < OW)
    x_base = x_ptr + n * sxn + c * sxc
    ky0, iy0 = _phase(oy, downy, py0, upy)
    kx0, ix0 = _phase(ox, downx, px0, upx)
    acc = tl.zeros([BLOCK_A, BLOCK_B], acc_ty)
    for jy in range(taps_y):
        ky = ky0 + jy * upy
        iy = iy0 + jy
        vy = (ky < fh) & (iy >= 0) & (iy < H)
        if FLIP:
            fy = ky
        else:
            fy = fh - 1 - ky
        for jx in range(taps_x):
            kx = kx0 + jx * upx
            ix = ix0 + jx
            vx = (kx < fw) & (ix >= 0) & (ix < W)
            if FLIP:
                fx = kx
            else:
                fx = fw - 1 - kx
            valid = vy & vx
            fv = tl.load(f_ptr + fy * fw + fx, mask=valid, other=0.0)
            xv = tl.load(x_base + iy * sxh + ix * sxw, mask=valid & out_mask, other=0.0)
            acc += xv.to(acc_ty) * fv
    acc = acc * f64(gain_hi, gain_lo, acc_ty)
    y_offs = n * syn + c * syc + oy * syh + ox * syw
    tl.store(y_ptr + y_offs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


# ---------------------------------------------------------------------------
# Host side.

def _is_channels_last(t: torch.Tensor) -> bool:
    """As csrc/common.h: channels_last and not also NCHW-contiguous."""
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def output_size(h: int, w: int, fh: int, fw: int, up, down, padding) -> tuple[int, int]:
    """(oh, ow): per axis (in * up + pad0 + pad1 - taps) // down + 1."""
    ph = h * up[1] + padding[2] + padding[3]
    pw = w * up[0] + padding[0] + padding[1]
    return (ph - fh) // down[1] + 1, (pw - fw) // down[0] + 1


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up, down, padding, flip_filter: bool,
              gain: float) -> torch.Tensor:
    """fastgan::upfirdn2d: x (N, C, H, W), f (fh, fw), up / down [x, y], padding
    [x0, x1, y0, y1] (checked by the caller). The output has x's memory format."""
    n, c, h, w = x.shape
    fh, fw = f.shape
    oh, ow = output_size(h, w, fh, fw, up, down, padding)
    cl = _is_channels_last(x)
    fmt = torch.channels_last if cl else torch.contiguous_format
    y = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    f = f.to(acc_dtype(x)).contiguous()
    if cl:
        block_b = min(triton.next_power_of_2(c), MAX_BLOCK_C)
        block_a = max(1, min(TILE // block_b, triton.next_power_of_2(oh * ow)))
        tiles_a, tiles_b, planes = triton.cdiv(oh * ow, block_a), triton.cdiv(c, block_b), n
    else:
        block_b = min(triton.next_power_of_2(ow), MAX_BLOCK_W)
        block_a = max(1, min(TILE // block_b, triton.next_power_of_2(oh)))
        tiles_a, tiles_b, planes = triton.cdiv(oh, block_a), triton.cdiv(ow, block_b), n * c
    upx, upy = up
    downx, downy = down
    index64 = max(x.numel(), y.numel()) >= INDEX64_MIN_NUMEL
    wrap_triton(_upfirdn2d_kernel)[(planes * tiles_a * tiles_b,)](
        x, f, y, c, h, w, oh, ow, *x.stride(), *y.stride(), upx, upy, downx, downy,
        padding[0], padding[2], fh, fw, triton.cdiv(fw, upx), triton.cdiv(fh, upy),
        tiles_a, tiles_b, *split_f64(gain), FLIP=bool(flip_filter), CHANNELS_LAST=cl,
        INDEX_64=index64, BLOCK_A=block_a, BLOCK_B=block_b, num_warps=NUM_WARPS)
    return y


# Every kernel of this file, for the ahead-of-time compile check (fastgan.kernels.aot).
KERNELS = (_upfirdn2d_kernel,)


def aot_cases(quick: bool = False) -> list:
    """Representative calls of the launcher (on meta tensors) for fastgan.kernels.aot:
    StyleGAN2's upsampling (up 2, 4x4 filter) and downsampling (down 2) and a plain
    filter, NCHW and channels_last, fp32, fp16 and bf16, fp64 once per layout; the
    gradient of the upsampling (an expanded, stride-0 gradient read in place). `quick`
    keeps one call per layout."""
    cases = [((4, 512, 16, 16), (2, 2), (1, 1), (2, 1, 2, 1), torch.contiguous_format),
             ((4, 256, 32, 32), (1, 1), (2, 2), (1, 1, 1, 1), torch.channels_last),
             ((4, 128, 64, 64), (1, 1), (1, 1), (1, 2, 1, 2), torch.contiguous_format),
             ((4, 512, 8, 8), (2, 2), (1, 1), (2, 1, 2, 1), torch.channels_last)]
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    combos = [(*c, dt) for c in cases for dt in dtypes]
    if quick:
        combos = [(*cases[0], torch.float32), (*cases[1], torch.bfloat16)]
    combos += [(*cases[0], torch.float64), (*cases[1], torch.float64)]

    def case(shape, up, down, padding, fmt, dtype):
        def run():
            x = torch.empty(shape, dtype=dtype, device="meta").contiguous(memory_format=fmt)
            f = torch.empty((4, 4), dtype=torch.float32, device="meta")
            y = upfirdn2d(x, f, up, down, padding, False, 4.0)
            if not quick:
                upfirdn2d(y.new_empty(()).expand(y.shape), f, down, up, padding, True, 4.0)
        return run

    return [case(*c) for c in combos]
