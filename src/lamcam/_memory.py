"""How much memory a device has free, for refusing work up front instead of dying in the allocator."""

from __future__ import annotations

import os

import torch

__all__ = ["available_bytes", "format_bytes", "LAMMemoryError"]


class LAMMemoryError(MemoryError):
    """The work would need more memory than the device has free; the message gives the numbers."""


def available_bytes(device: torch.device | str | None = None) -> int | None:
    """Bytes that can still be allocated on ``device`` (None when unknown).

    CUDA: the driver's free memory plus what PyTorch's caching allocator holds unused. CPU:
    ``MemAvailable`` from ``/proc/meminfo`` (Linux), else the free physical pages.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(dev)
            cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            return int(free + max(cached, 0))
        except Exception:  # noqa: BLE001 - no driver answer: unknown
            return None
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``1.5e9`` -> ``"1.5 GB"`` (decimal units).

    Example:
        >>> format_bytes(34.6e9), format_bytes(512), format_bytes(2.5e12)
        ('34.6 GB', '512 B', '2.5 TB')
    """
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.3g} {unit}"
    return f"{int(n)} B"
