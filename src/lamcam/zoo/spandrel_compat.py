"""Users' super-resolution / restoration checkpoints through spandrel (optional, see ``_INSTALL_HINT``).

Install: ``pip install 'lamcam[sr]' && pip install --no-deps 'spandrel==0.4.2'``; ``--no-deps`` keeps
your torch (spandrel declares torchvision, which would pull another torch build).

`spandrel <https://github.com/chaiNNer-org/spandrel>`_ recognises several dozen published image
restoration architectures (ESRGAN, SwinIR, HAT, RCAN, OmniSR, SPAN, DnCNN, ...) from the keys and
shapes of a bare state dict. :func:`load_with_spandrel` uses it like this:

* **Safe loading.** spandrel only ever sees a state dict that lamcam read itself (safetensors,
  or ``torch.load(weights_only=True)``); its own file loading is never used.
* **The function that is explained** is chosen at load time (``call=``) and recorded in
  ``model.lamcam_meta["call"]`` and, as one sentence, ``["call_doc"]``. The model is a
  :class:`SpandrelModel`:

  - ``call="spandrel"`` (default) computes exactly what spandrel's
    ``ImageModelDescriptor.__call__`` computes -- what chaiNNer and other spandrel users run --
    but differentiably (no ``torch.inference_mode``, out-of-place clamp): spandrel's own
    ``pad_tensor`` (bottom/right, reflect up to ``size - 1`` pixels, replicate beyond) to the
    architecture's ``size_requirements``, the descriptor's call function (e.g. DnCNN/DRUNet add a
    noise-level map, FBCNN keeps the first of its outputs, MixDehazeNet maps ``[-1, 1]`` to
    ``[0, 1]``), ``clamp(0, 1)``, and the crop back to ``scale`` times the input. Outputs equal
    ``descriptor(x)`` bitwise (eval mode, CPU). **The clamp is part of that function:** where an
    output pixel saturates (below 0 or above 1 before the clamp), its gradient is zero, so LAM
    attributes nothing through it -- that is the truth of the function run, not an artefact.
  - ``call="module"`` runs the descriptor's call function on the input as given: no padding,
    no clamp. An input size that violates ``size_requirements`` raises a ValueError naming the
    requirement (use ``call="spandrel"`` to pad as spandrel does).

  Both always hand the network a fresh tensor, because some spandrel architectures scale their
  input in place (``x *= rgb_range``), which would alter the caller's image or fail on a leaf
  that requires grad. spandrel's call functions are written for one image (``(1, C, H, W)``);
  the custom ones (all but the plain ``model(image)``) are therefore run image by image when a
  batch holds several (LAM batches path points), which computes the same per image.
* **Differentiable without changing the function.** A few spandrel modules write into a slice of
  their input in eval mode (PLKSR's and RealPLKSR's partial convolutions:
  ``x[:, :idx] = conv(x[:, :idx])``), which autograd refuses ("modified by an inplace
  operation"). At load, those module *instances* get an out-of-place ``forward`` computing the
  identical values (``torch.cat`` of the same slices; spandrel's files are not changed);
  ``lamcam_meta["patched_modules"]`` lists them.
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

import torch
from torch import Tensor, nn

from lamcam.zoo.sr import pad_bottom_right

__all__ = [
    "SpandrelUnavailable",
    "SpandrelUnsupported",
    "import_spandrel",
    "load_with_spandrel",
    "read_descriptor",
    "detected_arch",
    "make_differentiable",
    "SpandrelModel",
    "CALL_MODES",
    "PadToRequirements",
    "STAND_IN_MARK",
]

#: Attribute set on the stand-in torchvision modules (True).
STAND_IN_MARK = "__lamcam_stand_in__"

_INSTALL_HINT = (
    "pip install 'lamcam[sr]' && pip install --no-deps 'spandrel==0.4.2' "
    "(--no-deps keeps your torch: spandrel's declared torchvision would replace it)"
)


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
            ``einops``), is not installed; the message gives the install line (``_INSTALL_HINT``).
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


#: The values of ``call=``: what a spandrel model's forward computes (see the module docstring).
CALL_MODES = ("spandrel", "module")


def _describe_requirements(req: Any) -> str:
    """``"a multiple of 16"``, ``"at least 16 px and a multiple of 8, square"``, or ``""``."""
    parts = []
    if req.minimum > 0:
        parts.append(f"at least {req.minimum} px")
    if req.multiple_of > 1:
        parts.append(f"a multiple of {req.multiple_of}")
    text = " and ".join(parts)
    if req.square:
        text = f"{text}, square" if text else "square"
    return text


def _is_plain_call(call_fn: Any) -> bool:
    """Whether ``call_fn`` is the descriptor's default ``lambda model, image: model(image)``."""
    qualname = getattr(call_fn, "__qualname__", "")
    return qualname.startswith("ImageModelDescriptor.__init__.")


