"""Small x4 super-resolution networks of four designs, for comparing Local Attribution Maps.

All four map float ``(B, 3, H, W)`` RGB in ``[0, 1]`` to ``(B, 3, 4H, 4W)`` (not clamped) for
any ``H, W >= 1``; none needs a global bicubic skip, and all keep their computation at LR
resolution until the upsampler:

* :class:`FSRCNN` -- plain CNN with a small receptive field (feature extraction 5x5, 1x1 shrink,
  3x3 mapping convs, 1x1 expand, 3x3 conv + PixelShuffle), PReLU activations.
* :class:`EDSR` -- residual CNN in the exact module layout of the official EDSR code (and of the
  EDSR family's ``MeanShift``/``head``/``body``/``tail``), so official EDSR state dicts load
  into it.
* :class:`RCAN` -- residual groups of residual channel-attention blocks (squeeze-excitation with
  global average pooling), in the exact module layout of spandrel's ``RCAN`` architecture: a
  state dict saved from it is detected and loaded by spandrel, with identical outputs.
* :class:`SwinIRLite` -- window self-attention (SwinIR-like): shallow conv, residual Swin groups of
  (shifted) window attention blocks with relative position bias, conv, PixelShuffle. Pads the
  input to a multiple of the window size inside ``forward`` and crops the output back.

Input range: EDSR and RCAN follow the EDSR code base's convention ``rgb_range = 255``: inside
``forward`` the ``[0, 1]`` input is multiplied by 255, ``sub_mean`` subtracts ``255 * mean``
(DIV2K RGB mean ``(0.4488, 0.4371, 0.4040)``), and ``add_mean`` / division by 255 undo it at the
end. Callers always pass ``[0, 1]``, exactly as to spandrel (whose RCAN does the same). FSRCNN
and SwinIRLite subtract the same mean in ``[0, 1]`` units.

Receptive field: :func:`receptive_field` gives, in LR pixels, the side of the smallest square of
LR pixels that contains every LR pixel on which one SR output pixel can depend (structural
dependence, i.e. a non-zero Jacobian entry for generic weights), maximised over output pixels
far from the image border. ``None`` means *global*: every LR pixel influences every output pixel
(RCAN's channel attention pools the whole feature map). For SwinIRLite the dependence region
depends on the pixel's position relative to the window grid; the maximum is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DIV2K_MEAN",
    "FSRCNN",
    "EDSR",
    "RCAN",
    "SwinIRLite",
    "MeanShift",
    "pad_bottom_right",
    "receptive_field",
    "receptive_reach",
    "probe_receptive_field",
]

#: RGB mean of DIV2K used by the EDSR code base (and by spandrel's RCAN / SwinIR).
DIV2K_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)

# A receptive-field "op", applied from input to output, on 1-D positions:
#   ("conv", r)         stride-1 conv of radius r at the current resolution
#   ("up", f)           PixelShuffle(f): output position q comes from input position q // f
#   ("window", w, s)    window attention with window w, cyclic shift s (windows [k w + s, k w + w + s))
#   ("global",)         global pooling: everything depends on everything
_RFOp = tuple


def pad_bottom_right(x: Tensor, height: int, width: int) -> Tensor:
    """Pad ``x`` ``(B, C, H, W)`` at the bottom/right to ``(B, C, height, width)``.

    Reflect padding (``F.pad(mode="reflect")``, reflect-101) as far as it goes (at most
    ``size - 1`` pixels), replicate padding for any rest. Returns ``x`` itself when no padding
    is needed.
    """
    h, w = x.shape[-2:]
    ph, pw = max(height - h, 0), max(width - w, 0)
    if ph == 0 and pw == 0:
        return x
    rh, rw = min(ph, h - 1), min(pw, w - 1)
    if rh or rw:
        x = F.pad(x, (0, rw, 0, rh), mode="reflect")
    if ph - rh or pw - rw:
        x = F.pad(x, (0, pw - rw, 0, ph - rh), mode="replicate")
    return x


def _interval(ops: Sequence[_RFOp], pos: int) -> tuple[int, int] | None:
    """LR interval ``[lo, hi]`` that output position ``pos`` depends on (None = global)."""
    lo = hi = pos
    for op in reversed(ops):
        kind = op[0]
        if kind == "global":
            return None
        if kind == "conv":
            lo, hi = lo - op[1], hi + op[1]
        elif kind == "up":
            lo, hi = lo // op[1], hi // op[1]
        elif kind == "window":
            w, s = op[1], op[2]
            lo = ((lo - s) // w) * w + s
            hi = ((hi - s) // w) * w + s + w - 1
        else:  # pragma: no cover - internal table
            raise ValueError(f"unknown receptive-field op {op!r}")
    return lo, hi


def receptive_field(model: nn.Module) -> int | None:
    """Theoretical receptive field of ``model`` in LR pixels (side of a square), None = global.

    Computed exactly from the model's layer structure (``model.rf_ops()``), in the interior of
    an infinite image: the maximum, over all output positions of one period of the
    window/upsampling grid, of the length of the LR interval the output depends on. Networks are
    separable in this sense (square kernels, square windows), so the 2-D region is that interval
    squared.

    Example:
        >>> receptive_field(FSRCNN(mapping=4))   # 5x5, four 3x3, 3x3 before the shuffle
        15
    """
    ops = model.rf_ops()  # type: ignore[operator]
    if any(op[0] == "global" for op in ops):
        return None
    period = 1
    for op in ops:
        if op[0] in ("up", "window"):
            period = period * op[1] // math.gcd(period, op[1])
    scale = 1
    for op in ops:
        if op[0] == "up":
            scale *= op[1]
    period *= scale
    base = 10_000 * period  # far from 0 so floor divisions behave like the interior
    best = 0
    for p in range(base, base + period):
        iv = _interval(ops, p)
        assert iv is not None
        best = max(best, iv[1] - iv[0] + 1)
    return best


def receptive_reach(model: nn.Module) -> int | None:
    """How far, in LR pixels, an output pixel's dependence reaches beyond its own LR pixel on the
    farther side (None = global): the tight bound for receptive-field cropping.

    Example:
        >>> receptive_reach(FSRCNN(mapping=4))   # (15 - 1) / 2
        7
    """
    ops = model.rf_ops()  # type: ignore[operator]
    if any(op[0] == "global" for op in ops):
        return None
    period, scale = 1, 1
    for op in ops:
        if op[0] in ("up", "window"):
            period = period * op[1] // math.gcd(period, op[1])
        if op[0] == "up":
            scale *= op[1]
    period *= scale
    base = 10_000 * period
    best = 0
    for p in range(base, base + period):
        iv = _interval(ops, p)
        assert iv is not None
        best = max(best, p // scale - iv[0], iv[1] - p // scale)
    return best


def probe_receptive_field(
    model: nn.Module, lr_size: int = 64, positions: Sequence[int] | None = None, trials: int = 2
) -> int:
    """Measured receptive field (LR pixels): largest bounding-box side of non-zero gradients.

    For each SR output position ``(p, p)`` (default: the 4 * 8 positions of one window/scale
    period around the centre) the gradient of that output pixel (summed over channels) with
    respect to a random ``(1, 3, lr_size, lr_size)`` input is computed in float64, on ``trials``
    random inputs (a dead ReLU can hide a dependence on one input, hardly on all). Returns the
    maximal side (rows or columns) of the box that holds the non-zero gradient entries; a
    value of ``lr_size`` means the field reaches the image border (e.g. global pooling).
    Slow-ish (one backward per position and trial); meant for checks, not for run time.
    """
    was_training = model.training
    dtype = next(model.parameters()).dtype
    model.eval().double()
    try:
        gen = torch.Generator().manual_seed(0)
        scale = None
        best = 0
        xs = [torch.rand(1, 3, lr_size, lr_size, generator=gen, dtype=torch.float64)
              for _ in range(trials)]
        if positions is None:
            with torch.no_grad():
                scale = model(xs[0]).shape[-1] // lr_size
            centre = (lr_size // 2) * scale
            positions = range(centre - 16, centre + 16)
        for p in positions:
            seen = torch.zeros(lr_size, lr_size, dtype=torch.bool)
            for x in xs:
                x = x.clone().requires_grad_(True)
                model(x)[0, :, p, p].sum().backward()
                assert x.grad is not None
                seen |= x.grad[0].abs().sum(0) > 0
            rows = seen.any(1).nonzero()
            cols = seen.any(0).nonzero()
            if len(rows):
                best = max(best, int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
        return best
    finally:
        model.to(dtype)
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# "bilinear start": an initialisation under which a network computes bilinear upsampling
# --------------------------------------------------------------------------------------------
def _bilinear_taps(f: int) -> Tensor:
    """``(f, 3)``: 3-tap weights (offsets -1, 0, +1) of bilinear x f upsampling per sub-pixel."""
    rows = []
    for i in range(f):
        d = (i + 0.5) / f - 0.5
        rows.append([-d, 1 + d, 0.0] if d < 0 else [0.0, 1 - d, d])
    return torch.tensor(rows)


@torch.no_grad()
def _only(conv: nn.Conv2d, out_ch: int, sources: Sequence[tuple[int, float]], kernel: Tensor) -> None:
    """Make output channel ``out_ch`` of ``conv`` = sum of ``sign * kernel (*) input[src]``."""
    conv.weight[out_ch].zero_()
    k = conv.kernel_size[0]
    kk = torch.zeros(k, k)
    c, r = k // 2, kernel.shape[0] // 2
    kk[c - r : c + r + 1, c - r : c + r + 1] = kernel
    for src, sign in sources:
        conv.weight[out_ch, src] = sign * kk
    if conv.bias is not None:
        conv.bias[out_ch] = 0.0


def _delta() -> Tensor:
    return torch.ones(1, 1)


@torch.no_grad()
def _shuffle_conv_bilinear(
    conv: nn.Conv2d, f: int, sources: Sequence[Sequence[tuple[int, float]]]
) -> None:
    """Rows of ``conv`` (followed by PixelShuffle(f)) for image channels ``c < len(sources)``:
    bilinear x f upsampling of ``sum(sign * input[src])``; PixelShuffle takes output channel c,
    sub-pixel (i, j) from conv channel ``c f^2 + i f + j``."""
    taps = _bilinear_taps(f)
    for c, src in enumerate(sources):
        for i in range(f):
            for j in range(f):
                _only(conv, c * f * f + i * f + j, src, torch.outer(taps[i], taps[j]))


# --------------------------------------------------------------------------------------------
# shared pieces of the EDSR family
# --------------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class MeanShift(nn.Conv2d):
    """1x1 conv adding ``sign * rgb_range * mean`` (std 1): the EDSR code base's ``MeanShift``.

    Its weight and bias are parameters (so they are in the state dict, as in the official code)
    with ``requires_grad=False``.
    """

    def __init__(
        self, rgb_range: float, mean: Sequence[float] = DIV2K_MEAN, sign: float = -1.0
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(mean))
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


class ResBlock(nn.Module):
    """EDSR residual block without BN: ``x + res_scale * conv(relu(conv(x)))`` (``body.0/2``)."""

    def __init__(self, n_feats: int, kernel_size: int = 3, res_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(n_feats, n_feats, kernel_size), nn.ReLU(True), _conv(n_feats, n_feats, kernel_size)
        )
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        """``(B, n_feats, H, W) -> (B, n_feats, H, W)``."""
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """``conv(n, 4n) + PixelShuffle(2)`` repeated log2(scale) times (or one x3 step)."""

    def __init__(self, scale: int, n_feats: int) -> None:
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [_conv(n_feats, 4 * n_feats, 3), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [_conv(n_feats, 9 * n_feats, 3), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"scale must be a power of 2 or 3, got {scale}")
        super().__init__(*layers)

    def rf_ops(self) -> list[_RFOp]:
        """Receptive-field ops of this upsampler (see :func:`receptive_field`)."""
        ops: list[_RFOp] = []
        for m in self:
            if isinstance(m, nn.Conv2d):
                ops.append(("conv", m.kernel_size[0] // 2))
            else:
                ops.append(("up", m.upscale_factor))
        return ops


@torch.no_grad()
def _edsr_family_bilinear(model: nn.Module) -> None:
    """Head copies the image into channels 0-2, the body's last conv is zero (so the long skip
    passes the head through), the upsampler and tail conv do bilinear x2 (x2) on channels 0-2."""
    rgb = [[(c, 1.0)] for c in range(3)]
    for c in range(3):
        _only(model.head[-1], c, rgb[c], _delta())
    model.body[-1].weight.zero_()
    model.body[-1].bias.zero_()
    for m, nxt in zip(model.tail[0], list(model.tail[0])[1:], strict=False):
        if isinstance(m, nn.Conv2d):
            _shuffle_conv_bilinear(m, nxt.upscale_factor, rgb)
    for c in range(3):
        _only(model.tail[1], c, rgb[c], _delta())


class _SRMixin:
    """``meta_defaults()``: the facts the registry records for any model of these classes."""

    scale: int
    in_channels: int = 3

    def meta_defaults(self) -> dict[str, object]:
        """``task``, ``scale``, ``in_channels``, ``input_range`` (1.0), ``receptive_field`` (LR
        pixels, or ``"global"``) and, for local networks, ``receptive_reach`` of this model."""
        rf = receptive_field(self)  # type: ignore[arg-type]
        meta: dict[str, object] = {
            "task": "sr",
            "scale": int(self.scale),
            "in_channels": int(self.in_channels),
            "input_range": 1.0,
            "receptive_field": "global" if rf is None else rf,
        }
        if rf is not None:
            meta["receptive_reach"] = receptive_reach(self)  # type: ignore[arg-type]
        return meta


class _RangeMixin(_SRMixin):
    """``x * rgb_range`` -> ``sub_mean`` ... ``add_mean`` -> ``/ rgb_range`` (EDSR code base)."""

    rgb_range: float
    sub_mean: nn.Module
    add_mean: nn.Module

    def _setup_range(self, norm: bool, rgb_range: float) -> None:
        if norm:
            self.rgb_range = float(rgb_range)
            self.sub_mean = MeanShift(rgb_range, sign=-1.0)
            self.add_mean = MeanShift(rgb_range, sign=1.0)
        else:
            self.rgb_range = 1.0
            self.sub_mean = nn.Identity()
            self.add_mean = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``."""
        x = self.sub_mean(x * self.rgb_range)
        x = self.head(x)
        x = self.body(x) + x
        x = self.add_mean(self.tail(x))
        return x / self.rgb_range

    def init_bilinear(self) -> None:
        """Re-initialise so that the network computes bilinear upsampling of its input exactly
        (away from the zero-padded border), all other weights keeping their random values.

        A training aid for tiny compute budgets (see :mod:`training.train_sr`): the head copies
        the image into channels 0-2, the last conv of the body is zero, and the upsampler's
        convs and the tail conv implement bilinear x2 on channels 0-2.
        """
        _edsr_family_bilinear(self)


