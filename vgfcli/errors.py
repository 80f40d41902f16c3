"""The one exception type users see.

Anything that is the user's to fix (a missing file, a wrong key, NaN in a dataset, a bad config value)
raises ``VgfError`` with a one-line message that names the file or key and the problem. The CLI prints
it to stderr as ``error: <message>`` and exits with code 2, never with a traceback.
"""

from __future__ import annotations


class VgfError(Exception):
    """A problem with the user's input or config; the message is shown as is, on one line."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message to a single line: users grep logs and CI shows the last line.
        super().__init__(" ".join(str(message).split()))