#: How the custom call functions of spandrel 0.4.2 differ from ``model(image)`` (by arch id).
_CALL_FN_DOCS = {
    "DnCNN": "with a constant noise-level map of 15/255 as an extra input channel for FDnCNN",
    "DRUNet": "with a constant noise-level map of 15/255 as an extra input channel",
    "FBCNN": "keeping the first of its outputs (the image; the second is the JPEG quality)",
    "MMRealSR": "keeping the first of its outputs",
    "GFPGAN": "keeping the first of its outputs",
    "MixDehazeNet": "mapping its [-1, 1] output to [0, 1] (x 0.5 + 0.5)",
    "RetinexFormer": "which splits images of 3000 px or more into two interlaced halves",
    "IPT": "at its largest scale, in [0, rgb_range]",
}


#: Architectures whose eval-mode forward only handles one image at a time (SeemoRe's
#: mixture-of-experts picks its experts with ``topk(...).squeeze(0)``): run image by image.
_ONE_IMAGE_ARCHS = frozenset({"SeemoRe"})

#: Architectures whose forward draws random numbers on every call (the function is random).
_STOCHASTIC = {
    "AuraSR": "draws random noise on every call (input noise and style latent): outputs and "
              "attributions are reproducible only under a fixed torch.manual_seed",
}


def _call_doc(arch: str, call: str, req: Any, scale: int, call_fn: Any) -> str:
    """The one sentence recorded as ``lamcam_meta["call_doc"]``."""
    run = f"run {arch}"
    if not _is_plain_call(call_fn):
        how = _CALL_FN_DOCS.get(arch, "through the descriptor's call function")
        run = f"{run} through spandrel's call function ({how})"
    need = _describe_requirements(req)
    if arch in _STOCHASTIC:
        run = f"{run} (which {_STOCHASTIC[arch]})"
    if call == "module":
        need_text = f"; input sides must be {need}" if need else ""
        return (f"spandrel's {arch} module as the descriptor calls it, on the input as given: "
                f"{run}, no padding, no clamp{need_text}")
    pad = f"pad the bottom/right to {need} (reflect, replicate beyond the image size), " \
        if need else ""
    crop = f", crop to {scale}x the input" if need else ""
    return (f"spandrel's ImageModelDescriptor.__call__: {pad}{run}, clamp to [0, 1] (zero "
            f"gradient where the output saturates){crop}")


