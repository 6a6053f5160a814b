"""The CAM family: CAM, Grad-CAM, Grad-CAM++ (exact, and its softmax variant), Guided Backprop,
Guided Grad-CAM and Guided Grad-CAM++.

Notation as in SPEC §1: ``A`` is the target layer's activation ``(B, C, *spatial)``, ``S^c`` the
pre-softmax score of class c and ``g = ∂S^c/∂A``.

The channel weights are pure functions (:func:`gradcam_weights`, :func:`gradcampp_weights`,
:func:`gradcampp_softmax_weights`); the classes bind them to a model. One call costs one forward
pass and one backward pass *to the layer* per target (never to the parameters: no parameter
``.grad`` is ever computed).

Example:
    >>> import torch, torch.nn as nn, lamcam
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> res = lamcam.GradCAMPlusPlus(net, layer="1")(torch.rand(2, 3, 16, 16))
    >>> res.maps.shape, float(res.maps.max()) <= 1.0
    (torch.Size([2, 16, 16]), True)
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamcam.guided import GuidedReLUMode, warn_unseen_activations
from lamcam.hooks import (
    LayerSpec,
    LayerTap,
    auto_layer,
    model_guard,
    resolve_layers,
    zero_head_hint,
)
from lamcam.layout import (
    CHANNELS_FIRST,
    CHANNELS_LAST,
    RESHAPE,
    TOKENS,
    Layout,
    LayoutError,
    attention_ancestor,
    block_norm,
    channel_hint,
    decide_layout,
    prefix_hint,
)
from lamcam.maps import normalize_minmax, upsample_maps
from lamcam.targets import Target, extract_logits, resolve_target

__all__ = [
    "CAM",
    "CAMResult",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradCAMPlusPlusSoftmax",
    "GuidedBackprop",
    "GuidedGradCAM",
    "GuidedGradCAMPlusPlus",
    "METHODS",
    "cam_from_weights",
    "explain",
    "make_explainer",
    "gradcam_weights",
    "gradcampp_alpha",
    "gradcampp_softmax_alpha",
    "gradcampp_softmax_weights",
    "gradcampp_weights",
    "guided_backprop",
]

log = logging.getLogger("lamcam")


# --------------------------------------------------------------------------------------------
# Pure mathematics
# --------------------------------------------------------------------------------------------


def _spatial(t: Tensor, lead: int) -> tuple[int, ...]:
    return tuple(range(lead, t.ndim))


def _wide(t: Tensor) -> Tensor:
    """float16/bfloat16 → float32 (g² underflows in half precision); wider types are kept."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def gradcam_weights(grads: Tensor) -> Tensor:
    """Grad-CAM channel weights: the spatial mean of the gradient.

    Args:
        grads: ``(B, K, C, *spatial)`` gradients of K target scores w.r.t. the layer.

    Returns:
        ``(B, K, C)``.

    Example:
        >>> gradcam_weights(torch.ones(1, 1, 2, 3, 3)).tolist()
        [[[1.0, 1.0]]]
    """
    return _wide(grads).mean(dim=_spatial(grads, 3))


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, and 0 where den == 0 (finite gradients everywhere, no epsilon)."""
    nz = den != 0
    return torch.where(nz, num / torch.where(nz, den, torch.ones_like(den)), 0.0)


def gradcampp_alpha(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ ``α`` of paper eq. 19 for ``Y = exp(S)``: ``g² / (2 g² + (Σ_ab A_ab) g³)``.

    0 where the denominator is 0; no epsilon (an epsilon of 1e-6 dominates real last-layer
    gradients and turns the method into ``Σ relu(g)³``). Computed in float32 or wider.

    Args:
        acts: ``(B, C, *spatial)`` layer activation.
        grads: ``(B, K, C, *spatial)`` gradients of K target scores ``S`` w.r.t. ``acts``.

    Returns:
        ``(B, K, C, *spatial)``.

    Example:
        >>> a = torch.tensor([[[[1.0, 2.0]]]])           # B=1, C=1, 1x2: Σ A = 3
        >>> g = torch.tensor([[[[[0.5, -1.0]]]]])        # B=1, K=1
        >>> gradcampp_alpha(a, g)                        # 1/(2 + 3g)
        tensor([[[[[ 0.2857, -1.0000]]]]])
    """
    a = _wide(acts).unsqueeze(1)
    g = _wide(grads)
    g2 = g * g
    sum_a = a.sum(dim=_spatial(g, 3), keepdim=True)
    return _safe_ratio(g2, 2 * g2 + sum_a * g2 * g)


