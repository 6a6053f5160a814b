"""Figures of Local Attribution Maps: the LAM paper's panel, model comparisons, the KDE "area".

The panel of Gu & Dong (CVPR 2021), as drawn by their LAM_Demo (SPEC §2, "visual conventions"),
all at SR resolution:

1. the LR image upsampled ×scale (nearest) with the explained window as a red box;
2. the LAM map (``|Σ_c attribution|`` / max) coloured with ``seismic`` on ``0.5 + 0.5·map``
   (white = 0, dark red = 1), upsampled ×scale (nearest);
3. that colour map blended 50/50 with the bicubic-upsampled LR image;
4. the "area of contribution" — a weighted Gaussian KDE of the LR pixel positions
   (:func:`kde_map`) — coloured and blended the same way (upsampled bicubically, as a density);
5. the SR output, clamped to [0, 1], with the window box;

followed by the Diffusion Index (DI) of the map.

:func:`dense_figure` draws the result of :meth:`lamcam.lam.LAM.dense` (the DI of every window on
a grid): the SR image, the DI heatmap over it with the highest-DI windows outlined, and the
distribution of the DIs.

Matplotlib is imported lazily (Agg canvas only, figures are never registered with pyplot), so
importing :mod:`lamcam` does not import it.

Example:
    >>> import torch
    >>> m = torch.zeros(12, 10); m[4, 3] = 1.0; m[6, 7] = 0.5
    >>> k = kde_map(m)
    >>> k.shape, float(k.max()), bool((k >= 0).all())
    (torch.Size([12, 10]), 1.0, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


class LAMResult(Protocol):
    """What the figures read from a LAM result (:class:`lamcam.LAMResult` has all of it).

    A protocol rather than an import, so that viz never imports the engine that draws through it.
    """

    image: torch.Tensor
    map: torch.Tensor
    sr: torch.Tensor
    diffusion_index: float
    pixels95: int
    completeness_error: float
    params: dict[str, Any]


class DenseLAMResult(Protocol):
    """What :func:`dense_figure` reads from a dense LAM result (:class:`lamcam.lam.DenseLAMResult`)."""

    di: torch.Tensor
    rows: list[int]
    cols: list[int]
    window: int
    stride: int
    sr: torch.Tensor
    params: dict[str, Any]


__all__ = [
    "kde_covariance",
    "kde_map",
    "seismic_rgb",
    "lam_panels",
    "lam_figure",
    "inset_region",
    "lam_comparison_figure",
    "dense_heatmap",
    "dense_figure",
    "crop_statement",
    "PANEL_TITLES",
    "DENSE_CMAP",
]

#: Titles of the five panels of :func:`lam_figure`, in display order (keys of :func:`lam_panels`).
PANEL_TITLES: dict[str, str] = {
    "lr": "LR ×{scale} + window",
    "map": "LAM attribution",
    "map_blend": "attribution + LR",
    "kde_blend": "area of contribution",
    "sr": "SR output",
}

#: Smallest eigenvalue (px²) allowed for the KDE kernel covariance. Only degenerate maps (all the
#: mass on one pixel or on one straight line, where the covariance is singular and
#: ``scipy.stats.gaussian_kde`` fails) are affected; the kernel then acts as a delta across.
MIN_KERNEL_VARIANCE = 1e-2


# --------------------------------------------------------------------------------------------
# the area of contribution: weighted Gaussian KDE
# --------------------------------------------------------------------------------------------


def _weights_2d(attr_map: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(attr_map, torch.Tensor):
        w = attr_map.detach().to("cpu", torch.float64).numpy()
    else:
        w = np.asarray(attr_map, dtype=np.float64)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"expected a non-empty (H, W) map, got shape {tuple(w.shape)}")
    if not np.isfinite(w).all():
        raise ValueError("the map contains NaN or inf")
    if (w < 0).any():
        raise ValueError("KDE weights must be non-negative; pass the abs map (LAMResult.map)")
    return w


def kde_covariance(attr_map: torch.Tensor | np.ndarray) -> np.ndarray | None:
    """Covariance ``(2, 2)`` of the Gaussian kernel of :func:`kde_map`, in (row, col) pixels².

    Scott's rule for weighted data, as ``scipy.stats.gaussian_kde(positions, weights=map)``:
    with the weights ``w`` normalised to sum 1, ``n_eff = 1 / Σ w²``, the kernel covariance is
    ``n_eff^(-2/6) · Σ_w``, where ``Σ_w = Σ_i w_i (x_i − μ)(x_i − μ)ᵀ / (1 − Σ w²)`` is the
    (unbiased, reliability-weighted) covariance of the pixel positions ``x_i = (row, col)``.

    Args:
        attr_map: ``(H, W)`` non-negative weights (tensor or array).

    Returns:
        The ``(2, 2)`` float64 covariance, or ``None`` for an all-zero map. Not regularised (see
        :data:`MIN_KERNEL_VARIANCE` for what :func:`kde_map` does with a singular one).

    Example:
        >>> m = np.zeros((5, 5)); m[1, 2] = m[3, 2] = 1.0       # two pixels, one column
        >>> kde_covariance(m).round(4)                          # var(row) = 2 · 2^(-1/3)
        array([[1.5874, 0.    ],
               [0.    , 0.    ]])
    """
    w = _weights_2d(attr_map)
    total = w.sum()
    if total <= 0:
        return None
    h, wd = w.shape
    wn = (w / total).ravel()
    rows, cols = np.mgrid[0:h, 0:wd]
    pos = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(np.float64)  # (n, 2)
    sum_sq = float((wn**2).sum())
    n_eff = 1.0 / sum_sq
    mu = wn @ pos
    d = pos - mu
    denom = 1.0 - sum_sq
    cov = (d * wn[:, None]).T @ d / denom if denom > 1e-12 else np.zeros((2, 2))
    return cov * n_eff ** (-2.0 / 6.0)


def kde_map(attr_map: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """LAM's "area of contribution": a weighted Gaussian KDE of the pixel positions, max = 1.

    The density ``f(y) = Σ_i w_i N(y; x_i, K)`` (weights ``w`` = the map values normalised to
    sum 1, positions ``x_i`` = the pixel centres, ``K`` = :func:`kde_covariance`, Scott's
    bandwidth) is evaluated at every pixel and divided by its maximum — what the official
    LAM_Demo computes with ``scipy.stats.gaussian_kde``. Because data and evaluation points share
    the pixel grid, ``f`` is the full linear convolution of the weight image with the kernel
    sampled at every offset ``(−(H−1)…H−1, −(W−1)…W−1)``; it is computed by a zero-padded FFT in
    ``O(HW log HW)`` instead of ``O((HW)²)`` — exact, no truncation (float64 round-off only).

    A singular covariance (all the mass on one pixel or one line) has its eigenvalues raised to
    :data:`MIN_KERNEL_VARIANCE` instead of failing.

    Args:
        attr_map: ``(H, W)`` non-negative map (e.g. ``LAMResult.map``), tensor or array.

    Returns:
        ``(H, W)`` in ``[0, 1]`` with maximum 1 — a float tensor (input dtype) for a tensor input,
        a float64 array for an array. An all-zero map gives all zeros.

    Raises:
        ValueError: not 2-D, negative, NaN or inf values.

    Example:
        >>> m = np.zeros((9, 9)); m[4, 4] = 1.0; m[4, 5] = 1.0
        >>> k = kde_map(m)
        >>> k.shape, round(float(k[4, 4]), 6), bool(k[0, 0] < k[4, 3] < k[4, 4])
        ((9, 9), 1.0, True)
        >>> kde_map(torch.zeros(3, 4)).abs().sum().item()
        0.0
    """
    w = _weights_2d(attr_map)
    h, wd = w.shape
    cov = kde_covariance(w)
    if cov is None:
        out = np.zeros((h, wd), dtype=np.float64)
    else:
        vals, vecs = np.linalg.eigh(cov)
        vals = np.maximum(vals, MIN_KERNEL_VARIANCE)
        prec = (vecs / vals) @ vecs.T  # inverse covariance
        dr = np.arange(-(h - 1), h, dtype=np.float64)[:, None]
        dc = np.arange(-(wd - 1), wd, dtype=np.float64)[None, :]
        q = prec[0, 0] * dr**2 + 2.0 * prec[0, 1] * dr * dc + prec[1, 1] * dc**2
        kernel = np.exp(-0.5 * q) / (2.0 * math.pi * math.sqrt(float(np.prod(vals))))
        shape = (3 * h - 2, 3 * wd - 2)  # full linear convolution, no wrap-around
        full = np.fft.irfft2(np.fft.rfft2(w / w.sum(), shape) * np.fft.rfft2(kernel, shape), shape)
        out = np.clip(full[h - 1 : 2 * h - 1, wd - 1 : 2 * wd - 1], 0.0, None)
        peak = out.max()
        out = out / peak if peak > 0 else np.zeros_like(out)
    if isinstance(attr_map, torch.Tensor):
        dtype = attr_map.dtype if attr_map.is_floating_point() else torch.float32
        return torch.from_numpy(out).to(dtype=dtype)
    return out


# --------------------------------------------------------------------------------------------
# panel rendering
# --------------------------------------------------------------------------------------------


def seismic_rgb(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """The paper's colouring of a ``[0, 1]`` map: ``seismic(0.5 + 0.5·map)`` (0 white, 1 dark red).

    Like the official code, this uses matplotlib's 256-entry ``seismic`` table, whose entry for
    0.5 is the first one past white: a zero map is (1, 0.99, 0.99).

    Args:
        values: ``(H, W)`` map in ``[0, 1]`` (clipped; NaN → 0).

    Returns:
        ``(H, W, 3)`` float32 RGB in ``[0, 1]``.

    Example:
        >>> seismic_rgb(np.array([[0.0, 1.0]])).round(1).tolist()
        [[[1.0, 1.0, 1.0], [0.5, 0.0, 0.0]]]
    """
    import matplotlib

    if isinstance(values, torch.Tensor):
        v = values.detach().to("cpu", torch.float64).numpy()
    else:
        v = np.asarray(values, dtype=np.float64)
    v = np.clip(np.nan_to_num(v), 0.0, 1.0)
    return matplotlib.colormaps["seismic"](0.5 + 0.5 * v)[..., :3].astype(np.float32)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` → ``(3, H, W)`` float32 on the CPU, clamped to [0, 1]."""
    x = x.detach().to("cpu", torch.float32)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 4:
        x = x[:3]
    elif x.shape[0] != 3:
        raise ValueError(f"cannot show a {x.shape[0]}-channel image")
    return torch.nan_to_num(x).clamp(0.0, 1.0)


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy()


