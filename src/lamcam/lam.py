"""Local Attribution Maps for super-resolution and any image-to-image network (Gu & Dong, CVPR 2021).

LAM integrates the gradient of a local objective of the SR output — by default the *gradient
detector*, the summed edge strength in a window of the output — along the progressive-blurring
path from the blurred LR image to the LR image (SPEC §2). The defaults reproduce the official
LAM_Demo discretisation: σ = 1.2, a 9 × 9 kernel, 50 steps, right Riemann sum, a 16-pixel window
whose top-left corner is (row, col) in SR pixels.

Example:
    >>> import torch, torch.nn as nn
    >>> sr = nn.Sequential(nn.Conv2d(3, 3 * 4, 3, padding=1), nn.PixelShuffle(2))
    >>> r = LAM(sr, progress=False)(torch.rand(3, 24, 24), row=10, col=12, window=8)
    >>> r.attribution.shape, r.map.shape, r.sr.shape
    (torch.Size([3, 24, 24]), torch.Size([24, 24]), torch.Size([3, 48, 48]))
"""

from __future__ import annotations

import io
import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lamcam._memory import LAMMemoryError, available_bytes, format_bytes
from lamcam._progress import show as _show_progress
from lamcam.hooks import model_guard
from lamcam.integrate import QUADRATURES, batch_for_budget, integrate_path, plan, probe_point_bytes
from lamcam.metrics.diffusion import diffusion_index, diffusion_index_padded, mass_pixels
from lamcam.paths import BlurPath
from lamcam.receptive import (
    Field,
    crop_box,
    crop_is_exact,
    crop_side,
    declared_field,
    grow_box,
    measure_field,
)

__all__ = [
    "LAM", "DenseLAMResult", "GradientDetector", "LAMMemoryError", "LAMResult", "WindowMean",
    "abs_normalized_map",
]

#: Largest relative change of the window's outputs that a receptive-field crop may cause (it is
#: checked before every cropped LAM); above it LAM falls back to the whole image and warns.
CROP_TOLERANCE = 1e-5

#: Without a declared receptive field, ``crop="auto"`` measures it (:func:`lamcam.receptive.
#: measure_field`, a few dozen passes on 64² and 128² probes) only for images of at least this many
#: LR pixels, where a crop saves more than the measurement costs.
MEASURE_MIN_PIXELS = 160 * 160

#: Images with more LR pixels than this are probed on two smaller crops (and the cost of one
#: path point extrapolated) instead of a forward pass over the whole image.
PROBE_PIXELS = 128 * 128


class GradientDetector:
    """LAM's objective: edge strength of the SR output summed over a window.

    ``G = sqrt((Y[y] − Y[y+1])² + (Y[x] − Y[x+1])²)`` by forward differences on the
    ``(H'−1) × (W'−1)`` grid, summed over colour channels and the ``window × window`` block whose
    top-left corner is ``(row, col)`` (SR pixels).

    Example:
        >>> y = torch.zeros(1, 1, 4, 4); y[..., 2:] = 1.0    # a vertical edge between x=1 and x=2
        >>> GradientDetector(0, 0, 3)(y)
        tensor([3.])
    """

    name = "gradient"

    def __init__(self, row: int, col: int, window: int = 16) -> None:
        self.row, self.col, self.window = int(row), int(col), int(window)

    def __call__(self, y: Tensor) -> Tensor:
        dy = y[:, :, :-1, :] - y[:, :, 1:, :]
        dx = y[:, :, :, :-1] - y[:, :, :, 1:]
        g = torch.sqrt(dy[:, :, :, :-1] ** 2 + dx[:, :, :-1, :] ** 2)
        r, c, w = self.row, self.col, self.window
        return g[:, :, r:r + w, c:c + w].sum(dim=(1, 2, 3))


class WindowMean:
    """Objective: the mean intensity of the SR output in a window (top-left ``(row, col)``).

    Example:
        >>> WindowMean(1, 1, 2)(torch.arange(16.0).reshape(1, 1, 4, 4))
        tensor([7.5000])
    """

    name = "mean"

    def __init__(self, row: int, col: int, window: int = 16) -> None:
        self.row, self.col, self.window = int(row), int(col), int(window)

    def __call__(self, y: Tensor) -> Tensor:
        r, c, w = self.row, self.col, self.window
        return y[:, :, r:r + w, c:c + w].mean(dim=(1, 2, 3))


OBJECTIVES: dict[str, type] = {"gradient": GradientDetector, "mean": WindowMean}


def abs_normalized_map(attribution: Tensor) -> Tensor:
    """LAM's 2-D map: ``|Σ_c attr_c|`` divided by its maximum (all zeros stays all zeros).

    Example:
        >>> abs_normalized_map(torch.tensor([[[1.0, -2.0]], [[1.0, 0.0]]]))
        tensor([[1., 1.]])
    """
    m = attribution.sum(dim=0).abs()
    peak = m.max()
    return m / peak if peak > 0 else torch.zeros_like(m)


#: LAM warns that a window is flat when ``|D(F(I)) − D(F(I'))|`` is at most this fraction of
#: ``max(|D(F(I))|, |D(F(I'))|)``: the blur barely changes the objective, so what is integrated
#: is float32 rounding (about 1e-7 relative per operation, accumulated over the window and the
#: network's layers) rather than signal, and the map, its DI and completeness are meaningless.
FLAT_RELATIVE_CHANGE = 1e-4