class SpandrelModel(nn.Module):
    """A spandrel ``ImageModelDescriptor`` as a differentiable module, in one of two call modes.

    * ``call="spandrel"``: exactly ``descriptor(x)`` -- spandrel's ``pad_tensor`` to the size
      requirements, the descriptor's call function, ``clamp(0, 1)`` (out of place), crop -- but
      without ``torch.inference_mode``, so gradients flow (and vanish where the clamp
      saturates).
    * ``call="module"``: the descriptor's call function on the input as given (no padding, no
      clamp); sizes that violate the requirements raise a ValueError.

    The network always receives a fresh tensor (some spandrel architectures scale their input in
    place). Custom call functions (all but ``model(image)``), and architectures whose forward
    handles one image only (SeemoRe), are run image by image on batches, as spandrel defines
    its call for one image.

    Attributes:
        model: ``descriptor.model`` (spandrel's network).
        descriptor: the spandrel descriptor (its ``__call__`` is the reference of ``"spandrel"``).
        call: ``"spandrel"`` or ``"module"``.
        scale: the upscaling factor; size_requirements: spandrel's ``SizeRequirements``.
    """

    def __init__(self, descriptor: Any, call: str = "spandrel") -> None:
        super().__init__()
        if call not in CALL_MODES:
            raise ValueError(f"call must be one of {CALL_MODES}, got {call!r}")
        self.model = descriptor.model
        self.descriptor = descriptor
        self.call = call
        self.scale = int(descriptor.scale)
        self.size_requirements = descriptor.size_requirements
        self.arch = str(descriptor.architecture.id)
        self._call_fn = descriptor._call_fn
        self._per_image = not _is_plain_call(self._call_fn) or self.arch in _ONE_IMAGE_ARCHS
        self._pad_tensor = sys.modules[type(self.size_requirements).__module__].pad_tensor

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(H', W')`` spandrel pads an ``H x W`` input to."""
        pad_w, pad_h = self.size_requirements.get_padding(width, height)
        return height + pad_h, width + pad_w

    def _run(self, x: Tensor) -> Tensor:
        """The descriptor's call function on ``x`` (image by image for custom call functions)."""
        if self._per_image and x.shape[0] > 1:
            outs = [self._run(x[i : i + 1]) for i in range(x.shape[0])]
            return torch.cat(outs, dim=0)
        out = self._call_fn(self.model, x)
        if not isinstance(out, Tensor):
            raise TypeError(f"spandrel's {self.arch} returned a {type(out).__name__}, not a tensor")
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in ``[0, 1]`` -> ``(B, C', scale H, scale W)``."""
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.call == "module":
            if not self.size_requirements.check(w, h):
                raise ValueError(
                    f"spandrel's {self.arch} needs input sides of "
                    f"{_describe_requirements(self.size_requirements)} (size_requirements), "
                    f"got {h}x{w}. Load it with lamcam.zoo.load(..., call='spandrel') to pad as "
                    "spandrel does (and clamp and crop), or pad the input yourself."
                )
            return self._run(x.clone())
        did_pad, xp = self._pad_tensor(x, self.size_requirements)  # spandrel's own function
        out = self._run(xp if did_pad else x.clone()).clamp(0, 1)
        if did_pad:
            out = out[..., : h * self.scale, : w * self.scale]
        return out

    def extra_repr(self) -> str:
        req = self.size_requirements
        return (f"arch={self.arch}, call={self.call!r}, scale={self.scale}, "
                f"minimum={req.minimum}, multiple_of={req.multiple_of}, square={req.square}")


# --------------------------------------------------------------------------------------------
# out-of-place replacements of spandrel modules that write into their input in eval mode
# --------------------------------------------------------------------------------------------
def _plk_conv2d(self: Any, x: Tensor) -> Tensor:
    """PLKSR's ``PLKConv2d`` eval branch (``x[:, :idx] = [x[:, :idx] +] conv(x[:, :idx])``)."""
    x1, x2 = x[:, : self.idx], x[:, self.idx :]
    y = x1 + self.conv(x1) if getattr(self, "with_idt", False) else self.conv(x1)
    return torch.cat([y, x2], dim=1)


def _rect_sparse_plk_conv2d(self: Any, x: Tensor) -> Tensor:
    """PLKSR's ``RectSparsePLKConv2d`` eval branch, out of place (same sum order)."""
    x1, x2 = x[:, : self.idx], x[:, self.idx :]
    y = self.mn_conv(x1) + self.nm_conv(x1) + self.nn_conv(x1)
    return torch.cat([y, x2], dim=1)


def _sparse_plk_conv2d(self: Any, x: Tensor) -> Tensor:
    """PLKSR's ``SparsePLKConv2d``: its converted (``is_convert``) branch, out of place; the
    unconverted branch (already out of place) is the class's own."""
    if not self.is_convert:
        return type(self).forward(self, x)
    x1, x2 = x[:, : self.idx], x[:, self.idx :]
    return torch.cat([self.conv(x1), x2], dim=1)


#: (module of the class, class name) -> out-of-place forward (same values as spandrel's eval
#: branch). Found by differentiating every family's output w.r.t. its input in eval mode.
_OUT_OF_PLACE: dict[tuple[str, str], Any] = {
    ("spandrel.architectures.PLKSR.__arch.PLKSR", "PLKConv2d"): _plk_conv2d,
    ("spandrel.architectures.PLKSR.__arch.PLKSR", "RectSparsePLKConv2d"): _rect_sparse_plk_conv2d,
    ("spandrel.architectures.PLKSR.__arch.PLKSR", "SparsePLKConv2d"): _sparse_plk_conv2d,
    ("spandrel.architectures.PLKSR.__arch.RealPLKSR", "PLKConv2d"): _plk_conv2d,
}


def make_differentiable(model: nn.Module) -> list[str]:
    """Give the submodules of ``model`` that write into their input an out-of-place ``forward``.

    Only the instances change (an instance attribute ``forward``), never spandrel's classes or
    files; the replacement computes the same values from the same slices (see the module
    docstring). Returns the patched classes as ``"PLKConv2d x 3"`` entries (empty: nothing
    to patch).
    """
    counts: dict[str, int] = {}
    for module in model.modules():
        cls = type(module)
        fn = _OUT_OF_PLACE.get((cls.__module__, cls.__name__))
        if fn is None or "forward" in vars(module):
            continue
        module.forward = types.MethodType(fn, module)  # type: ignore[method-assign]
        counts[cls.__name__] = counts.get(cls.__name__, 0) + 1
    return [f"{name} x {n}" for name, n in sorted(counts.items())]


def read_descriptor(state: Mapping[str, Tensor]) -> Any:
    """spandrel's ``ImageModelDescriptor`` for ``state`` (a state dict lamcam read itself).

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
    return desc


def detected_arch(state: Mapping[str, Tensor]) -> str | None:
    """The id of the first spandrel architecture whose key test accepts ``state`` (no build).

    None if spandrel is not installed or no architecture detects the keys. Cheap: spandrel's
    ``detect`` only looks at keys and shapes.
    """
    try:
        spandrel = import_spandrel()
    except SpandrelUnavailable:
        return None
    sd = spandrel.canonicalize_state_dict(dict(state))
    for support in spandrel.MAIN_REGISTRY.architectures("detection"):
        try:
            if support.architecture.detect(sd):
                return str(support.architecture.id)
        except Exception:  # noqa: BLE001 - a detector choking on odd keys: not this one
            continue
    return None


def load_with_spandrel(
    state: Mapping[str, Tensor], *, name: str, source: str,
    extra_meta: Mapping[str, Any] | None = None, call: str = "spandrel",
) -> SpandrelModel:
    """Build the spandrel model for ``state`` (a state dict lamcam read itself).

    Args:
        state: the state dict; name, source: recorded in the metadata.
        extra_meta: metadata underneath lamcam's (e.g. the file's).
        call: ``"spandrel"`` (default: exactly what ``descriptor(image)`` computes, padding,
            clamp and crop included) or ``"module"`` (the network on the input as given); see
            the module docstring.

    Returns:
        A :class:`SpandrelModel`, in eval mode, with ``lamcam_meta``: ``name``, ``arch``
        (spandrel's architecture id, e.g. ``"SwinIR"``), ``task`` ("sr"), ``purpose``,
        ``scale``, ``in_channels``, ``out_channels``, ``input_range`` (1.0), ``call``,
        ``call_doc`` (one sentence saying what the forward computes), ``size_requirements``
        (dict), ``patched_modules`` (see :func:`make_differentiable`), ``stochastic`` (the
        forward draws random numbers: AuraSR), ``tags``, ``source``
        ("spandrel"), ``checkpoint`` (``source``), ``spandrel_version``, ``num_params``,
        ``receptive_field`` (None: unknown), plus ``extra_meta`` underneath.

    Raises:
        ValueError: ``call`` is not one of :data:`CALL_MODES`.
        SpandrelUnavailable: spandrel is not installed.
        SpandrelUnsupported: no spandrel architecture matches, spandrel failed to build it,
            or it is not a single-image model (e.g. an inpainting model).
    """
    if call not in CALL_MODES:
        raise ValueError(f"call must be one of {CALL_MODES}, got {call!r}")
    spandrel = import_spandrel()
    desc = read_descriptor(state)
    desc.model.eval()
    patched = make_differentiable(desc.model)
    model = SpandrelModel(desc, call)
    model.eval()
    req = desc.size_requirements
    arch = str(desc.architecture.id)
    meta: dict[str, Any] = dict(extra_meta or {})
    meta.update(
        name=name,
        arch=arch,
        task="sr",
        purpose=str(desc.purpose),
        scale=int(desc.scale),
        in_channels=int(desc.input_channels),
        out_channels=int(desc.output_channels),
        input_range=1.0,
        call=call,
        call_doc=_call_doc(arch, call, req, int(desc.scale), desc._call_fn),
        size_requirements={
            "minimum": int(req.minimum), "multiple_of": int(req.multiple_of),
            "square": bool(req.square),
        },
        patched_modules=patched,
        stochastic=arch in _STOCHASTIC,
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
