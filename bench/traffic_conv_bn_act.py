"""Traffic model of the fully fused block (not a measurement): bytes and FLOPs per DCGAN
generator layer, forward + backward, for eager PyTorch, an Inductor-class schedule (the
convolution an extern call, BatchNorm + activation fused around it) and fastgan's fused
chain (kernels/conv_bn_act.py), with the H100 roofline time of each.

    python -m fastgan.bench.traffic_conv_bn_act [--batch 128] [--bytes 2]

Passes over activations, per layer with input X (elements) and output Z, counted from
the kernels each schedule runs (weights are read once per GEMM and written once by
wgrad; per-channel vectors are ignored):
  eager      fwd: conv X+Z, BatchNorm stats Z + normalise 2Z, ReLU 2Z
             bwd: ReLU 3Z, BatchNorm 5Z (reduce dz, z; then dz, z -> dx), dgrad Z+X,
                  wgrad Z+X                                         = 3X + 16Z
  inductor   fwd: conv X+Z, BN+act 3Z; bwd: BN+act 5Z, dgrad Z+X, wgrad Z+X = 3X + 11Z
  fused      fwd: conv reads X through the prologue, writes Z (statistics in the
                  epilogue)
             bwd: dgrad reads dz and z (the statistics' gradient terms in its prologue),
                  writes dX and reads X (activation mask, epilogue); wgrad reads X
                  (recomputing the activation) and dz, z                 = 4X + 5Z
The last layer (no BatchNorm; Tanh) is the same in the three but for the fused chain's
prologue on its input. Time per layer = max(bytes / bandwidth, FLOPs / peak).
"""

from __future__ import annotations

import argparse

H100_BW = 3.35e12  # bytes/s, SXM HBM3
H100_BF16 = 989e12  # dense FLOP/s

# (C_in, C_out, H_in, kernel, stride): the DCGAN 64x64 generator (nz=100, ngf=64, nc=3)
GENERATOR = [(100, 512, 1, 4, 1), (512, 256, 4, 4, 2), (256, 128, 8, 4, 2), (128, 64, 16, 4, 2),
             (64, 3, 32, 4, 2)]


def layer_rows(batch: int, nbytes: int) -> list[dict]:
    rows = []
    for i, (ci, co, h, k, s) in enumerate(GENERATOR):
        h_out = (h - 1) * s + k - (2 if s == 2 else 0)
        X, Z = batch * ci * h * h, batch * co * h_out * h_out
        W = ci * co * k * k
        flops = 3 * 2 * batch * ci * co * k * k * h * h  # forward + dgrad + wgrad
        bn = i < len(GENERATOR) - 1
        passes = {"eager": (3, 16 if bn else 8), "inductor": (3, 11 if bn else 8),
                  "fused": (4, 5 if bn else 8)}
        row = {"layer": f"ConvT {ci}->{co}, {h}->{h_out}", "X": X, "Z": Z, "flops": flops}
        for name, (px, pz) in passes.items():
            b = (px * X + pz * Z + 4 * W) * nbytes  # weights: fwd, dgrad, wgrad read + write
            row[name] = b
            row[name + "_us"] = max(b / H100_BW, flops / H100_BF16) * 1e6
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fastgan.bench.traffic_conv_bn_act")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--bytes", type=int, default=2, help="bytes per element (2: bf16)")
    args = p.parse_args(argv)
    rows = layer_rows(args.batch, args.bytes)
    print("| layer | GFLOP fwd+bwd | eager MB | inductor MB | fused MB | eager µs | "
          "inductor µs | fused µs | FLOP floor µs |")
    print("|---|---|---|---|---|---|---|---|---|")
    tot = {k: 0.0 for k in ("flops", "eager", "inductor", "fused", "eager_us", "inductor_us",
                            "fused_us")}
    for r in rows:
        for k in tot:
            tot[k] += r[k]
        print(f"| {r['layer']} | {r['flops'] / 1e9:.2f} | {r['eager'] / 1e6:.1f} | "
              f"{r['inductor'] / 1e6:.1f} | {r['fused'] / 1e6:.1f} | {r['eager_us']:.1f} | "
              f"{r['inductor_us']:.1f} | {r['fused_us']:.1f} | "
              f"{r['flops'] / H100_BF16 * 1e6:.1f} |")
    print(f"| **generator** | {tot['flops'] / 1e9:.2f} | {tot['eager'] / 1e6:.1f} | "
          f"{tot['inductor'] / 1e6:.1f} | {tot['fused'] / 1e6:.1f} | {tot['eager_us']:.1f} | "
          f"{tot['inductor_us']:.1f} | {tot['fused_us']:.1f} | "
          f"{tot['flops'] / H100_BF16 * 1e6:.1f} |")


if __name__ == "__main__":
    main()
