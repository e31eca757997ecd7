"""Copy the Fashion-MNIST files of Debian's `dataset-fashion-mnist` package into
fastgan/data/fashion-mnist/, where `fastgan train --data fashion-mnist` reads them, and
check each file's SHA-256 against the checksums below (also in that folder's SHA256SUMS).

    python scripts/fetch_fashion_mnist.py [SOURCE_DIR]   # default /usr/share/datasets/fashion-mnist

The files are committed to the repository; this script is how they got there, and how to
check or restore them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEST = os.path.join(ROOT, "fastgan", "data", "fashion-mnist")
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"

# SHA-256 of the files of Debian's dataset-fashion-mnist (gzip streams as Debian ships them).
SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}


def sha256(path: str) -> str:
    with open(path, "rb") as f:  # at most 27 MB: read whole
        return hashlib.sha256(f.read()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", default=DEFAULT_SOURCE,
                    help=f"folder holding the four .gz files (default {DEFAULT_SOURCE})")
    args = ap.parse_args()
    missing = [n for n in SHA256 if not os.path.isfile(os.path.join(args.source, n))]
    if missing:
        print(f"fetch_fashion_mnist: error: {args.source} lacks {', '.join(missing)}; "
              "install Debian's package with `apt-get install dataset-fashion-mnist` "
              "or pass the folder that holds the files", file=sys.stderr)
        return 1
    # Check the source before copying so that a bad file never replaces a good one.
    for name, want in SHA256.items():
        got = sha256(os.path.join(args.source, name))
        if got != want:
            print(f"fetch_fashion_mnist: error: {os.path.join(args.source, name)} has SHA-256 "
                  f"{got}, expected {want}", file=sys.stderr)
            return 1
    os.makedirs(DEST, exist_ok=True)
    for name in SHA256:
        src, dst = os.path.join(args.source, name), os.path.join(DEST, name)
        shutil.copyfile(src, dst)
        print(f"copied {src} -> {os.path.relpath(dst, ROOT)} ({os.path.getsize(dst)} bytes, sha256 ok)")
    with open(os.path.join(DEST, "SHA256SUMS"), "w") as f:
        f.writelines(f"{digest}  {name}\n" for name, digest in SHA256.items())
    print(f"wrote {os.path.relpath(os.path.join(DEST, 'SHA256SUMS'), ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
