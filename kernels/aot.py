"""Compiles every Triton kernel of fastgan for real GPUs, without a GPU.

    python -m fastgan.kernels.aot [--arch 80 90] [--quick]

Each kernel module lists representative calls of its host launchers (`aot_cases()`:
DCGAN shapes, odd shapes, NCHW and channels_last for bn_act; GAN batches and large
inputs for gan_loss; StyleGAN shapes for bias_act and upfirdn2d; a BigGAN layer and odd
shapes for cbn_act; each dtype class).
They run on meta tensors with the kernel launches recorded instead of executed, so the
compiled specialisations are exactly the ones the launchers would create: same
constexprs, the same integer specialisation as Triton's JIT (1 and None -> constexpr,
multiples of 16 -> aligned, i32/i64 by range), 16-byte aligned pointers, and every
autotune config that survives the pruning for that
shape. Each is compiled with
triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)); printed per kernel:
registers and stack frame (cuobjdump -res-usage of the cubin), Triton's shared memory
(metadata, bytes) and spill bytes, stores + loads (ptxas -v with Triton's flags, whose
log Triton discards; cross-checked against the cubin). Exits with status 1 if any kernel
spills or fails to compile.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Iterator

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

ARCHS = (80, 90)
_PTR_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
              torch.float64: "fp64", torch.int32: "i32", torch.int64: "i64"}


@dataclasses.dataclass(frozen=True)
class Launch:
    kernel: Any  # JITFunction or Autotuner
    args: tuple
    kwargs: dict


@dataclasses.dataclass(frozen=True)
class Spec:
    """One compilation: a kernel, its signature and constexprs, and launch options."""
    fn: JITFunction
    signature: tuple
    constexprs: tuple
    aligned: tuple  # argument indices with tt.divisibility 16
    num_warps: int
    num_stages: int

    @property
    def label(self) -> str:
        """kernel[dtype constexprs warps]: tile constexprs by value, flags by name if set."""
        meta = [k if v is True else f"{k}={v}" for k, v in self.constexprs
                if k.isupper() and v is not False]
        ptr = next((t for _, t in self.signature if t.startswith("*")), "*")
        return f"{self.fn.__name__.strip('_')}[{ptr[1:]} {' '.join(meta)} w{self.num_warps}]"


@contextlib.contextmanager
def recording(module) -> Iterator[list[Launch]]:
    """Replaces `module.wrap_triton` so that launches are recorded, not run."""
    launches: list[Launch] = []

    class _Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(Launch(self.kernel, args, kwargs))

    saved = module.wrap_triton
    module.wrap_triton = _Recorder
    try:
        yield launches
    finally:
        module.wrap_triton = saved


def _specs(launch: Launch, quick: bool = False) -> list[Spec]:
    """The compilations Triton would make for `launch` (one per surviving config; the
    first of them only when `quick`)."""
    kernel = launch.kernel
    configs: list[Any] = [None]
    if isinstance(kernel, Autotuner):
        named = dict(zip(kernel.arg_names, launch.args))
        prune = kernel.early_config_prune
        configs = prune(kernel.configs, named, **launch.kwargs) if prune else kernel.configs
        configs = configs[:1] if quick else configs
        kernel = kernel.fn
    fn: JITFunction = kernel
    out = []
    for cfg in configs:
        bound = dict(zip(fn.arg_names, launch.args))
        bound.update(launch.kwargs)
        if cfg is not None:
            bound.update(cfg.kwargs)
        signature, constexprs, aligned = [], [], []
        for i, name in enumerate(fn.arg_names):
            v = bound[name]
            if (i in fn.constexprs or v is None
                    or (isinstance(v, int) and not isinstance(v, bool) and v == 1)):
                signature.append((name, "constexpr"))
                constexprs.append((name, v))
            elif isinstance(v, torch.Tensor):
                signature.append((name, "*" + _PTR_TYPES[v.dtype]))
                aligned.append(i)
            elif isinstance(v, bool):
                signature.append((name, "i1"))
            elif isinstance(v, int):
                signature.append((name, "i32" if -2**31 <= v < 2**31 else "i64"))
                if v % 16 == 0:
                    aligned.append(i)
            elif isinstance(v, float):
                signature.append((name, "fp32"))
            else:
                raise TypeError(f"aot: cannot specialise argument {name}={v!r} of {fn.__name__}")
        out.append(Spec(fn, tuple(signature), tuple(constexprs), tuple(aligned),
                        cfg.num_warps if cfg is not None else 4,
                        cfg.num_stages if cfg is not None else 3))
    return out


def collect(modules: Iterable, quick: bool = False) -> list[Spec]:
    """Unique compilations of the representative launches of `modules`."""
    specs: dict[Spec, None] = {}
    for module in modules:
        for case in module.aot_cases(quick=quick):
            with recording(module) as launches:
                case()
            for launch in launches:
                for spec in _specs(launch, quick):
                    specs[spec] = None
        compiled = {spec.fn for spec in specs}
        missing = [k for k in module.KERNELS
                   if (k.fn if isinstance(k, Autotuner) else k) not in compiled]
        if missing:
            raise RuntimeError(f"aot: {module.__name__}.aot_cases() never launches "
                               + ", ".join(getattr(k, "__name__", str(k)) for k in missing))
    return list(specs)


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_PTXAS = {"regs": r"Used (\d+) registers", "stack": r"(\d+) bytes stack frame",
          "spill_stores": r"(\d+) bytes spill stores", "spill_loads": r"(\d+) bytes spill loads"}


def _cuobjdump_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / SHARED / LOCAL of the cubin's kernel (cuobjdump -res-usage)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
                              check=True, capture_output=True, text=True).stdout
    m = _RES.search(text)
    if m is None:
        raise RuntimeError(f"aot: cannot read resource usage from cuobjdump:\n{text}")
    return dict(zip(("regs", "stack", "shared", "local"), map(int, m.groups())))


def _ptxas_report(ptx: str, arch: int) -> dict[str, int]:
    """ptxas -v of the kernel's PTX with the flags Triton's make_cubin uses (Triton
    discards that log): registers, stack frame and spill bytes."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"]
        log = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    out = {}
    for key, pattern in _PTXAS.items():
        m = re.search(pattern, log)
        if m is None:
            raise RuntimeError(f"aot: cannot read {key} from the ptxas log:\n{log}")
        out[key] = int(m.group(1))
    return out


