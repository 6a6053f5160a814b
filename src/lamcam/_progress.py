"""When lamcam shows progress bars.

One rule for the library and the command line: ``progress=None`` (the default) shows a bar iff
stderr is a terminal, so log files and pipes never get ``\\r`` bar text; ``True`` / ``False`` (or
a string, used as a bar's description) force it on or off.

Example:
    >>> show(False), show(True), show("LAM")
    (False, True, True)
"""

from __future__ import annotations

import sys

__all__ = ["show"]


def show(progress: object = None) -> bool:
    """Whether to show a progress bar for ``progress`` (``None``: iff stderr is a TTY)."""
    if progress is None:
        stream = sys.stderr
        try:
            return bool(stream is not None and stream.isatty())
        except (AttributeError, ValueError):  # replaced or closed stream
            return False
    return bool(progress)
