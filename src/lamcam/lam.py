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

from lamcam.hooks import model_guard
from lamcam.integrate import QUADRATURES, batch_for_budget, integrate_path, plan, probe_point_bytes
from lamcam.metrics.diffusion import diffusion_index, mass_pixels
from lamcam.paths import BlurPath

__all__ = ["LAM", "GradientDetector", "LAMResult", "WindowMean", "abs_normalized_map"]


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
        progress: show a tqdm bar.
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
        progress: bool = True,
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
        self.model = model
        self.sigma, self.kernel_size, self.steps = float(sigma), int(kernel_size), int(steps)
        self.quadrature = quadrature
        self.objective = objective
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.input_range = float(input_range)
        self.progress = progress
        self._net = model if input_range == 1.0 else _RangeWrapper(model, input_range)
        self._probes: dict[tuple, tuple[int, int]] = {}  # input shape/dtype -> (scale, batch)

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
        """Scale factor and path points per pass for this prepared input (one probe pass, cached
        per input shape)."""
        key = (tuple(image.shape), image.dtype, image.device)
        if key not in self._probes:
            out, point_bytes = probe_point_bytes(self._net, image)
            scale = self._check_output(out, image)
            n_points = len(plan(self.quadrature, self.steps)[0])
            batch = self.batch_size or batch_for_budget(point_bytes, n_points, self.memory_budget)
            self._probes[key] = (scale, batch)
        return self._probes[key]

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
        scale, batch = self._probe(x)
        sr_shape = (x.shape[-2] * scale, x.shape[-1] * scale)
        top, left = self.window_origin(row, col, window, scale, sr_shape, coords)
        if callable(self.objective) and not isinstance(self.objective, str):
            user = self.objective

            def objective(out: Tensor) -> Tensor:
                return user(out, top, left, window)

            obj_name = getattr(user, "__name__", "callable")
        else:
            objective = OBJECTIVES[self.objective](top, left, window)
            obj_name = self.objective
        path = BlurPath(x, self.sigma, self.kernel_size)
        result = integrate_path(
            self._net, path, objective, steps=self.steps, quadrature=self.quadrature,
            batch_size=batch, progress="LAM" if self.progress else False,
        )
        sr = result.output  # the network at γ(1) = x: always evaluated (completeness is on)
        if not bool(torch.isfinite(sr).all()):
            self._check_output(sr[None], x)  # raises with the NaN message
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
        params = {
            "lr_size": [int(x.shape[-2]), int(x.shape[-1])], "scale": scale, "row": top,
            "col": left, "window": int(window), "coords": coords, "sigma": self.sigma,
            "kernel_size": self.kernel_size, "steps": self.steps, "quadrature": self.quadrature,
            "objective": obj_name, "input_range": self.input_range,
        }
        return LAMResult(
            attribution=attr, map=amap, diffusion_index=di, pixels95=mass_pixels(amap),
            sr=sr.detach(), completeness_error=result.completeness_error,
            objective_input=result.objective_input, objective_baseline=result.objective_baseline,
            image=x, params=params,
        )
