"""Compile every CUDA kernel in csrc/cuda for every default arch (sm_75 ... sm_90, the
list of scripts/cuda_toolkit.py) with `-Xptxas -v` and fail on compile errors or register
spills. Needs nvcc, not a GPU (CI runs it).

    python scripts/check_cuda.py [--archs 75 80 86 89 90]
    python scripts/check_cuda.py --built fastgan/_C*.so [--archs ...]

--built reads an extension that was already compiled (setup.py's own flags) instead:
cuobjdump -res-usage of its cubins, every arch present, no local memory (where spills
go) and no stack frame in any kernel. Seconds instead of a second CUDA build.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from cuda_toolkit import DEFAULT_CUDA_ARCHS, find_cuda_home, sm_list  # scripts/, beside this file

    ap.add_argument("--archs", nargs="*", default=sm_list(DEFAULT_CUDA_ARCHS))
    ap.add_argument("--built", help="a compiled extension (.so) to check instead")
    args = ap.parse_args()
    if args.built:
        return check_built(args.built, args.archs)

    cuda_home = find_cuda_home()
    if not cuda_home:
        print("check_cuda: no CUDA toolkit found (nvcc / include/cuda_runtime.h); nothing checked")
        return 1
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    from torch.utils import cpp_extension

    incs = cpp_extension.include_paths(device_type="cuda") + [sysconfig.get_paths()["include"]]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    if not sources:
        print("check_cuda: no CUDA sources")
        return 0
    failed = False
    print(f"check_cuda: nvcc {nvcc}")
    print(f"{'kernel':<70} {'arch':>5} {'regs':>5} {'smem':>6} {'spill st':>9} {'spill ld':>9}")
    def compile_one(src: str, arch: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [nvcc, "-c", src, "-o", os.path.join(tmp, "k.o"), "-std=c++20", "-O3",
                   f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
                   "--expt-relaxed-constexpr", "-DFASTGAN_WITH_CUDA",
                   "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                   "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
                   "-Xcompiler", "-fPIC"] + [f"-I{i}" for i in incs]
            return subprocess.run(cmd, capture_output=True, text=True)

    jobs = [(src, arch) for src in sources for arch in args.archs]
    workers = int(os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # one nvcc per core
        results = list(pool.map(lambda job: compile_one(*job), jobs))
    for (src, arch), r in zip(jobs, results):
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-8000:])
            print(f"check_cuda: FAILED to compile {os.path.relpath(src, ROOT)} for sm_{arch}")
            failed = True
            continue
        fn = None
        for line in r.stderr.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                fn = m.group(1)
                spill = None
            m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and fn:
                spill = (int(m.group(1)), int(m.group(2)))
            m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?", line)
            if m and fn:
                smem = re.search(r"(\d+) bytes smem", line)
                name = demangle(fn)
                st, ld = spill or (0, 0)
                print(f"{name[:70]:<70} {arch:>5} {m.group(1):>5} "
                      f"{smem.group(1) if smem else '0':>6} {st:>9} {ld:>9}")
                if st or ld:
                    failed = True
                fn = None
    print("check_cuda:", "FAILED" if failed else "ok (compiled, no spills)")
    return 1 if failed else 0


def _cuobjdump() -> str:
    from cuda_toolkit import find_cuda_home
    home = find_cuda_home()
    path = os.path.join(home, "bin", "cuobjdump") if home else ""
    if os.path.isfile(path):
        return path
    import triton  # ships one (the CUDA toolkit of a pip-only install may not)
    return triton.knobs.nvidia.cuobjdump.path


def check_built(so: str, archs: list[str]) -> int:
    text = subprocess.run([_cuobjdump(), "-res-usage", so], capture_output=True, text=True,
                          check=True).stdout
    print(f"check_cuda: {os.path.relpath(so, ROOT)} (cuobjdump -res-usage)")
    print(f"{'kernel':<70} {'arch':>5} {'regs':>5} {'smem':>6} {'local':>6} {'stack':>6}")
    arch, fn, seen, failed = None, None, set(), False
    for line in text.splitlines():
        m = re.match(r"arch = sm_(\w+)", line.strip())
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            fn = m.group(1)
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and fn and arch:
            regs, stack, smem, local = m.groups()
            seen.add(arch)
            print(f"{demangle(fn)[:70]:<70} {arch:>5} {regs:>5} {smem:>6} {local:>6} {stack:>6}")
            failed |= int(local) > 0 or int(stack) > 0
            fn = None
    missing = [a for a in archs if a not in seen]
    if missing:
        print(f"check_cuda: no kernels for sm_{', sm_'.join(missing)} in {so}")
    ok = not failed and not missing and seen
    print("check_cuda:", "ok (built, no spills)" if ok else "FAILED")
    return 0 if ok else 1


def demangle(name: str) -> str:
    try:
        r = subprocess.run(["c++filt", name], capture_output=True, text=True)
        out = r.stdout.strip() or name
    except OSError:
        out = name
    out = out.replace("(anonymous namespace)::", "").replace("fastgan::cuda::", "")
    out = out.replace("c10::", "").replace("void ", "").replace("fastgan::", "")
    depth = 0  # drop the trailing "(argument list)", whose types may hold parentheses
    for i in range(len(out) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(out[i], 0)
        if depth == 0 and out[i] == "(":
            return out[:i]
    return out


if __name__ == "__main__":
    raise SystemExit(main())
