"""Receptive fields of image-to-image networks, for exact receptive-field cropping in LAM.

The gradient detector of a window depends only on the LR pixels within the network's receptive
field of that window. For a network whose output at a pixel depends on a bounded neighbourhood,
LAM on a crop that holds the window's whole receptive field (plus margin) equals LAM on the whole
image: the crop's own borders (zero padding, the model's size padding) are too far away to reach
the window, and the blur path is taken from the whole image (:class:`lamcam.paths.BlurPath` with
``boxes``). This module says whether a network is such a network and how far it reaches.

A :class:`Field` is either

* **declared** by the architecture: ``model.lamcam_meta["receptive_field"]`` is the side, in LR
  pixels, of the square one output pixel depends on (lamcam's zoo computes it from the layer
  structure), or ``"global"``;
* **measured** (:func:`measure_field`) on random probe inputs: the support of the gradient of a
  block of output pixels, and the translation period of the network (window attention and
  pixel-unshuffle are equivariant only to shifts by a multiple of their window or factor, so
  crops must start on that grid); or
* given by the user (``LAM(receptive_field=...)``).

Networks with global operations (channel attention over the whole image, covariance pooling,
attention whose span grows with the image) are **global**: LAM then runs on the whole image and
says so. Every crop is also checked before use (:func:`crop_is_exact`): the window's output on the
crop must equal its output on a larger crop, at the input and at the baseline.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
    ...                     nn.PixelShuffle(2))
    >>> f = measure_field(net, channels=3)
    >>> f.local, f.radius, f.period, f.source
    (True, 3, 1, 'measured')
    >>> crop_box(f, rows=(10, 12), cols=(4, 6), image=(40, 40))   # (top, left, height, width)
    (7, 1, 9, 9)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Field", "GLOBAL", "crop_box", "crop_is_exact", "crop_side", "declared_field", "grow_box",
    "measure_field",
]

#: Probe sizes (LR pixels) tried by :func:`measure_field`, smallest first.
PROBE_SIDES = (64, 128, 256)
#: Translation periods tried by :func:`measure_field` (LR pixels).
PERIODS = tuple(range(1, 33))


@dataclass(frozen=True)
class Field:
    """How far a network's output reaches into its input.

    Attributes:
        radius: LR pixels beyond an output pixel's own LR pixel that it may depend on, on every
            side (a bound); ``None`` for a global network.
        period: crops must start at multiples of this (LR pixels) to see the same window grid.
        source: ``"declared"`` (the architecture's metadata), ``"measured"`` or ``"user"``.
        detail: one sentence on how it was obtained.
    """

    radius: int | None
    period: int = 1
    source: str = "measured"
    detail: str = ""

    @property
    def local(self) -> bool:
        """Whether the output at a pixel depends on a bounded neighbourhood."""
        return self.radius is not None

    def to_dict(self) -> dict[str, Any]:
        return {"radius": self.radius, "period": self.period, "source": self.source,
                "detail": self.detail}


GLOBAL = Field(None, 1, "declared", "global")


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _meta_period(model: nn.Module) -> int:
    """Alignment the model's metadata or structure declares (1 if none)."""
    meta = getattr(model, "lamcam_meta", {}) or {}
    period = 1
    req = meta.get("size_requirements") or {}
    if isinstance(req, dict) and int(req.get("multiple_of", 1) or 1) > 1:
        period = _lcm(period, int(req["multiple_of"]))
    if isinstance(meta.get("rf_period"), int) and meta["rf_period"] > 0:
        period = _lcm(period, int(meta["rf_period"]))
    rf_ops = getattr(model, "rf_ops", None)
    if callable(rf_ops):
        for op in rf_ops():
            if op[0] == "window":
                period = _lcm(period, int(op[1]))
    return period


def declared_field(model: nn.Module) -> Field | None:
    """The field ``model.lamcam_meta`` declares, or None when it declares none.

    ``receptive_field`` = S (an int, the side of the square of LR pixels one output pixel depends
    on) gives the bound ``radius = S - 1``, whichever way the square sits around the pixel, or
    the tighter ``receptive_reach`` when the metadata has it (the farthest an output pixel's
    dependence reaches beyond its own LR pixel); ``"global"`` gives a global field.
    """
    meta = getattr(model, "lamcam_meta", None)
    if not isinstance(meta, dict):
        return None
    rf = meta.get("receptive_field")
    if rf == "global":
        return Field(None, 1, "declared", f"{meta.get('arch', 'the architecture')} declares a global "
                     "receptive field")
    if isinstance(rf, int) and not isinstance(rf, bool) and rf > 0:
        period = _meta_period(model)
        reach = meta.get("receptive_reach")
        if isinstance(reach, int) and not isinstance(reach, bool) and 0 <= reach < rf:
            return Field(reach, period, "declared",
                         f"{meta.get('arch', 'the architecture')} declares outputs that depend on LR "
                         f"pixels up to {reach} away" + (f", window grid {period}" if period > 1 else ""))
        return Field(rf - 1, period, "declared",
                     f"{meta.get('arch', 'the architecture')} declares a {rf}x{rf} LR-pixel receptive "
                     f"field" + (f", window grid {period}" if period > 1 else ""))
    return None


def _param(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(iter(model.parameters()), None)
    if p is None:
        return torch.float32, torch.device("cpu")
    return (p.dtype if p.is_floating_point() else torch.float32), p.device


def _support(net: nn.Module, x: Tensor, scale: int, r0: int, c0: int, side: int,
             gen: torch.Generator) -> Tensor:
    """Bool ``(H, W)``: input pixels with a non-zero gradient from the SR outputs of the LR block
    ``[r0, r0 + side) x [c0, c0 + side)`` (random cotangent, so nothing cancels)."""
    x = x.detach().clone().requires_grad_(True)
    out = net(x)
    block = out[..., r0 * scale:(r0 + side) * scale, c0 * scale:(c0 + side) * scale]
    weights = torch.randn(block.shape, generator=gen, dtype=torch.float64).to(block)
    (grad,) = torch.autograd.grad((block * weights).sum(), x)
    return grad[0].abs().sum(0) > 0


def _extent(seen: Tensor, r0: int, c0: int, side: int) -> tuple[int, bool]:
    """Largest reach of ``seen`` beyond the block, and whether it touches the image border."""
    rows = seen.any(1).nonzero().flatten()
    cols = seen.any(0).nonzero().flatten()
    if len(rows) == 0:
        return 0, False
    h, w = seen.shape
    reach = max(r0 - int(rows.min()), int(rows.max()) - (r0 + side - 1),
                c0 - int(cols.min()), int(cols.max()) - (c0 + side - 1), 0)
    border = int(rows.min()) == 0 or int(cols.min()) == 0 or int(rows.max()) == h - 1 \
        or int(cols.max()) == w - 1
    return reach, border


def _equivariant(net: nn.Module, x: Tensor, scale: int, shift: int, centre: int, side: int) -> bool:
    """Whether shifting the input by ``shift`` LR pixels shifts the central output block alike."""
    a = net(x)[..., centre * scale:(centre + side) * scale, centre * scale:(centre + side) * scale]
    try:
        b = net(x[..., shift:, shift:])
    except Exception:  # noqa: BLE001 - the model refuses this size (e.g. pixel-unshuffle): not this shift
        return False
    lo = (centre - shift) * scale
    b = b[..., lo:lo + side * scale, lo:lo + side * scale]
    tol = 1e-4 * float(a.abs().max().clamp_min(1e-6))
    return bool(a.shape == b.shape and float((a - b).abs().max()) <= tol)


def measure_field(net: nn.Module, channels: int, *, minimum: int = 0, multiple_of: int = 1,
                  trials: int = 2, seed: int = 0) -> Field:
    """Measure ``net``'s receptive field and translation period on random probe images.

    1. The support of the gradient of a central 16 x 16 LR-pixel block of outputs, on random
       ``(1, channels, P, P)`` inputs (``trials`` of them), P from :data:`PROBE_SIDES`: if it
       reaches the border of the largest probe the network is **global**.
    2. The period: the smallest shift p for which shifting the input by p pixels shifts the
       central outputs alike (window attention: its window; pixel-unshuffle: its factor).
    3. The radius: the largest reach of the support of one LR pixel's outputs, over the p
       phases of the grid, plus one pixel of margin.

    Costs a few forward and backward passes on the probes; no parameter is changed. Gradients
    that vanish by accident (a dead ReLU) could hide a dependence, which is why LAM also checks
    every crop (:func:`crop_is_exact`).
    """
    dtype, device = _param(net)
    gen = torch.Generator().manual_seed(seed)
    block = 16
    found: tuple[int, int] | None = None  # (probe side, block reach)
    with torch.enable_grad():
        for side in PROBE_SIDES:
            p = max(side, int(minimum))
            p = -(-p // max(1, multiple_of)) * max(1, multiple_of)
            xs = [torch.rand(1, channels, p, p, generator=gen, dtype=torch.float64).to(device, dtype)
                  for _ in range(trials)]
            with torch.no_grad():
                out = net(xs[0])
            if out.ndim != 4 or out.shape[-1] % p or out.shape[-2] % p:
                raise ValueError(f"the model maps a {p}x{p} probe to {tuple(out.shape)}, not an "
                                 "integer multiple of its size")
            scale = out.shape[-1] // p
            c0 = p // 2 - block // 2
            seen = torch.zeros(p, p, dtype=torch.bool, device=device)
            for x in xs:
                seen |= _support(net, x, scale, c0, c0, block, gen)
            reach, border = _extent(seen, c0, c0, block)
            if not border:
                found = (p, reach)
                break
        if found is None:
            return Field(None, 1, "measured",
                         f"the outputs of a {block}x{block} block depend on pixels at the border of a "
                         f"{p}x{p} probe: global receptive field")
        p, reach = found
        x0 = xs[0]
        centre = p // 2 - block // 2
        period = None
        with torch.no_grad():
            for shift in PERIODS:
                if centre - shift < reach + 1:
                    break
                if _equivariant(net, x0, scale, shift, centre, block):
                    period = shift
                    break
        if period is None:
            return Field(None, 1, "measured",
                         f"the network is local (reach {reach} LR pixels) but not translation "
                         f"equivariant for any shift up to {PERIODS[-1]} pixels, so no crop can be "
                         "placed safely: treated as global")
        radius = 0
        c = p // 2
        for k in range(period):
            seen = torch.zeros(p, p, dtype=torch.bool, device=device)
            for x in xs:
                seen |= _support(net, x, scale, c + k, c + k, 1, gen)
            radius = max(radius, _extent(seen, c + k, c + k, 1)[0])
    radius += 1
    return Field(radius, period, "measured",
                 f"measured on {trials} random {p}x{p} probes: outputs depend on LR pixels up to "
                 f"{radius - 1} away (radius {radius} with margin)"
                 + (f", translation period {period}" if period > 1 else ""))


def crop_box(field: Field, rows: tuple[int, int], cols: tuple[int, int], image: tuple[int, int],
             minimum: int = 0, size: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
    """The LR region ``(top, left, height, width)`` that holds the receptive field of the LR
    pixels ``rows[0]..rows[1]`` x ``cols[0]..cols[1]`` (inclusive).

    Its top-left corner lies on the field's period grid (or at 0), each side either reaches the
    image border or lies more than ``radius`` pixels beyond the needed pixels, and it is at least
    ``minimum`` pixels (or the whole image) in each direction. With ``size``, the box has that
    size where the image allows it (shifted inwards at the borders, which keeps it exact), so
    that many windows' crops can share one batch; a box at the bottom or right may be up to
    ``period - 1`` larger to keep its corner on the grid.
    """
    if field.radius is None:
        raise ValueError("a global receptive field cannot be cropped")
    out = []
    p = field.period
    for axis, ((lo, hi), extent) in enumerate(((rows, image[0]), (cols, image[1]))):
        need_stop = min(extent, hi + field.radius + 1)
        start = max(0, (lo - field.radius) // p * p)
        stop = need_stop
        want = max(minimum, size[axis] if size is not None else 0)
        if stop - start < want:
            stop = min(extent, start + want)
            if stop - start < want:
                start = max(0, (stop - want) // p * p)
        out.append((start, stop - start))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def crop_side(field: Field, window: int, scale: int, minimum: int = 0) -> int:
    """The side (LR pixels) of a crop that holds the receptive field of any ``window`` x
    ``window`` SR window (plus the one row/column the gradient detector reads beyond it)."""
    if field.radius is None:
        raise ValueError("a global receptive field cannot be cropped")
    span = max((t + window) // scale - t // scale + 1 for t in range(scale))
    return max(minimum, span + 2 * field.radius + field.period - 1)


def grow_box(field: Field, box: tuple[int, int, int, int], image: tuple[int, int],
             by: int = 8) -> tuple[int, int, int, int]:
    """``box`` grown by about ``by`` pixels per side (a multiple of the period), inside the image."""
    step = field.period * max(1, -(-by // field.period))
    top, left, h, w = box
    t2, l2 = max(0, top - step), max(0, left - step)
    b2, r2 = min(image[0], top + h + step), min(image[1], left + w + step)
    return t2, l2, b2 - t2, r2 - l2


def crop_is_exact(net: nn.Module, path: Any, box: tuple[int, int, int, int],
                  bigger: tuple[int, int, int, int], sr_rows: tuple[int, int],
                  sr_cols: tuple[int, int], scale: int) -> float:
    """Largest relative difference of the window's outputs between ``box`` and ``bigger``.

    ``path`` is a :class:`lamcam.paths.BlurPath` over the one box ``bigger``; the comparison is
    made at its input (``path.x``) and its baseline (``path.start()``). ``sr_rows``/``sr_cols``
    are the window's SR rows/cols (inclusive, whole-image coordinates). 0 means the crop does not
    change what the network computes in the window.
    """
    worst = 0.0
    dt, dl = box[0] - bigger[0], box[1] - bigger[1]
    with torch.no_grad():
        for xb in (path.x, path.start()):
            vals = []
            for (t, l_, h, w), (ot, ol) in ((box, (dt, dl)), (bigger, (0, 0))):
                y = net(xb[None, :, ot:ot + h, ol:ol + w])
                r0, c0 = sr_rows[0] - t * scale, sr_cols[0] - l_ * scale
                vals.append(y[..., r0:r0 + sr_rows[1] - sr_rows[0] + 1,
                              c0:c0 + sr_cols[1] - sr_cols[0] + 1])
            a, b = vals
            ref = float(b.abs().max().clamp_min(1e-12))
            worst = max(worst, float((a - b).abs().max()) / ref)
    return worst
