"""Which windows a LAM survey explains: a grid, the studies' edge criterion, or a list.

All windows are ``(row, col)`` top-left corners in SR pixels (the library's convention).

Example:
    >>> grid_windows((64, 64), window=16, stride=24)
    [(0, 0), (0, 24), (0, 48), (24, 0), (24, 24), (24, 48), (48, 0), (48, 24), (48, 48)]
    >>> parse_windows("12,40; 0,0")
    [(12, 40), (0, 0)]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["grid_windows", "edge_energy", "edge_windows", "parse_windows"]


def grid_windows(sr_hw: Sequence[int], window: int, stride: int) -> list[tuple[int, int]]:
    """Windows every ``stride`` SR pixels, row-major, all inside the image (the last row and
    column of windows touch the bottom and right edges when the stride does not divide)."""
    h, w = int(sr_hw[0]), int(sr_hw[1])
    if window < 1 or window > min(h, w):
        raise ValueError(f"the window ({window}) must fit in the {w}x{h} SR image")
    if stride < 1:
        raise ValueError(f"the stride must be positive, got {stride}")

    def starts(n: int) -> list[int]:
        s = list(range(0, n - window + 1, stride))
        return s if s[-1] == n - window else [*s, n - window]

    return [(r, c) for r in starts(h) for c in starts(w)]


def edge_energy(image: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` LAM's gradient detector per pixel, ``sqrt(dy² + dx²)`` summed over channels
    (float64, zero-padded on the last row and column)."""
    dy = image[:, :-1, :-1] - image[:, 1:, :-1]
    dx = image[:, :-1, :-1] - image[:, :-1, 1:]
    g = torch.sqrt(dy**2 + dx**2).sum(0).double()
    return torch.nn.functional.pad(g, (0, 1, 0, 1))


def edge_windows(image: torch.Tensor, k: int, window: int, *, scale: int = 1,
                 margin: int | None = None) -> list[tuple[int, int, float]]:
    """The ``k`` windows of highest edge energy, pairwise non-overlapping: the criterion of the
    LAM studies (``studies/lam_zoo.py``), where the paper's figures explain edges and textures.

    Args:
        image: ``(C, H, W)`` at SR size, usually the HR image.
        k: how many windows (fewer when the image has no more room).
        window: side in SR pixels.
        scale: candidates lie on the LR grid (multiples of ``scale``), as in the studies.
        margin: distance kept from the borders (default: ``window``).

    Returns:
        ``[(row, col, energy)]``, best first; ties go to the top-left.
    """
    margin = window if margin is None else int(margin)
    g = edge_energy(image)
    c = torch.nn.functional.pad(g.cumsum(0).cumsum(1), (1, 0, 1, 0))
    e = c[window:, window:] - c[:-window, window:] - c[window:, :-window] + c[:-window, :-window]
    h, w = g.shape
    cand = [(float(e[r, q]), r, q) for r in range(margin, h - margin - window + 1, scale)
            for q in range(margin, w - margin - window + 1, scale)]
    cand.sort(key=lambda t: (-t[0], t[1], t[2]))
    chosen: list[tuple[int, int, float]] = []
    for en, r, q in cand:
        if all(abs(r - r2) >= window or abs(q - q2) >= window for r2, q2, _ in chosen):
            chosen.append((r, q, en))
            if len(chosen) == k:
                break
    return chosen


def parse_windows(text: str) -> list[tuple[int, int]]:
    """``"r,c; r,c"`` (or one pair per line) -> ``[(r, c), ...]``."""
    out = []
    for part in text.replace("\n", ";").split(";"):
        if not part.strip():
            continue
        try:
            r, c = (int(v) for v in part.split(","))
        except ValueError as e:
            raise ValueError(f"a window is 'row,col' in SR pixels, got {part.strip()!r}") from e
        out.append((r, c))
    if not out:
        raise ValueError("no windows given")
    return out
