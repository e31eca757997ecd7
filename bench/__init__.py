"""fastgan benchmarks (pytest-benchmark suites and paired-ratio scripts), installed as
fastgan.bench (pyproject.toml's package-dir maps this folder there).

One name only: run a script as `python -m fastgan.bench.bench_bn_act` and import
`fastgan.bench.common`; pytest collects `python -m pytest bench/bench_bn_act.py` under
that name too (conftest.py at the repository root). Imported as a top-level `bench`, each
module would be loaded a second time beside its fastgan.bench twin.
"""

if __name__ != "fastgan.bench":
    raise ImportError(f"bench/ is the package fastgan.bench; import it by that name "
                      f"(python -m fastgan.bench.<module>), not as {__name__!r}")