class EDSR(_RangeMixin, nn.Module):
    """EDSR: head conv, residual blocks without BN, body conv + global skip, x2 x2 upsampler.

    Module/key layout of the official EDSR code: ``sub_mean``, ``add_mean`` (MeanShift 1x1
    convs), ``head.0``, ``body.{i}.body.{0,2}`` (i < n_resblocks), ``body.{n_resblocks}``,
    ``tail.0.{0,2}`` (upsampler convs), ``tail.1``.

    Shapes: ``(B, 3, H, W)`` in ``[0, 1]`` -> features ``(B, n_feats, H, W)`` -> output
    ``(B, 3, scale H, scale W)``.

    Args:
        n_feats: feature channels.
        n_resblocks: residual blocks.
        scale: 2, 3, 4 or 8.
        res_scale: residual scaling (0.1 in the large official EDSR, 1 in the baseline).
        norm: include the MeanShift layers.
        rgb_range: internal pixel range (255 in the EDSR code base).
        n_colors: image channels.
    """

    def __init__(
        self,
        n_feats: int = 32,
        n_resblocks: int = 8,
        scale: int = 4,
        res_scale: float = 1.0,
        norm: bool = True,
        rgb_range: float = 255.0,
        n_colors: int = 3,
    ) -> None:
        super().__init__()
        self.scale, self.in_channels = scale, n_colors
        self._setup_range(norm, rgb_range)
        self.head = nn.Sequential(_conv(n_colors, n_feats))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, 3, res_scale) for _ in range(n_resblocks)], _conv(n_feats, n_feats)
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, n_colors))

    def rf_ops(self) -> list[_RFOp]:
        """Receptive-field ops (see :func:`receptive_field`)."""
        n = len(self.body) - 1
        return [("conv", 1)] + [("conv", 1)] * (2 * n + 1) + self.tail[0].rf_ops() + [("conv", 1)]


