"""The `fastgan` command: `fastgan info`, `fastgan bench`, `fastgan demo`."""

from __future__ import annotations

import argparse
import platform
import sys
import time


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
        print(f"device    {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})")
    else:
        print("device    no CUDA device")
    if _ext.ext_loaded():
        bi = _ext.build_info()
        cuda = f"CUDA archs {bi['cuda_archs']}" if bi.get("cuda") else "no CUDA kernels"
        print(f"_C        built: CPU kernels ({bi['cpu_isa']}, OpenMP {'on' if bi.get('openmp') else 'off'}), "
              f"{cuda}; against torch {bi.get('torch_version')}")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
