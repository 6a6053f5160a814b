"""Metrics that judge attributions. Core: torch and numpy only."""

from lamcam.metrics.diffusion import diffusion_index, gini, mass_pixels

__all__ = ["diffusion_index", "gini", "mass_pixels"]
