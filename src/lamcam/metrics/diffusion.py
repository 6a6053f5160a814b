"""The Gini coefficient and LAM's Diffusion Index (Gu & Dong, CVPR 2021; SPEC §2)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = ["diffusion_index", "diffusion_index_padded", "gini", "mass_pixels"]


def gini(values: Tensor) -> float:
    """Gini coefficient of all entries, as LAM computes it.

    The flattened values are shifted to be non-negative (if any is negative), 1e-7 is added, they
    are sorted ascending, and ``Gini = Σ_i (2i − n − 1) a_i / (n Σ_i a_i)`` for i = 1..n.
    Computed in float64.

    Example:
        >>> round(gini(torch.tensor([0.0, 0.0, 0.0, 1.0])), 6)   # one pixel holds all: (n-1)/n
        0.75
        >>> round(gini(torch.ones(10)), 12)
        0.0
    """
    a = values.detach().flatten().to(torch.float64).cpu()
    if a.numel() == 0:
        raise ValueError("the Gini coefficient of an empty map is undefined")
    if not bool(torch.isfinite(a).all()):
        raise ValueError("the map contains NaN or inf; the Gini coefficient is undefined")
    lo = a.min()
    if lo < 0:
        a = a - lo
    a = torch.sort(a + 1e-7).values
    n = a.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * a).sum() / (n * a.sum()))


def diffusion_index(attr_map: Tensor) -> float:
    """``DI = (1 − Gini) × 100`` of a LAM map over all its pixels (higher = more spread out).

    DI depends on the map's size (the LR image size): record it, and the window and path
    parameters, with every DI. A map that is all zeros (no attribution at all) gives DI = 100
    with a warning: the number then says nothing about the network.

    Example:
        >>> m = torch.zeros(8, 8); m[3, 4] = 1.0
        >>> round(diffusion_index(m), 3)                 # 1 of 64 pixels: (1 - 63/64) * 100
        1.563
    """
    if bool((attr_map == 0).all()):
        warnings.warn("the attribution map is all zeros (no pixel influences the objective, e.g. a "
                      "flat window); its Diffusion Index (100) is not meaningful", stacklevel=2)
    return (1.0 - gini(attr_map)) * 100.0


def diffusion_index_padded(values: Tensor, total: int) -> float:
    """:func:`diffusion_index` of a map that holds ``values`` (>= 0) and zeros everywhere else,
    ``total`` pixels in all, without building it (the map of a receptive-field crop).

    Example:
        >>> m = torch.zeros(8, 8); m[3, 4] = 1.0; m[3, 5] = 0.5
        >>> abs(diffusion_index_padded(torch.tensor([[1.0, 0.5]]), 64) - diffusion_index(m)) < 1e-9
        True
    """
    a = values.detach().flatten().to(torch.float64).cpu()
    n_zero = total - a.numel()
    if n_zero < 0:
        raise ValueError(f"{a.numel()} values do not fit in {total} pixels")
    if bool((a < 0).any()):
        raise ValueError("diffusion_index_padded needs a map >= 0 (LAM maps are |.|)")
    # Gini as gini(): ascending order, each value + 1e-7; the n_zero zeros come first
    a = torch.sort(a + 1e-7).values
    n = total
    i = torch.arange(n_zero + 1, n + 1, dtype=torch.float64)
    z = torch.arange(1, n_zero + 1, dtype=torch.float64)
    num = ((2 * i - n - 1) * a).sum() + ((2 * z - n - 1) * 1e-7).sum()
    den = n * (a.sum() + n_zero * 1e-7)
    return (1.0 - float(num / den)) * 100.0


def mass_pixels(attr_map: Tensor, fraction: float = 0.95) -> int:
    """How many pixels (largest first) hold ``fraction`` of the map's total |mass|.

    Example:
        >>> mass_pixels(torch.tensor([5.0, 3.0, 1.0, 1.0]), 0.8)
        2
    """
    a = attr_map.detach().abs().flatten().to(torch.float64)
    total = a.sum()
    if total == 0:
        return 0
    cum = torch.cumsum(torch.sort(a, descending=True).values, 0)
    return int(torch.searchsorted(cum, fraction * total - 1e-12 * total).item()) + 1
