"""The API is where the README says: every `fastgan.<name>` that README.md shows in code
(spans and blocks) resolves by attribute access after a plain `import fastgan`, with no
other import, and so do the names of the design contract's Public API.

The check runs in a fresh interpreter, so submodules that other tests imported cannot make
a name reachable that a user's `import fastgan` would not reach.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# The design contract's public names (its "Public API" block and the engine's "Python:"
# line). That document lives outside the repository and tests read only the repository,
# so its names are listed here; keep them in step with it.
DESIGN_NAMES = [
    "fastgan.nn.BatchNormAct2d",
    "fastgan.nn.ConvTranspose2dBNAct",
    "fastgan.nn.Conv2dBNAct",
    "fastgan.functional.batch_norm_act",
    "fastgan.functional.gan_loss",
    "fastgan.nn.GANLoss",
    "fastgan.convert",
    "fastgan.use_backend",
    "fastgan.available_backends",
    "fastgan.metrics.frechet_distance",
    "fastgan.metrics.kid",
    "fastgan.nn.SyncBatchNormAct2d",
    "fastgan.nn.ConditionalBatchNormAct2d",
    "fastgan.functional.conditional_batch_norm_act",
]

# Subpackages `import fastgan` must not load: they are reached lazily on first use.
LAZY = ["fastgan.data", "fastgan.metrics", "fastgan.train", "fastgan.kernels", "fastgan.bench",
        "fastgan.compat"]

_DOTTED = r"fastgan(?:\.[A-Za-z_]\w*)+"
_NAME = re.compile(rf"(?<![\w./-]){_DOTTED}")
_RUN_MODULE = re.compile(rf"python3?\s+-m\s+({_DOTTED})")
_FROM_IMPORT = re.compile(r"^\s*from\s+(fastgan(?:\.\w+)*)\s+import\s+([\w ,]+)", re.M)


def _code_snippets(markdown: str) -> list[str]:
    """The fenced blocks and the inline code spans (which may wrap lines) of `markdown`."""
    fence = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
    blocks = fence.findall(markdown)
    spans = re.findall(r"`([^`]+)`", fence.sub("", markdown))
    return blocks + spans


def documented_names(markdown: str) -> tuple[set[str], set[str]]:
    """(attribute paths, module paths run with `python -m`) that `markdown` shows in code."""
    names: set[str] = set()
    run_modules: set[str] = set()
    for snippet in _code_snippets(markdown):
        run_modules.update(_RUN_MODULE.findall(snippet))
        snippet = _RUN_MODULE.sub("", snippet)  # a module run as a script is not an attribute
        names.update(_NAME.findall(snippet))
        for module, imported in _FROM_IMPORT.findall(snippet):
            names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
    return names, run_modules


_CHECK = r"""
import functools, importlib.util, json, sys
import fastgan
names, run_modules, lazy = json.loads(sys.argv[1])
loaded_by_import = [m for m in lazy if m in sys.modules]
unresolved = {}
for name in names:
    if name == "fastgan._C" and not fastgan._ext.ext_loaded():
        continue  # the compiled extension is optional (README, "Install")
    try:
        functools.reduce(getattr, name.split(".")[1:], fastgan)
    except AttributeError as e:
        unresolved[name] = f"AttributeError: {e}"
for module in run_modules:
    if importlib.util.find_spec(module) is None:
        unresolved[module] = "no such module for `python -m`"
print(json.dumps({"file": fastgan.__file__, "loaded_by_import": loaded_by_import,
                  "unresolved": unresolved, "dir": dir(fastgan)}))
"""


@pytest.fixture(scope="module")
def readme_names() -> tuple[set[str], set[str]]:
    return documented_names(README.read_text())


@pytest.fixture(scope="module")
def fresh_import(readme_names) -> dict:
    """What a fresh `import fastgan` reaches, by attribute access only."""
    names, run_modules = readme_names
    arg = json.dumps([sorted(names | set(DESIGN_NAMES)), sorted(run_modules), LAZY])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    r = subprocess.run([sys.executable, "-c", _CHECK, arg], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert pathlib.Path(result["file"]).resolve().is_relative_to(ROOT), result["file"]
    return result


def test_parser_finds_the_documented_names(readme_names):
    names, run_modules = readme_names
    for expected in ("fastgan.convert", "fastgan.metrics.frechet_distance",
                     "fastgan.functional.gan_loss", "fastgan.nn.BatchNormAct2d",
                     "fastgan.models.Generator"):
        assert expected in names, sorted(names)
    assert "fastgan.kernels.aot" in run_modules and "fastgan.kernels.aot" not in names


def test_parser_on_markdown_pieces():
    names, run_modules = documented_names(
        "Call `fastgan.metrics.kid(a,\nb)` or run `python -m fastgan.kernels.aot`.\n"
        "```python\nfrom fastgan.models import Generator, weights_init\n"
        "y = fastgan.nn.GANLoss()(r, f)\n```\n"
        "Not code: fastgan.outside_code; a path: `fastgan/metrics/x.json`.\n")
    assert names == {"fastgan.metrics.kid", "fastgan.models", "fastgan.models.Generator",
                     "fastgan.models.weights_init", "fastgan.nn.GANLoss"}
    assert run_modules == {"fastgan.kernels.aot"}


def test_documented_names_resolve_from_import_fastgan(fresh_import):
    assert not fresh_import["unresolved"], (
        "documented in README.md (or the design contract) but not reachable from "
        f"`import fastgan`: {fresh_import['unresolved']}")


def test_import_fastgan_stays_light(fresh_import):
    assert fresh_import["loaded_by_import"] == [], (
        "`import fastgan` should reach these lazily, on first use")


def test_dir_lists_the_lazy_subpackages(fresh_import):
    for module in LAZY:
        assert module.split(".", 1)[1] in fresh_import["dir"]