def lam_panels(result: LAMResult) -> dict[str, np.ndarray]:
    """The five images of the LAM panel, each ``(sH, sW, 3)`` float32 in [0, 1] (SR resolution).

    Keys, in display order (see :data:`PANEL_TITLES`): ``"lr"`` (LR ×scale, nearest; the window
    box is drawn by the figure, not burnt in), ``"map"`` (seismic map, nearest), ``"map_blend"``
    (map blended 0.5 with the bicubic LR), ``"kde_blend"`` (area of contribution, blended the
    same way), ``"sr"`` (SR output clamped to [0, 1]). Also ``"kde"``: the ``(H, W)`` KDE at LR
    resolution (float64, max 1).

    Example:
        >>> import torch, torch.nn as nn
        >>> from lamcam.lam import LAM
        >>> net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
        >>> r = LAM(net, steps=4, progress=False)(torch.rand(3, 16, 16), row=8, col=8, window=8)
        >>> p = lam_panels(r)
        >>> [k for k in p], p["map_blend"].shape
        (['lr', 'map', 'map_blend', 'kde_blend', 'sr', 'kde'], (32, 32, 3))
    """
    lr = _rgb(result.image)
    sr = _rgb(result.sr)
    sh, sw = sr.shape[-2:]
    scale = int(result.params.get("scale", max(1, sh // lr.shape[-2])))
    h, w = lr.shape[-2:]
    if (sh, sw) != (h * scale, w * scale):  # e.g. a cropped output: show everything at SR size
        scale_hw = (sh, sw)
    else:
        scale_hw = (h * scale, w * scale)
    lr_near = F.interpolate(lr[None], size=scale_hw, mode="nearest")[0]
    lr_bic = F.interpolate(lr[None], size=scale_hw, mode="bicubic", align_corners=False)[0]
    lr_bic = _hwc(lr_bic.clamp(0.0, 1.0))
    amap = result.map.detach().to("cpu", torch.float32)
    map_up = F.interpolate(amap[None, None], size=scale_hw, mode="nearest")[0, 0]
    map_rgb = seismic_rgb(map_up)
    kde = np.asarray(kde_map(amap.double().numpy()))
    kde_up = F.interpolate(torch.from_numpy(kde).float()[None, None], size=scale_hw,
                           mode="bicubic", align_corners=False)[0, 0].clamp(0.0, 1.0)
    kde_rgb = seismic_rgb(kde_up)
    return {
        "lr": _hwc(lr_near),
        "map": map_rgb,
        "map_blend": (0.5 * map_rgb + 0.5 * lr_bic).astype(np.float32),
        "kde_blend": (0.5 * kde_rgb + 0.5 * lr_bic).astype(np.float32),
        "sr": _hwc(sr),
        "kde": kde,
    }


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

_PANEL_KEYS = ("lr", "map", "map_blend", "kde_blend", "sr")
_BOX_KW = {"fill": False, "edgecolor": "red", "linewidth": 1.5}


def _params_text(p: Mapping[str, Any]) -> str:
    """One line describing where and how a LAM was computed (everything a DI depends on)."""
    parts = []
    if "lr_size" in p:
        h, w = p["lr_size"]
        parts.append(f"LR {h}×{w}, ×{p.get('scale', '?')}")
    if "window" in p:
        parts.append(f"window {p['window']}×{p['window']} at SR (row {p.get('row')}, "
                     f"col {p.get('col')})")
    path = []
    if "sigma" in p:
        path.append(f"σ {p['sigma']:g}")
    if "kernel_size" in p:
        path.append(f"kernel {p['kernel_size']}")
    if "steps" in p:
        q = p.get("quadrature", "")
        path.append(f"{p['steps']} steps" + (f" ({q})" if q and q != "riemann" else ""))
    if path:
        parts.append(", ".join(path))
    if p.get("objective") not in (None, "gradient"):
        parts.append(f"objective {p['objective']}")
    return "  ·  ".join(parts)


def _comparable(results: Mapping[str, LAMResult]) -> bool:
    keys = ("lr_size", "row", "col", "window", "sigma", "kernel_size", "steps", "quadrature",
            "objective")
    first = None
    for r in results.values():
        sig = tuple(str(r.params.get(k)) for k in keys)
        if first is None:
            first = sig
        elif sig != first:
            return False
    return True


def _new_figure(w_in: float, h_in: float, dpi: int) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w_in, h_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _draw_row(fig: Figure, result: LAMResult, *, top: float, left: float, ph: float, pw: float,
              gap: float, label_h: float, titles: bool, fig_w: float, fig_h: float) -> list[Any]:
    """Draw the five panels of ``result`` with their top edge (titles included) at ``top`` inches
    from the figure's top; returns the panel axes."""
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    halo = [patheffects.withStroke(linewidth=2.8, foreground="white", alpha=0.8)]
    panels = lam_panels(result)
    p = result.params
    scale = p.get("scale", "?")
    row, col, win = p.get("row"), p.get("col"), p.get("window")
    axes = []
    bottom = fig_h - top - label_h - ph
    for i, key in enumerate(_PANEL_KEYS):
        x0 = left + i * (pw + gap)
        ax = fig.add_axes((x0 / fig_w, bottom / fig_h, pw / fig_w, ph / fig_h))
        ax.imshow(panels[key], interpolation="antialiased", interpolation_stage="rgba")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.5)
            spine.set_color("0.6")
        if titles:
            ax.set_title(PANEL_TITLES[key].format(scale=scale), fontsize=10, pad=4)
        if key in ("lr", "sr") and None not in (row, col, win):
            ax.add_patch(Rectangle((col - 0.5, row - 0.5), win, win, path_effects=halo,
                                   **_BOX_KW))
        axes.append(ax)
    return axes


def _di_text(fig: Figure, result: LAMResult, x: float, y_mid: float, fig_w: float,
             fig_h: float) -> None:
    """The DI block right of a row: "Diffusion Index", the value, and the 95 % pixel count."""
    n = int(np.prod(result.params.get("lr_size", list(result.map.shape))))
    share = 100.0 * result.pixels95 / max(n, 1)
    xf = x / fig_w
    fig.text(xf, (y_mid + 0.42) / fig_h, "DI", fontsize=10, ha="left", va="center", color="0.3")
    fig.text(xf, y_mid / fig_h, f"{result.diffusion_index:.2f}", fontsize=17, ha="left",
             va="center", fontweight="bold")
    fig.text(xf, (y_mid - 0.42) / fig_h, f"95 % mass:\n{result.pixels95} px ({share:.1f} %)",
             fontsize=7.5, ha="left", va="center", color="0.3", linespacing=1.2)


def _panel_geometry(result: LAMResult, panel_size: float) -> tuple[float, float]:
    sh, sw = result.sr.shape[-2:]
    aspect = min(max(sw / sh, 0.4), 2.5)
    return panel_size, panel_size * aspect  # (height, width) in inches


def _save(fig: Figure, path: str | os.PathLike | None, dpi: int) -> None:
    """Save ``fig`` as a PNG atomically (a temporary file renamed over ``path``)."""
    if path is None:
        return
    from lamcam._files import atomic_save_figure

    atomic_save_figure(Path(path), fig, dpi=dpi, format="png", facecolor="white")


def inset_region(result: LAMResult, mass: float = 0.99, margin: float = 0.15,
                 min_size: int = 8) -> tuple[int, int, int, int]:
    """The LR region ``(r0, r1, c0, c1)`` (end exclusive) that the zoomed LAM inset shows.

    The bounding box of the fewest LR pixels holding ``mass`` of the map's total, joined with
    the window's LR footprint, grown by ``margin`` × its size on every side (at least 2 LR
    pixels), at least ``min_size`` LR pixels on a side, squared up where the image allows, and
    clipped to the image.

    Example:
        >>> import torch, torch.nn as nn
        >>> from lamcam.lam import LAM
        >>> net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
        >>> r = LAM(net, steps=4, progress=False)(torch.rand(3, 40, 40), row=40, col=40, window=8)
        >>> r0, r1, c0, c1 = inset_region(r)
        >>> r0 <= 20 and r1 >= 24 and c0 <= 20 and c1 >= 24 and r1 - r0 < 40
        True
    """
    m = np.nan_to_num(np.abs(result.map.detach().to("cpu", torch.float64).numpy()))
    h, w = m.shape
    p = result.params
    s = max(1, int(p.get("scale", 1)))
    row, col, win = int(p.get("row", 0)), int(p.get("col", 0)), int(p.get("window", s))
    fr0, fc0 = row // s, col // s
    fr1, fc1 = -(-(row + win) // s), -(-(col + win) // s)
    total = float(m.sum())
    if total > 0:
        flat = np.sort(m.ravel())[::-1]
        k = int(np.searchsorted(np.cumsum(flat), mass * total)) + 1
        thr = flat[min(k, flat.size) - 1]
        rr, cc = np.nonzero(m >= thr)
        fr0, fr1 = min(fr0, int(rr.min())), max(fr1, int(rr.max()) + 1)
        fc0, fc1 = min(fc0, int(cc.min())), max(fc1, int(cc.max()) + 1)
    side = max(fr1 - fr0, fc1 - fc0)
    pad = max(2, math.ceil(margin * side))
    side = max(side + 2 * pad, min_size)

    def span(a: int, b: int, n: int) -> tuple[int, int]:
        size = min(side, n)
        mid = (a + b) / 2
        lo = int(round(mid - size / 2))
        lo = min(max(lo, 0), n - size)
        return min(lo, a), max(lo + size, b)

    r0, r1 = span(fr0, fr1, h)
    c0, c1 = span(fc0, fc1, w)
    return max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)


def _is_local(result: LAMResult, region: tuple[int, int, int, int], share: float = 0.25) -> bool:
    """Whether the inset region is a small part (≤ ``share`` of the area) of the LR image."""
    h, w = result.map.shape[-2:]
    r0, r1, c0, c1 = region
    return (r1 - r0) * (c1 - c0) <= share * h * w


def _draw_inset(fig: Figure, result: LAMResult, region: tuple[int, int, int, int], *,
                x0: float, bottom: float, size: float, fig_w: float, fig_h: float,
                map_ax: Any, title: bool = True) -> Any:
    """The zoomed inset: the LAM map over the LR region, nearest-neighbour, with the window box;
    its data coordinates are SR pixels (the extent of the region), as on the full panels."""
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    halo = [patheffects.withStroke(linewidth=2.8, foreground="white", alpha=0.8)]
    p = result.params
    s = max(1, int(p.get("scale", 1)))
    r0, r1, c0, c1 = region
    amap = result.map.detach().to("cpu", torch.float32)[r0:r1, c0:c1]
    lr = _rgb(result.image)[:, r0:r1, c0:c1]
    grey = (0.299 * lr[0] + 0.587 * lr[1] + 0.114 * lr[2]).numpy()
    rgb = seismic_rgb(amap.numpy())
    shade = (0.55 + 0.45 * grey)[..., None]  # the LR structure, faintly, under the map
    img = np.clip(rgb * shade, 0.0, 1.0)
    ax = fig.add_axes((x0 / fig_w, bottom / fig_h, size / fig_w, size / fig_h), label="lam-inset")
    ax.imshow(img, interpolation="nearest",
              extent=(c0 * s - 0.5, c1 * s - 0.5, r1 * s - 0.5, r0 * s - 0.5))
    ax.set_xlim(c0 * s - 0.5, c1 * s - 0.5)
    ax.set_ylim(r1 * s - 0.5, r0 * s - 0.5)
    ax.tick_params(labelsize=7, length=2, pad=1)
    for spine in ax.spines.values():
        spine.set_linewidth(1.0)
        spine.set_color("0.2")
        spine.set_linestyle((0, (3, 2)))
    row, col, win = p.get("row"), p.get("col"), p.get("window")
    if None not in (row, col, win):
        box = {**_BOX_KW, "linewidth": 1.0, "linestyle": (0, (4, 2))}
        ax.add_patch(Rectangle((col - 0.5, row - 0.5), win, win, path_effects=halo, **box))
    zoom = round(max(result.map.shape[-1] / (c1 - c0), result.map.shape[-2] / (r1 - r0)), 1)
    if title:
        ax.set_title(f"zoom ×{zoom:g} on the LAM\n(over LR luma; axes in SR px)", fontsize=8.5,
                 pad=4)
    # where the zoom is, on the full map panel
    map_ax.add_patch(Rectangle((c0 * s - 0.5, r0 * s - 0.5), (c1 - c0) * s, (r1 - r0) * s,
                               fill=False, edgecolor="0.15", linewidth=1.0,
                               linestyle=(0, (3, 2))))
    return ax


def lam_figure(
    result: LAMResult,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    *,
    panel_size: float | None = None,
    dpi: int = 100,
    inset: bool | None = None,
) -> Figure:
    """The LAM paper's panel for one result, one row (see the module docstring), with its DI.

    The figure title is ``title`` (default ``"Local Attribution Map"``) over a line with the
    LR size, scale, window position (SR pixels), σ, kernel size and steps. Layout is fixed in
    inches (no ``tight`` bounding box): 5 panels of ``panel_size`` inches high plus a DI column.

    Args:
        result: a :class:`lamcam.lam.LAMResult`.
        path: if given, save a PNG there (parents created) at ``dpi``.
        title: first title line (e.g. the model and image name).
        panel_size: panel height in inches (width follows the SR aspect ratio); default: the SR
            height at ``dpi`` (one screen pixel per SR pixel), kept within 2–3 inches.
        dpi: resolution of the saved PNG.
        inset: add a sixth panel, a zoom on the LR region around the window
            (:func:`inset_region`: the box of 99 % of the map's mass and the window's footprint,
            plus a margin), where the map of a local model — a speck on the full panel — shows
            its structure; a dashed box on the map panel marks the region. ``None`` (default):
            only when that region covers at most a quarter of the LR image.

    Returns:
        The matplotlib :class:`~matplotlib.figure.Figure` (Agg canvas, not managed by pyplot);
        its first 5 axes are the panels, the window box is a ``Rectangle`` patch on axes 0 and 4
        (red, with a thin white halo so that it stays visible on red textures); the inset, when
        drawn, is the last axes (label ``"lam-inset"``, data coordinates in SR pixels).

    Example:
        >>> import torch, torch.nn as nn
        >>> from lamcam.lam import LAM
        >>> net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
        >>> r = LAM(net, steps=4, progress=False)(torch.rand(3, 16, 16), row=8, col=8, window=8)
        >>> fig = lam_figure(r, title="toy", inset=False)
        >>> len(fig.axes), fig.axes[0].patches[0].get_xy()
        (5, (7.5, 7.5))
    """
    if panel_size is None:
        panel_size = min(3.0, max(2.0, result.sr.shape[-2] / dpi))
    ph, pw = _panel_geometry(result, panel_size)
    region = inset_region(result)
    if inset is None:
        inset = _is_local(result, region)
    gap, label_h, title_h, di_w, margin = 0.12, 0.3, 0.62, 1.35, 0.12
    inset_w = ph + 0.45 if inset else 0.0  # square panel plus room for its tick labels
    if inset:
        label_h = 0.45  # two-line inset title
    fig_w = margin + 5 * pw + 4 * gap + inset_w + 0.2 + di_w
    fig_h = title_h + label_h + ph + 0.1 + (0.2 if inset else 0.0)
    fig = _new_figure(fig_w, fig_h, dpi)
    axes = _draw_row(fig, result, top=title_h, left=margin, ph=ph, pw=pw, gap=gap,
                     label_h=label_h, titles=True, fig_w=fig_w, fig_h=fig_h)
    if inset:
        _draw_inset(fig, result, region, x0=margin + 5 * pw + 4 * gap + 0.4,
                    bottom=fig_h - title_h - label_h - ph, size=ph, fig_w=fig_w, fig_h=fig_h,
                    map_ax=axes[1])
    _di_text(fig, result, margin + 5 * pw + 4 * gap + inset_w + 0.25,
             fig_h - title_h - label_h - ph / 2, fig_w, fig_h)
    fig.text(0.5, 1.0 - 0.08 / fig_h, title or "Local Attribution Map", ha="center", va="top",
             fontsize=12, fontweight="bold")
    sub = _params_text(result.params)
    if math.isfinite(result.completeness_error):
        sub += f"  ·  completeness error {100 * result.completeness_error:.2g} %"
    fig.text(0.5, 1.0 - 0.36 / fig_h, sub, ha="center", va="top", fontsize=8.5, color="0.25")
    _save(fig, path, dpi)
    return fig


def lam_comparison_figure(
    results: Mapping[str, LAMResult],
    path: str | os.PathLike | None = None,
    title: str | None = None,
    *,
    notes: Mapping[str, str] | None = None,
    panel_size: float = 2.0,
    dpi: int = 100,
    inset: bool | None = None,
) -> Figure:
    """LAM of several models on the same window: one panel row per model, and a DI bar chart.

    With ``inset`` (``None``: when the attributions are local, see :func:`lam_figure`) every
    row ends with a zoom on the same LR region (the union of the models' :func:`inset_region`),
    so the models' local structure can be compared at one scale.

    Each row shows the five panels of :func:`lam_figure` (titles on the first row only), the
    model name on the left and its DI on the right. Below, a bar chart with one bar per model
    and its value. If the results differ in LR size, window or path parameters the title says
    that their DIs are not comparable.

    Args:
        results: ``{model name: LAMResult}``, in display order.
        path: if given, save a PNG there (parents created) at ``dpi``.
        title: first title line (default ``"LAM across models"``).
        notes: optional ``{model name: text}`` printed under the model name (e.g. PSNR, size).
        panel_size: panel height in inches.
        dpi: resolution of the saved PNG.

    Returns:
        The :class:`~matplotlib.figure.Figure`: ``5 × len(results)`` panel axes row by row, then
        the bar-chart axes (last).

    Example:
        >>> import torch, torch.nn as nn
        >>> from lamcam.lam import LAM
        >>> x = torch.rand(3, 16, 16)
        >>> nets = {k: nn.Sequential(nn.Conv2d(3, 12, k, padding=k // 2), nn.PixelShuffle(2))
        ...         for k in (1, 5)}
        >>> res = {f"k{k}": LAM(n, steps=4, progress=False)(x, 8, 8, 8) for k, n in nets.items()}
        >>> fig = lam_comparison_figure(res)
        >>> len(fig.axes), [t.get_text() for t in fig.axes[-1].get_xticklabels()]
        (11, ['k1', 'k5'])
    """
    if not results:
        raise ValueError("lam_comparison_figure needs at least one result")
    names = list(results)
    first = results[names[0]]
    ph, pw = _panel_geometry(first, panel_size)
    gap, label_h, row_gap, title_h, di_w, name_w = 0.1, 0.3, 0.12, 0.62, 1.35, 0.55
    bar_h, bar_pad = 2.3, 0.55
    n = len(names)
    regions = [inset_region(results[k]) for k in names]
    region = (min(g[0] for g in regions), max(g[1] for g in regions),
              min(g[2] for g in regions), max(g[3] for g in regions))
    if inset is None:
        inset = _comparable(results) and _is_local(first, region)
    inset_w = ph + 0.45 if inset else 0.0
    if inset:
        label_h, row_gap = 0.45, 0.3
    fig_w = name_w + 5 * pw + 4 * gap + inset_w + 0.2 + di_w
    rows_h = label_h + n * ph + (n - 1) * row_gap
    fig_h = title_h + rows_h + bar_pad + bar_h + 0.15
    fig = _new_figure(fig_w, fig_h, dpi)
    notes = dict(notes or {})

    for i, name in enumerate(names):
        r = results[name]
        top = title_h + i * (ph + row_gap)  # a title slot of label_h stays above every row
        axes = _draw_row(fig, r, top=top, left=name_w, ph=ph, pw=pw, gap=gap, label_h=label_h,
                         titles=i == 0, fig_w=fig_w, fig_h=fig_h)
        if inset:
            _draw_inset(fig, r, region, x0=name_w + 5 * pw + 4 * gap + 0.4,
                        bottom=fig_h - top - label_h - ph, size=ph, fig_w=fig_w, fig_h=fig_h,
                        map_ax=axes[1], title=i == 0)
        y_mid = fig_h - title_h - label_h - i * (ph + row_gap) - ph / 2
        label = name + (f"\n{notes[name]}" if name in notes else "")
        fig.text((name_w - 0.12) / fig_w, y_mid / fig_h, label, rotation=90, ha="right",
                 va="center", fontsize=10 if name not in notes else 9, fontweight="bold",
                 linespacing=1.3, multialignment="center")
        _di_text(fig, r, name_w + 5 * pw + 4 * gap + inset_w + 0.25, y_mid, fig_w, fig_h)

    # DI bar chart
    import matplotlib

    area_w = 5 * pw + 4 * gap
    bw = min(area_w - 0.5, 1.1 * n + 1.8)
    bx0 = name_w + (area_w - bw) / 2
    ax = fig.add_axes((bx0 / fig_w, 0.5 / fig_h, bw / fig_w, (bar_h - 0.45) / fig_h))
    dis = [results[k].diffusion_index for k in names]
    colours = [matplotlib.colormaps["tab10"](i % 10) for i in range(n)]
    bars = ax.bar(range(n), dis, color=colours, width=0.6, edgecolor="0.2", linewidth=0.5)
    ax.set_xticks(range(n), names, fontsize=9)
    ax.set_ylabel("Diffusion Index", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    top_val = max(dis) if dis and max(dis) > 0 else 1.0
    ax.set_ylim(0, top_val * 1.22)
    for b, v in zip(bars, dis, strict=True):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.02 * top_val, f"{v:.2f}", ha="center",
                va="bottom", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("DI per model (higher: the output depends on a wider range of LR pixels)",
                 fontsize=9.5, pad=6)

    fig.text(0.5, 1.0 - 0.08 / fig_h, title or "LAM across models", ha="center", va="top",
             fontsize=12, fontweight="bold")
    sub = _params_text(first.params)
    if not _comparable(results):
        sub += "  ·  WARNING: settings differ between models, DIs are not comparable"
    fig.text(0.5, 1.0 - 0.36 / fig_h, sub, ha="center", va="top", fontsize=8.5,
             color="0.25" if _comparable(results) else "#b00000")
    _save(fig, path, dpi)
    return fig


# --------------------------------------------------------------------------------------------
# the dense DI map (LAM.dense)
# --------------------------------------------------------------------------------------------

#: Colormap of the DI heatmap: perceptually uniform, readable in greyscale print.
DENSE_CMAP = "viridis"

#: Opacity of the DI heatmap over the greyscale SR image.
DENSE_ALPHA = 0.6


def crop_statement(params: Mapping[str, Any], *, short: bool = False) -> str:
    """What region LAM explained on, from ``params["crop"]`` of a LAM or dense LAM result.

    Args:
        params: ``LAMResult.params`` or ``DenseLAMResult.params``.
        short: a terminal fragment (ASCII, e.g. ``"crop 45x45 of 512x512 (declared field)"``)
            instead of a sentence with the receptive field and the crop check.

    Returns:
        The statement; ``""`` when ``params`` has no ``"crop"`` entry.

    Example:
        >>> p = {"lr_size": [512, 512], "crop": {"box": [10, 20, 45, 45], "check": 0.0,
        ...      "field": {"radius": 9, "source": "declared", "detail": "FSRCNN declares 9"}}}
        >>> crop_statement(p, short=True)
        'crop 45x45 of 512x512 (declared field)'
        >>> crop_statement({"lr_size": [8, 8], "crop": {"box": None, "reason": "crop=False"}},
        ...                short=True)
        'whole image (crop=False)'
    """
    crop = params.get("crop")
    if not isinstance(crop, Mapping):
        return ""
    lr = params.get("lr_size")
    of_ascii = f" of {lr[0]}x{lr[1]}" if lr else ""
    of = f" of {lr[0]}×{lr[1]}" if lr else ""
    field = crop.get("field") if isinstance(crop.get("field"), Mapping) else {}
    source, detail = field.get("source"), field.get("detail")
    check = crop.get("check")
    check_txt = f"; checked: outputs change by {check:.2g} against a larger crop" \
        if isinstance(check, int | float) else ""
    field_txt = f" ({detail})" if detail else ""
    if crop.get("box"):
        t, left, h, w = crop["box"]
        if short:
            return f"crop {h}x{w}{of_ascii}" + (f" ({source} field)" if source else "")
        return (f"explained on the {h}×{w} LR crop at (row {t}, col {left}){of} that holds the "
                f"window's receptive field{field_txt}{check_txt}")
    if crop.get("crop_sizes"):
        sizes = [(int(s[0]), int(s[1])) for s in crop["crop_sizes"]]
        if short:
            return "crop " + ", ".join(f"{h}x{w}" for h, w in sizes) + of_ascii + \
                (f" ({source} field)" if source else "")
        return ("each window explained on a " + " / ".join(f"{h}×{w}" for h, w in sizes)
                + f" LR crop{of} that holds its receptive field{field_txt}{check_txt}")
    reason = str(crop.get("reason") or "")
    if short:
        if reason == "crop=False":
            return "whole image (crop=False)"
        if field and field.get("radius") is None:
            return "whole image (global receptive field)"
        return "whole image"
    where = f"the whole {lr[0]}×{lr[1]} LR image" if lr else "the whole LR image"
    return f"explained on {where}" + (f": {reason}" if reason else "")


def _cells(size: int, starts: list[int], window: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``size`` pixels along one axis: the index of the window (among those that
    contain it) whose centre is nearest, and whether any window contains it."""
    s = np.asarray(starts, dtype=np.float64)[None, :]
    pos = np.arange(size, dtype=np.float64)[:, None] + 0.5  # pixel centres
    inside = (pos >= s) & (pos < s + window)
    dist = np.where(inside, np.abs(pos - (s + window / 2.0)), np.inf)
    return dist.argmin(axis=1), inside.any(axis=1)


def dense_heatmap(result: DenseLAMResult) -> np.ndarray:
    """The DI grid of a dense LAM painted at SR resolution: ``(sH, sW)`` float64, NaN = unpainted.

    Every SR pixel gets the DI of the window, among those that contain it, whose centre is
    nearest (rows and columns independently). With ``stride < window`` this is the
    ``stride × stride`` cell centred in each window (the cells of the border windows reach the
    image border, and the last row/column of windows, which is snapped to the image edge, gets a
    narrower cell), so the map covers the whole image; with ``stride ≥ window`` it is each window
    itself, and pixels in no window stay NaN.

    Args:
        result: a :class:`lamcam.lam.DenseLAMResult` (``di`` ``(len(rows), len(cols))``).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> r = NS(di=torch.tensor([[1.0, 2.0]]), rows=[0], cols=[0, 4], window=2, stride=4,
        ...        sr=torch.zeros(3, 2, 6))
        >>> dense_heatmap(r)
        array([[ 1.,  1., nan, nan,  2.,  2.],
               [ 1.,  1., nan, nan,  2.,  2.]])
    """
    di = result.di.detach().to("cpu", torch.float64).numpy()
    sh, sw = (int(v) for v in result.sr.shape[-2:])
    if di.shape != (len(result.rows), len(result.cols)):
        raise ValueError(f"di has shape {di.shape}, but the grid is {len(result.rows)}×{len(result.cols)}")
    ri, rok = _cells(sh, list(result.rows), int(result.window))
    ci, cok = _cells(sw, list(result.cols), int(result.window))
    heat = di[ri[:, None], ci[None, :]].copy()
    heat[~(rok[:, None] & cok[None, :])] = np.nan
    return heat


def _top_windows(di: np.ndarray, k: int, rows: list[int] | None = None,
                 cols: list[int] | None = None, window: int = 0) -> list[tuple[int, int]]:
    """Grid indices ``(i, j)`` of the ``k`` largest finite DIs, largest first (ties: row-major).

    With ``rows``, ``cols`` and ``window``, a window that overlaps one already chosen is skipped
    (greedy non-maximum suppression), so that overlapping windows (stride < window) do not all
    mark the same spot.
    """
    flat = np.where(np.isfinite(di), di, -np.inf).ravel()
    chosen: list[tuple[int, int]] = []
    for o in np.argsort(-flat, kind="stable"):
        if len(chosen) >= k or not np.isfinite(flat[o]):
            break
        i, j = divmod(int(o), di.shape[1])
        if rows is not None and cols is not None and any(
                abs(rows[i] - rows[a]) < window and abs(cols[j] - cols[b]) < window
                for a, b in chosen):
            continue
        chosen.append((i, j))
    return chosen


def _grey(sr: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` → ``(H, W)`` luma (Rec. 601) in [0, 1], float32."""
    rgb = _rgb(sr)
    w = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    return (rgb * w).sum(0).numpy()


def dense_figure(
    result: DenseLAMResult,
    *,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    top_k: int = 5,
    cmap: str = DENSE_CMAP,
    panel_size: float | None = None,
    dpi: int = 100,
) -> Figure:
    """Figure of a dense LAM (:meth:`lamcam.lam.LAM.dense`): where the network looks far.

    Three panels, left to right:

    (a) the SR output (clamped to [0, 1]);
    (b) the DI heatmap (:func:`dense_heatmap`; colormap ``cmap`` at opacity
        :data:`DENSE_ALPHA`, from the smallest to the largest DI) over the greyscale SR image,
        with a colorbar "Diffusion Index" and the ``top_k`` highest-DI windows outlined and
        ranked (red boxes with a white halo, the whole window; a window that overlaps a
        higher-ranked one is skipped);
    (c) a histogram of the DIs (bars coloured like the heatmap) with the median marked.

    Above: ``title`` (e.g. the model name; default ``"Dense Diffusion Index map"``), a line with
    the LR size, scale, window, stride, grid, σ, kernel and steps, and in small text what each
    window was explained on (:func:`crop_statement`), the cost and which function of the model
    (``params["model_call"]``) is explained. Layout is fixed in inches, as :func:`lam_figure`.

    Args:
        result: a :class:`lamcam.lam.DenseLAMResult`: ``di`` ``(len(rows), len(cols))`` over
            windows with top-left corners ``(rows[i], cols[j])`` (SR pixels), ``sr``
            ``(C', sH, sW)``.
        path: if given, save a PNG there atomically (parents created) at ``dpi``.
        title: first title line.
        top_k: how many of the highest-DI windows to outline (at most a quarter of the windows,
            none for a single window).
        cmap: a matplotlib colormap name (a perceptually uniform one: viridis, magma, ...).
        panel_size: image panel height in inches (width follows the SR aspect ratio); default:
            the SR height at ``dpi``, kept within 2.4–3.4 inches.
        dpi: resolution of the saved PNG.

    Returns:
        The :class:`~matplotlib.figure.Figure` (Agg canvas, not managed by pyplot). Axes in
        order: SR image, heatmap (its images: the greyscale SR, then the DI overlay; its
        ``Rectangle`` patches: the outlined windows, highest DI first), colorbar, histogram.

    Example:
        >>> import torch.nn as nn
        >>> from lamcam.lam import LAM
        >>> net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
        >>> d = LAM(net, steps=3, progress=False).dense(torch.rand(3, 16, 16), window=8)
        >>> fig = dense_figure(d, title="toy")
        >>> len(fig.axes), fig.axes[2].get_ylabel(), len(fig.axes[1].patches)
        (4, 'Diffusion Index', 4)
    """
    import matplotlib
    from matplotlib import patheffects
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    di = result.di.detach().to("cpu", torch.float64).numpy()
    if di.size == 0:
        raise ValueError("the dense result has no windows")
    finite = di[np.isfinite(di)]
    heat = dense_heatmap(result)
    sh, sw = heat.shape
    p = result.params
    window, stride = int(result.window), int(result.stride)
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
    else:
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-9:  # all windows alike: a flat colour mid-scale
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(vmin=lo, vmax=hi)
    colormap = matplotlib.colormaps[cmap]

    if panel_size is None:
        panel_size = min(3.4, max(2.4, sh / dpi))
    aspect = min(max(sw / sh, 0.4), 2.5)
    ph, pw = panel_size, panel_size * aspect
    margin, gap, cb_pad, cb_w, cb_lab, hist_lab, hist_w = 0.15, 0.22, 0.08, 0.14, 0.72, 0.55, 2.7
    fig_w = margin + pw + gap + pw + cb_pad + cb_w + cb_lab + hist_lab + hist_w + 0.25
    small = [crop_statement(p)]
    if isinstance(p.get("whole_image_lams"), int | float):
        small.append(f"cost ≈ {p['whole_image_lams']:.3g} whole-image LAMs"
                     + (f" in {p['seconds']:.1f} s" if isinstance(p.get("seconds"), int | float)
                        else ""))
    chars = int(fig_w * 19)  # characters of 6.5 pt text per line
    small_lines = [_wrap("; ".join(t for t in small if t), chars, 2)]
    if p.get("model_call"):
        small_lines.append(_wrap(f"model: {p['model_call']}", chars, 1))
    small_text = "\n".join(t for t in small_lines if t)
    n_small = small_text.count("\n") + 1 if small_text else 0
    title_h, label_h, note_h = 0.66 + 0.115 * n_small, 0.3, 0.62
    fig_h = title_h + label_h + ph + note_h
    fig = _new_figure(fig_w, fig_h, dpi)
    bottom = note_h

    def axes_at(x0: float, w: float) -> Any:
        return fig.add_axes((x0 / fig_w, bottom / fig_h, w / fig_w, ph / fig_h))

    def frame(ax: Any) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.5)
            spine.set_color("0.6")

    # (a) the SR image
    scale = p.get("scale", "?")
    ax_sr = axes_at(margin, pw)
    ax_sr.imshow(_hwc(_rgb(result.sr)), interpolation="antialiased", interpolation_stage="rgba")
    frame(ax_sr)
    ax_sr.set_title(f"(a) SR output ×{scale}  ({sh}×{sw})", fontsize=10, pad=4)

    # (b) the DI heatmap over the greyscale SR image
    x_heat = margin + pw + gap
    ax_h = axes_at(x_heat, pw)
    ax_h.imshow(_grey(result.sr), cmap="gray", vmin=0.0, vmax=1.0, interpolation="antialiased")
    overlay = ax_h.imshow(np.ma.masked_invalid(heat), cmap=colormap, norm=norm, alpha=DENSE_ALPHA,
                          interpolation="nearest")
    frame(ax_h)
    cell = "window" if stride >= window else f"{stride}×{stride} cell centred in each window"
    ax_h.set_title(f"(b) DI of each {window}×{window} window", fontsize=10, pad=4)
    n_win = di.size
    k = 0 if n_win < 2 else min(max(int(top_k), 0), max(1, n_win // 4))
    top = _top_windows(di, k, list(result.rows), list(result.cols), window)
    halo = [patheffects.withStroke(linewidth=2.6, foreground="white", alpha=0.85)]
    for rank, (i, j) in enumerate(top, start=1):
        r0, c0 = result.rows[i], result.cols[j]
        ax_h.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), window, window, path_effects=halo,
                                 **_BOX_KW))
        ax_h.text(c0 + 0.02 * sw, r0 + 0.02 * sh, str(rank), color="red", fontsize=7,
                  fontweight="bold", ha="left", va="top", path_effects=halo)
    ax_h.set_xlim(-0.5, sw - 0.5)
    ax_h.set_ylim(sh - 0.5, -0.5)
    note = (f"colour: DI of the {cell}" + (f"; outlined: the {len(top)} highest-DI windows"
            + (" that do not overlap" if stride < window else "")
            + " (where the network looks farthest)" if top else ""))
    fig.text((x_heat + pw / 2) / fig_w, (bottom - 0.1) / fig_h,
             _wrap(note, int((pw + 2 * gap) * 15), 3), ha="center", va="top", fontsize=7.5,
             color="0.3", linespacing=1.2)
    cax = fig.add_axes(((x_heat + pw + cb_pad) / fig_w, bottom / fig_h, cb_w / fig_w, ph / fig_h))
    cbar = fig.colorbar(overlay, cax=cax)
    cbar.set_label("Diffusion Index", fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    cbar.solids.set_alpha(1.0)  # the scale itself opaque: the colours of DI, not of the blend

    # (c) the distribution of the DIs
    x_hist = x_heat + pw + cb_pad + cb_w + cb_lab + hist_lab
    ax_d = axes_at(x_hist, hist_w)
    if finite.size:
        n_bins = int(min(30, max(5, round(math.sqrt(finite.size) * 2))))
        counts, edges, patches = ax_d.hist(finite, bins=n_bins, range=(lo, hi) if hi > lo else None,
                                           edgecolor="0.25", linewidth=0.4)
        for patch, a, b in zip(patches, edges[:-1], edges[1:], strict=True):
            patch.set_facecolor(colormap(norm(0.5 * (a + b))))
        med = float(np.median(finite))
        ax_d.axvline(med, color="0.1", linestyle="--", linewidth=1.2, label=f"median {med:.2f}")
        i_max, j_max = _top_windows(di, 1)[0]
        ax_d.plot([], [], " ", label=f"max {float(di[i_max, j_max]):.2f} at\n(row {result.rows[i_max]}, "
                  f"col {result.cols[j_max]})")
        ax_d.legend(fontsize=7.5, frameon=False, loc="upper right", handlelength=1.6)
        ax_d.set_ylim(0, max(counts.max(), 1) * 1.35)
    ax_d.set_xlabel("Diffusion Index", fontsize=9)
    ax_d.set_ylabel("windows", fontsize=9)
    ax_d.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax_d.spines[side].set_visible(False)
    ax_d.set_title(f"(c) DI over {n_win} windows", fontsize=10, pad=4)

    # titles
    fig.text(0.5, 1.0 - 0.08 / fig_h, title or "Dense Diffusion Index map", ha="center", va="top",
             fontsize=12, fontweight="bold")
    parts = []
    if "lr_size" in p:
        parts.append(f"LR {p['lr_size'][0]}×{p['lr_size'][1]}, ×{scale}")
    parts.append(f"window {window}×{window}, stride {stride} (SR px): {len(result.rows)}×"
                 f"{len(result.cols)} = {n_win} windows")
    path_txt = _params_text({k_: p[k_] for k_ in ("sigma", "kernel_size", "steps", "quadrature",
                                                   "objective") if k_ in p})
    if path_txt:
        parts.append(path_txt)
    fig.text(0.5, 1.0 - 0.36 / fig_h, "  ·  ".join(parts), ha="center", va="top", fontsize=8.5,
             color="0.25")
    fig.text(0.5, 1.0 - 0.6 / fig_h, small_text, ha="center", va="top", fontsize=6.5, color="0.35",
             linespacing=1.25)
    _save(fig, path, dpi)
    return fig


def _wrap(text: str, width: int, max_lines: int) -> str:
    """``text`` wrapped to at most ``max_lines`` lines of about ``width`` characters (the last
    one shortened with an ellipsis)."""
    import textwrap

    width = max(20, width)
    lines = textwrap.wrap(text, width=width)
    if len(lines) > max_lines:
        rest = textwrap.shorten(" ".join(lines[max_lines - 1:]), width=width, placeholder=" …")
        lines = [*lines[:max_lines - 1], rest]
    return "\n".join(lines)
