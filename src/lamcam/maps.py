"""Map post-processing shared by every method: resize to the input, normalise to [0, 1].

These are the single implementations of the two operations; CAM methods, LAM, metrics and the
visualisation all call them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize_minmax", "upsample_maps"]

_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsample_maps(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Resize maps ``(..., *spatial)`` to ``size`` (linear / bilinear / trilinear, no corner alignment).

    The number of spatial dimensions is ``len(size)``; leading dimensions are kept.

    Example:
        >>> upsample_maps(torch.ones(2, 5, 7, 7), (224, 224)).shape
        torch.Size([2, 5, 224, 224])
    """
    size = tuple(int(s) for s in size)
    nd = len(size)
    if nd not in _MODES:
        raise ValueError(f"maps with {nd} spatial dimensions cannot be resized (1, 2 or 3 only)")
    lead = maps.shape[:-nd]
    if tuple(maps.shape[-nd:]) == size:
        return maps
    flat = maps.reshape(-1, 1, *maps.shape[-nd:])
    out = F.interpolate(flat, size=size, mode=_MODES[nd], align_corners=False)
    return out.reshape(*lead, *size)


def normalize_minmax(maps: Tensor, ndim: int) -> Tensor:
    """Scale each map over its last ``ndim`` dimensions to [0, 1] by its own min and max.

    A constant map (up to a few ulps of rounding) becomes all zeros (never NaN), and the operation
    is differentiable with finite gradients everywhere.

    Example:
        >>> normalize_minmax(torch.tensor([[1.0, 3.0], [2.0, 2.0]]), ndim=1)
        tensor([[0., 1.],
                [0., 0.]])
    """
    flat = maps.flatten(-ndim) if ndim > 1 else maps
    lo = flat.amin(dim=-1, keepdim=True)
    hi = flat.amax(dim=-1, keepdim=True)
    span = hi - lo
    # A constant map stays constant up to rounding (e.g. a 1 × 1 layer upsampled): a span within a
    # few ulps of its magnitude is no structure, and stretching it would draw {0, 0.5, 1} noise.
    tiny = 8 * torch.finfo(flat.dtype).eps * torch.maximum(hi.abs(), lo.abs())
    ok = span > tiny
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), 0.0)
    return out.reshape(maps.shape)
