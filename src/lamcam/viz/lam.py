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

__all__ = [
    "kde_covariance",
    "kde_map",
    "seismic_rgb",
    "lam_panels",
    "lam_figure",
    "lam_comparison_figure",
    "PANEL_TITLES",
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


def lam_figure(
    result: LAMResult,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    *,
    panel_size: float | None = None,
    dpi: int = 100,
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

    Returns:
        The matplotlib :class:`~matplotlib.figure.Figure` (Agg canvas, not managed by pyplot);
        its first 5 axes are the panels, the window box is a ``Rectangle`` patch on axes 0 and 4
        (red, with a thin white halo so that it stays visible on red textures).

    Example:
        >>> import torch, torch.nn as nn
        >>> from lamcam.lam import LAM
        >>> net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
        >>> r = LAM(net, steps=4, progress=False)(torch.rand(3, 16, 16), row=8, col=8, window=8)
        >>> fig = lam_figure(r, title="toy")
        >>> len(fig.axes), fig.axes[0].patches[0].get_xy()
        (5, (7.5, 7.5))
    """
    if panel_size is None:
        panel_size = min(3.0, max(2.0, result.sr.shape[-2] / dpi))
    ph, pw = _panel_geometry(result, panel_size)
    gap, label_h, title_h, di_w, margin = 0.12, 0.3, 0.62, 1.35, 0.12
    fig_w = margin + 5 * pw + 4 * gap + 0.2 + di_w
    fig_h = title_h + label_h + ph + 0.1
    fig = _new_figure(fig_w, fig_h, dpi)
    _draw_row(fig, result, top=title_h, left=margin, ph=ph, pw=pw, gap=gap, label_h=label_h,
              titles=True, fig_w=fig_w, fig_h=fig_h)
    _di_text(fig, result, margin + 5 * pw + 4 * gap + 0.25, fig_h - title_h - label_h - ph / 2,
             fig_w, fig_h)
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
) -> Figure:
    """LAM of several models on the same window: one panel row per model, and a DI bar chart.

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
    fig_w = name_w + 5 * pw + 4 * gap + 0.2 + di_w
    rows_h = label_h + n * ph + (n - 1) * row_gap
    fig_h = title_h + rows_h + bar_pad + bar_h + 0.15
    fig = _new_figure(fig_w, fig_h, dpi)
    notes = dict(notes or {})

    for i, name in enumerate(names):
        r = results[name]
        top = title_h + i * (ph + row_gap)  # a title slot of label_h stays above every row
        _draw_row(fig, r, top=top, left=name_w, ph=ph, pw=pw, gap=gap, label_h=label_h,
                  titles=i == 0, fig_w=fig_w, fig_h=fig_h)
        y_mid = fig_h - title_h - label_h - i * (ph + row_gap) - ph / 2
        label = name + (f"\n{notes[name]}" if name in notes else "")
        fig.text((name_w - 0.12) / fig_w, y_mid / fig_h, label, rotation=90, ha="right",
                 va="center", fontsize=10 if name not in notes else 9, fontweight="bold",
                 linespacing=1.3, multialignment="center")
        _di_text(fig, r, name_w + 5 * pw + 4 * gap + 0.25, y_mid, fig_w, fig_h)

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
