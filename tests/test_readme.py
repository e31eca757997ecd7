"""The README's quick example runs as written (the README is the front door: keep it true)."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_quick_example_runs(capsys):
    text = README.read_text()
    section = text.split("## Quick example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md quick example", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert "tensor(" in out and "cpu" in out