# --------------------------------------------------------------------------------------------
# RCAN (spandrel's RCAN key layout)
# --------------------------------------------------------------------------------------------
class CALayer(nn.Module):
    """Channel attention: global average pool -> 1x1 conv down -> ReLU -> 1x1 conv up -> sigmoid."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same, each channel scaled by its weight in ``(0, 1)``."""
        return x * self.conv_du(self.avg_pool(x))


class RCAB(nn.Module):
    """Residual channel-attention block: ``x + CA(conv(relu(conv(x))))`` (``body.0/2/3``)."""

    def __init__(self, n_feats: int, reduction: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(n_feats, n_feats), nn.ReLU(True), _conv(n_feats, n_feats), CALayer(n_feats, reduction)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        return x + self.body(x)


class ResidualGroup(nn.Module):
    """``x + conv(RCAB(...RCAB(x)))`` (``body.{0..n-1}`` RCABs, ``body.{n}`` conv)."""

    def __init__(self, n_feats: int, reduction: int, n_resblocks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *[RCAB(n_feats, reduction) for _ in range(n_resblocks)], _conv(n_feats, n_feats)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        return x + self.body(x)


class RCAN(_RangeMixin, nn.Module):
    """RCAN: residual groups of residual channel-attention blocks, long skip, x2 x2 upsampler.

    Key layout of spandrel's ``RCAN`` (and of the official RCAN code): ``sub_mean``/``add_mean``,
    ``head.0``, ``body.{g}.body.{b}.body.{0,2}`` (convs), ``body.{g}.body.{b}.body.3.conv_du.{0,2}``
    (channel attention), ``body.{g}.body.{n_resblocks}`` (group conv), ``body.{n_resgroups}``
    (body conv), ``tail.0.{0,2}``, ``tail.1``. spandrel assumes ``rgb_range=255`` whenever
    ``sub_mean`` is present, as here, and loads these state dicts with identical outputs.

    Shapes: ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``; the channel
    attention pools each feature map over the whole image, so the receptive field is global.

    Args:
        n_feats: feature channels.
        n_resgroups: residual groups.
        n_resblocks: RCABs per group.
        reduction: channel reduction of the attention's squeeze (``n_feats // reduction``).
        scale: 2, 3, 4 or 8.
        norm: include the MeanShift layers; rgb_range: internal range (255).
        n_colors: image channels.
    """

    def __init__(
        self,
        n_feats: int = 32,
        n_resgroups: int = 3,
        n_resblocks: int = 4,
        reduction: int = 8,
        scale: int = 4,
        norm: bool = True,
        rgb_range: float = 255.0,
        n_colors: int = 3,
    ) -> None:
        super().__init__()
        self.scale, self.in_channels = scale, n_colors
        self._setup_range(norm, rgb_range)
        self.head = nn.Sequential(_conv(n_colors, n_feats))
        self.body = nn.Sequential(
            *[ResidualGroup(n_feats, reduction, n_resblocks) for _ in range(n_resgroups)],
            _conv(n_feats, n_feats),
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, n_colors))

    def rf_ops(self) -> list[_RFOp]:
        """Receptive-field ops: global (channel attention pools the whole image)."""
        return [("global",)]


# --------------------------------------------------------------------------------------------
# SwinIR-like window attention network
# --------------------------------------------------------------------------------------------
def _windows(x: Tensor, w: int) -> Tensor:
    """``(B, H, W, C)`` -> ``(B * H/w * W/w, w*w, C)`` non-overlapping windows, row-major."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def _unwindows(x: Tensor, w: int, b: int, h: int, wd: int) -> Tensor:
    """Inverse of :func:`_windows`: ``(B * nW, w*w, C)`` -> ``(B, H, W, C)``."""
    c = x.shape[-1]
    x = x.view(b, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, wd, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window x window`` windows with relative position bias.

    ``relative_position_bias_table`` holds one learned bias per head for each of the
    ``(2w - 1)^2`` relative offsets between two positions of a window.
    """

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()])  # (2, w*w)
        rel = pos[:, :, None] - pos[:, None, :] + (window - 1)  # (2, w*w, w*w) in [0, 2w-2]
        index = rel[0] * (2 * window - 1) + rel[1]
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``(nB, N, C)`` windows of N = w*w tokens; ``mask`` ``(nW, N, N)`` additive or None."""
        nb, n, c = x.shape
        qkv = self.qkv(x).view(nb, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (nB, heads, N, d)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, self.heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is not None:
            nw = mask.shape[0]
            attn_mask = (bias[None] + mask[:, None]).repeat(nb // nw, 1, 1, 1)  # (nB, heads, N, N)
        else:
            attn_mask = bias[None].expand(nb, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(nb, n, c))


class SwinBlock(nn.Module):
    """Pre-norm transformer block on (shifted) windows: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, window: int, heads: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self._masks: dict[tuple[int, int, str], Tensor] = {}

    def _mask(self, h: int, w: int, device: torch.device) -> Tensor:
        """``(nW, N, N)`` additive mask (0 or -inf-like) separating the regions that the cyclic
        shift brought into one window; cached per size."""
        key = (h, w, str(device))
        if key not in self._masks:
            ws, s = self.window, self.shift
            ids = torch.zeros(1, h, w, 1, device=device)
            label = 0
            for ys in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                for xs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                    ids[:, ys, xs, :] = label
                    label += 1
            win = _windows(ids, ws).squeeze(-1)  # (nW, N)
            diff = win[:, None, :] != win[:, :, None]
            self._masks[key] = torch.zeros(diff.shape, device=device).masked_fill(diff, -100.0)
        return self._masks[key]

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C)`` with H, W multiples of the window -> same."""
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = self._mask(h, w, x.device) if self.shift else None
        y = _unwindows(self.attn(_windows(y, self.window), mask), self.window, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class SwinGroup(nn.Module):
    """Residual Swin group: ``x + conv(blocks(x))``, blocks alternating shift 0 and window/2."""

    def __init__(self, dim: int, depth: int, window: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, window, heads, 0 if i % 2 == 0 else window // 2, mlp_ratio)
            for i in range(depth)
        )
        self.conv = _conv(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` (H, W multiples of the window) -> same."""
        y = x.permute(0, 2, 3, 1)
        for blk in self.blocks:
            y = blk(y)
        return x + self.conv(y.permute(0, 3, 1, 2))


