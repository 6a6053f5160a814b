"""Rendering attribution maps: colour heatmaps, CAM overlays, gradient images, method figures.

Matplotlib is imported lazily inside the functions that need it (colormaps, figures) and only
its Agg canvas is used, so importing :mod:`lamcam` never imports matplotlib nor touches the
global pyplot backend.

Conventions:
    * images are tensors ``(C, H, W)`` / ``(H, W)`` with values in ``[0, 1]``, ``(H, W, C)``
      arrays (float in ``[0, 1]`` or ``uint8``), or PIL images;
    * CAM maps are ``(H, W)`` tensors/arrays in ``[0, 1]`` (other sizes are resized);
    * gradient maps (guided backprop and friends) are signed ``(C, H, W)`` tensors.

Example:
    >>> import torch
    >>> from lamcam.viz import overlay_cam
    >>> img = torch.full((3, 32, 32), 0.5)
    >>> cam = torch.zeros(8, 8); cam[:4, :4] = 1.0
    >>> overlay_cam(img, cam, alpha=0.5).size
    (32, 32)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_CMAP",
    "BACKGROUNDS",
    "to_pil",
    "heatmap",
    "overlay_cam",
    "gradient_image",
    "methods_figure",
    "overlay_figure",
    "figure_image",
]

ImageLike = torch.Tensor | np.ndarray | Image.Image

#: Default colormap of CAM overlays and heatmaps: ``"turbo"`` (Google's perceptually smoothed
#: rainbow). Why turbo rather than jet or inferno: jet's lightness is not monotonic and has
#: sharp bands (false edges at cyan and yellow) that merge with striped or saturated
#: backgrounds; turbo keeps the blue → red reading users of jet expect but with a smooth,
#: nearly symmetric lightness profile and no bands, so equal map steps look equal. inferno is
#: strictly monotonic in lightness, but its low end is near-black, so an alpha blend darkens
#: every cold region of the photo and hides the content the map is about; with turbo the cold
#: end stays a mid-dark blue and the image remains readable under it. For print in grayscale
#: or for colour-blind readers, pass ``cmap="inferno"`` or ``"viridis"``.
DEFAULT_CMAP = "turbo"

#: Background choices of :func:`overlay_cam`: the image itself, or a dimmed grayscale copy.
BACKGROUNDS = ("image", "gray")


# --------------------------------------------------------------------------------------------
# conversions
# --------------------------------------------------------------------------------------------


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x)


def _image_hwc(image: ImageLike) -> np.ndarray:
    """Any supported image -> float32 ``(H, W, 3)`` array in [0, 1]."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float32)
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3:
            if t.shape[0] not in (1, 3, 4):
                shape = tuple(t.shape)
                raise ValueError(f"expected a (C,H,W) image tensor with C in 1, 3, 4; got {shape}")
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
        arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image of shape (C,H,W) or (H,W[,C]); got {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] == 4:  # composite on white, like lamcam.io.load_image
        arr = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    return np.clip(np.nan_to_num(arr), 0.0, 1.0)