def _dims(t: Any) -> str:
    shape = getattr(t, "shape", None)
    return "x".join(str(int(s)) for s in shape) if shape is not None else "?"


def _crop_text(params: dict[str, Any]) -> str:
    """The crop used, from ``params``, in a few characters (``None`` when not cropped)."""
    crop = params.get("crop")
    if isinstance(crop, dict):
        crop = crop.get("box")
    return "None" if crop is None else repr(tuple(crop))


@dataclass
class LAMResult:
    """What :class:`LAM` returns.

    Attributes:
        attribution: ``(C, H, W)`` the path-integrated attribution on the LR input (signed).
        map: ``(H, W)`` ``|Σ_c attribution|`` / max, in [0, 1].
        diffusion_index: DI of ``map`` over all LR pixels (depends on the LR size).
        pixels95: how many LR pixels hold 95 % of the map's mass.
        sr: ``(C', sH, sW)`` the network's output for the LR image.
        completeness_error: relative error of ``Σ attribution`` against
            ``D(F(I)) − D(F(I'))``, I' the blurred baseline.
        objective_input, objective_baseline: ``D(F(I))``, ``D(F(I'))``.
        image: the LR input ``(C, H, W)`` as explained (after any channel conversion).
        params: every parameter used (LR size, scale, row, col, window, sigma, kernel_size,
            steps, quadrature, objective, coords).
    """

    attribution: Tensor
    map: Tensor
    diffusion_index: float
    pixels95: int
    sr: Tensor
    completeness_error: float
    objective_input: float
    objective_baseline: float
    image: Tensor = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    def figure(self, path: str | None = None, title: str | None = None):  # noqa: ANN201
        """The paper's panel (LR with the window, map, blends, area of contribution, SR, DI)."""
        from lamcam.viz.lam import lam_figure

        return lam_figure(self, path=path, title=title)

    def __repr__(self) -> str:
        """A short summary (DI, window, crop, shapes), never the tensors themselves."""
        p = self.params
        window = f"(row {p.get('row')}, col {p.get('col')}, {p.get('window')} SR px)"
        return (f"LAMResult(DI={self.diffusion_index:.3g}, pixels95={self.pixels95}, "
                f"window={window}, completeness_error={self.completeness_error:.3g}, "
                f"LR={_dims(self.map)}, SR={_dims(self.sr)}, crop={_crop_text(p)})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: DI, pixel count, completeness and all parameters."""
        return {
            "diffusion_index": self.diffusion_index,
            "pixels95": self.pixels95,
            "completeness_error": self.completeness_error,
            "objective_input": self.objective_input,
            "objective_baseline": self.objective_baseline,
            **self.params,
        }

    def _repr_png_(self) -> bytes | None:
        try:
            fig = self.figure()
        except ImportError:
            return None
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return buf.getvalue()


@dataclass
class DenseLAMResult:
    """What :meth:`LAM.dense` returns: the Diffusion Index of every window on a grid.

    Attributes:
        di: ``(len(rows), len(cols))`` DI of the window whose top-left corner is
            ``(rows[i], cols[j])`` (SR pixels), each exactly what :class:`LAM` gives that window.
        pixels95: same shape, LR pixels holding 95 % of each window's map.
        completeness: same shape, each window's completeness error.
        rows, cols: the windows' top-left corners (SR pixels).
        window, stride: window side and grid step (SR pixels).
        sr: ``(C', sH, sW)`` the network's output.
        image: the LR input ``(C, H, W)`` as explained.
        params: every parameter (as :class:`LAMResult`), the receptive field and the crops used,
            ``passes`` (network evaluations with gradients, per LR pixel of a crop summed) and
            ``seconds``.
    """

    di: Tensor
    pixels95: Tensor
    completeness: Tensor
    rows: list[int]
    cols: list[int]
    window: int
    stride: int
    sr: Tensor
    image: Tensor = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    def figure(self, path: str | None = None, title: str | None = None):  # noqa: ANN201
        """The DI map as a heatmap over the SR image (where the network looks far)."""
        from lamcam.viz.lam import dense_figure

        return dense_figure(self, path=path, title=title)

    def __repr__(self) -> str:
        """A short summary (grid, DI range, shapes), never the tensors themselves."""
        di = self.di.double()
        fin = di[di.isfinite()]
        rng = f"{float(fin.min()):.3g}..{float(fin.max()):.3g}" if fin.numel() else "n/a"
        return (f"DenseLAMResult(grid={len(self.rows)}x{len(self.cols)}, window={self.window}, "
                f"stride={self.stride}, DI={rng}, SR={_dims(self.sr)}, "
                f"crop={_crop_text(self.params)})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the DI grid, its summary and all parameters."""
        di = self.di.double()
        return {
            "rows": self.rows, "cols": self.cols, "window": self.window, "stride": self.stride,
            "di": di.tolist(), "pixels95": self.pixels95.tolist(),
            "completeness_error": self.completeness.tolist(),
            "di_mean": float(di.mean()), "di_median": float(di.quantile(0.5)), "di_max": float(di.max()),
            **self.params,
        }


class _Stacked(nn.Module):
    """Runs ``net`` on path points of several crops at once: ``(A, n, C, h, w)`` in,
    ``(A, n, C', sh, sw)`` out (crops are independent samples of one batch)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pts: Tensor) -> Tensor:
        a, n = pts.shape[:2]
        out = self.net(pts.reshape(a * n, *pts.shape[2:]))
        return out.reshape(a, n, *out.shape[1:])


class _ChunkPath:
    """A :class:`BlurPath` over ``n`` crops, its points shaped ``(A, n, C, h, w)`` even for n = 1."""

    def __init__(self, path: BlurPath, n: int) -> None:
        self.path, self.n = path, n
        self.x = path.x

    def _shape(self, t: Tensor) -> Tensor:
        return t[:, None] if self.n == 1 else t

    def points(self, alphas: Tensor) -> Tensor:
        return self._shape(self.path.points(alphas))

    def derivative(self, alphas: Tensor) -> Tensor:
        return self._shape(self.path.derivative(alphas))

    def start(self) -> Tensor:
        s = self.path.start()
        return s[None] if self.n == 1 else s


class _RangeWrapper(nn.Module):
    """Run a model that expects [0, 255] input on [0, 1] images, returning [0, 1] output."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale) / self.scale


def _model_channels(model: nn.Module) -> int | None:
    declared = getattr(model, "lamcam_meta", {}).get("in_channels")
    if declared:
        return int(declared)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


class LAM:
    """Local Attribution Map of an image-to-image network.

    Args:
        model: any ``nn.Module`` mapping ``(N, C, H, W)`` to ``(N, C', sH, sW)`` with an integer
            scale s (inferred from the output). Its parameters are never given gradients.
        sigma, kernel_size, steps: the blur path (defaults: the paper's 1.2, 9, 50).
        quadrature: "riemann" (the official discretisation, default), "trapezoid" or
            "gauss-legendre" (analytic kernel derivative; reaches the same completeness error
            with fewer steps). See :mod:`lamcam.integrate`.
        objective: "gradient" (the gradient detector, default), "mean" (mean intensity of the
            window), or a callable ``(outputs (N, C', sH, sW), row, col, window) -> (N,)``.
        batch_size: path points per forward/backward pass; ``None`` picks from ``memory_budget``
            (bytes).
        input_range: 1.0 if the model takes [0, 1] images (default), 255.0 if it takes [0, 255];
            images given to LAM are always in [0, 1].
        progress: show a tqdm bar; ``None`` (default): iff stderr is a terminal.
        crop: receptive-field cropping (:mod:`lamcam.receptive`). ``"auto"`` (default): when the
            network's output at a pixel depends on a bounded neighbourhood, compute LAM on a
            crop that holds the window's whole receptive field (the blur path is still the whole
            image's), which gives the same attribution for a fraction of the cost; networks with
            global operations get the whole image. ``False``: always the whole image. ``True``:
            crop or raise. The result's ``params["crop"]`` says what was done and why.
        receptive_field: the field to crop with: ``"global"``, an int (the side in LR pixels of
            the square one output pixel depends on, as ``lamcam_meta["receptive_field"]``), or a
            :class:`lamcam.receptive.Field`. Default: the model's metadata, else measured once.
        memory_limit: bytes one path point may need before LAM refuses up front
            (:class:`LAMMemoryError`, with the numbers); default: what the device has free.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sigma: float = 1.2,
        kernel_size: int = 9,
        steps: int = 50,
        quadrature: str = "riemann",
        objective: str | Callable[..., Tensor] = "gradient",
        batch_size: int | None = None,
        memory_budget: float = 1.0e9,
        input_range: float = 1.0,
        progress: bool | None = None,
        crop: bool | str = "auto",
        receptive_field: int | str | Field | None = None,
        memory_limit: float | None = None,
    ) -> None:
        if quadrature not in QUADRATURES:
            raise ValueError(f"unknown quadrature {quadrature!r}; choose one of {QUADRATURES}")
        if isinstance(objective, str) and objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)} "
                             "or pass a callable")
        if input_range not in (1.0, 255.0):
            raise ValueError(f"input_range must be 1.0 or 255.0, got {input_range}")
        if not (isinstance(sigma, numbers.Real) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite positive number (the paper uses 1.2), got "
                             f"{sigma!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int (the paper uses 9), got "
                             f"{kernel_size!r}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be a positive int (the paper uses 50), got {steps!r}")
        if batch_size is not None and (isinstance(batch_size, bool)
                                       or not isinstance(batch_size, numbers.Integral) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int, or None to choose it from "
                             f"memory_budget; got {batch_size!r}")
        if crop not in ("auto", True, False):
            raise ValueError(f"crop must be 'auto', True or False, got {crop!r}")
        if receptive_field is not None and not isinstance(receptive_field, Field) \
                and receptive_field != "global" and (isinstance(receptive_field, bool) or not isinstance(
                    receptive_field, numbers.Integral) or receptive_field < 1):
            raise ValueError(f"receptive_field must be 'global', a positive int (LR pixels) or a "
                             f"lamcam.receptive.Field; got {receptive_field!r}")
        self.crop = crop
        self.receptive_field = receptive_field
        self.memory_limit = memory_limit
        self.model = model
        self.sigma, self.kernel_size, self.steps = float(sigma), int(kernel_size), int(steps)
        self.quadrature = quadrature
        self.objective = objective
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.input_range = float(input_range)
        self.progress = progress
        self._net = model if input_range == 1.0 else _RangeWrapper(model, input_range)
        self._probes: dict[tuple, tuple[int, int]] = {}  # input shape/dtype -> (scale, point bytes)
        self._fields: dict[tuple, Field] = {}  # (dtype, device) -> receptive field

    def _prepare(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor):
            raise TypeError(f"image must be a (C, H, W) tensor in [0, 1], got {type(image).__name__}"
                            "; load files with lamcam.io.load_image")
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3:
            raise ValueError(f"LAM explains one image (C, H, W); got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"the image has integer dtype {image.dtype}; pass image.float() / 255")
        want = _model_channels(self.model)
        c = image.shape[0]
        if want is not None and c != want:
            if c == 1 and want == 3:
                warnings.warn("grayscale image for an RGB model: replicated to 3 channels",
                              stacklevel=4)
                image = image.expand(3, -1, -1)
            elif c == 3 and want == 1:
                warnings.warn("RGB image for a grayscale model: converted to luma "
                              "(0.299 R + 0.587 G + 0.114 B)", stacklevel=4)
                image = (torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
                         [:, None, None] * image).sum(0, keepdim=True)
            elif c == 4 and want == 3:
                warnings.warn("RGBA image: alpha dropped (composite it yourself to choose the "
                              "background)", stacklevel=4)
                image = image[:3]
            else:
                raise ValueError(f"the image has {c} channels but the model takes {want}")
        param = next(iter(self.model.parameters()), None)
        if param is not None:
            image = image.to(device=param.device, dtype=param.dtype)
        return image.detach()

    def _probe(self, image: Tensor) -> tuple[int, int]:
        """Scale factor and estimated bytes of one path point (forward + backward) for this
        prepared input, cached per input shape.

        Inputs up to :data:`PROBE_PIXELS` are probed with one forward pass without gradients;
        larger ones on two smaller crops, with the cost extrapolated in the pixel count (with the
        exponent the two probes show, between 1 for convolutions and 2 for global attention), so
        that a huge image is never run whole just to learn it is too large.
        """
        key = (tuple(image.shape), image.dtype, image.device)
        if key not in self._probes:
            h, w = image.shape[-2:]
            if h * w <= PROBE_PIXELS:
                out, point_bytes = probe_point_bytes(self._net, image)
                scale = self._check_output(out, image)
            else:
                sizes = []
                for side in (64, 128):
                    sub = image[:, :min(h, side), :min(w, side)]
                    out, b = probe_point_bytes(self._net, sub)
                    scale = self._check_output(out, sub)
                    sizes.append((sub.shape[-2] * sub.shape[-1], b))
                (n1, b1), (n2, b2) = sizes
                k = 1.0 if n2 <= n1 else min(2.0, max(1.0, math.log(max(b2, 1) / max(b1, 1)) /
                                                       math.log(n2 / n1)))
                point_bytes = int(b2 * (h * w / n2) ** k)
            self._probes[key] = (scale, point_bytes)
        return self._probes[key]

    def _batch(self, point_bytes: int) -> int:
        n_points = len(plan(self.quadrature, self.steps)[0])
        return self.batch_size or batch_for_budget(point_bytes, n_points, self.memory_budget)

    def _check_memory(self, point_bytes: int, x: Tensor, what: str, way_out: str) -> None:
        """Refuse up front when one path point needs more than the memory limit."""
        limit = self.memory_limit if self.memory_limit is not None else available_bytes(x.device)
        if limit is None or point_bytes <= limit:
            return
        raise LAMMemoryError(
            f"one LAM path point on {what} needs about {format_bytes(point_bytes)} (forward and "
            f"backward at batch 1), but {format_bytes(limit)} "
            f"{'is the memory_limit' if self.memory_limit is not None else 'are free'} on "
            f"{x.device}. {way_out}"
        )

    def field(self, image: Tensor) -> Field:
        """The receptive field LAM crops with for this model (given, declared, or measured once).

        Example:
            >>> import torch.nn as nn
            >>> sr = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
            >>> LAM(sr, progress=False).field(torch.rand(3, 8, 8)).radius
            2
        """
        x = self._prepare(image)
        key = (x.dtype, x.device)
        if key not in self._fields:
            f = self._known_field(x)
            if f is None:
                req = getattr(self.model, "lamcam_meta", {}).get("size_requirements") or {}
                with model_guard(self.model):
                    f = measure_field(self._net, x.shape[0], minimum=int(req.get("minimum", 0)),
                                      multiple_of=int(req.get("multiple_of", 1)))
            self._fields[key] = f
        return self._fields[key]

    def _known_field(self, x: Tensor) -> Field | None:
        """The field given by the user or declared by the model (None: it must be measured)."""
        if (x.dtype, x.device) in self._fields:
            return self._fields[(x.dtype, x.device)]
        rf = self.receptive_field
        if isinstance(rf, Field):
            return rf
        if rf == "global":
            return Field(None, 1, "user", "receptive_field='global'")
        if rf is not None:
            declared = declared_field(self.model)
            period = declared.period if declared is not None else 1
            return Field(int(rf) - 1, period, "user", f"receptive_field={rf} (LR pixels)")
        return declared_field(self.model)

    def scale_of(self, image: Tensor) -> int:
        """The integer scale factor for ``image`` ``(C, H, W)``.

        Uses the probe pass LAM itself needs (cached per input shape), so checking windows before
        explaining costs no extra forward pass.
        """
        return self._probe(self._prepare(image))[0]

    @staticmethod
    def _check_output(out: object, image: Tensor) -> int:
        if not isinstance(out, Tensor) or out.ndim != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"LAM needs an image-to-image network; the model returned {shape}")
        h, w = image.shape[-2:]
        oh, ow = out.shape[-2:]
        if oh % h or ow % w or oh // h != ow // w:
            raise ValueError(
                f"the output ({oh}x{ow}) is not an integer multiple of the input ({h}x{w}) with the "
                "same factor in both directions; pad the input to the size the model needs (for "
                "spandrel models lamcam.zoo.load does this) or crop its output"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError("the model's output contains NaN or inf for this image; check the "
                             "input range (input_range=255 for models that take [0, 255])")
        return oh // h

    def window_origin(self, row: int, col: int, window: int, scale: int, sr_shape: tuple[int, int],
                      coords: str) -> tuple[int, int]:
        """Top-left corner of the window in SR pixels, checked to lie inside the SR image."""
        if coords == "sr":
            top, left = row, col
        elif coords == "sr-center":
            top, left = row - window // 2, col - window // 2
        elif coords == "lr":
            top, left = row * scale, col * scale
        else:
            raise ValueError(f"coords must be 'sr', 'sr-center' or 'lr', got {coords!r}")
        h, w = sr_shape
        if window < 1 or window > min(h, w):
            raise ValueError(f"the window ({window}) must be between 1 and the SR image's smaller "
                             f"side ({min(h, w)})")
        if not (0 <= top <= h - window and 0 <= left <= w - window):
            raise ValueError(
                f"the {window}x{window} window at (row {top}, col {left}) leaves the {h}x{w} SR "
                f"image; its top-left corner must lie in rows 0..{h - window}, cols 0..{w - window}"
                + (" (coords='lr' gives LR pixels, scaled by the model's factor)"
                   if coords == "lr" else "")
            )
        return top, left

    @staticmethod
    def _window_crop(f: Field, x: Tensor, scale: int, top: int, left: int, window: int,
                     minimum: int, size: tuple[int, int] | None = None,
                     ) -> tuple[tuple[int, int, int, int], tuple[int, int], tuple[int, int]]:
        """The LR crop of a window (and the SR rows/cols the objective reads, inclusive: the
        gradient detector reads one row and column beyond the window)."""
        h_img, w_img = x.shape[-2:]
        sr_rows = (top, min(top + window, h_img * scale - 1))
        sr_cols = (left, min(left + window, w_img * scale - 1))
        box = crop_box(f, (sr_rows[0] // scale, sr_rows[1] // scale),
                       (sr_cols[0] // scale, sr_cols[1] // scale), (h_img, w_img), minimum, size=size)
        return box, sr_rows, sr_cols

    def _crop_change(self, f: Field, x: Tensor, scale: int, box: tuple[int, int, int, int],
                     sr_rows: tuple[int, int], sr_cols: tuple[int, int]) -> float:
        """How much the crop changes the window's output against a larger crop (relative)."""
        bigger = grow_box(f, box, tuple(x.shape[-2:]))  # type: ignore[arg-type]
        return crop_is_exact(self._net, BlurPath(x, self.sigma, self.kernel_size, boxes=[bigger]),
                             box, bigger, sr_rows, sr_cols, scale)

    def _plan_crop(self, x: Tensor, scale: int, top: int, left: int, window: int,
                   user_objective: bool) -> tuple[tuple[int, int, int, int] | None, dict[str, Any]]:
        """The LR crop to explain the window on, or None for the whole image; and why."""
        if self.crop is False:
            return None, {"box": None, "reason": "crop=False"}
        if user_objective and self.crop == "auto":
            return None, {"box": None, "reason": "a callable objective may read outputs outside "
                          "its window (pass crop=True if it does not)"}
        h_img, w_img = x.shape[-2:]
        if self.crop == "auto" and self._known_field(x) is None and h_img * w_img < MEASURE_MIN_PIXELS:
            return None, {"box": None, "reason": f"the image is small ({h_img}x{w_img}) and the model "
                          "declares no receptive field: measuring it would cost more than a crop "
                          "saves (pass receptive_field= or crop=True to crop)"}
        f = self._field_of(x)
        if not f.local:
            if self.crop is True:
                raise ValueError(f"crop=True, but the receptive field is global ({f.detail}); "
                                 "use crop='auto' to explain on the whole image")
            return None, {"box": None, "field": f.to_dict(), "reason": f.detail}
        req = getattr(self.model, "lamcam_meta", {}).get("size_requirements") or {}
        if req.get("square"):
            return None, {"box": None, "field": f.to_dict(),
                          "reason": "the model pads inputs to a square, so a crop changes its padding"}
        box, sr_rows, sr_cols = self._window_crop(f, x, scale, top, left, window,
                                                  int(req.get("minimum", 0)))
        if box == (0, 0, h_img, w_img):
            return None, {"box": None, "field": f.to_dict(),
                          "reason": "the window's receptive field covers the whole image"}
        with model_guard(self.model):
            diff = self._crop_change(f, x, scale, box, sr_rows, sr_cols)
        if diff > CROP_TOLERANCE:
            if self.crop is True:
                raise ValueError(f"crop=True, but cropping changes the window's output by {diff:.2g} "
                                 f"(relative) with the receptive field {f.detail}")
            warnings.warn(f"the receptive field ({f.detail}) is too small: cropping to {box} changes "
                          f"the window's output by {diff:.2g} (relative); explained on the whole "
                          "image instead", stacklevel=4)
            return None, {"box": None, "field": f.to_dict(), "check": diff,
                          "reason": f"a crop changed the window's output by {diff:.2g}"}
        return box, {"box": list(box), "field": f.to_dict(), "check": diff,
                     "reason": f"LR crop (top, left, height, width) = {box} of {h_img}x{w_img} holds the "
                               f"window's receptive field ({f.source}); checked: the window's "
                               f"output changes by {diff:.2g} against a larger crop"}

    def _field_of(self, x: Tensor) -> Field:
        return self.field(x)

    def _whole_output(self, x: Tensor, scale: int) -> Tensor:
        """The network's output for the whole prepared image, without gradients; tiled along the
        receptive field (exactly) when the image is large and the field is local."""
        h_img, w_img = x.shape[-2:]
        f = self._fields.get((x.dtype, x.device))
        with model_guard(self.model), torch.no_grad():
            if h_img * w_img <= 4 * PROBE_PIXELS or f is None or not f.local:
                return self._net(x[None])[0]
            req = getattr(self.model, "lamcam_meta", {}).get("size_requirements") or {}
            tile = 128
            out = None
            for r0 in range(0, h_img, tile):
                for c0 in range(0, w_img, tile):
                    r1, c1 = min(h_img, r0 + tile) - 1, min(w_img, c0 + tile) - 1
                    t, l_, h, w = crop_box(f, (r0, r1), (c0, c1), (h_img, w_img),
                                           int(req.get("minimum", 0)))
                    y = self._net(x[None, :, t:t + h, l_:l_ + w])[0]
                    if out is None:
                        out = y.new_empty(y.shape[0], h_img * scale, w_img * scale)
                    out[:, r0 * scale:(r1 + 1) * scale, c0 * scale:(c1 + 1) * scale] = \
                        y[:, (r0 - t) * scale:(r1 + 1 - t) * scale, (c0 - l_) * scale:(c1 + 1 - l_) * scale]
            assert out is not None
            return out

    def dense(self, image: Tensor, window: int = 16, stride: int | None = None) -> DenseLAMResult:
        """The Diffusion Index of every ``window`` x ``window`` SR window on a grid.

        Each DI equals what ``self(image, row, col, window)`` gives that window. With a local
        receptive field every window is explained on its own crop (:mod:`lamcam.receptive`), and
        crops of one size go through the network together, so the whole map costs about
        ``windows x crop pixels / image pixels`` whole-image LAMs; a global network costs one
        whole-image LAM per window (a warning says how many).

        Args:
            image: LR image ``(C, H, W)`` in [0, 1].
            window: window side (SR pixels).
            stride: grid step (SR pixels); default ``window`` (windows tile the image). The last
                row and column of windows touch the image's bottom and right edges.

        Example:
            >>> import torch.nn as nn
            >>> sr = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
            >>> d = LAM(sr, steps=4, progress=False).dense(torch.rand(3, 16, 16), window=8)
            >>> d.di.shape, len(d.rows)
            (torch.Size([4, 4]), 4)
        """
        import time

        for label, v in (("window", window), ("stride", stride if stride is not None else window)):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{label} must be a positive int (SR pixels), got {v!r}")
        if callable(self.objective) and not isinstance(self.objective, str):
            raise ValueError("LAM.dense uses the built-in objectives ('gradient' or 'mean')")
        if torch.is_inference_mode_enabled():
            raise RuntimeError("LAM needs autograd, which torch.inference_mode() disables")
        stride = int(stride if stride is not None else window)
        window = int(window)
        t0 = time.perf_counter()
        with model_guard(self.model):
            x = self._prepare(image)
            scale, full_bytes = self._probe(x)
            h_img, w_img = x.shape[-2:]
            sh, sw = h_img * scale, w_img * scale
            if window > min(sh, sw):
                raise ValueError(f"the window ({window}) must fit in the {sh}x{sw} SR image")

            def grid(size: int) -> list[int]:
                g = list(range(0, size - window + 1, stride))
                if g[-1] != size - window:
                    g.append(size - window)
                return g

            rows, cols = grid(sh), grid(sw)
            jobs: dict[tuple[int, int], list] = {}  # crop size -> [(i, j, top, left, box)]
            info: dict[str, Any] = {}
            field_ = None if self.crop is False else self._field_of(x)
            local = field_ is not None and field_.local
            req = getattr(self.model, "lamcam_meta", {}).get("size_requirements") or {}
            if local and req.get("square"):
                local = False
                info = {"box": None, "reason": "the model pads inputs to a square, so a crop changes "
                        "its padding"}
            minimum = int(req.get("minimum", 0))
            side = crop_side(field_, window, scale, minimum) if local else 0
            for i, top in enumerate(rows):
                for j, left in enumerate(cols):
                    if not local:
                        box = (0, 0, h_img, w_img)
                    else:
                        box = self._window_crop(field_, x, scale, top, left, window, minimum,
                                                size=(side, side))[0]
                    jobs.setdefault(box[2:], []).append((i, j, top, left, box))
            if not local:
                info = info or {"box": None,
                                "reason": "crop=False" if field_ is None else field_.detail}
                if len(rows) * len(cols) > 1:
                    warnings.warn(f"the receptive field is not local ({info['reason']}): each of the "
                                  f"{len(rows) * len(cols)} windows costs one whole-image LAM",
                                  stacklevel=2)
            else:
                # the crops are checked as LAM checks its crops: the first and the last window
                worst = 0.0
                todo = [(rows[0], cols[0]), (rows[len(rows) // 2], cols[len(cols) // 2]),
                        (rows[-1], cols[-1])]
                for top, left in todo:
                    box, sr_rows, sr_cols = self._window_crop(field_, x, scale, top, left, window,
                                                              minimum, size=(side, side))
                    if box != (0, 0, h_img, w_img):
                        worst = max(worst, self._crop_change(field_, x, scale, box, sr_rows, sr_cols))
                if worst > CROP_TOLERANCE:
                    raise ValueError(f"the receptive field ({field_.detail}) is too small: a crop changes "
                                     f"a window's output by {worst:.2g}; pass receptive_field= larger "
                                     "or crop=False")
                info = {"field": field_.to_dict(), "check": worst,
                        "crop_sizes": sorted([list(k) + [len(v)] for k, v in jobs.items()])}
            n_win = len(rows) * len(cols)
            di = torch.zeros(len(rows), len(cols), dtype=torch.float64)
            p95 = torch.zeros(len(rows), len(cols), dtype=torch.int64)
            comp = torch.zeros(len(rows), len(cols), dtype=torch.float64)
            stacked = _Stacked(self._net)
            n_points = len(plan(self.quadrature, self.steps)[0])
            passes = 0
            bar = None
            if _show_progress(self.progress):
                from tqdm.auto import tqdm

                bar = tqdm(total=n_win, desc="dense LAM", unit="window")
            try:
                for (h, w), items in jobs.items():
                    point_bytes = self._probe(x[:, :h, :w])[1]
                    self._check_memory(point_bytes, x, f"a {h}x{w} crop", "Use a smaller image or window.")
                    per_pass = max(1, int(self.memory_budget // max(point_bytes, 1)))
                    n_chunk = max(1, min(len(items), per_pass))
                    for k in range(0, len(items), n_chunk):
                        chunk = items[k:k + n_chunk]
                        path = BlurPath(x, self.sigma, self.kernel_size, boxes=[c[4] for c in chunk])
                        if len(chunk) == 1:
                            path.x = path.x[None]
                        objs = [OBJECTIVES[self.objective](top - box[0] * scale, left - box[1] * scale,
                                                           window) for _, _, top, left, box in chunk]

                        def objective(out: Tensor, objs: list = objs) -> Tensor:
                            return torch.stack([o(out[:, m]) for m, o in enumerate(objs)], dim=1).sum(1)

                        batch = self.batch_size or max(1, min(n_points, per_pass // len(chunk)))
                        res = integrate_path(stacked, _ChunkPath(path, len(chunk)), objective,
                                             steps=self.steps, quadrature=self.quadrature,
                                             batch_size=batch, completeness=False)
                        passes += res.passes * len(chunk) * h * w
                        # completeness per window: D at the input and the baseline (no gradients)
                        with torch.no_grad():
                            ends = stacked(torch.stack([path.x, path.start() if len(chunk) > 1
                                                        else path.start()[None]]))
                            d1 = [float(o(ends[:1, m])[0]) for m, o in enumerate(objs)]
                            d0 = [float(o(ends[1:, m])[0]) for m, o in enumerate(objs)]
                        for m, (i, j, _, _, _) in enumerate(chunk):
                            attr = res.attribution[m]
                            amap = attr.sum(dim=0).abs()
                            peak = amap.max()
                            amap = amap / peak if peak > 0 else torch.zeros_like(amap)
                            di[i, j] = diffusion_index_padded(amap, h_img * w_img)
                            p95[i, j] = mass_pixels(amap)
                            delta = d1[m] - d0[m]
                            total = float(attr.sum())
                            comp[i, j] = abs(total - delta) / abs(delta) if delta != 0 else math.nan
                        if bar is not None:
                            bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            sr = self._whole_output(x, scale)
        params = {
            "lr_size": [int(h_img), int(w_img)], "scale": scale, "window": window, "stride": stride,
            "sigma": self.sigma, "kernel_size": self.kernel_size, "steps": self.steps,
            "quadrature": self.quadrature, "objective": self.objective,
            "input_range": self.input_range, "crop": info, "windows": n_win,
            "pixel_passes": passes, "whole_image_lams": passes / (n_points * h_img * w_img),
            "seconds": time.perf_counter() - t0,
        }
        call_doc = getattr(self.model, "lamcam_meta", {}).get("call_doc")
        if call_doc:
            params["model_call"] = call_doc
        return DenseLAMResult(di=di, pixels95=p95, completeness=comp, rows=rows, cols=cols,
                              window=window, stride=stride, sr=sr.detach(), image=x, params=params)

    def __call__(self, image: Tensor, row: int, col: int, window: int = 16, *,
                 coords: str = "sr") -> LAMResult:
        """LAM of the ``window`` × ``window`` SR patch at ``(row, col)``.

        Args:
            image: LR image ``(C, H, W)`` (or ``(1, C, H, W)``) in [0, 1].
            row, col: the window's top-left corner in SR pixels (``coords="sr"``, the paper's
                convention), its centre in SR pixels (``"sr-center"``), or its top-left corner in
                LR pixels (``"lr"``, multiplied by the scale).
            window: the window side in SR pixels.
        """
        for label, v in (("row", row), ("col", col), ("window", window)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) \
                    or int(v) != v:
                raise ValueError(f"{label} must be a whole number of pixels, got {v!r}")
        if torch.is_inference_mode_enabled():
            raise RuntimeError("LAM needs autograd, which torch.inference_mode() disables; call it "
                               "outside the inference_mode block (torch.no_grad() is fine)")
        with model_guard(self.model):
            return self._explain(image, int(row), int(col), int(window), coords)

    def _explain(self, image: Tensor, row: int, col: int, window: int, coords: str) -> LAMResult:
        x = self._prepare(image)
        scale, full_bytes = self._probe(x)
        h_img, w_img = x.shape[-2:]
        sr_shape = (h_img * scale, w_img * scale)
        top, left = self.window_origin(row, col, window, scale, sr_shape, coords)
        user = self.objective if callable(self.objective) and not isinstance(self.objective, str) \
            else None
        box, crop_info = self._plan_crop(x, scale, top, left, window, user is not None)
        if box is None:
            self._check_memory(full_bytes, x, f"the whole {h_img}x{w_img} image", (
                "The receptive field cannot be cropped here (" + crop_info["reason"] + "); explain "
                "a crop of the image around the window yourself (the map then covers that crop), "
                "or use a device with more memory."))
            path = BlurPath(x, self.sigma, self.kernel_size)
            point_bytes, oy, ox = full_bytes, top, left
        else:
            path = BlurPath(x, self.sigma, self.kernel_size, boxes=[box])
            point_bytes = self._probe(path.x)[1]
            self._check_memory(point_bytes, x, f"the {box[2]}x{box[3]} crop that holds the window's "
                               "receptive field", "Use a device with more memory or a smaller window.")
            oy, ox = top - box[0] * scale, left - box[1] * scale
        if user is not None:
            def objective(out: Tensor) -> Tensor:
                return user(out, oy, ox, window)

            obj_name = getattr(user, "__name__", "callable")
        else:
            objective = OBJECTIVES[self.objective](oy, ox, window)
            obj_name = self.objective
        result = integrate_path(
            self._net, path, objective, steps=self.steps, quadrature=self.quadrature,
            batch_size=self._batch(point_bytes), progress="LAM" if _show_progress(self.progress) else False,
        )
        if box is None:
            sr = result.output  # the network at γ(1) = x: always evaluated (completeness is on)
        else:
            t, l_, h, w = box
            attr_full = torch.zeros_like(x, dtype=result.attribution.dtype)
            attr_full[:, t:t + h, l_:l_ + w] = result.attribution
            result.attribution = attr_full
            sr = self._whole_output(x, scale)
        attr = result.attribution
        if not bool(torch.isfinite(attr).all()):
            raise ValueError("the LAM attribution contains NaN or inf (the gradients along the path "
                             "overflowed); check the model's outputs along the blur path and sigma")
        amap = abs_normalized_map(attr)
        if bool((amap == 0).all()):
            warnings.warn(
                f"the LAM map is all zeros: the objective does not change along the path (a flat "
                f"window at ({top}, {left})?); DI {100.0:.0f} is not meaningful", stacklevel=3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                di = diffusion_index(amap)
        else:
            di = diffusion_index(amap)
            change = abs(result.objective_input - result.objective_baseline)
            scale_obj = max(abs(result.objective_input), abs(result.objective_baseline))
            if change == change and change <= FLAT_RELATIVE_CHANGE * scale_obj:
                warnings.warn(
                    f"flat window at ({top}, {left}): the objective changes by only {change:.2g} "
                    f"along the blur path ({change / scale_obj:.1g} of D(F(I)) = {scale_obj:.3g}, "
                    f"below {FLAT_RELATIVE_CHANGE:g}), so the attribution is rounding noise "
                    f"(completeness error {100 * result.completeness_error:.2g} %) and the DI of "
                    "this window is not meaningful; choose a window with edges or texture",
                    stacklevel=3)
        params = {
            "lr_size": [int(x.shape[-2]), int(x.shape[-1])], "scale": scale, "row": top,
            "col": left, "window": int(window), "coords": coords, "sigma": self.sigma,
            "kernel_size": self.kernel_size, "steps": self.steps, "quadrature": self.quadrature,
            "objective": obj_name, "input_range": self.input_range, "crop": crop_info,
        }
        call_doc = getattr(self.model, "lamcam_meta", {}).get("call_doc")
        if call_doc:
            params["model_call"] = call_doc
        return LAMResult(
            attribution=attr, map=amap, diffusion_index=di, pixels95=mass_pixels(amap),
            sr=sr.detach(), completeness_error=result.completeness_error,
            objective_input=result.objective_input, objective_baseline=result.objective_baseline,
            image=x, params=params,
        )
