"""Localisation of maps against ground truth (SPEC §3).

* pointing game: the map's arg-max lies inside the object;
* energy-based pointing game: the share of the map's mass inside the object;
* IoU of the map thresholded at δ with the object union;
* instance coverage: the share of object instances whose region holds a local maximum of the map
  (the multi-instance claim of Grad-CAM++).

Maps are ``(H, W)`` tensors (non-negative, e.g. the normalised ``res.maps[i]``); masks are boolean
``(H, W)`` (or ``(n, H, W)`` instance masks). A map of another size than the mask is resized
bilinearly to it.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from lamcam.maps import upsample_maps

__all__ = ["energy_pointing_game", "instance_coverage", "iou_at", "local_maxima", "pointing_game"]


def _warn_resize(have: tuple[int, ...], want: tuple[int, ...]) -> None:
    warnings.warn(f"map of size {tuple(have)} resized bilinearly to the mask's {tuple(want)}; "
                  "pass maps at the mask's size to silence this", stacklevel=4)


def _prep(attr_map: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    mask = torch.as_tensor(mask).bool()
    if mask.ndim == 3:
        mask = mask.any(0)
    m = attr_map.detach().double()
    if m.shape != mask.shape:
        _warn_resize(m.shape, mask.shape)
        m = upsample_maps(m, mask.shape)
    if not bool(mask.any()):
        raise ValueError("the ground-truth mask is empty: localisation is undefined for an image "
                         "without an object; leave such images out")
    return m, mask


def pointing_game(attr_map: Tensor, mask: Tensor) -> bool:
    """Whether the map's maximum (first, in raster order) lies inside the mask.

    Example:
        >>> m = torch.zeros(4, 4); m[1, 2] = 1.0
        >>> mask = torch.zeros(4, 4, dtype=torch.bool); mask[0:2, 2:4] = True
        >>> pointing_game(m, mask)
        True
    """
    m, mask = _prep(attr_map, mask)
    return bool(mask.flatten()[m.flatten().argmax()])


def energy_pointing_game(attr_map: Tensor, mask: Tensor) -> float:
    """``Σ map·mask / Σ map`` (0 for an all-zero map).

    Example:
        >>> m = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
        >>> energy_pointing_game(m, torch.tensor([[False, True], [False, False]]))
        0.75
    """
    m, mask = _prep(attr_map, mask)
    total = m.clamp(min=0).sum()
    return 0.0 if total == 0 else float((m.clamp(min=0) * mask).sum() / total)


def iou_at(attr_map: Tensor, mask: Tensor, delta: float = 0.5) -> float:
    """IoU of ``map ≥ δ · max(map)`` with the mask (the map is scaled to max 1 first).

    Example:
        >>> m = torch.tensor([[1.0, 0.6], [0.2, 0.0]])
        >>> iou_at(m, torch.tensor([[True, False], [True, False]]), 0.5)   # {00,01} vs {00,10}
        0.3333333333333333
    """
    m, mask = _prep(attr_map, mask)
    peak = m.max()
    if peak <= 0:
        return 0.0
    region = m / peak >= delta
    return int((region & mask).sum()) / int((region | mask).sum())


def local_maxima(attr_map: Tensor, min_value: float = 0.25, size: int = 3) -> Tensor:
    """Boolean ``(H, W)``: pixels equal to the maximum of their ``size × size`` neighbourhood and
    at least ``min_value`` times the map's maximum (so that flat low regions do not count).
    """
    m = attr_map.detach().double()
    peak = m.max()
    if peak <= 0:
        return torch.zeros_like(m, dtype=torch.bool)
    pooled = F.max_pool2d(m[None, None], size, stride=1, padding=size // 2)[0, 0]
    return (m == pooled) & (m >= min_value * peak)


def instance_coverage(attr_map: Tensor, instance_masks: Tensor, min_value: float = 0.25) -> float:
    """Share of instances whose mask contains at least one local maximum of the map.

    Example:
        >>> m = torch.zeros(6, 6); m[1, 1] = 1.0; m[4, 4] = 0.8
        >>> masks = torch.zeros(3, 6, 6, dtype=torch.bool)
        >>> masks[0, :3, :3] = True; masks[1, 3:, 3:] = True; masks[2, :2, 4:] = True
        >>> instance_coverage(m, masks)
        0.6666666666666666
    """
    masks = torch.as_tensor(instance_masks).bool()
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise ValueError("instance masks must be (n, H, W) with n >= 1")
    m = attr_map.detach().double()
    if m.shape != masks.shape[1:]:
        _warn_resize(m.shape, masks.shape[1:])
        m = upsample_maps(m, masks.shape[1:])
    peaks = local_maxima(m, min_value)
    hit = [(peaks & mk).any() for mk in masks if mk.any()]
    if not hit:
        raise ValueError("every instance mask is empty")
    return float(sum(bool(h) for h in hit) / len(hit))
