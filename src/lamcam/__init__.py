"""lamcam: exact class-activation maps and local attribution maps for PyTorch image models.

>>> import lamcam
>>> list(lamcam.METHODS)[:3], len(lamcam.METHODS)
(['cam', 'gradcam', 'gradcam++'], 13)
"""

from lamcam.attribution import InputXGradient, IntegratedGradients, Saliency
from lamcam.cam import (
    CAM,
    METHODS,
    AblationCAM,
    CAMResult,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GradCAMPlusPlusSoftmax,
    GuidedBackprop,
    GuidedGradCAM,
    GuidedGradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    explain,
    make_explainer,
)
from lamcam.lam import LAM, DenseLAMResult, LAMMemoryError, LAMResult
from lamcam.layout import Layout, LayoutError
from lamcam.targets import TopK

__version__ = "0.1.0"

__all__ = [
    "CAM",
    "METHODS",
    "CAMResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradCAMPlusPlusSoftmax",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedGradCAMPlusPlus",
    "HiResCAM",
    "XGradCAM",
    "LayerCAM",
    "ScoreCAM",
    "AblationCAM",
    "EigenCAM",
    "InputXGradient",
    "IntegratedGradients",
    "DenseLAMResult",
    "LAM",
    "LAMMemoryError",
    "LAMResult",
    "Layout",
    "LayoutError",
    "Saliency",
    "TopK",
    "__version__",
    "explain",
    "make_explainer",
]

_SUBMODULES = {
    "app", "attribution", "batch", "cam", "demo", "guided", "hooks", "integrate", "io", "lam",
    "layout", "maps", "metrics", "paths", "targets", "viz", "zoo",
}


def __getattr__(name: str):
    """Import submodules on first use (``lamcam.zoo``, ``lamcam.io``, ``lamcam.viz``)."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"lamcam.{name}")
    raise AttributeError(f"module 'lamcam' has no attribute {name!r}")
