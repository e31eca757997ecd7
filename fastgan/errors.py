"""The one exception type for a user's mistake (a bad argument, a missing or unreadable file).

The CLI prints such an error as one line, `fastgan <command>: error: <message>`, and exits
with status 2, without a traceback; anything else is a bug and keeps its traceback.
Messages name the argument or file, what was received and what was expected.
"""

from __future__ import annotations


class UserError(ValueError):
    """A user's mistake, reported as one line without a traceback."""


__all__ = ["UserError"]
