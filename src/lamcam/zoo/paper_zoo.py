"""The LAM paper's model zoo in its authors' checkpoint format (filled in by issue 11)."""

from __future__ import annotations


def register_all() -> None:
    """Register the paper zoo's architectures with :func:`lamcam.zoo.register_arch`."""
