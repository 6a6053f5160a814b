"""Visualisation: CAM overlays, gradient renderings, method figures, LAM figures, HTML reports.

Nothing here imports matplotlib at import time; it is loaded (Agg canvas only) on first use.

Example:
    >>> import torch
    >>> from lamcam.viz import overlay_cam, gradient_image
    >>> overlay_cam(torch.rand(3, 16, 16), torch.rand(4, 4)).size
    (16, 16)
    >>> gradient_image(torch.zeros(3, 8, 8)).getpixel((0, 0))
    (128, 128, 128)
"""

from lamcam.viz.lam import kde_map, lam_comparison_figure, lam_figure, lam_panels
from lamcam.viz.overlay import (
    figure_image,
    gradient_image,
    heatmap,
    methods_figure,
    overlay_cam,
    overlay_figure,
    to_pil,
)
from lamcam.viz.report import ReportImage, Section, write_index_html

__all__ = [
    "to_pil",
    "heatmap",
    "overlay_cam",
    "gradient_image",
    "methods_figure",
    "overlay_figure",
    "figure_image",
    "kde_map",
    "lam_panels",
    "lam_figure",
    "lam_comparison_figure",
    "ReportImage",
    "Section",
    "write_index_html",
]