def to_pil(image: ImageLike) -> Image.Image:
    """Convert an image to an 8-bit PIL image (``"RGB"``, or ``"L"`` for single-channel input).

    Args:
        image: tensor ``(C, H, W)`` (C in 1, 3, 4) or ``(H, W)`` in ``[0, 1]``; an array
            ``(H, W, C)`` / ``(H, W)`` (float in ``[0, 1]`` or ``uint8``); or a PIL image
            (returned unchanged). Values outside ``[0, 1]`` are clipped; alpha is composited on
            white.

    Returns:
        ``PIL.Image.Image`` of size ``(W, H)``.

    Example:
        >>> import torch
        >>> im = to_pil(torch.ones(3, 2, 5))
        >>> im.mode, im.size, im.getpixel((0, 0))
        ('RGB', (5, 2), (255, 255, 255))
        >>> to_pil(torch.zeros(4, 4)).mode
        'L'
    """
    if isinstance(image, Image.Image):
        return image
    arr = _to_numpy(image) if isinstance(image, torch.Tensor) else np.asarray(image)
    channel_axis = 0 if isinstance(image, torch.Tensor) else -1
    single = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[channel_axis] == 1)
    if single:
        g = arr.reshape(arr.shape[-2:] if isinstance(image, torch.Tensor) else arr.shape[:2])
        g = g.astype(np.float32) / 255.0 if g.dtype == np.uint8 else g.astype(np.float32)
        u8 = (np.clip(np.nan_to_num(g), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        return Image.fromarray(u8, mode="L")
    u8 = (_image_hwc(image) * 255.0).round().astype(np.uint8)
    return Image.fromarray(u8, mode="RGB")


def _map_2d(cam_map: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(_to_numpy(cam_map), dtype=torch.float32)
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"expected a single (H, W) map; got shape {tuple(t.shape)}")
    return torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0)


def _resize_map(m: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape) == hw:
        return m
    return F.interpolate(m[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]


def _colormap(cmap: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        msg = f"unknown matplotlib colormap {cmap!r} (try 'jet', 'inferno', 'turbo')"
        raise ValueError(msg) from None


def _heat_rgb(m: torch.Tensor, cmap: str) -> np.ndarray:
    return _colormap(cmap)(m.numpy())[..., :3].astype(np.float32)


def _background(img: np.ndarray, background: str) -> np.ndarray:
    """The layer under the heatmap: the image, or its luma dimmed into ``[0.1, 0.6]``.

    The grayscale option removes the image's own colours (which compete with the colormap's on
    saturated or striped backgrounds) and compresses its contrast, so the map carries all of
    the hue while the shapes stay recognisable.
    """
    if background == "image":
        return img
    if background in ("gray", "grey"):
        luma = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.repeat((0.1 + 0.5 * luma)[..., None], 3, axis=-1)
    raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")


# --------------------------------------------------------------------------------------------
# single-image renderers
# --------------------------------------------------------------------------------------------


def heatmap(
    cam_map: torch.Tensor | np.ndarray,
    cmap: str = DEFAULT_CMAP,
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """Colour a ``(H, W)`` map in ``[0, 1]`` with a matplotlib colormap.

    Args:
        cam_map: ``(H, W)`` tensor/array (leading singleton dims are dropped); values are
            clipped to ``[0, 1]``, NaN becomes 0.
        cmap: matplotlib colormap name (default :data:`DEFAULT_CMAP`, turbo).
        size: optional output ``(H, W)``; the map is resized bilinearly first.

    Returns:
        RGB ``PIL.Image.Image``.

    Example:
        >>> import torch
        >>> heatmap(torch.ones(2, 3)).getpixel((0, 0))  # top of 'turbo' is dark red
        (122, 4, 3)
        >>> heatmap(torch.ones(2, 3), cmap="jet").getpixel((0, 0))
        (128, 0, 0)
    """
    m = _map_2d(cam_map)
    if size is not None:
        m = _resize_map(m, (int(size[0]), int(size[1])))
    rgb = _heat_rgb(m, cmap)
    return Image.fromarray((rgb * 255.0).round().astype(np.uint8), mode="RGB")


def overlay_cam(
    image: ImageLike,
    cam_map: torch.Tensor | np.ndarray,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
    background: str = "image",
) -> Image.Image:
    """Blend a colour-mapped CAM over an image: ``(1 - alpha) * background + alpha * cmap(map)``.

    Args:
        image: ``(C, H, W)`` / ``(H, W)`` tensor in ``[0, 1]``, ``(H, W, C)`` array or PIL image.
        cam_map: ``(h, w)`` map in ``[0, 1]``; resized bilinearly to ``(H, W)`` if it differs.
        alpha: weight of the heatmap, in ``[0, 1]``.
        cmap: matplotlib colormap name (default :data:`DEFAULT_CMAP`, turbo; see there why).
        background: ``"image"`` (the image as is) or ``"gray"`` (its luma, dimmed into
            ``[0.1, 0.6]``): easier to read over saturated or striped images.

    Returns:
        RGB ``PIL.Image.Image`` of the image's size.

    Example:
        >>> import torch
        >>> img = torch.full((3, 4, 4), 0.5)
        >>> cam = torch.zeros(2, 2); cam[0, 0] = 1.0
        >>> r, g, b = overlay_cam(img, cam).getpixel((0, 0))   # hot corner: red dominates
        >>> r > b
        True
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _image_hwc(image)
    m = _resize_map(_map_2d(cam_map), img.shape[:2])
    out = (1.0 - alpha) * _background(img, background) + alpha * _heat_rgb(m, cmap)
    return Image.fromarray((np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8), mode="RGB")


def gradient_image(grad: torch.Tensor | np.ndarray, eps: float = 1e-12) -> Image.Image:
    """Standard rendering of a signed gradient map (guided backprop, guided Grad-CAM).

    The values are centred by their mean, divided by their standard deviation, scaled by 0.1 and
    shifted to 0.5, then clipped to ``[0, 1]`` (mid-grey = no signal).

    Args:
        grad: ``(C, H, W)`` (C = 1 or 3) or ``(H, W)`` tensor/array of raw gradients.
        eps: guard for a zero standard deviation (a constant map renders mid-grey).

    Returns:
        RGB ``PIL.Image.Image`` (single-channel input is replicated to grey).

    Example:
        >>> import torch
        >>> gradient_image(torch.full((3, 4, 4), 7.0)).getpixel((1, 1))
        (128, 128, 128)
    """
    g = _to_numpy(grad).astype(np.float64)
    if g.ndim == 4 and g.shape[0] == 1:
        g = g[0]
    if g.ndim == 2:
        g = g[None]
    if g.ndim != 3:
        raise ValueError(f"expected a (C, H, W) gradient; got shape {g.shape}")
    g = np.nan_to_num(g)
    g = (g - g.mean()) / (g.std() + eps) * 0.1 + 0.5
    g = np.clip(g, 0.0, 1.0)
    if g.shape[0] == 1:
        g = np.repeat(g, 3, axis=0)
    elif g.shape[0] != 3:
        raise ValueError(f"gradient must have 1 or 3 channels; got {g.shape[0]}")
    u8 = (g.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(u8, mode="RGB")


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

PANEL_KINDS = ("cam", "gradient", "image", "heatmap")


def _render_panel(
    kind: str, value: Any, image: ImageLike, alpha: float, cmap: str, background: str = "image"
) -> np.ndarray:
    if kind == "cam":
        pil = overlay_cam(image, value, alpha=alpha, cmap=cmap, background=background)
    elif kind == "gradient":
        pil = gradient_image(value)
    elif kind == "heatmap":
        pil = heatmap(value, cmap=cmap, size=_image_hwc(image).shape[:2])
    elif kind == "image":
        pil = to_pil(value).convert("RGB")
    else:
        raise ValueError(f"unknown panel kind {kind!r}; expected one of {PANEL_KINDS}")
    return np.asarray(pil)


def _draw_boxes(ax: Any, boxes: Sequence[Sequence[float]]) -> None:
    from matplotlib.patches import Rectangle

    for x0, y0, x1, y1 in boxes:
        for color, width in (("black", 2.2), ("white", 1.0)):  # visible on any background
            ax.add_patch(
                Rectangle(
                    (x0 - 0.5, y0 - 0.5),
                    x1 - x0,
                    y1 - y0,
                    fill=False,
                    edgecolor=color,
                    linewidth=width,
                )
            )


def methods_figure(
    image: ImageLike,
    panels: Mapping[str, tuple[str, Any]],
    title: str = "",
    path: str | os.PathLike | None = None,
    *,
    image_title: str = "input",
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
    background: str = "image",
    ncols: int | None = None,
    panel_size: float = 2.0,
    dpi: int = 120,
    colorbar: bool = True,
    title_color: str = "black",
    boxes: Sequence[Sequence[float]] | None = None,
) -> Figure:
    """Input image plus one panel per method, side by side, with a title per panel.

    Layout is deterministic (no ``bbox_inches="tight"``): the saved PNG measures
    ``round(fig_w * dpi) x round(fig_h * dpi)`` pixels (width x height), with (inches)
    ``fig_w = ncols * panel_size + (0.45 if a colour bar is drawn else 0) + 0.1`` and
    ``fig_h = nrows * (panel_size + 0.14 + 0.17 * L) + (0.32 if title else 0) + 0.05``,
    ``L`` being the largest number of lines in a panel title.

    Args:
        image: the input image (``(C, H, W)`` tensor in ``[0, 1]``, array or PIL).
        panels: ``{panel_title: (kind, value)}`` in display order. ``kind`` is ``"cam"`` (``(H, W)``
            map in ``[0, 1]`` drawn as an overlay on ``image``), ``"gradient"`` (signed
            ``(C, H, W)`` drawn with :func:`gradient_image`), ``"heatmap"`` (map alone) or
            ``"image"`` (anything :func:`to_pil` accepts, drawn as is).
        title: figure title (e.g. model, file, prediction). Newlines allowed.
        path: if given, save a PNG there (parent directories are created; written atomically).
        image_title: title of the input panel (e.g. ``"input\\ntrue: circle"``).
        alpha, cmap: overlay settings for ``"cam"`` / ``"heatmap"`` panels.
        background: ``"image"`` or ``"gray"`` under ``"cam"`` panels (see :func:`overlay_cam`).
        ncols: panels per row (default: all in one row).
        panel_size: panel edge in inches.
        dpi: resolution of the saved PNG.
        colorbar: add a colour bar for the CAM colormap when any CAM/heatmap panel is present.
        title_color: colour of the figure title (e.g. red for a misclassification).
        boxes: optional ground-truth boxes ``(x0, y0, x1, y1)`` in pixels of ``image``
            (``x1``, ``y1`` exclusive), outlined on the input panel.

    Returns:
        The :class:`matplotlib.figure.Figure` (Agg canvas; not registered with pyplot, so
        there is nothing to close).

    Example:
        >>> import torch
        >>> img = torch.rand(3, 32, 32)
        >>> cam = torch.rand(32, 32)
        >>> fig = methods_figure(img, {"Grad-CAM": ("cam", cam),
        ...                            "guided": ("gradient", torch.randn(3, 32, 32))}, "demo")
        >>> len(fig.axes)    # input + 2 panels + colour bar
        4
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    base = np.asarray(to_pil(image).convert("RGB"))
    entries: list[tuple[str, np.ndarray]] = [(image_title, base)]
    has_map = False
    for name, spec in panels.items():
        try:
            kind, value = spec
        except (TypeError, ValueError):
            raise ValueError(f"panel {name!r} must be a (kind, value) pair") from None
        has_map |= kind in ("cam", "heatmap")
        entries.append((str(name), _render_panel(kind, value, image, alpha, cmap, background)))

    n = len(entries)
    ncols = n if ncols is None else max(1, min(int(ncols), n))
    nrows = -(-n // ncols)
    use_cbar = colorbar and has_map
    cbar_w = 0.45 if use_cbar else 0.0
    title_h = 0.32 if title else 0.0
    n_title_lines = max(name.count("\n") + 1 for name, _ in entries)
    label_h = 0.14 + 0.17 * n_title_lines
    fig_w = ncols * panel_size + cbar_w + 0.1
    fig_h = nrows * (panel_size + label_h) + title_h + 0.05
    fig = Figure(figsize=(fig_w, fig_h), dpi=dpi)
    FigureCanvasAgg(fig)

    for i, (name, arr) in enumerate(entries):
        r, c = divmod(i, ncols)
        left = (0.05 + c * panel_size + 0.06) / fig_w
        bottom = (fig_h - title_h - (r + 1) * (panel_size + label_h) + 0.06) / fig_h
        ax = fig.add_axes((left, bottom, (panel_size - 0.12) / fig_w, (panel_size - 0.12) / fig_h))
        ax.imshow(arr, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.5)
            spine.set_color("0.6")
        ax.set_title(name, fontsize=9.5, pad=4)
        if i == 0 and boxes is not None:
            _draw_boxes(ax, boxes)
    if title:
        fig.text(
            0.5,
            1.0 - 0.08 / fig_h,
            title,
            ha="center",
            va="top",
            fontsize=11,
            fontweight="bold",
            color=title_color,
        )
    if use_cbar:
        grid_h = nrows * (panel_size + label_h)
        cax = fig.add_axes(
            (
                (0.05 + ncols * panel_size + 0.08) / fig_w,
                (fig_h - title_h - grid_h + 0.06 + 0.15 * grid_h) / fig_h,
                0.12 / fig_w,
                (0.7 * grid_h - label_h) / fig_h,
            )
        )
        sm = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=_colormap(cmap))
        cb = fig.colorbar(sm, cax=cax, ticks=[0.0, 0.5, 1.0])
        cb.ax.tick_params(labelsize=7, length=2)
        cb.outline.set_linewidth(0.5)
    if path is not None:  # atomically: never a half-written PNG under the final name
        from lamcam._files import atomic_save_figure

        atomic_save_figure(Path(path), fig, dpi=dpi, format="png", facecolor="white")
    return fig


def overlay_figure(
    image: ImageLike,
    cam_map: torch.Tensor | np.ndarray,
    *,
    kind: str = "cam",
    title: str = "",
    image_title: str = "input",
    panel_title: str = "",
    path: str | os.PathLike | None = None,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
    background: str = "image",
    panel_size: float = 2.6,
    dpi: int = 120,
) -> Figure:
    """One explanation as a titled figure: the input, the overlay and a colour bar.

    The figure of ``lamcam cam``: the same layout as the demo's :func:`methods_figure` with a
    single method, so a CLI PNG reads like a demo panel (what was explained, by which method and
    layer, with which score, and what the colours mean). ``kind="gradient"`` draws a signed
    gradient (guided methods) with :func:`gradient_image` and no colour bar. For the bare
    overlay use :func:`overlay_cam`.

    Args:
        image: the input image (``(C, H, W)`` tensor in ``[0, 1]``, array or PIL).
        cam_map: ``(h, w)`` map in ``[0, 1]`` (``kind="cam"``) or signed ``(C, H, W)`` gradient.
        kind: ``"cam"`` or ``"gradient"``.
        title: figure title (e.g. the file name); long titles are shrunk to fit.
        image_title, panel_title: titles of the two panels (newlines allowed), e.g.
            ``"input\npred: circle (p=0.98)"`` and ``"Grad-CAM++ · features.20\ntarget: ..."``.
        path: if given, save the PNG there (atomically).
        alpha, cmap, background: overlay settings (see :func:`overlay_cam`).
        panel_size, dpi: panel edge in inches, resolution.

    Returns:
        The :class:`matplotlib.figure.Figure` (Agg canvas): axes 0 = input, 1 = overlay, and for
        ``kind="cam"`` axes 2 = the colour bar.

    Example:
        >>> import torch
        >>> fig = overlay_figure(torch.rand(3, 16, 16), torch.rand(4, 4), title="x.png",
        ...                      panel_title="Grad-CAM · layer4")
        >>> len(fig.axes), fig.axes[1].get_title()
        (3, 'Grad-CAM · layer4')
    """
    if kind not in ("cam", "gradient"):
        raise ValueError(f"kind must be 'cam' or 'gradient', got {kind!r}")
    fig = methods_figure(
        image,
        {panel_title or kind: (kind, cam_map)},
        title,
        None,
        image_title=image_title,
        alpha=alpha,
        cmap=cmap,
        background=background,
        panel_size=panel_size,
        dpi=dpi,
    )
    if title:  # the title text: shrink a long one (file names can be long) to the figure width
        text = fig.texts[0]
        width_in = fig.get_figwidth() - 0.2
        n = max(len(line) for line in title.splitlines())
        text.set_fontsize(min(11.0, max(6.0, width_in * 72 / (0.62 * max(n, 1)))))
    if path is not None:
        from lamcam._files import atomic_save_figure

        atomic_save_figure(Path(path), fig, dpi=dpi, format="png", facecolor="white")
    return fig


def figure_image(fig: Figure) -> Image.Image:
    """Render a (Agg) figure to an RGB PIL image on white, at the figure's dpi.

    Example:
        >>> import torch
        >>> im = figure_image(overlay_figure(torch.rand(3, 8, 8), torch.rand(8, 8), dpi=50))
        >>> im.mode, im.size == (round(im.size[0]), round(im.size[1]))
        ('RGB', True)
    """
    fig.set_facecolor("white")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(rgba[..., :3].copy(), mode="RGB")