def gradcampp_weights(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ channel weights, exact (paper eq. 19): ``w = Σ_ij α_ij relu(g_ij)``.

    The positive factor ``exp(S)`` is dropped (it cancels in α and only scales w), so nothing
    overflows for large scores. See :func:`gradcampp_alpha`.

    Args:
        acts: ``(B, C, *spatial)``; grads: ``(B, K, C, *spatial)``.

    Returns:
        ``(B, K, C)``.

    Example:
        >>> a = torch.tensor([[[[1.0, 2.0]]]])
        >>> g = torch.tensor([[[[[0.5, -1.0]]]]])
        >>> gradcampp_weights(a, g)                      # 0.2857 * 0.5
        tensor([[[0.1429]]])
    """
    g = _wide(grads)
    return (gradcampp_alpha(acts, g) * g.clamp(min=0)).sum(dim=_spatial(g, 3))


def gradcampp_softmax_weights(
    acts: Tensor, grads: Tensor, m1: Tensor, m2: Tensor, m3: Tensor
) -> Tensor:
    """Grad-CAM++ weights for ``Y^c = softmax(S)_c`` (the paper's softmax variant), divided by ``Y^c``.

    For a head that is piecewise linear after the layer, with ``s'_k = ∂S^k/∂A_ij`` for all K
    classes, ``m_p = Σ_k Y^k s'_k^p`` and ``u = s'_c − m1``:
    ``Y'/Y = u``, ``Y''/Y = u² − (m2 − m1²)``, ``Y'''/Y = u³ − 3u(m2 − m1²) − (m3 − 3 m1 m2 + 2 m1³)``.
    ``α = Y'' / (2Y'' + Σ_ab A_ab Y''')`` (``Y^c`` cancels) and ``w = Σ α relu(Y'/Y^c)``.

    Args:
        acts: ``(B, C, *spatial)``.
        grads: ``(B, K, C, *spatial)``, ``∂S^c/∂A`` for each of the K targets.
        m1, m2, m3: ``(B, C, *spatial)`` softmax-weighted moments of all classes' gradients.

    Returns:
        ``(B, K, C)``, the weights divided by the positive factor ``Y^c``.
    """
    alpha, d1 = gradcampp_softmax_alpha(acts, grads, m1, m2, m3)
    return (alpha * d1.clamp(min=0)).sum(dim=_spatial(alpha, 3))


def gradcampp_softmax_alpha(
    acts: Tensor, grads: Tensor, m1: Tensor, m2: Tensor, m3: Tensor
) -> tuple[Tensor, Tensor]:
    """``(α, Y'/Y^c)`` of the softmax variant, each ``(B, K, C, *spatial)``.

    See :func:`gradcampp_softmax_weights` for the formulas.
    """
    a = _wide(acts).unsqueeze(1)
    g = _wide(grads)
    m1, m2, m3 = (_wide(m).unsqueeze(1) for m in (m1, m2, m3))
    u = g - m1
    var = m2 - m1 * m1
    skew = m3 - 3 * m1 * m2 + 2 * m1**3
    d2 = u * u - var
    d3 = u**3 - 3 * u * var - skew
    sum_a = a.sum(dim=_spatial(g, 3), keepdim=True)
    return _safe_ratio(d2, 2 * d2 + sum_a * d3), u


def cam_from_weights(acts: Tensor, weights: Tensor) -> Tensor:
    """``relu(Σ_k w_k A^k)``: ``acts (B, C, *S)`` and ``weights (B, K, C)`` → ``(B, K, *S)``.

    Example:
        >>> cam_from_weights(torch.ones(1, 2, 3, 3), torch.tensor([[[1.0, -3.0]]])).amax()
        tensor(0.)
    """
    a = _wide(acts)
    w = weights.to(a.dtype)
    out = torch.einsum("bkc,bc...->bk...", w, a)
    return out.clamp(min=0)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class CAMResult:
    """What a CAM method returns.

    Attributes:
        maps: CAM methods: ``(B, *input_spatial)`` in [0, 1] (``(B, K, ...)`` when several
            targets per image were asked, e.g. ``TopK``). Gradient methods (``kind ==
            "gradient"``: guided backprop, guided Grad-CAM(++)): ``(B, [K,] C, *input_spatial)``,
            signed.
        raw: the un-normalised map at the layer's resolution, ``(B, [K,] *layer_spatial)``; a
            tuple of those, one per layer, when several layers were fused.
        logits: the model's outputs.
        targets: ``(B, [K])`` class indices explained, or ``None`` for a callable target.
        scores: ``(B, [K])`` the explained scores (pre-softmax).
        method, layer_names, kind: what produced the maps.
        images: the input batch (detached), used by :meth:`overlay` and for display.
        layouts: how each layer's output was read as a map, one :class:`lamcam.layout.Layout`
            per layer (channels-first, channels-last, tokens with the prefix dropped, or the
            user's ``reshape``); empty for guided backprop.
    """

    maps: Tensor
    raw: Tensor | tuple[Tensor, ...]
    logits: Any
    targets: Tensor | None
    scores: Tensor
    method: str
    layer_names: list[str]
    kind: str = "cam"
    images: Tensor | None = field(default=None, repr=False)
    layouts: list[Layout] = field(default_factory=list)

    def __repr__(self) -> str:
        """A short summary (shapes, method, layers, targets), never the tensors themselves."""
        return _short_repr(self)

    @property
    def multi(self) -> bool:
        """True when maps carry a K dimension (several targets per image)."""
        return self.scores.ndim == 2

    def _per_image_maps(self) -> list[list[Tensor]]:
        m = self.maps if self.multi else self.maps.unsqueeze(1)
        return [list(row) for row in m]

    def overlay(
        self, images: Tensor | None = None, alpha: float = 0.5, cmap: str = "turbo"
    ) -> list[Any]:
        """PIL images: each map over its image (gradient maps rendered on their own).

        Returns a flat list in image-major order: ``B`` images, or ``B * K`` when several targets
        per image were explained. Only for 2-D inputs.
        """
        from lamcam.viz.overlay import gradient_image, overlay_cam

        images = self.images if images is None else images
        nd = 3 if self.kind == "gradient" else 2
        if self.maps.ndim - (1 if self.multi else 0) - 1 != nd:
            raise ValueError(
                "overlay() draws 2-D maps; for 1-D or 3-D inputs index the maps yourself "
                "(e.g. res.maps[:, t] for frame t of a video)"
            )
        out = []
        for b, row in enumerate(self._per_image_maps()):
            for m in row:
                m = m.detach().float().cpu()
                if self.kind == "gradient":
                    out.append(gradient_image(m))
                else:
                    if images is None:
                        raise ValueError("overlay() needs the images the maps belong to")
                    out.append(overlay_cam(images[b].detach().float().cpu(), m, alpha=alpha,
                                           cmap=cmap))
        return out

    def save(self, out_dir: str | Path, stem: str = "img") -> list[Path]:
        """Write ``<stem><b>_<method>.npy`` (raw maps) and overlays as PNG; return the paths.

        Every file is written atomically (a temporary file renamed over the final name).
        """
        from lamcam._files import atomic_save_image, atomic_save_npy

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = self.method
        written = []
        raws = self.raw if isinstance(self.raw, tuple) else (self.raw,)
        for b in range(self.maps.shape[0]):
            path = out_dir / f"{stem}{b}_{tag}.npy"
            arr = [r[b].detach().float().cpu().numpy() for r in raws]
            atomic_save_npy(path, arr[0] if len(arr) == 1 else np.stack(arr))
            written.append(path)
        try:
            pictures = self.overlay()
        except ValueError:
            return written
        per = len(pictures) // self.maps.shape[0]
        for i, pic in enumerate(pictures):
            b, k = divmod(i, per)
            path = out_dir / (f"{stem}{b}_{tag}.png" if per == 1 else f"{stem}{b}_{tag}_k{k}.png")
            atomic_save_image(path, pic)
            written.append(path)
        return written

    def _repr_png_(self) -> bytes | None:
        try:
            pictures = self.overlay()
        except (ValueError, ImportError):
            return None
        from PIL import Image

        w = sum(p.width for p in pictures)
        h = max(p.height for p in pictures)
        strip = Image.new("RGB", (w, h), "white")
        x = 0
        for p in pictures:
            strip.paste(p, (x, 0))
            x += p.width
        buf = io.BytesIO()
        strip.save(buf, format="PNG")
        return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Explainers
# --------------------------------------------------------------------------------------------


def _shape(t: Any) -> str:
    if isinstance(t, tuple):
        return "(" + ", ".join(_shape(u) for u in t) + ")"
    shape = getattr(t, "shape", None)
    return "x".join(str(int(s)) for s in shape) if shape is not None else type(t).__name__


def _short_list(values: list, n: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:n])
    return f"[{shown}{', ...' if len(values) > n else ''}] ({len(values)})" if len(values) > n \
        else f"[{shown}]"


def _short_repr(r: CAMResult) -> str:
    """``CAMResult(method=..., layers=..., maps=BxHxW, ...)``: bounded length for any batch."""
    layers = r.layer_names if len(r.layer_names) <= 3 else [*r.layer_names[:3], "..."]
    if r.targets is None:
        targets = "custom"
    else:
        targets = _short_list(r.targets.detach().reshape(r.targets.shape[0], -1)[:, 0].tolist()
                              if r.targets.ndim > 1 and r.targets.shape[-1] == 1
                              else r.targets.detach().reshape(-1).tolist())
    return (f"CAMResult(method={r.method!r}, kind={r.kind!r}, layers={layers}, maps={_shape(r.maps)}, "
            f"raw={_shape(r.raw)}, logits={_shape(r.logits)}, targets={targets})")


def _first_conv(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


@dataclass
class _Pass:
    """Everything one explanation needs from the forward pass."""

    x: Tensor
    outputs: Any
    scores: Tensor  # (B, K)
    indices: Tensor | None  # (B, K)
    taps: list[LayerTap]
    multi: bool
    layouts: list[Layout]
    grads_cache: list[Tensor] | None = None
    target: Any = None


class BaseCAM:
    """Binds a method to a model. Subclasses say how channels are weighted.

    Args:
        model: any ``nn.Module`` taking ``(B, C, *spatial)`` float tensors.
        layer: dotted name, module, a list of them, or ``None`` to pick one per model family (the
            last feature map of a CNN, the last block's first norm of a ViT, the last stage of a
            Swin; see :func:`lamcam.hooks.auto_layer`; ``self.layer_names`` tells which). Layers
            inside an attention module are refused. With several layers, each layer's map is
            upsampled and normalised, then the maps are fused by ``fuse`` ("mean" or "max").
        reshape: optional callable turning the layer's output ``(B, ...)`` into ``(B, C, *S)``.
            Without it, lamcam reads the output as channels-first, channels-last or ``(B, N, D)``
            tokens (dropping class/register tokens), and refuses what it cannot read with
            certainty (see :mod:`lamcam.layout`); ``res.layouts`` records the reading.
        differentiable: keep maps in the autograd graph (``create_graph=True``), e.g. to train a
            student on a teacher's explanations.
    """

    method = ""
    kind = "cam"
    guided = False
    needs_layer = True

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
        fuse: str = "mean",
        differentiable: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if fuse not in ("mean", "max"):
            raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}")
        self.model = model
        self.reshape = reshape
        self.fuse = fuse
        self.differentiable = differentiable
        self._layer_spec = layer
        self._layers = resolve_layers(model, layer) if layer is not None else None
        for name, _ in self._layers or []:
            _refuse_attention_internals(model, name)
        self._prefix = prefix_hint(model)
        self._channel_hints: dict[tuple[str, tuple[int, ...]], str | None] = {}

    @property
    def layer_names(self) -> list[str]:
        """Names of the explained layers (known after the first call when picked automatically)."""
        return [n for n, _ in self._layers] if self._layers else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layer={self.layer_names or 'auto'})"

    # -- input checks ----------------------------------------------------------------------

    def _check_input(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise TypeError(
                f"images must be a torch.Tensor (B, C, *spatial), got {type(images).__name__}; "
                "load files with lamcam.io.load_image"
            )
        if images.is_complex():
            raise TypeError(
                f"images are complex ({images.dtype}); pass real images, e.g. images.abs() or "
                "images.real"
            )
        if not images.is_floating_point():
            raise TypeError(
                f"images have {'boolean' if images.dtype == torch.bool else 'integer'} dtype "
                f"{images.dtype}; convert them to float in the model's input range, e.g. "
                "images.float() / 255"
            )
        if images.ndim >= 1 and images.shape[0] == 0:
            raise ValueError(f"the batch is empty (shape {tuple(images.shape)}); pass at least one "
                             "image")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "explaining needs autograd, which torch.inference_mode() disables; call lamcam "
                "outside the inference_mode block (torch.no_grad() is fine)"
            )
        conv = _first_conv(self.model)
        if conv is not None:
            want = conv.weight.ndim  # conv weight (O, I/groups, *k) → input rank = k dims + 2
            if images.ndim != want:
                hint = " (add a batch dimension: images[None])" if images.ndim == want - 1 else ""
                raise ValueError(
                    f"images have shape {tuple(images.shape)} but {type(self.model).__name__} "
                    f"expects {want}-D input (B, C, {', '.join('…' * (want - 2))}){hint}"
                )
            if images.shape[1] != conv.in_channels:
                fix = (
                    " (grayscale to RGB: images.expand(-1, 3, *images.shape[2:]))"
                    if images.shape[1] == 1 and conv.in_channels == 3 else ""
                )
                raise ValueError(
                    f"images have {images.shape[1]} channels but the model's first convolution "
                    f"takes {conv.in_channels}{fix}"
                )
        elif images.ndim < 3:
            raise ValueError(
                f"images must be (B, C, *spatial), got shape {tuple(images.shape)}"
            )
        param = next(iter(self.model.parameters()), None)
        if param is not None and param.is_meta:
            raise ValueError(
                f"{type(self.model).__name__}'s parameters are on the meta device (shapes only, no "
                "values): materialise and load them first, e.g. model.to_empty(device='cpu') then "
                "model.load_state_dict(state)"
            )
        if param is not None and (images.device != param.device or (
                param.is_floating_point() and images.dtype != param.dtype)):
            images = images.to(device=param.device, dtype=param.dtype)
        if images.is_inference():
            images = images.clone()
        return images

    # -- the forward pass ---------------------------------------------------------------------

    def _layout(self, tap: LayerTap, x: Tensor) -> Layout:
        """How ``tap``'s output is read as a map (see :mod:`lamcam.layout`)."""
        out = tap.output
        body = tuple(out.shape[1:])
        if self.reshape is not None:
            m = self.reshape(out)
            if not isinstance(m, Tensor) or m.ndim < 3 or m.shape[0] != out.shape[0]:
                got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"reshape must return (B, C, *spatial) for layer {tap.name!r}, "
                                 f"got {got}")
            return Layout(RESHAPE, body, tuple(m.shape[2:]), m.shape[1], decided_by="user")
        spatial = tuple(x.shape[2:])
        try:
            return decide_layout(out.shape, spatial, prefix=self._prefix, name=f"layer {tap.name!r}")
        except LayoutError:
            key = (tap.name, tuple(out.shape))
            if key not in self._channel_hints:
                self._channel_hints[key] = channel_hint(self.model, tap.name, out.shape)
            hint = self._channel_hints[key]
            if hint is None:
                raise
            return decide_layout(out.shape, spatial, prefix=self._prefix, channels_hint=hint,
                                 name=f"layer {tap.name!r}")

    def _to_map(self, t: Tensor, layout: Layout) -> Tensor:
        """Layer output (or a gradient) ``(N, *layer_shape)`` → ``(N, C, *S)``."""
        return layout.to_map(t, self.reshape)

    def _to_map_k(self, g: Tensor, layout: Layout) -> Tensor:
        """Gradients ``(B, K, *layer_shape)`` → ``(B, K, C, *S)``."""
        b, k = g.shape[:2]
        grid = self._to_map(g.flatten(0, 1), layout)
        return grid.reshape(b, k, *grid.shape[1:])

    def _gradients(self, p: _Pass, wrt: Sequence[Tensor], labels: Sequence[str]) -> list[Tensor]:
        """``∂ scores[:, k] / ∂ t`` for each k: ``[(B, K, *t.shape[1:]) for t in wrt]``."""
        k_total = p.scores.shape[1]
        per: list[list[Tensor]] = [[] for _ in wrt]
        for k in range(k_total):
            try:
                gs = torch.autograd.grad(
                    p.scores[:, k].sum(), list(wrt), retain_graph=True,
                    create_graph=self.differentiable, allow_unused=True,
                )
            except RuntimeError as e:
                raise RuntimeError(f"the backward pass through the model failed: {e}") from e
            for i, g in enumerate(gs):
                if g is None:
                    raise ValueError(_no_gradient(labels[i], self.model, "no gradient flows from "
                                                  "the score to it"))
                per[i].append(g)
        return [torch.stack(g, dim=1) for g in per]

    def _layer_grads(self, p: _Pass) -> list[Tensor]:
        if p.grads_cache is None:
            raw = self._gradients(p, [t.output for t in p.taps], self.layer_names)
            grads = [self._to_map_k(g, lay) for g, lay in zip(raw, p.layouts, strict=True)]
            for i, g in enumerate(grads):
                flat = g.detach().flatten(2).abs().amax(dim=2)  # (B, K)
                if bool((flat == 0).all()):
                    raise ValueError(_no_gradient(
                        self.layer_names[i], self.model,
                        "the gradient of the score w.r.t. its map is exactly zero for every image"))
                if bool((flat == 0).any()):
                    bad = sorted({int(b) for b in (flat == 0).nonzero()[:, 0]})
                    warnings.warn(
                        f"zero gradient at layer {self.layer_names[i]!r} for image(s) {bad}: "
                        "their maps are all zeros", stacklevel=4,
                    )
            p.grads_cache = grads
        return p.grads_cache

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        """Raw maps ``(B, K, *S)`` per layer. Subclasses weight channels in :meth:`weights`."""
        grads = self._layer_grads(p)
        return [cam_from_weights(a, self.weights(a, g)) for a, g in zip(acts, grads, strict=True)]

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        raise NotImplementedError

    def _fuse(self, ups: list[Tensor], ndim: int) -> Tensor:
        """One map from several layers' normalised, upsampled maps (``fuse``: mean or max)."""
        if self.fuse == "mean":
            return normalize_minmax(torch.stack(ups).mean(0), ndim)
        return torch.stack(ups).amax(0)

    def __call__(self, images: Tensor, target: Target = None) -> CAMResult:
        """Explain ``images`` ``(B, C, *spatial)`` for ``target`` (see :mod:`lamcam.targets`)."""
        x = self._check_input(images)
        model = self.model
        with torch.enable_grad(), model_guard(model) as handles:
            if self._layers is None and self.needs_layer:
                name, module, layout = auto_layer(model, x, target)
                self._layers = [(name, module)]
                log.info("%s: explaining layer %r, %s (picked automatically)", self.method, name,
                         layout)
                if layout.kind == TOKENS and layout.prefix and self._prefix is None:
                    warnings.warn(
                        f"the default layer {name!r} of {type(model).__name__} was read as "
                        f"{layout}; the model does not declare its class/register tokens, so their "
                        "number was inferred from the shape. Check res.layouts, or pass reshape=",
                        stacklevel=2)
            taps = [LayerTap(n, m) for n, m in (self._layers or [])]
            for t in taps:
                handles.append(t.module.register_forward_hook(t.hook))
            mode = GuidedReLUMode() if self.guided else contextlib.nullcontext()
            if self.guided:
                x = x.detach().requires_grad_(True)
            with mode:
                try:
                    outputs = model(x)
                except Exception as e:
                    e.add_note(f"lamcam: the model's forward pass failed on input of shape "
                               f"{tuple(x.shape)}")
                    raise
            for h in handles:
                h.remove()
            handles.clear()
            self._check_outputs(outputs)
            scores, idx, multi = resolve_target(outputs, target)
            if not bool(torch.isfinite(scores.detach()).all()):
                bad = (~torch.isfinite(scores.detach())).flatten(1).any(1).nonzero()[:, 0].tolist()
                raise ValueError(f"the target scores are NaN or inf for images {bad[:10]}; check the "
                                 "target callable and the model's outputs")
            layouts = [self._layout(t, x) for t in taps]
            p = _Pass(x, outputs, scores, idx, taps, multi, layouts, target=target)

            maps = raw = None
            if taps:
                acts = [self._to_map(t.output, lay) for t, lay in zip(taps, layouts, strict=True)]
                raws = self._layer_maps(p, acts)
                size = x.shape[2:]
                ups = [normalize_minmax(upsample_maps(r, size), len(size)) for r in raws]
                maps = ups[0] if len(ups) == 1 else self._fuse(ups, len(size))
                raw = raws[0] if len(raws) == 1 else tuple(raws)
            if self.guided:
                assert isinstance(mode, GuidedReLUMode)
                warn_unseen_activations(model, mode.count)
                mode.switch.guided = True
                (gg,) = self._gradients(p, [x], ["the input"])  # (B, K, C, *S)
                maps = gg if maps is None else maps.unsqueeze(2) * gg
                raw = gg if raw is None else raw

        def out(t: Tensor) -> Tensor:
            t = t if self.differentiable else t.detach()
            return t if multi else t.squeeze(1)

        logits = extract_logits(outputs)
        if logits is None:
            logits = outputs
        elif not self.differentiable:
            logits = logits.detach()
        return CAMResult(
            maps=out(maps),
            raw=tuple(out(r) for r in raw) if isinstance(raw, tuple) else out(raw),
            logits=logits,
            targets=None if idx is None else (idx if multi else idx[:, 0]),
            scores=out(scores),
            method=self.method,
            layer_names=self.layer_names,
            kind=self.kind,
            images=images.detach(),
            layouts=layouts,
        )

    @staticmethod
    def _check_outputs(outputs: Any) -> None:
        tensors = [outputs] if isinstance(outputs, Tensor) else (
            list(outputs.values()) if isinstance(outputs, dict) else
            list(outputs) if isinstance(outputs, tuple | list) else [])
        for t in tensors:
            if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero()[:, 0].tolist()
                raise ValueError(
                    f"the model's outputs contain NaN or inf (images {bad[:10]}); check the input "
                    "range and normalisation, and the model's weights"
                )


def _refuse_attention_internals(model: nn.Module, name: str) -> None:
    attention = attention_ancestor(model, name)
    if attention is None:
        return
    norm = block_norm(model, attention)
    instead = f"the block's input norm {norm!r}" if norm else "the block's input norm"
    raise ValueError(
        f"layer {name!r} is inside the attention module {attention!r} "
        f"({type(dict(model.named_modules())[attention]).__name__}): its output holds queries, keys, "
        f"values or attention weights, not a map of the image. Explain {instead} (or the block "
        "itself), or pass layer=None to let lamcam choose"
    )


def _no_gradient(layer: str, model: nn.Module, why: str) -> str:
    """The one message for a layer the explained score does not reach."""
    return (
        f"the target score does not depend on layer {layer!r}: {why}. Choose a layer on the path "
        "to the output, or layer=None to let lamcam choose. For ViT-style models whose head reads "
        "the class token, that is a layer before the last attention, e.g. the last block's first "
        "norm ('blocks.11.norm1' in timm, 'vit.encoder.layer.11.layernorm_before' in transformers, "
        "'encoder.layers.encoder_layer_11.ln_1' in torchvision), not the block's output. "
        + zero_head_hint(model)
    )


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channel weight = spatial mean of ``∂S^c/∂A``.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> GradCAM(net, "0")(torch.rand(2, 3, 10, 10), target=[0, 2]).maps.shape
        torch.Size([2, 10, 10])
    """

    method = "gradcam"

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return gradcam_weights(grads)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), exact eq. 19 — see :func:`gradcampp_weights`.

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> GradCAMPlusPlus(net, "1")(torch.rand(1, 3, 10, 10)).raw.shape
        torch.Size([1, 8, 8])
    """

    method = "gradcam++"

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return gradcampp_weights(acts, grads)


class GradCAMPlusPlusSoftmax(BaseCAM):
    """Grad-CAM++ with ``Y^c = softmax(S)_c`` — see :func:`gradcampp_softmax_weights`.

    Needs the gradient of every class score w.r.t. the layer: one backward pass to the layer per
    class (moments are accumulated on the fly, so memory does not grow with the class count).
    Targets must be classes, not callables.
    """

    method = "gradcam++softmax"

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        if p.indices is None:
            raise ValueError(
                "the softmax variant of Grad-CAM++ needs class scores; a callable target has no "
                "softmax over classes. Use GradCAMPlusPlus with the callable"
            )
        grads = self._layer_grads(p)  # (B, K, C, *S) per layer: s'_c for the targets
        logits = extract_logits(p.outputs)
        probs = torch.softmax(_wide(logits), dim=1)
        if not self.differentiable:
            probs = probs.detach()
        wrt = [t.output for t in p.taps]
        moments: list[list[Tensor | float]] = [[0.0, 0.0, 0.0] for _ in wrt]
        for j0, gs in self._class_jacobian(logits, wrt):
            for i, g in enumerate(gs):  # g: (J, B, *layer_shape) for classes j0 .. j0 + J - 1
                g = _wide(g)
                y = probs[:, j0:j0 + g.shape[0]].T.reshape(*g.shape[:2], *([1] * (g.ndim - 2)))
                g2 = g * g
                for n, term in enumerate((y * g, y * g2, y * g2 * g)):
                    moments[i][n] = moments[i][n] + term.sum(0)
        moments = [[self._to_map(m, lay) for m in ms] for ms, lay in zip(moments, p.layouts, strict=True)]
        return [
            cam_from_weights(a, gradcampp_softmax_weights(a, g, *m))
            for a, g, m in zip(acts, grads, moments, strict=True)
        ]


    def _class_jacobian(self, logits: Tensor, wrt: list[Tensor], chunk_elems: int = 2**25):
        """Yield ``(j0, grads)`` with ``grads[i]`` = ``∂S^j/∂wrt[i]`` stacked for a chunk of classes.

        Uses one vectorised backward per chunk (``is_grads_batched``); models whose backward has
        no batching rule fall back to one backward per class.
        """
        n_cls = logits.shape[1]
        per_class = sum(t.numel() for t in wrt)
        chunk = max(1, min(n_cls, chunk_elems // max(per_class, 1)))
        batched = chunk > 1
        j0 = 0
        while j0 < n_cls:
            j1 = min(n_cls, j0 + chunk)
            if batched:
                eye = torch.zeros(j1 - j0, *logits.shape, dtype=logits.dtype, device=logits.device)
                eye[torch.arange(j1 - j0), :, torch.arange(j0, j1)] = 1
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # vmap's "performance drop" notes
                        gs = torch.autograd.grad(logits, wrt, grad_outputs=eye, retain_graph=True,
                                                 create_graph=self.differentiable,
                                                 is_grads_batched=True)
                except RuntimeError:
                    batched, chunk = False, 1
                    continue
            else:
                gs = tuple(g.unsqueeze(0) for g in torch.autograd.grad(
                    logits[:, j0].sum(), wrt, retain_graph=True, create_graph=self.differentiable))
                j1 = j0 + 1
            yield j0, gs
            j0 = j1


class CAM(BaseCAM):
    """Class Activation Mapping (Zhou et al. 2016): the head's weights ``W[c, k]`` as channel weights.

    Applies only to models whose outputs are ``linear(global_average_pool(A))`` of the layer; this
    is checked on every call (the logits must equal ``fc(mean(A)) + b``), and a model that does not
    fit gets an error suggesting Grad-CAM, which equals CAM up to a factor on such models.

    Args:
        fc: the final ``nn.Linear`` (name or module); by default the last ``nn.Linear`` whose input
            size equals the layer's channel count.
    """

    method = "cam"

    def __init__(self, model: nn.Module, layer: LayerSpec = None, *,
                 fc: str | nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(model, layer, **kwargs)
        self._fc = resolve_layers(model, fc)[0][1] if fc is not None else None

    def _find_fc(self, channels: int) -> nn.Linear:
        if self._fc is not None:
            if not isinstance(self._fc, nn.Linear):
                raise ValueError(f"fc must be an nn.Linear, got {type(self._fc).__name__}")
            return self._fc
        linears = [m for m in self.model.modules()
                   if isinstance(m, nn.Linear) and m.in_features == channels]
        if not linears:
            raise ValueError(
                f"CAM needs conv → global average pool → linear, but {type(self.model).__name__} "
                f"has no nn.Linear taking the layer's {channels} channels. Use GradCAM, which "
                "needs no particular head"
            )
        return linears[-1]

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        if len(acts) != 1:
            raise ValueError("CAM explains one layer: the one feeding the global average pool")
        if p.indices is None:
            raise ValueError("CAM needs class targets (the head's weight rows), not a callable")
        a = acts[0]
        fc = self._find_fc(a.shape[1])
        pooled = a.mean(dim=tuple(range(2, a.ndim)))
        predicted = F.linear(pooled, fc.weight, fc.bias)
        logits = extract_logits(p.outputs)
        scale = float(logits.detach().abs().max()) + 1.0
        if predicted.shape != logits.shape or not torch.allclose(
            predicted.detach(), logits.detach(), rtol=1e-4, atol=1e-4 * scale
        ):
            raise ValueError(
                f"CAM needs conv → global average pool → linear: the logits of "
                f"{type(self.model).__name__} are not fc(mean(A)) of layer {self.layer_names[0]!r} "
                "(another layer, an activation or dropout sits between them, or the head is not "
                "linear). Use GradCAM, which equals CAM up to a factor when the structure holds"
            )
        w = fc.weight[p.indices]  # (B, K, C)
        return [cam_from_weights(a, w)]


class GuidedBackprop(BaseCAM):
    """Guided Backpropagation: the input gradient with every ReLU passing back only positive
    gradient at positions with positive input. Batched; the model's modules are not replaced.

    .. warning:: fails the model-randomisation sanity check (Adebayo et al. 2018): its detail
       mostly shows image edges, not what the weights learned. See :mod:`lamcam.guided`.

    ``maps`` are ``(B, [K,] C, *spatial)`` signed gradients; ``kind == "gradient"``.
    """

    method = "guided-backprop"
    kind = "gradient"
    guided = True
    needs_layer = False

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, None, **kwargs)


class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM: the Grad-CAM map (upsampled, [0, 1]) times the guided input gradient.

    .. warning:: fails the model-randomisation sanity check (Adebayo et al. 2018).
    """

    method = "guided-gradcam"
    kind = "gradient"
    guided = True


class GuidedGradCAMPlusPlus(GradCAMPlusPlus):
    """Guided Grad-CAM++: the Grad-CAM++ map (upsampled, [0, 1]) times the guided input gradient.

    .. warning:: fails the model-randomisation sanity check (Adebayo et al. 2018).
    """

    method = "guided-gradcam++"
    kind = "gradient"
    guided = True


# --------------------------------------------------------------------------------------------
# The rest of the family the peers offer: one rule each on the same engine
# --------------------------------------------------------------------------------------------


def hirescam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): ``relu(Σ_c g_c ⊙ A_c)``, element-wise, no spatial averaging.

    Args:
        acts: ``(B, C, *S)``; grads: ``(B, K, C, *S)``.

    Returns:
        ``(B, K, *S)``.

    Example:
        >>> a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])          # B=1, C=2, 1x2
        >>> g = torch.tensor([[[[[1.0, -1.0]], [[0.5, 4.0]]]]])       # B=1, K=1
        >>> hirescam_map(a, g)                                         # relu([1+1.5, -2+0])
        tensor([[[[2.5000, 0.0000]]]])
    """
    return (_wide(grads) * _wide(acts).unsqueeze(1)).sum(dim=2).clamp(min=0)


def xgradcam_weights(acts: Tensor, grads: Tensor) -> Tensor:
    """XGrad-CAM (Fu et al. 2020) weights: ``Σ_ij A_ij g_ij / Σ_ij A_ij`` per channel (0 where a
    channel's activations sum to 0).

    Args:
        acts: ``(B, C, *S)``; grads: ``(B, K, C, *S)``.

    Returns:
        ``(B, K, C)``.

    Example:
        >>> a = torch.tensor([[[[1.0, 3.0]]]])
        >>> g = torch.tensor([[[[[2.0, -1.0]]]]])
        >>> xgradcam_weights(a, g)                                     # (2 - 3) / 4
        tensor([[[-0.2500]]])
    """
    a = _wide(acts).unsqueeze(1)
    g = _wide(grads)
    dims = _spatial(g, 3)
    num = (a * g).sum(dim=dims)
    den = a.sum(dim=dims).expand_as(num)
    return _safe_ratio(num, den)


def layercam_map(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM (Jiang et al. 2021): ``relu(Σ_c relu(g_c) ⊙ A_c)``, element-wise.

    Args:
        acts: ``(B, C, *S)``; grads: ``(B, K, C, *S)``.

    Returns:
        ``(B, K, *S)``.

    Example:
        >>> a = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])
        >>> g = torch.tensor([[[[[1.0, -1.0]], [[0.5, 4.0]]]]])
        >>> layercam_map(a, g)                                         # [1 + 1.5, 0 + 0]
        tensor([[[[2.5000, 0.0000]]]])
    """
    return (_wide(grads).clamp(min=0) * _wide(acts).unsqueeze(1)).sum(dim=2).clamp(min=0)


def eigencam_map(acts: Tensor) -> Tensor:
    """Eigen-CAM (Muhammad & Yeasin 2020): the activations projected on their first principal
    component.

    Per image, the ``(N, C)`` matrix of the N positions' channel vectors is centred (each channel's
    mean over positions removed) and its first right singular vector ``v`` taken; the map is
    ``(A - mean) · v`` per position. A singular vector's sign is arbitrary; it is chosen so that the
    map correlates positively with the total activation ``Σ_c A_c`` (where the layer is active is
    shown bright). Class-agnostic: no gradient, no target.

    Args:
        acts: ``(B, C, *S)``.

    Returns:
        ``(B, *S)``, signed.

    Example:
        >>> a = torch.zeros(1, 2, 1, 3); a[0, 0] = torch.tensor([0.0, 1.0, 2.0]); a[0, 1] = 2 * a[0, 0]
        >>> eigencam_map(a)                                            # rank one: along (1, 2)/√5
        tensor([[[-2.2361,  0.0000,  2.2361]]])
    """
    a = _wide(acts)
    b, c = a.shape[:2]
    m = a.reshape(b, c, -1).transpose(1, 2)                 # (B, N, C)
    centred = m - m.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:, 0, :].unsqueeze(-1)               # (B, N, 1)
    proj = proj.squeeze(-1)
    total = m.sum(dim=2)
    total = total - total.mean(dim=1, keepdim=True)
    sign = torch.where((proj * total).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign).reshape(b, *a.shape[2:])


class HiResCAM(BaseCAM):
    """HiResCAM: the gradient times the activation, summed over channels, per position
    (:func:`hirescam_map`). Equal to Grad-CAM up to a positive factor when the head is global
    average pooling then linear; otherwise it keeps where the gradient points, which Grad-CAM's
    spatial average loses. Cost: one forward, one backward to the layer per target."""

    method = "hirescam"

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        grads = self._layer_grads(p)
        return [hirescam_map(a, g) for a, g in zip(acts, grads, strict=True)]


class XGradCAM(BaseCAM):
    """XGrad-CAM: channel weights ``Σ A g / Σ A`` (:func:`xgradcam_weights`), the activation-
    weighted average of the gradient. Cost as Grad-CAM."""

    method = "xgradcam"

    def weights(self, acts: Tensor, grads: Tensor) -> Tensor:
        return xgradcam_weights(acts, grads)


class LayerCAM(BaseCAM):
    """LayerCAM: ``relu(Σ_c relu(g_c) ⊙ A_c)`` per position (:func:`layercam_map`), reliable on
    shallow layers, where Grad-CAM's averaged weights are not.

    With several layers (``layer=["layer1", "layer2", "layer3"]``), the maps are fused as the paper
    does: each layer's map, normalised to [0, 1], is scaled by ``tanh(gamma · m)`` (eq. 9, which
    lifts the small values of shallow layers), upsampled, and the element-wise maximum is taken.

    Args:
        gamma: the scaling of eq. 9 (the paper's 2).
    """

    method = "layercam"

    def __init__(self, model: nn.Module, layer: LayerSpec = None, *, gamma: float = 2.0,
                 **kwargs: Any) -> None:
        kwargs.setdefault("fuse", "max")
        super().__init__(model, layer, **kwargs)
        if not gamma > 0:
            raise ValueError(f"gamma must be positive (the paper uses 2), got {gamma}")
        self.gamma = float(gamma)

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        grads = self._layer_grads(p)
        return [layercam_map(a, g) for a, g in zip(acts, grads, strict=True)]

    def _fuse(self, ups: list[Tensor], ndim: int) -> Tensor:
        if self.fuse == "mean":
            return super()._fuse(ups, ndim)
        scaled = [torch.tanh(self.gamma * u) for u in ups]
        return normalize_minmax(torch.stack(scaled).amax(0), ndim)


class EigenCAM(BaseCAM):
    """Eigen-CAM: the first principal component of the layer's activations
    (:func:`eigencam_map`). Class-agnostic: every target gets the same map (the target still sets
    ``res.scores``). Cost: one forward pass and one small SVD per image; no backward pass."""

    method = "eigencam"

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        k = p.scores.shape[1]
        return [eigencam_map(a).unsqueeze(1).expand(-1, k, *a.shape[2:]) for a in acts]


class _PerturbationCAM(BaseCAM):
    """Methods whose weights come from extra forward passes, ``batch_size`` of them at a time."""

    def __init__(self, model: nn.Module, layer: LayerSpec = None, *, batch_size: int = 32,
                 progress: bool | None = None, **kwargs: Any) -> None:
        if kwargs.get("differentiable"):
            raise ValueError(f"{type(self).__name__}'s weights are scores of extra forward passes, "
                             "not a function autograd can differentiate; use Grad-CAM, Grad-CAM++, "
                             "HiResCAM, XGrad-CAM or LayerCAM for differentiable maps")
        super().__init__(model, layer, **kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = batch_size
        self.progress = progress

    def _warn_train_mode(self) -> None:
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in self.model.modules()):
            warnings.warn(f"{self.method}: BatchNorm layers are in train mode, so each batch of "
                          "extra passes is normalised by its own statistics and the weights depend "
                          "on batch_size; call model.eval() first", stacklevel=4)

    def _scores(self, p: _Pass, b: int, outputs: Any) -> Tensor:
        """The explained scores ``(n, K)`` of image ``b``'s targets on ``n`` extra outputs."""
        if p.indices is not None:
            logits = extract_logits(outputs)
            return logits[:, p.indices[b]]
        s, _, _ = resolve_target(outputs, p.target)
        return s.reshape(s.shape[0], -1)

    def _bar(self, total: int) -> Any:
        from lamcam._progress import show

        if not show(self.progress) or total < 2:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=self.method, unit="pass")


class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al. 2020): each channel, upsampled to the input and min-max normalised to
    [0, 1], masks the input; the channel's weight is the softmax, over channels, of the target
    score on its masked input. ``relu(Σ_c w_c A_c)`` as usual.

    This is the weighting pytorch-grad-cam uses (softmax over channels of the target logit). A
    constant channel carries no location and masks the input to zero.

    Cost: one forward pass per channel and image, ``batch_size`` masked inputs at a time (memory
    is bounded by ``batch_size`` inputs); a progress bar counts the passes. No backward pass.
    """

    method = "scorecam"

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        self._warn_train_mode()
        size = p.x.shape[2:]
        nd = len(size)
        b_total, k_total = p.scores.shape[:2]
        chans = [a.shape[1] for a in acts]
        bar = self._bar(sum(b_total * -(-c // self.batch_size) for c in chans))
        out = []
        try:
            for a in acts:
                a = a.detach()
                c_total = a.shape[1]
                weights = torch.empty(b_total, k_total, c_total, dtype=torch.float64,
                                      device=a.device)
                for b in range(b_total):
                    scores = []
                    for c0 in range(0, c_total, self.batch_size):
                        up = upsample_maps(a[b, c0:c0 + self.batch_size], size)   # (n, *X)
                        masks = normalize_minmax(up, nd).to(p.x.dtype)
                        masked = p.x[b].detach().unsqueeze(0) * masks.unsqueeze(1)
                        with torch.no_grad():
                            scores.append(self._scores(p, b, self.model(masked)).double())
                        if bar is not None:
                            bar.update(1)
                    s = torch.cat(scores, dim=0)                                  # (C, K)
                    weights[b] = torch.softmax(s, dim=0).transpose(0, 1)
                out.append(cam_from_weights(a, weights))
        finally:
            if bar is not None:
                bar.close()
        return out


def _zero_channels(out: Tensor, layout: Layout, channels: Sequence[int]) -> Tensor:
    """Copies of one layer output ``(1, *shape)``, copy ``i`` with map channel ``channels[i]`` zero.

    "Channel" is the map's channel (see :mod:`lamcam.layout`): a feature map of a CNN, a feature
    of every patch token of a ViT (the class and register tokens are left as they are).
    """
    if layout.kind not in (CHANNELS_FIRST, CHANNELS_LAST, TOKENS):
        raise ValueError("Ablation-CAM zeroes the layer's channels in its own output, which a "
                         "custom reshape= does not say how to do; use a layer whose output lamcam "
                         "reads itself (channels-first, channels-last or tokens)")
    rep = out.expand(len(channels), *out.shape[1:]).clone()
    for i, c in enumerate(channels):
        if layout.kind == CHANNELS_FIRST:
            rep[i, c] = 0
        elif layout.kind == CHANNELS_LAST:
            rep[i, ..., c] = 0
        else:
            rep[i, layout.prefix:, c] = 0
    return rep


class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is the relative drop of the target
    score when that channel is zeroed, ``w_c = (y - y_c) / y`` (0 where ``y`` is 0);
    ``relu(Σ_c w_c A_c)``.

    The channel is zeroed in the layer's output during a full forward pass (the layer's output is
    replaced, the model is not changed). Cost: one forward pass per channel and image,
    ``batch_size`` at a time; a progress bar counts the passes. No backward pass.
    """

    method = "ablationcam"

    def _layer_maps(self, p: _Pass, acts: list[Tensor]) -> list[Tensor]:
        self._warn_train_mode()
        b_total, k_total = p.scores.shape[:2]
        chans = [a.shape[1] for a in acts]
        bar = self._bar(sum(b_total * -(-c // self.batch_size) for c in chans))
        out = []
        try:
            for tap, layout, a in zip(p.taps, p.layouts, acts, strict=True):
                a = a.detach()
                c_total = a.shape[1]
                weights = torch.empty(b_total, k_total, c_total, dtype=torch.float64,
                                      device=a.device)
                for b in range(b_total):
                    y = p.scores[b].detach().double()                              # (K,)
                    layer_out = tap.output[b:b + 1].detach()
                    drops = []
                    for c0 in range(0, c_total, self.batch_size):
                        ch = list(range(c0, min(c0 + self.batch_size, c_total)))
                        ablated = _zero_channels(layer_out, layout, ch)

                        def replace(_m: nn.Module, _i: Any, _o: Any, new: Tensor = ablated,
                                    owner: int = threading.get_ident()) -> Tensor | None:
                            # only this thread's passes: another thread explaining the same
                            # model meanwhile must see the layer's true output
                            return new if threading.get_ident() == owner else None
                        h = tap.module.register_forward_hook(replace)
                        try:
                            with torch.no_grad():
                                outputs = self.model(p.x[b:b + 1].detach().expand(len(ch), *p.x.shape[1:]))
                        finally:
                            h.remove()
                        drops.append(self._scores(p, b, outputs).double())
                        if bar is not None:
                            bar.update(1)
                    yc = torch.cat(drops, dim=0)                                   # (C, K)
                    weights[b] = _safe_ratio(y.unsqueeze(0) - yc, y.unsqueeze(0).expand_as(yc)).T
                out.append(cam_from_weights(a, weights))
        finally:
            if bar is not None:
                bar.close()
        return out


def guided_backprop(model: nn.Module, images: Tensor, target=None) -> Tensor:  # noqa: ANN001
    """The guided input gradient ``(B, C, *spatial)`` of each image's target score.

    A functional shortcut for :class:`lamcam.GuidedBackprop` with one target per image.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> guided_backprop(net, torch.rand(2, 3, 8, 8), target=1).shape
        torch.Size([2, 3, 8, 8])
    """
    return GuidedBackprop(model)(images, target=target).maps


METHODS: dict[str, type[BaseCAM]] = {
    cls.method: cls
    for cls in (CAM, GradCAM, GradCAMPlusPlus, GradCAMPlusPlusSoftmax, GuidedBackprop,
                GuidedGradCAM, GuidedGradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, ScoreCAM,
                AblationCAM, EigenCAM)
}


def explain(model: nn.Module, images: Tensor, method: str = "gradcam++",
            layer: LayerSpec = None, target: Target = None, **kwargs: Any) -> CAMResult:
    """One call: ``explain(model, images, "gradcam++", layer="layer4", target=None)``.

    ``method`` is a key of :data:`METHODS` (case and ``_``/``-`` insensitive, "gradcampp" works).

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> explain(net, torch.rand(1, 3, 12, 12), "gradcam").maps.shape
        torch.Size([1, 12, 12])
    """
    return make_explainer(method, model, layer, **kwargs)(images, target=target)


def make_explainer(method: str, model: nn.Module, layer: LayerSpec = None, **kwargs: Any) -> BaseCAM:
    """The explainer ``METHODS[method]`` bound to ``model`` (``layer`` goes to the methods that take
    one; guided backprop has none). ``method`` is case and ``_``/``-`` insensitive, "gradcampp" works.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 3))
        >>> type(make_explainer("gradcampp", net)).__name__
        'GradCAMPlusPlus'
    """
    key = method.lower().replace("_", "-").replace("pp", "++").replace(" ", "")
    undashed = {k.replace("-", ""): k for k in METHODS}
    key = undashed.get(key.replace("-", ""), key)  # "score-cam", "Grad-CAM" work too
    if key not in METHODS:
        import difflib

        close = difflib.get_close_matches(key, list(METHODS), n=3)
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))
    cls = METHODS[key]
    if cls is GuidedBackprop:
        return cls(model, **kwargs)
    return cls(model, layer, **kwargs)
