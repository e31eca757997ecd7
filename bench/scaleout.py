"""On paper: what `fastgan train` on N processes all-reduces per step, against its compute.

    python bench/scaleout.py [--image-size 64] [--batch 64] [--ngf 64] [--ndf 64]

Counts from the real models and the real step (fastgan.train.loop.Trainer, n_critic 1,
ns loss, no penalty):
  - gradients: one all-reduce of D's gradients (D update) and one of G's (G update), fp32;
  - BatchNorm statistics: one all-reduce of 2C + 1 fp64 values per synchronized BatchNorm
    call forward and one backward (fastgan/ops/sync_bn_act.py). Per step G's BatchNorms
    run once forward (the fakes) and once backward (G update); D's three times forward
    (real, fake, fake for G) and three times backward;
  - one 1-value all-reduce (the agreed stop flag);
  - FLOPs: torch.utils.flop_counter over one training step on one process at the
    per-process batch (convolutions and matrix products, forward and backward).
Times are a bandwidth/latency model of a ring all-reduce (each process sends and receives
2 (N - 1) / N of the buffer), with the link numbers stated in the output: estimates, not
measurements.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastgan.nn import SyncBatchNormAct2d
from fastgan.runs.config import TrainConfig
from fastgan.train.loop import Trainer

LINKS = {  # name: (bandwidth per direction, bytes/s; latency of one small all-reduce, s)
    "NVLink (H100 SXM, 8 GPUs)": (400e9, 15e-6),
    "100 Gb/s Ethernet (RoCE)": (11e9, 50e-6),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="per process")
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--ndf", type=int, default=64)
    args = ap.parse_args()
    cfg = TrainConfig(image_size=args.image_size, batch_size=args.batch, ngf=args.ngf,
                      ndf=args.ndf, ema=0.0, device="cpu").check()
    images = torch.randint(0, 256, (args.batch, 3, args.image_size, args.image_size),
                           dtype=torch.uint8)
    t = Trainer(cfg, images)
    t.train_step()  # warm-up (lazy initialisations)
    with FlopCounterMode(display=False) as flops:
        t.train_step()
    step_flops = flops.get_total_flops()

    def bn_channels(m):
        import fastgan
        conv = fastgan.convert(m, sync_bn=True)
        return [b.num_features for b in conv.modules() if isinstance(b, SyncBatchNormAct2d)]

    g_bn, d_bn = bn_channels(t.G), bn_channels(t.D)
    g_params = sum(p.numel() for p in t.G.parameters())
    d_params = sum(p.numel() for p in t.D.parameters())
    grad_bytes = 4 * (g_params + d_params)
    bn_values = 2 * sum(2 * c + 1 for c in g_bn) + 6 * sum(2 * c + 1 for c in d_bn)
    bn_bytes = 8 * bn_values
    n_coll = 2 * len(g_bn) + 6 * len(d_bn) + 2 + 1
    print(f"DCGAN {args.image_size}x{args.image_size}, ngf {args.ngf}, ndf {args.ndf}, "
          f"batch {args.batch} per process")
    print(f"  G: {g_params / 1e6:.2f} M parameters, BatchNorm channels {g_bn}")
    print(f"  D: {d_params / 1e6:.2f} M parameters, BatchNorm channels {d_bn}")
    print(f"  all-reduced per step: gradients {grad_bytes / 1e6:.2f} MB (2 all-reduces), "
          f"BatchNorm statistics {bn_bytes / 1e3:.1f} kB ({2 * len(g_bn) + 6 * len(d_bn)} "
          f"all-reduces), stop flag 4 B: {n_coll} collectives")
    print(f"  compute per step and process: {step_flops / 1e9:.1f} GFLOP")
    for n in (2, 8, 64):
        moved = 2 * (n - 1) / n * (grad_bytes + bn_bytes)
        print(f"  N = {n}: {moved / 1e6:.1f} MB sent and received per process per step")
        for link, (bw, lat) in LINKS.items():
            if link.startswith("NVLink") and n > 8:
                continue  # one NVLink domain is one machine of 8
            s = moved / bw + n_coll * lat
            print(f"    {link:<28} ~{s * 1e3:6.2f} ms per step; compute takes as long at "
                  f"{step_flops / s / 1e12:6.1f} TFLOP/s")


if __name__ == "__main__":
    main()
