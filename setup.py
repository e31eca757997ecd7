"""Builds fastgan._C with torch.utils.cpp_extension.

C++ CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built; the kernel sources of
csrc/cpu/kernels/ once per instruction set (default, and AVX2 and AVX-512 on x86-64),
one copy chosen when _C is loaded (csrc/cpu/dispatch.h). The CUDA kernels of
csrc/cuda/*.cu are built when FASTGAN_CUDA=1, or when it is unset and a GPU is
visible; FASTGAN_CUDA=0 skips them. FASTGAN_BUILD_EXT=0, or a machine without a C++
compiler, installs fastgan without _C (pure Python: reference and triton backends).
Environment:

  FASTGAN_BUILD_EXT     1 / 0 / unset (auto: build when a C++ compiler is found)
  FASTGAN_CUDA          1 / 0 / unset (auto)
  TORCH_CUDA_ARCH_LIST  CUDA archs (default scripts/cuda_toolkit.py's DEFAULT_CUDA_ARCHS,
                        "7.5;8.0;8.6;8.9;9.0+PTX")
  MAX_JOBS              parallel compile jobs (ninja)
  CUDA_HOME             CUDA toolkit root (found from nvcc when unset)

Metadata lives in pyproject.toml. Install with
`pip install --no-build-isolation -e .` once torch is installed.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from cuda_toolkit import DEFAULT_CUDA_ARCHS, find_cuda_home  # noqa: E402


def _fail(msg: str) -> None:
    sys.stderr.write(f"\n[fastgan build] ERROR: {msg}\n\n")
    raise SystemExit(1)


def _cpu_variants() -> list[str]:
    """Instruction sets compiled besides the baseline: AVX2 and AVX-512 on x86-64 (the
    CPU that builds need not have them), none elsewhere."""
    return ["avx2", "avx512"] if platform.machine().lower() in ("x86_64", "amd64") else []


# compiled once per instruction set (the rest of csrc/ once, for the baseline)
KERNEL_SOURCES = sorted(glob.glob("csrc/cpu/kernels/*.cpp"))

ISA_FLAGS = {
    # at::vec picks its implementation from CPU_CAPABILITY_*; the flags must match (and
    # csrc/cpu/dispatch.cpp checks the CPU for each copy's -m flags).
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}


def _want_cuda(torch) -> bool:
    flag = os.environ.get("FASTGAN_CUDA", "").strip()
    if flag in ("0", "false", "False", "no"):
        return False
    if flag in ("1", "true", "True", "yes"):
        return True
    if flag:
        _fail(f"FASTGAN_CUDA must be 1 or 0 (or unset for auto), got {flag!r}")
    return bool(torch.cuda.is_available())


def _extensions():
    cuda_home = find_cuda_home()
    if cuda_home and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = cuda_home  # before cpp_extension reads it
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        _fail(f"torch is needed to build fastgan._C ({e}). Install it first "
              "(pip install torch==2.14.1), then pip install --no-build-isolation .")
    with_cuda = _want_cuda(torch)
    variants = _cpu_variants()
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or DEFAULT_CUDA_ARCHS
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp")) + KERNEL_SOURCES
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if with_cuda and not cuda_home:
        _fail("FASTGAN_CUDA=1 but no CUDA toolkit found (no include/cuda_runtime.h under "
              "CUDA_HOME, the nvcc on PATH, or /usr/local/cuda*). Set CUDA_HOME.")
    if with_cuda and not cuda_sources:
        print("[fastgan build] no CUDA sources in csrc/cuda yet; building CPU only")
        with_cuda = False
    cxx = ["-O3", "-fopenmp", f"-DFASTGAN_TORCH_VERSION=\"{torch.__version__}\""]
    cxx += [f"-DFASTGAN_CPU_{v.upper()}" for v in variants] + ISA_FLAGS["default"]
    define_macros = []
    extra = {"cxx": cxx}
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        cxx.append("-DFASTGAN_WITH_CUDA")
        cxx.append(f"-DFASTGAN_CUDA_ARCHS=\"{archs}\"")
        extra["nvcc"] = ["-O3", "--use_fast_math", "-lineinfo",
                         "-DFASTGAN_WITH_CUDA", "-Xptxas", "-v,-warn-spills"]
        ext = cpp_extension.CUDAExtension("fastgan._C", sources + cuda_sources,
                                          extra_compile_args=extra, extra_link_args=["-fopenmp"],
                                          define_macros=define_macros)
    else:
        ext = cpp_extension.CppExtension("fastgan._C", sources, extra_compile_args=extra,
                                         extra_link_args=["-fopenmp"],
                                         define_macros=define_macros)
    print("[fastgan build] configuration:")
    print(f"  torch {torch.__version__}   python {platform.python_version()}")
    print(f"  CPU kernels: yes, for {', '.join(['default'] + variants)} (chosen at run time), "
          "OpenMP")
    print(f"  CUDA kernels: {'yes, archs ' + archs if with_cuda else 'no'}"
          f"   (FASTGAN_CUDA={os.environ.get('FASTGAN_CUDA', 'unset')}, CUDA_HOME={cuda_home})")
    print(f"  MAX_JOBS={os.environ.get('MAX_JOBS', 'unset')}   ninja: "
          f"{'yes' if cpp_extension.is_ninja_available() else 'no'}")
    return [ext], cpp_extension.BuildExtension


def _build_ext_class(base):
    class BuildExt(base):
        """BuildExtension that compiles csrc/cpu/kernels/ once more per instruction set,
        and says what failed in plain words."""

        def build_extension(self, ext):
            # The baseline copy of the kernels is among ext.sources (compiled with the
            # extension's flags, CPU_CAPABILITY=DEFAULT); each further copy is compiled
            # here with its -m flags and linked after it. The linker keeps the first copy
            # of any inline function that several objects emit (std::, c10::), so the
            # baseline's, then AVX2's, wins: code the CPU may lack never stands in for
            # code every CPU runs.
            base = [f for f in ext.extra_compile_args["cxx"] if f not in ISA_FLAGS["default"]]
            objects = []
            for isa in _cpu_variants():
                # GCC 12's avx512fintrin.h trips its own -Wmaybe-uninitialized
                # (`__m512 __Y = __Y;`) over a thousand times per build
                quiet = ["-Wno-maybe-uninitialized", "-Wno-uninitialized"] if isa == "avx512" else []
                args = dict(ext.extra_compile_args, cxx=base + ISA_FLAGS[isa] + quiet)
                objects += self.compiler.compile(
                    KERNEL_SOURCES, output_dir=os.path.join(self.build_temp, f"cpu-{isa}"),
                    macros=ext.define_macros, include_dirs=ext.include_dirs,
                    extra_postargs=args, depends=ext.depends)
            ext.extra_objects = objects
            super().build_extension(ext)

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # compiler errors arrive as CompileError / RuntimeError
                sys.stderr.write(
                    "\n[fastgan build] ERROR: compiling fastgan._C failed: "
                    f"{type(e).__name__}: {e}\n"
                    "  The compiler output above names the file and line. Set "
                    "FASTGAN_CUDA=0 to build without CUDA.\n\n")
                raise

    return BuildExt


def _build_ext_wanted() -> bool:
    """FASTGAN_BUILD_EXT=0 installs without fastgan._C; unset, so does a machine without a
    C++ compiler (one clear line says so): the reference and triton backends need none."""
    flag = os.environ.get("FASTGAN_BUILD_EXT", "").strip().lower()
    if flag in ("0", "false", "no"):
        print("[fastgan build] FASTGAN_BUILD_EXT=0: installing without the compiled extension "
              "fastgan._C (backends: reference, and triton on CUDA)")
        return False
    if flag and flag not in ("1", "true", "yes"):
        _fail(f"FASTGAN_BUILD_EXT must be 1 or 0 (or unset for auto), got {flag!r}")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        if flag:
            _fail(f"FASTGAN_BUILD_EXT=1 but no C++ compiler found ({cxx}); install g++")
        print(f"[fastgan build] no C++ compiler found ({cxx}): installing without fastgan._C "
              "(backends: reference, and triton on CUDA); install g++ and reinstall for the "
              "cpu and cuda backends")
        return False
    return True


if _build_ext_wanted():
    exts, build_ext = _extensions()
    setup(ext_modules=exts,
          cmdclass={"build_ext": _build_ext_class(build_ext.with_options(use_ninja=True))})
else:
    setup()