def compile_spec(spec: Spec, arch: int) -> dict[str, Any]:
    """Compiles `spec` for sm_<arch>: registers, shared memory (Triton's, bytes), spill
    bytes (stores + loads) and stack frame bytes."""
    src = ASTSource(fn=spec.fn, signature=dict(spec.signature),
                    constexprs=dict(spec.constexprs),
                    attrs={(i,): [["tt.divisibility", 16]] for i in spec.aligned})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    cubin = _cuobjdump_usage(kernel.asm["cubin"])
    log = _ptxas_report(kernel.asm["ptx"], arch)
    if log["regs"] != cubin["regs"] or log["stack"] != cubin["stack"]:
        raise RuntimeError(f"aot: ptxas flags out of sync with Triton's: the log says "
                           f"{log}, the cubin {cubin}")
    return {"regs": cubin["regs"], "smem": int(kernel.metadata.shared),
            "spill": log["spill_stores"] + log["spill_loads"], "stack": cubin["stack"],
            "local": cubin["local"]}


def _modules() -> list:
    from fastgan.kernels import bias_act, bn_act, cbn_act, conv_bn_act, gan_loss, upfirdn2d
    return [bn_act, gan_loss, conv_bn_act, bias_act, upfirdn2d, cbn_act]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgan.kernels.aot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS),
                   help="SM versions to compile for (default: 80 90)")
    p.add_argument("--quick", action="store_true",
                   help="fewer shapes, and the first autotune config of each: one "
                        "specialisation of each kind (for tests)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        p.error("TRITON_INTERPRET=1 turns the kernels into interpreted functions; unset it")
    specs = collect(_modules(), quick=args.quick)
    print(f"{len(specs)} specialisations x {len(args.arch)} targets "
          f"(triton {triton.__version__})")
    print(f"{'kernel':<72} {'sm':>3} {'regs':>5} {'smem':>6} {'spill':>6} {'stack':>6}")
    bad = 0
    t0 = time.time()
    for spec in specs:
        for arch in args.arch:
            try:
                u = compile_spec(spec, arch)
            except Exception as e:  # report every failure, then fail
                bad += 1
                print(f"{spec.label:<72} {arch:>3} FAILED: {type(e).__name__}: {e}")
                continue
            flag = "  <-- SPILLS" if u["spill"] or u["local"] else ""
            bad += bool(flag)
            print(f"{spec.label:<72} {arch:>3} {u['regs']:>5} {u['smem']:>6} {u['spill']:>6} "
                  f"{u['stack']:>6}{flag}")
    print(f"compiled in {time.time() - t0:.0f}s; "
          + ("no spills" if not bad else f"{bad} kernel(s) spill or failed"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
