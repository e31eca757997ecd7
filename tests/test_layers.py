"""fastgan's layering, enforced (docs/ARCHITECTURE.md, "Layers"; pyproject.toml,
[tool.importlinter]).

- test_import_contracts runs import-linter on the package as it installs: fastgan/, plus
  kernels/ as fastgan.kernels and bench/ as fastgan.bench (pyproject.toml's package-dir),
  copied into one tree, so a wrong-way import anywhere (also one inside a function) fails
  with import-linter's report.
- test_no_private_names_across_modules: no module imports another module's private name
  (`from fastgan.x import _y`, `from . import _y`) or reads it as an attribute
  (`mod._y`, `mod` a fastgan module imported by name). Private *modules* (fastgan._ext,
  fastgan._backend, fastgan._C) may be imported, as modules, from inside their parent
  package; dunder names are public.

Both take about a second. A bare `lint-imports` in the checkout passes too, but there
kernels/ and bench/ sit beside fastgan/ (the contract marks those two layers optional),
so only this test checks them.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the compiled extension (csrc/): a module, though not a .py file
EXTENSION_MODULES = {"fastgan._C"}

def _package_dirs() -> dict[str, Path]:
    """{package: folder} of everything `pip install .` puts under fastgan."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as f:
        mapped = tomllib.load(f)["tool"]["setuptools"].get("package-dir", {})
    return {"fastgan": REPO / "fastgan", **{pkg: REPO / d for pkg, d in mapped.items()}}


def _source_files() -> dict[str, Path]:
    """{module name: file} of every Python module of the installed package."""
    dirs = _package_dirs()
    modules = {}
    for pkg, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((pkg, *parts))
            if any(name.startswith(other + ".") for other in dirs if other != pkg
                   and other.startswith(pkg + ".")):
                continue  # e.g. a development symlink fastgan/kernels -> ../kernels
            modules[name.removesuffix(".__init__")] = path
    return modules


def _lint_imports() -> Path:
    name = "lint-imports.exe" if os.name == "nt" else "lint-imports"
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.fail(f"import-linter is not installed next to {sys.executable} (it is in "
                    "fastgan's dev extra: pip install -e '.[dev]', or scripts/setup_env.sh)")
    return script


def test_import_contracts(tmp_path):
    for name, path in _source_files().items():
        is_pkg = path.name == "__init__.py"
        dest = tmp_path.joinpath(*name.split("."), "__init__.py") if is_pkg \
            else tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    # the contract's optional layers must be present here, or they would go unchecked
    assert (tmp_path / "fastgan" / "kernels").is_dir() and (tmp_path / "fastgan" / "bench").is_dir()
    # cwd first on sys.path: this copy, not the installed fastgan, is what grimp reads
    proc = subprocess.run([str(_lint_imports()), str(REPO / "pyproject.toml"), "--no-cache",
                           "--no-logo"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    report = proc.stdout + proc.stderr
    if proc.returncode != 0 or "0 broken" not in report:
        pytest.fail(f"import contracts broken (pyproject.toml, [tool.importlinter]):\n{report}",
                    pytrace=False)


# ---------------------------------------------------------------------------
# Private names


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def private_uses(module: str, is_pkg: bool, tree: ast.AST,
                 modules: set[str]) -> list[tuple[int, str]]:
    """(line, what) for each use in `module` of another fastgan module's private name."""

    def may_import(target: str) -> bool:
        """A private module, imported from inside its parent package."""
        parent = target.rpartition(".")[0]
        return target in modules and (module == parent or module.startswith(parent + "."))

    package = module if is_pkg else module.rpartition(".")[0]
    bound: dict[str, str] = {}  # local name -> the fastgan module it names
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "fastgan":
                    bound[alias.asname or "fastgan"] = alias.name if alias.asname else "fastgan"
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if src.split(".")[0] != "fastgan" or src == module:
                continue
            for alias in node.names:
                full = f"{src}.{alias.name}"
                if full in modules:
                    bound[alias.asname or alias.name] = full
                if _private(alias.name) and not may_import(full):
                    found.append((node.lineno, f"imports {alias.name} from {src}"))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _private(node.attr)):
            continue
        chain = _dotted(node.value)
        head, _, rest = (chain or "").partition(".")
        if head not in bound:
            continue
        target = bound[head] + (f".{rest}" if rest else "")
        full = f"{target}.{node.attr}"
        if target in modules and target != module and not may_import(full):
            found.append((node.lineno, f"reads {full}"))
    return found


def _all_private_uses() -> list[tuple[str, int, str]]:
    files = _source_files()
    modules = set(files) | EXTENSION_MODULES
    out = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(REPO).as_posix()
        out += [(rel, line, what)
                for line, what in private_uses(name, path.name == "__init__.py", tree, modules)]
    return out


def test_no_private_names_across_modules():
    found = _all_private_uses()
    bad = [f"{f}:{line}: {what}" for f, line, what in found]
    assert not bad, ("private names used across modules (give the name a public spelling in "
                     "its module, or move it where both can use it):\n" + "\n".join(bad))


def test_private_name_check_catches_each_form():
    """The checker itself: each form of a cross-module private use is reported, and the
    allowed forms are not."""
    modules = {"fastgan", "fastgan.nn", "fastgan.nn.blocks", "fastgan.ops", "fastgan.ops.bn_act",
               "fastgan._ext", "fastgan._C", "fastgan.train", "fastgan.train.loop",
               "fastgan.train.report"}
    src = """
import fastgan
import fastgan.nn.blocks as blocks
from fastgan import _ext, _C
from fastgan.ops import bn_act as ops_bn
from fastgan.nn.blocks import _hidden, conv_forward
from . import _sibling
from .report import _fmt
ops_bn._backend_choice()
fastgan.nn.blocks._fold()
blocks.__name__, _ext.ext_loaded(), fastgan._ext.build_info()
_ext._C
"""
    found = [what for _, what in private_uses("fastgan.train.loop", False, ast.parse(src), modules)]
    assert sorted(found) == sorted([
        "imports _hidden from fastgan.nn.blocks", "imports _sibling from fastgan.train",
        "imports _fmt from fastgan.train.report",
        "reads fastgan.ops.bn_act._backend_choice", "reads fastgan.nn.blocks._fold",
        "reads fastgan._ext._C"]), found
