"""The bodies of the `fastgan` commands that do more than call one function: `fastgan sample`
(sample.py) and `fastgan eval` (eval.py). fastgan/cli.py parses the flags and calls them;
they use the engine (fastgan.runs, fastgan.train, fastgan.metrics) and nothing imports them
but the CLI.
"""
