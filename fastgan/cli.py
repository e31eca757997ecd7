"""The `fastgan` command: `fastgan train`, `fastgan sample`, `fastgan eval`, `fastgan info`,
`fastgan bench`, `fastgan demo`.

This file parses the flags and holds the small commands; `sample` and `eval` live in
fastgan/commands/, `bench` in fastgan.bench.suite (bench/). The top layer: nothing in
fastgan imports it but `python -m fastgan` (fastgan/__main__.py).

A user's mistake (fastgan.errors.UserError, a bad flag) ends the command with one line on
stderr and exit status 2; Ctrl-C outside training's own handling exits 130 quietly.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from fastgan.errors import UserError


def _info(_args: argparse.Namespace) -> int:
    import torch

    import fastgan
    from fastgan import _ext
    from fastgan._backend import backend_status, requested_backend

    try:
        import triton
        triton_v = triton.__version__
    except Exception as e:  # not installed or broken
        triton_v = f"not available ({type(e).__name__})"
    print(f"fastgan   {fastgan.__version__}")
    print(f"python    {platform.python_version()} ({platform.machine()})")
    print(f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'}, "
          f"{torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()})")
    print(f"triton    {triton_v}")
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        how = (_ext.cuda_arch_support(_ext.build_info()["cuda_archs"], cap)[1]
               if _ext.build_info().get("cuda") else "no CUDA kernels built")
        print(f"device    {torch.cuda.get_device_name()} (sm_{cap[0]}{cap[1]}): _C's CUDA "
              f"kernels: {how}")
    else:
        print("device    no CUDA device")
    if _ext.ext_loaded():
        bi = _ext.build_info()
        cuda = f"CUDA archs {bi['cuda_archs']}" if bi.get("cuda") else "no CUDA kernels"
        forced = os.environ.get("FASTGAN_CPU_CAPABILITY")
        how = f"FASTGAN_CPU_CAPABILITY={forced}" if forced else "the best this CPU runs"
        print(f"_C        built: CPU kernels for {', '.join(bi['cpu_capabilities'])} "
              f"(OpenMP {'on' if bi.get('openmp') else 'off'}), {cuda}; against torch "
              f"{bi.get('torch_version')}")
        print(f"          CPU kernels in use: {_ext.cpu_capability()} ({how})")
    else:
        print(f"_C        not loaded: {_ext.ext_error()}")
    print(f"backend   requested: {requested_backend()}")
    for name, (ok, why) in backend_status().items():
        print(f"  {name:<10} {'usable' if ok else 'unusable: ' + str(why)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Fused BatchNorm+LeakyReLU against eager nn.BatchNorm2d + nn.LeakyReLU on the CPU."""
    import torch

    import fastgan

    torch.manual_seed(0)
    shape = (args.batch, args.channels, args.size, args.size)
    x = torch.randn(shape) * 5 + 3
    eager = torch.nn.Sequential(torch.nn.BatchNorm2d(shape[1]), torch.nn.LeakyReLU(0.2))
    fused = fastgan.nn.BatchNormAct2d(shape[1], negative_slope=0.2)
    fused.load_state_dict(eager[0].state_dict())

    def step(module, inp):
        inp = inp.detach().requires_grad_()
        out = module(inp)
        out.backward(torch.ones_like(out))
        return out, inp.grad

    ye, ge = step(eager, x)
    yf, gf = step(fused, x)
    print(f"demo: BatchNorm2d + LeakyReLU(0.2), input {tuple(shape)} fp32, CPU, training mode")
    print(f"  max |y_fused - y_eager|        {(yf - ye).abs().max().item():.2e}")
    print(f"  max |dx_fused - dx_eager|      {(gf - ge).abs().max().item():.2e}")
    print(f"  max |running_var diff|         "
          f"{(fused.running_var - eager[0].running_var).abs().max().item():.2e}")
    times = {}
    for name, mod in (("eager", eager), ("fastgan", fused)):
        for _ in range(3):
            step(mod, x)
        samples = []
        for _ in range(args.iters):
            t0 = time.perf_counter()
            step(mod, x)
            samples.append(time.perf_counter() - t0)
        samples.sort()
        times[name] = samples[len(samples) // 2]
        print(f"  {name:<8} forward+backward median {times[name] * 1e3:8.2f} ms "
              f"({args.iters} iterations)")
    print(f"  speedup vs eager: {times['eager'] / times['fastgan']:.2f}x "
          "(a demo; bench/ holds the real benchmarks)")
    return 0


def _train_flags(p: argparse.ArgumentParser) -> None:
    """`fastgan train`'s flags (README.md, "Train a GAN"). Every default is None here, so a resumed run
    knows which flags were given again; the defaults live in TrainConfig."""
    from fastgan.runs.config import AMP, ARCHS, IMPLS, LOSSES

    a = p.add_argument
    a("--data", help="fashion-mnist (built in, the default), stacked-fashion-mnist (built in: "
                     "3 channels of independent Fashion-MNIST images, 1000 modes), a folder of "
                     "PNG/JPEG images, or an .npz with an `images` array (N, H, W[, C]) uint8")
    a("--image-size", type=int, help="a power of two >= 16 (default 32)")
    a("--arch", choices=ARCHS, help="dcgan (default), resnet (SNGAN/BigGAN-style ResNet) or "
                                    "r3gan (R3GAN-style residual G and D on the fused bias_act / "
                                    "upfirdn2d ops; its preset: --loss rpgan --r1 0.05 --r2 0.05 "
                                    "--betas 0 0.99)")
    a("--conditional", action="store_true", default=None,
      help="class-conditional G and D on the data's labels (Fashion-MNIST's classes, a folder's "
           "sub-folders, an .npz's `labels`)")
    a("--loss", choices=LOSSES, help="GAN loss (default ns; rpgan for --arch r3gan)")
    a("--gp", type=float, help="WGAN-GP penalty weight (default 0: off)")
    a("--r1", type=float, help="R1 penalty weight gamma (default 0: off)")
    a("--r2", type=float, help="R2 penalty weight gamma, R1 on fake images (default 0: off)")
    a("--n-critic", type=int, help="D steps per G step (default 1)")
    a("--clip", type=float, help="WGAN weight clipping of D to [-C, C] (default 0: off)")
    a("--spectral-norm", action=argparse.BooleanOptionalAction, default=None,
      help="spectral norm on D's layers (default off; on for --arch resnet)")
    a("--ema", type=float, help="EMA decay of the sampled generator (default 0.999; 0: off)")
    a("--amp", choices=AMP, help="mixed precision (default none; fp16 needs CUDA)")
    a("--impl", choices=IMPLS, help="fastgan (default), or the same model in eager PyTorch "
                                    "or under torch.compile, to compare")
    a("--batch-size", type=int, help="global batch size (default 64)")
    a("--steps", type=int, help="G steps to train to (default 2000; on --resume, the new end)")
    a("--lr", type=float, help="Adam learning rate of G and D (default 2e-4)")
    a("--betas", type=float, nargs=2, metavar=("B1", "B2"), help="Adam betas (default 0.5 0.999)")
    a("--nz", type=int, help="noise dimension (default 100)")
    a("--ngf", type=int, help="generator width (default 64)")
    a("--ndf", type=int, help="discriminator width (default 64)")
    a("--seed", type=int, help="seed of the weights, data order and noise (default 0)")
    a("--device", help="cpu or cuda (default: cuda when available)")
    a("--out", help="new run directory (default runs/run-<date>-<time>)")
    a("--log-every", type=int, help="steps between metrics.jsonl lines (default 50)")
    a("--sample-every", type=int, help="steps between sample grids (default 500; 0: at the end)")
    a("--ckpt-every", type=int, help="steps between kept checkpoints (default 1000)")
    a("--eval-every", type=int, help="steps between FID/KID/IS evaluations with the "
                                     "fastgan-fmnist features, plus modes on stacked-fashion-mnist "
                                     "and class accuracy for --conditional (default 0: never)")
    a("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    a("--quiet", action="store_true", help="no progress output")


def _train(args: argparse.Namespace) -> int:
    from fastgan.runs.config import merge_resume, new_config, read_config
    from fastgan.train import train

    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("cmd", "func", "resume", "quiet")}
    if "betas" in given:
        given["betas"] = tuple(given["betas"])
    if args.resume:
        if "out" in given and os.path.abspath(given["out"]) != os.path.abspath(args.resume):
            raise UserError(f"--out {given['out']}: a resumed run stays in its directory "
                            f"({args.resume}); leave --out out")
        cfg = merge_resume(read_config(args.resume), given, args.resume)
    else:
        cfg = new_config(given)
    return train(cfg, resume=bool(args.resume), quiet=args.quiet)


def _sample(args: argparse.Namespace) -> int:
    from fastgan.commands.sample import sample

    return sample(args.ckpt, n=args.n, out=args.out, npz=args.npz, seed=args.seed,
                  ema=not args.no_ema, cls=args.cls)


def _eval(args: argparse.Namespace) -> int:
    from fastgan.commands.eval import eval_command

    return eval_command(args.ckpt, args.images, args.data, args.n, args.metrics, args.features,
                        args.weights, args.json, split=args.split, image_size=args.image_size,
                        no_ema=args.no_ema, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except UserError as e:
        cmd = argv[0] if argv and not argv[0].startswith("-") else ""
        print(f"fastgan {cmd}: error: {e}".replace("  ", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # several processes (torchrun): another one failed, or stopped answering
        if not _distributed_failure(e):
            raise
        cmd = argv[0] if argv and not argv[0].startswith("-") else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
        if "another process" not in first:
            first = f"another process of the job failed or stopped answering ({first})"
        print(f"fastgan {cmd}: error: {first}", file=sys.stderr)
        return 1


def _distributed_failure(e: Exception) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    from fastgan.train.distributed import DistributedError

    return isinstance(e, DistributedError) or (dist.is_available()
                                               and isinstance(e, dist.DistError))


def _main(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:  # its own argument parser (fastgan.bench.suite)
        from fastgan.bench.suite import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fastgan", description="Fused PyTorch kernels for GANs")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bench", help="eager vs torch.compile vs fastgan; `fastgan bench -h`")
    p_info = sub.add_parser("info", help="versions, what was built, which backends are usable")
    p_info.set_defaults(func=_info)
    p_demo = sub.add_parser("demo", help="fused BatchNorm+LeakyReLU vs eager on the CPU")
    p_demo.add_argument("--batch", type=int, default=64)
    p_demo.add_argument("--channels", type=int, default=64)
    p_demo.add_argument("--size", type=int, default=32)
    p_demo.add_argument("--iters", type=int, default=20)
    p_demo.set_defaults(func=_demo)
    p_train = sub.add_parser("train", help="train a DCGAN (default: built-in Fashion-MNIST)")
    _train_flags(p_train)
    p_train.set_defaults(func=_train)
    p_sample = sub.add_parser("sample", help="a PNG grid / .npz of samples from a checkpoint")
    p_sample.add_argument("ckpt", metavar="CKPT", help="a checkpoint file or a run directory")
    p_sample.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p_sample.add_argument("--out", help="PNG grid to write (default grid.png unless --npz)")
    p_sample.add_argument("--npz", help="also write the images, uint8 (N, H, W, C), to FILE.npz "
                                        "(and their classes as `labels`, for a conditional run)")
    p_sample.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p_sample.add_argument("--no-ema", action="store_true", help="the trained G, not its EMA copy")
    p_sample.add_argument("--class", dest="cls", type=int, metavar="K",
                          help="a conditional run: draw class K only (default: every class, "
                               "one grid row each)")
    p_sample.set_defaults(func=_sample)
    p_eval = sub.add_parser("eval", help="FID/KID/IS of a checkpoint or of images, offline")
    p_eval.add_argument("ckpt", metavar="CKPT", nargs="?", help="a checkpoint or run directory")
    p_eval.add_argument("--images", help="evaluate these images instead: a folder or an .npz")
    p_eval.add_argument("--data", help="reference dataset (default: the run's data, or "
                                       "fashion-mnist)")
    p_eval.add_argument("--split", choices=("train", "test"), default="train",
                        help="split of the built-in reference data (default train)")
    p_eval.add_argument("--n", type=int, default=10000, help="samples to evaluate (default 10000)")
    p_eval.add_argument("--metrics", default="fid,kid,is",
                        help="subset of fid,kid,is,modes,accuracy (default fid,kid,is); modes: "
                             "stacked-fashion-mnist's 1000 modes covered, accuracy: a conditional "
                             "run's samples or an .npz's images in their class")
    p_eval.add_argument("--features", default="fastgan-fmnist",
                        help="fastgan-fmnist (default, shipped) or inception (needs --weights)")
    p_eval.add_argument("--weights", help="Inception weights file (TorchScript "
                                          "inception-2015-12-05.pt or pytorch-fid's .pth)")
    p_eval.add_argument("--json", help="also write the results to this JSON file")
    p_eval.add_argument("--image-size", type=int,
                        help="with --images: size to load them at (default 32)")
    p_eval.add_argument("--no-ema", action="store_true", help="the trained G, not its EMA copy")
    p_eval.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p_eval.set_defaults(func=_eval)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
