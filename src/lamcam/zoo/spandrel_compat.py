"""Users' super-resolution checkpoints through spandrel (optional: ``pip install 'lamcam[sr]'``).

`spandrel <https://github.com/chaiNNer-org/spandrel>`_ recognises several dozen published image
restoration architectures (ESRGAN, SwinIR, HAT, RCAN, OmniSR, SPAN, ...) from the keys and shapes
of a bare state dict. :func:`load_with_spandrel` uses it like this:

* **Safe loading.** spandrel only ever sees a state dict that lamcam read itself (safetensors,
  or ``torch.load(weights_only=True)``); its own file loading is never used.
* **The raw module.** The model is ``descriptor.model``, not the descriptor's ``__call__``: that
  one runs under ``torch.inference_mode()`` and clamps its output in place, which removes the
  gradients LAM needs.
* **Size requirements.** Some architectures need a minimum input size, a multiple of a window
  or patch size, or square inputs (``descriptor.size_requirements``). :class:`PadToRequirements`
  pads the input at the bottom/right (reflect, as far as possible, then replicate), runs the
  model and crops the output back to ``scale`` times the original size. It always hands the
  model a fresh tensor, because some spandrel architectures scale their input in place
  (``x *= rgb_range``), which would alter the caller's image or fail on a leaf that requires
  grad.
* **Range.** spandrel models take and return RGB in ``[0, 1]`` (architectures that work in
  ``[0, 255]`` internally, like RCAN, rescale inside ``forward``), so ``input_range`` is 1.0.

torchvision: ``import spandrel`` imports torchvision, only for two non-SR architectures (LaMa
inpainting: ``InterpolationMode``, ``rotate``; RestoreFormer face restoration: ``normalize``).
PyPI's torchvision wheels do not load beside a CPU-only torch build from another index, and
installing one may pull a different torch. :func:`import_spandrel` therefore tries the real
import first and, if torchvision is missing or fails to import, registers a minimal stand-in
package ``torchvision.transforms.functional`` in ``sys.modules`` just for the duration of
``import spandrel``. Its ``rotate`` and ``normalize`` raise ``RuntimeError("this spandrel
architecture needs torchvision ...")`` if ever called, so only LaMa and RestoreFormer models
are affected; every SR architecture works.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import math
import sys
import types
from collections.abc import Mapping
from typing import Any

import torch  # noqa: F401 - used by the docstring example
from torch import Tensor, nn

from lamcam.zoo.sr import pad_bottom_right

__all__ = [
    "SpandrelUnavailable",
    "SpandrelUnsupported",
    "import_spandrel",
    "load_with_spandrel",
    "PadToRequirements",
    "STAND_IN_MARK",
]

#: Attribute set on the stand-in torchvision modules (True).
STAND_IN_MARK = "__lamcam_stand_in__"

_INSTALL_HINT = "pip install 'lamcam[sr]'"


class SpandrelUnavailable(ImportError):
    """spandrel (or one of its own dependencies) is not installed."""


class SpandrelUnsupported(ValueError):
    """spandrel is installed but recognises no architecture in the state dict (or cannot build it)."""


def _needs_torchvision(*_: Any, **__: Any) -> Any:
    raise RuntimeError(
        "this spandrel architecture needs torchvision, which is not installed or does not load "
        "beside this torch build (lamcam imported spandrel with a stand-in). Install a "
        "torchvision wheel matching your torch to use it."
    )


class _InterpolationMode(enum.Enum):
    """Stand-in for ``torchvision.transforms.InterpolationMode`` (same member names/values)."""

    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _stand_in_modules() -> dict[str, types.ModuleType]:
    """``torchvision``, ``torchvision.transforms`` and ``torchvision.transforms.functional``."""
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    mods: dict[str, types.ModuleType] = {}
    for name in names:
        mod = types.ModuleType(name, f"lamcam stand-in for {name} (see lamcam.zoo.spandrel_compat)")
        is_pkg = name != names[-1]
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=is_pkg)
        if is_pkg:
            mod.__path__ = []
        setattr(mod, STAND_IN_MARK, True)
        mods[name] = mod
    tv, tr, fn = (mods[n] for n in names)
    tv.__version__ = "0.0.0+lamcam.stand.in"  # type: ignore[attr-defined]
    tv.transforms = tr  # type: ignore[attr-defined]
    tr.functional = fn  # type: ignore[attr-defined]
    for mod in (tr, fn):
        mod.InterpolationMode = _InterpolationMode  # type: ignore[attr-defined]
    fn.rotate = _needs_torchvision  # type: ignore[attr-defined]
    fn.normalize = _needs_torchvision  # type: ignore[attr-defined]
    return mods


def _torchvision_ok() -> bool:
    """Whether the real ``torchvision.transforms.functional`` imports."""
    mod = sys.modules.get("torchvision")
    if mod is not None and getattr(mod, STAND_IN_MARK, False):
        return False
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:  # noqa: BLE001 - ImportError, RuntimeError (operator registration), OSError
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # drop a half-imported broken package
        return False
    return True


def import_spandrel() -> types.ModuleType:
    """Import and return :mod:`spandrel`, with a torchvision stand-in if torchvision is unusable.

    Tries the plain import when torchvision imports; otherwise registers the stand-in package
    described in the module docstring in ``sys.modules``, imports spandrel, and removes the
    stand-in entries again (spandrel keeps references to the stand-in's three names, which only
    LaMa and RestoreFormer use).

    Raises:
        SpandrelUnavailable: spandrel, or one of its dependencies (e.g. ``safetensors``,
            ``einops``), is not installed; the message says ``pip install 'lamcam[sr]'``.
    """
    loaded = sys.modules.get("spandrel")
    if loaded is not None:
        return loaded
    stand_in: dict[str, types.ModuleType] = {}
    if not _torchvision_ok():
        stand_in = _stand_in_modules()
        sys.modules.update(stand_in)
    try:
        import spandrel
    except ImportError as e:
        if getattr(e, "name", None) == "spandrel":
            raise SpandrelUnavailable(
                f"loading this checkpoint needs spandrel, which is not installed: {_INSTALL_HINT}"
            ) from e
        for name in [n for n in sys.modules if n == "spandrel" or n.startswith("spandrel.")]:
            del sys.modules[name]
        raise SpandrelUnavailable(
            f"spandrel is installed but cannot be imported ({type(e).__name__}: {e}); a "
            f"dependency seems missing: {_INSTALL_HINT}"
        ) from e
    finally:
        for name, mod in stand_in.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
    return spandrel


class PadToRequirements(nn.Module):
    """Run ``model`` on inputs padded to its size requirements; crop the output back.

    The input ``(B, C, H, W)`` is padded at the bottom/right (reflect-101 up to ``size - 1``
    pixels, replicate beyond) to ``H', W'``: at least ``minimum``, rounded up to a multiple of
    ``multiple_of``, and equal if ``square``. The output ``(B, C', scale H', scale W')`` is
    cropped to ``(B, C', scale H, scale W)``. The model always gets a new tensor (never the
    caller's), so models that modify their input in place are safe, also for inputs that
    require grad.

    Args:
        model: an image-to-image module (e.g. ``spandrel``'s ``descriptor.model``).
        scale: its upscaling factor; multiple_of, minimum, square: the size requirements.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
        >>> PadToRequirements(net, 2, multiple_of=8, minimum=16)(torch.rand(1, 3, 5, 7)).shape
        torch.Size([1, 3, 10, 14])
    """

    def __init__(
        self, model: nn.Module, scale: int, multiple_of: int = 1, minimum: int = 0,
        square: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.scale = int(scale)
        self.multiple_of = max(1, int(multiple_of))
        self.minimum = max(0, int(minimum))
        self.square = bool(square)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(H', W')`` an ``H x W`` input is padded to."""
        m = self.multiple_of
        h = math.ceil(max(height, self.minimum) / m) * m
        w = math.ceil(max(width, self.minimum) / m) * m
        if self.square:
            h = w = max(h, w)
        return h, w

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C', scale H, scale W)``."""
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h, w)
        xp = pad_bottom_right(x, ph, pw)
        if xp is x:
            xp = x.clone()
        out = self.model(xp)
        return out[..., : h * self.scale, : w * self.scale]

    def extra_repr(self) -> str:
        return (f"scale={self.scale}, multiple_of={self.multiple_of}, minimum={self.minimum}, "
                f"square={self.square}")


def load_with_spandrel(
    state: Mapping[str, Tensor], *, name: str, source: str, extra_meta: Mapping[str, Any] | None = None
) -> nn.Module:
    """Build the spandrel model for ``state`` (a state dict lamcam read itself).

    Returns:
        :class:`PadToRequirements` around ``descriptor.model``, in eval mode, with
        ``lamcam_meta``: ``name``, ``arch`` (spandrel's architecture id, e.g. ``"SwinIR"``),
        ``task`` ("sr"), ``scale``, ``in_channels``, ``out_channels``, ``input_range`` (1.0),
        ``size_requirements`` (dict), ``tags``, ``purpose``, ``source`` ("spandrel"),
        ``checkpoint`` (``source``), ``spandrel_version``, ``num_params``, ``receptive_field``
        (None: unknown), plus ``extra_meta`` underneath.

    Raises:
        SpandrelUnavailable: spandrel is not installed.
        SpandrelUnsupported: no spandrel architecture matches, spandrel failed to build it,
            or it is not a single-image model (e.g. an inpainting model).
    """
    spandrel = import_spandrel()
    sd = spandrel.canonicalize_state_dict(dict(state))
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError as e:
        n_arch = len(list(spandrel.MAIN_REGISTRY.architectures()))
        detail = f" ({e})" if str(e) else ""
        raise SpandrelUnsupported(
            f"spandrel {spandrel.__version__} recognises none of its {n_arch} architectures in "
            f"these keys{detail}"
        ) from e
    except Exception as e:  # noqa: BLE001 - spandrel detected an arch but could not build/load it
        raise SpandrelUnsupported(
            f"spandrel {spandrel.__version__} failed to build the model: {type(e).__name__}: {e}"
        ) from e
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise SpandrelUnsupported(
            f"spandrel recognised {desc.architecture.id} ({type(desc).__name__}), which is not a "
            "single-image model; lamcam's LAM needs image -> image networks"
        )
    req = desc.size_requirements
    model = PadToRequirements(desc.model, desc.scale, req.multiple_of, req.minimum, req.square)
    model.eval()
    meta: dict[str, Any] = dict(extra_meta or {})
    meta.update(
        name=name,
        arch=str(desc.architecture.id),
        task="sr",
        purpose=str(desc.purpose),
        scale=int(desc.scale),
        in_channels=int(desc.input_channels),
        out_channels=int(desc.output_channels),
        input_range=1.0,
        size_requirements={
            "minimum": int(req.minimum), "multiple_of": int(req.multiple_of),
            "square": bool(req.square),
        },
        tags=list(desc.tags),
        receptive_field=None,
        default_layer=None,
        source="spandrel",
        checkpoint=source,
        spandrel_version=str(spandrel.__version__),
        num_params=sum(p.numel() for p in desc.model.parameters()),
    )
    model.lamcam_meta = meta
    return model