class SwinIRLite(_SRMixin, nn.Module):
    """Small SwinIR-like network: conv, residual Swin groups, norm, conv + skip, PixelShuffle.

    ``conv_first`` (3x3, 3 -> dim) -> ``layers`` (``SwinGroup`` x len(depths)) -> ``norm``
    (LayerNorm over channels) -> ``conv_after_body`` (3x3) + skip -> ``upsample`` (3x3 conv
    dim -> 3 scale^2, PixelShuffle(scale); SwinIR's lightweight "pixelshuffledirect").
    The input is reflect-padded at the bottom/right to a multiple of ``window`` and the output
    cropped back, so any ``(B, 3, H, W)`` gives ``(B, 3, scale H, scale W)``.

    Args:
        dim: embedding channels; heads: attention heads (``dim % heads == 0``).
        depths: Swin blocks per group; window: window side (LR pixels).
        mlp_ratio: hidden width of the MLPs relative to dim.
        scale: upscaling factor.
    """

    def __init__(
        self,
        dim: int = 48,
        depths: Sequence[int] = (4, 4),
        heads: int = 4,
        window: int = 8,
        mlp_ratio: float = 2.0,
        scale: int = 4,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.window, self.scale = window, scale
        self.depths = tuple(int(d) for d in depths)
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = _conv(3, dim)
        self.layers = nn.ModuleList(SwinGroup(dim, d, window, heads, mlp_ratio) for d in self.depths)
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = _conv(dim, dim)
        self.upsample = nn.Sequential(_conv(dim, 3 * scale * scale), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``."""
        h, w = x.shape[-2:]
        ws = self.window
        x = pad_bottom_right(x, -(-h // ws) * ws, -(-w // ws) * ws)
        x = self.conv_first(x - self.mean)
        y = x
        for layer in self.layers:
            y = layer(y)
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = x + self.conv_after_body(y)
        out = self.upsample(x) + self.mean
        return out[:, :, : h * self.scale, : w * self.scale]

    @torch.no_grad()
    def init_bilinear(self) -> None:
        """Re-initialise so that the network computes bilinear x scale upsampling exactly (away
        from the border): ``conv_first`` copies the image into channels 0-2, ``conv_after_body``
        is zero, the upsampling conv interpolates channels 0-2. Other weights stay random."""
        rgb = [[(c, 1.0)] for c in range(3)]
        for c in range(3):
            _only(self.conv_first, c, rgb[c], _delta())
        self.conv_after_body.weight.zero_()
        self.conv_after_body.bias.zero_()
        _shuffle_conv_bilinear(self.upsample[0], self.scale, rgb)

    def rf_ops(self) -> list[_RFOp]:
        """Receptive-field ops (see :func:`receptive_field`)."""
        ops: list[_RFOp] = [("conv", 1)]
        for d in self.depths:
            for i in range(d):
                ops.append(("window", self.window, 0 if i % 2 == 0 else self.window // 2))
            ops.append(("conv", 1))
        ops += [("conv", 1), ("conv", 1), ("up", self.scale)]
        return ops


# --------------------------------------------------------------------------------------------
# FSRCNN-like plain CNN
# --------------------------------------------------------------------------------------------
class FSRCNN(_SRMixin, nn.Module):
    """FSRCNN-like plain CNN with a small receptive field.

    ``feature`` (5x5 conv 3 -> d, PReLU) -> ``shrink`` (1x1 d -> s, PReLU) -> ``mapping``
    (``mapping`` x [3x3 s -> s, PReLU]) -> ``expand`` (1x1 s -> d, PReLU) -> ``upsample``
    (3x3 conv d -> 3 scale^2, PixelShuffle(scale); replaces FSRCNN's 9x9 deconvolution).
    Shapes: ``(B, 3, H, W)`` -> ``(B, d, H, W)`` -> ``(B, s, H, W)`` -> ... ->
    ``(B, 3, scale H, scale W)``.

    Args:
        d: feature channels; s: shrunk channels; mapping: number of 3x3 mapping convs.
        scale: upscaling factor.
    """

    def __init__(self, d: int = 96, s: int = 48, mapping: int = 6, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("mean", torch.tensor(DIV2K_MEAN).view(1, 3, 1, 1), persistent=False)
        self.feature = nn.Sequential(_conv(3, d, 5), nn.PReLU(d))
        self.shrink = nn.Sequential(_conv(d, s, 1), nn.PReLU(s))
        layers: list[nn.Module] = []
        for _ in range(mapping):
            layers += [_conv(s, s, 3), nn.PReLU(s)]
        self.mapping = nn.Sequential(*layers)
        self.expand = nn.Sequential(_conv(s, d, 1), nn.PReLU(d))
        self.upsample = nn.Sequential(_conv(d, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``."""
        x = self.expand(self.mapping(self.shrink(self.feature(x - self.mean))))
        return self.upsample(x) + self.mean

    @torch.no_grad()
    def init_bilinear(self) -> None:
        """Re-initialise so that the network computes bilinear x scale upsampling exactly (away
        from the border), other weights staying random.

        The PReLUs are bridged with sign pairs: channel c carries ``+v`` and channel c + 3 carries
        ``-v``; with equal slopes a, ``prelu(v) - prelu(-v) = (1 + a) v``, so every layer
        reconstructs ``v`` from the pair of the previous one exactly.
        """
        def pair(act: nn.PReLU) -> list[list[tuple[int, float]]]:
            a = act.weight if act.weight.numel() > 1 else act.weight.expand(6)
            return [[(c, 1.0 / (1.0 + float(a[c]))), (c + 3, -1.0 / (1.0 + float(a[c + 3])))]
                    for c in range(3)]

        for c in range(3):
            _only(self.feature[0], c, [(c, 1.0)], _delta())
            _only(self.feature[0], c + 3, [(c, -1.0)], _delta())
        convs = [self.shrink, *[self.mapping[i : i + 2] for i in range(0, len(self.mapping), 2)],
                 self.expand]
        prev = self.feature[1]
        for block in convs:
            conv, act = block[0], block[1]
            src = pair(prev)
            for c in range(3):
                _only(conv, c, src[c], _delta())
                _only(conv, c + 3, [(i, -w) for i, w in src[c]], _delta())
            prev = act
        _shuffle_conv_bilinear(self.upsample[0], self.scale, pair(prev))

    def rf_ops(self) -> list[_RFOp]:
        """Receptive-field ops (see :func:`receptive_field`)."""
        n = len(self.mapping) // 2
        return [("conv", 2), ("conv", 0)] + [("conv", 1)] * n + [
            ("conv", 0), ("conv", 1), ("up", self.scale)
        ]
