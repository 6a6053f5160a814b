"""The LAM paper's model zoo, loadable from its authors' checkpoint files.

Gu & Dong, "Interpreting Super-Resolution Networks with Local Attribution Maps", CVPR 2021,
compare super-resolution networks whose weights their demo repository (``X-Lowlevel-Vision/
LAM_Demo``, ``ModelZoo/``) loads by unpickling each file and calling ``load_state_dict``
(lamcam reads the same files with ``weights_only=True``). The
classes here are independent implementations of those networks whose parameter names and
shapes (the state-dict keys) are the ones of the authors' classes, so those files load as they
are, and whose ``forward`` computes what the authors' ``forward`` computes:

==============  ===============  ====================  ==============================
arch name       class            receptive field       LAM_Demo weights file
==============  ===============  ====================  ==============================
``CARN``        :class:`CARN`    43 LR pixels (x4)     ``CARN_7400.pth``
``CARN-M``      :class:`CARNM`   43 LR pixels (x4)     (code only)
``SAN``         :class:`SAN`     global                ``SAN_BI4X.pt``
``RNAN``        :class:`RNAN`    global                ``RNAN_SR_F64G10P48BIX4.pt``
``DRLN``        :class:`DRLN`    global                (code only)
``FSRCNN-LAM``  ``FSRCNNLAM``    15 LR pixels (x4)     (code only)
==============  ===============  ====================  ==============================

(RCAN, EDSR-baseline and RRDBNet of the same zoo load into :class:`lamcam.zoo.sr.RCAN`,
:class:`lamcam.zoo.sr.EDSR` and spandrel's ESRGAN.) :func:`register_all` registers each class
with :func:`lamcam.zoo.register_arch` together with a function that recovers its constructor
arguments from the shapes of a state dict, so ``lamcam.zoo.load("CARN_7400.pth")`` needs no
``arch=``.

Input range: every class maps ``(B, 3, H, W)`` RGB in ``[0, 1]`` to ``(B, 3, sH, sW)`` in the
same range (not clamped): LAM_Demo feeds all its models ``[0, 1]`` images, and the authors'
classes take exactly that (SAN, RNAN and DRLN multiply by 255 inside ``forward`` and divide at
the end; CARN and FSRCNN work in ``[0, 1]``). So for each class ``ours(x) == theirs(x)``, and
``lamcam_meta["input_range"]`` is 1.0. One quirk is kept because the published weights were
trained with it: SAN, RNAN and DRLN subtract the DIV2K mean *in [0, 1] units* (about 0.45)
from the ``[0, 255]`` image; the mean layers are part of the checkpoints and are loaded as
stored.

Receptive field (``meta_defaults()["receptive_field"]``): the side, in LR pixels, of the square
of LR pixels one output pixel can depend on, for the purely convolutional CARN, CARN-M and
FSRCNN; ``"global"`` for SAN (covariance pooling over the whole image, non-local attention),
RNAN (non-local attention over the whole image) and DRLN (channel attention on the image
mean), whose every output pixel depends on every input pixel.

Everything runs on the device and in the dtype of the parameters, and no tensor that autograd
needs is modified in place (LAM differentiates the output with respect to the input).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lamcam.zoo import sr
from lamcam.zoo.sr import DIV2K_MEAN, MeanShift, ResBlock, Upsampler, pad_bottom_right

__all__ = [
    "ARCHS",
    "DRLN_GROUPS",
    "CARN",
    "CARNM",
    "SAN",
    "RNAN",
    "DRLN",
    "FSRCNNLAM",
    "covariance_pool",
    "sqrtm_newton_schulz",
    "register_all",
]

#: Newton-Schulz iterations of SAN's matrix square root (fixed in the authors' SOCA).
SAN_SQRTM_ITERATIONS = 5
#: SAN's SOCA pools a centred crop of at most this many pixels per side.
SAN_SOCA_MAX_SIDE = 1000


def _conv(
    cin: int, cout: int, k: int = 3, *, padding: int | None = None, dilation: int = 1, groups: int = 1
) -> nn.Conv2d:
    """Stride-1 conv with bias, "same" padding ``k // 2`` unless given."""
    return nn.Conv2d(cin, cout, k, padding=k // 2 if padding is None else padding, dilation=dilation,
                     groups=groups)


def _factors(scale: int) -> list[int]:
    """PixelShuffle steps of an upsampler: ``[2] * log2(scale)`` or ``[3]``."""
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    if scale == 3:
        return [3]
    raise ValueError(f"scale must be a power of 2 or 3, got {scale}")


class _OpsView:
    """Anything with ``rf_ops()``, for :func:`lamcam.zoo.sr.receptive_field` without a model."""

    def __init__(self, ops: list[tuple]) -> None:
        self.ops = ops

    def rf_ops(self) -> list[tuple]:
        return self.ops


class _PaperSR:
    """``meta_defaults()`` of the paper-zoo classes (``scale``, ``rgb_range`` set by each)."""

    scale: int
    in_channels: int = 3

    def receptive_field(self) -> int | str:
        """LR pixels (side of a square) one output pixel can depend on, or ``"global"``."""
        return "global"

    def meta_defaults(self) -> dict[str, object]:
        """``task``, ``scale``, ``in_channels``, ``input_range`` (1.0), ``receptive_field`` and,
        where the layer structure gives it, ``receptive_reach`` (see
        :func:`lamcam.zoo.sr.receptive_reach`)."""
        meta: dict[str, object] = {
            "task": "sr",
            "scale": int(self.scale),
            "in_channels": int(self.in_channels),
            "input_range": 1.0,
            "receptive_field": self.receptive_field(),
        }
        if callable(getattr(self, "rf_ops", None)):
            reach = sr.receptive_reach(self)  # type: ignore[arg-type]
            if reach is not None:
                meta["receptive_reach"] = reach
        return meta


class _Shifter(nn.Module):
    """CARN / DRLN mean layer: ``shifter`` = 1x1 conv adding ``sign * mean`` (``[0, 1]`` units)."""

    def __init__(self, sign: float) -> None:
        super().__init__()
        self.shifter = MeanShift(1.0, DIV2K_MEAN, sign)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> same."""
        return self.shifter(x)


class _ConvAct(nn.Module):
    """``body`` = conv + activation (the authors' ``BasicBlock`` / ``BasicBlockSig``)."""

    def __init__(
        self, cin: int, cout: int, k: int, padding: int, dilation: int = 1, act: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(cin, cout, k, padding=padding, dilation=dilation), act())

    def forward(self, x: Tensor) -> Tensor:
        """``(B, cin, H, W)`` -> ``(B, cout, H, W)``."""
        return self.body(x)


class _ResidualBlock(nn.Module):
    """``relu(x + conv(relu(conv(x))))`` with 3x3 convs (``body.0``, ``body.2``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        return F.relu(self.body(x) + x)


class _EfficientResidualBlock(nn.Module):
    """CARN-M: ``relu(x + conv1(relu(gconv3(relu(gconv3(x))))))`` (``body.0/2/4``), grouped 3x3s."""

    def __init__(self, channels: int, group: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(channels, channels, groups=group), nn.ReLU(),
            _conv(channels, channels, groups=group), nn.ReLU(),
            _conv(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        return F.relu(self.body(x) + x)


class _ShuffleUp(nn.Module):
    """``body`` = [3x3 conv C -> f^2 C, ReLU, PixelShuffle(f)] per factor f of ``scale``."""

    def __init__(self, channels: int, scale: int, group: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for f in _factors(scale):
            layers += [_conv(channels, f * f * channels, groups=group), nn.ReLU(), nn.PixelShuffle(f)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, scale H, scale W)``."""
        return self.body(x)


class _UpsampleBlock(nn.Module):
    """CARN/DRLN upsampler: ``up`` (one scale) or ``up2``/``up3``/``up4`` (multi-scale models;
    the constructor's ``scale`` picks the branch ``forward`` uses)."""

    def __init__(self, channels: int, scale: int, multi_scale: bool, group: int = 1) -> None:
        super().__init__()
        self.multi_scale, self.scale = multi_scale, scale
        if multi_scale:
            if scale not in (2, 3, 4):
                raise ValueError(f"a multi-scale upsampler has x2, x3 and x4 branches, not x{scale}")
            self.up2 = _ShuffleUp(channels, 2, group)
            self.up3 = _ShuffleUp(channels, 3, group)
            self.up4 = _ShuffleUp(channels, 4, group)
        else:
            self.up = _ShuffleUp(channels, scale, group)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, scale H, scale W)``."""
        branch = getattr(self, f"up{self.scale}") if self.multi_scale else self.up
        return branch(x)


def _upsampler_ops(scale: int) -> list[tuple]:
    ops: list[tuple] = []
    for f in _factors(scale):
        ops += [("conv", 1), ("up", f)]
    return ops


def _cascade(x: Tensor, blocks: Sequence[nn.Module], fuses: Sequence[nn.Module]) -> Tensor:
    """CARN's cascading connections: ``c_i = cat(c_{i-1}, block_i(o_{i-1}))``, ``o_i = fuse_i(c_i)``
    with ``c_0 = o_0 = x``; returns the last ``o``."""
    c = o = x
    for block, fuse in zip(blocks, fuses, strict=True):
        c = torch.cat([c, block(o)], dim=1)
        o = fuse(c)
    return o


# --------------------------------------------------------------------------------------------
# CARN and CARN-M
# --------------------------------------------------------------------------------------------
class _CascadingBlock(nn.Module):
    """CARN's cascading block: three residual blocks ``b1..b3`` (CARN-M: ``b1`` used three
    times) fused by 1x1 conv + ReLU layers ``c1..c3`` of 2C, 3C, 4C inputs."""

    def __init__(self, channels: int, mobile: bool, group: int = 1) -> None:
        super().__init__()
        self.mobile = mobile
        if mobile:
            self.b1: nn.Module = _EfficientResidualBlock(channels, group)
        else:
            self.b1 = _ResidualBlock(channels)
            self.b2 = _ResidualBlock(channels)
            self.b3 = _ResidualBlock(channels)
        self.c1 = _ConvAct(2 * channels, channels, 1, 0)
        self.c2 = _ConvAct(3 * channels, channels, 1, 0)
        self.c3 = _ConvAct(4 * channels, channels, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        blocks = [self.b1] * 3 if self.mobile else [self.b1, self.b2, self.b3]
        return _cascade(x, blocks, [self.c1, self.c2, self.c3])


class CARN(_PaperSR, nn.Module):
    """CARN: Cascading Residual Network (Ahn, Kang & Sohn, "Fast, Accurate, and Lightweight
    Super-Resolution with Cascading Residual Network", ECCV 2018).

    ``sub_mean`` -> ``entry`` (3x3, 3 -> C) -> three cascading blocks ``b1..b3``, each itself a
    cascade of three residual blocks, joined by the cascading 1x1 fusions ``c1..c3`` (inputs 2C,
    3C, 4C: every fusion sees the concatenation of all earlier outputs) -> ``upsample``
    ([3x3 conv, ReLU, PixelShuffle(2)] x2 at x4) -> ``exit`` (3x3, C -> 3) -> ``add_mean``.
    No global skip. Shapes: ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``.

    Key layout of LAM_Demo's ``CARNet`` (``ModelZoo/CARN/carn.py``, file ``CARN_7400.pth``):
    ``sub_mean.shifter``, ``entry``, ``b{i}.b{j}.body.{0,2}``, ``b{i}.c{j}.body.0``,
    ``c{i}.body.0``, ``upsample.up.body.{0,3}``, ``exit``, ``add_mean.shifter``. With
    ``multi_scale=True`` the upsampler holds ``up2``/``up3``/``up4`` (the layout of the original
    CARN release) and ``scale`` picks the branch. Works in ``[0, 1]`` (the mean shift subtracts
    the DIV2K mean).

    Receptive field: local, 43 LR pixels at x4: the entry conv and the 9 residual blocks' 18
    3x3 convs reach 19 LR pixels on each side, the upsampler and exit convs up to 3 LR pixels
    more (the 1x1 fusions add nothing).

    Args:
        n_feats: feature channels C (64 in the published model).
        scale: upscaling factor (2, 3, 4 or 8; 2, 3 or 4 with ``multi_scale``).
        multi_scale: upsampler with x2, x3 and x4 branches.
        group: groups of the upsampler's convs (1 in CARN; CARN-M also groups its 3x3 convs).
    """

    mobile = False

    def __init__(self, n_feats: int = 64, scale: int = 4, multi_scale: bool = False, group: int = 1) -> None:
        super().__init__()
        self.scale, self.n_feats = scale, n_feats
        self.sub_mean = _Shifter(-1.0)
        self.add_mean = _Shifter(1.0)
        self.entry = _conv(3, n_feats)
        self.b1 = _CascadingBlock(n_feats, self.mobile, group)
        self.b2 = _CascadingBlock(n_feats, self.mobile, group)
        self.b3 = _CascadingBlock(n_feats, self.mobile, group)
        self.c1 = _ConvAct(2 * n_feats, n_feats, 1, 0)
        self.c2 = _ConvAct(3 * n_feats, n_feats, 1, 0)
        self.c3 = _ConvAct(4 * n_feats, n_feats, 1, 0)
        self.upsample = _UpsampleBlock(n_feats, scale, multi_scale, group)
        self.exit = _conv(n_feats, 3)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``."""
        x = self.entry(self.sub_mean(x))
        x = _cascade(x, [self.b1, self.b2, self.b3], [self.c1, self.c2, self.c3])
        return self.add_mean(self.exit(self.upsample(x)))

    def rf_ops(self) -> list[tuple]:
        """Receptive-field ops (see :func:`lamcam.zoo.sr.receptive_field`)."""
        return _carn_ops(self.scale)

    def receptive_field(self) -> int | str:
        """LR pixels (side of a square) one output pixel can depend on."""
        return int(sr.receptive_field(self))  # type: ignore[arg-type]


def _carn_ops(scale: int) -> list[tuple]:
    # entry, then 3 blocks x 3 residual blocks of two 3x3 convs; 1x1 fusions add nothing
    return [("conv", 1)] + [("conv", 2)] * 9 + _upsampler_ops(scale) + [("conv", 1)]


class CARNM(CARN):
    """CARN-M, the mobile CARN (same paper): efficient residual blocks (grouped 3x3, grouped 3x3,
    1x1) with one block shared by the three positions of each cascading block.

    Key layout of LAM_Demo's ``ModelZoo/CARN/carn_m.py`` (``Net``): as :class:`CARN` but
    ``b{i}.b1.body.{0,2,4}`` only, and a multi-scale upsampler (``upsample.up{2,3,4}``) by
    default. LAM_Demo's copy uses ``group=1``; the original CARN-M release uses ``group=4`` (the
    3x3 convs and the upsampler's convs are grouped); both load (``group`` is inferred).
    Receptive field as CARN's (43 at x4).

    Args:
        n_feats: feature channels (64); scale: upscaling factor; multi_scale: x2/x3/x4 branches;
        group: groups of the grouped convs.
    """

    mobile = True

    def __init__(self, n_feats: int = 64, scale: int = 4, multi_scale: bool = True, group: int = 1) -> None:
        super().__init__(n_feats, scale, multi_scale, group)


# --------------------------------------------------------------------------------------------
# SAN: second-order attention network
# --------------------------------------------------------------------------------------------
def covariance_pool(x: Tensor) -> Tensor:
    """Covariance of the channels of ``x`` over all pixels: ``(B, C, H, W)`` -> ``(B, C, C)``.

    ``S = (1/M) X (I - 1/M 11^T) X^T`` with ``X`` the ``(C, M = HW)`` feature matrix, the
    population covariance (MPN-COV's global covariance pooling, Li et al., ICCV 2017). Computed
    as ``Xc Xc^T / M`` with centred ``Xc``, without the ``M x M`` centring matrix.
    """
    b, c = x.shape[:2]
    feats = x.reshape(b, c, -1)
    centred = feats - feats.mean(dim=2, keepdim=True)
    return centred.bmm(centred.transpose(1, 2)) / feats.shape[2]


def sqrtm_newton_schulz(a: Tensor, iterations: int = SAN_SQRTM_ITERATIONS) -> Tensor:
    """Approximate square root of SPD matrices by coupled Newton-Schulz iteration (iSQRT-COV,
    Li, Xie, Wang & Gao, CVPR 2018): ``(B, C, C)`` -> ``(B, C, C)``.

    Pre-normalisation by the trace ``t``: ``A = a / t``; ``Y_0 = A (3I - A)/2``,
    ``Z_0 = (3I - A)/2``; then ``T_k = (3I - Z_{k-1} Y_{k-1})/2``, ``Y_k = Y_{k-1} T_k``,
    ``Z_k = T_k Z_{k-1}`` for ``k = 1 .. iterations - 2``; the last step computes
    ``Y_{N-2} (3I - Z_{N-2} Y_{N-2}) / 2`` only; post-compensation multiplies by ``sqrt(t)``.
    This is the computation of MPN-COV's ``SqrtmLayer(a, iterations)`` used by SAN (whose
    hand-written backward pass is the derivative of these same steps, as autograd computes it).
    """
    if iterations < 2:
        raise ValueError("the Newton-Schulz square root needs at least 2 iterations")
    n = a.shape[-1]
    eye3 = 3.0 * torch.eye(n, dtype=a.dtype, device=a.device).expand_as(a)
    trace = a.diagonal(dim1=-2, dim2=-1).sum(-1).view(-1, 1, 1)
    a = a / trace
    t = 0.5 * (eye3 - a)
    y, z = a.bmm(t), t
    for _ in range(iterations - 2):
        t = 0.5 * (eye3 - z.bmm(y))
        y, z = y.bmm(t), t.bmm(z)
    return 0.5 * y.bmm(eye3 - z.bmm(y)) * trace.sqrt()


def _soca_region(h: int, w: int, limit: int = SAN_SOCA_MAX_SIDE) -> tuple[slice, slice]:
    """Rows and columns SAN's SOCA pools: everything below ``limit`` pixels per side, otherwise
    a centred crop, with the authors' exact case analysis (including a side equal to ``limit``)."""
    if h < limit and w < limit:
        return slice(None), slice(None)
    if h < limit and w > limit:
        c = (w - limit) // 2
        return slice(None), slice(c, c + limit)
    if w < limit and h > limit:
        r = (h - limit) // 2
        return slice(r, r + limit), slice(None)
    r, c = (h - limit) // 2, (w - limit) // 2
    return slice(r, r + limit), slice(c, c + limit)


class _SOCA(nn.Module):
    """Second-order channel attention: ``x * sigmoid(W2 relu(W1 v))``, ``v`` the column means of
    the Newton-Schulz square root of the channel covariance (``conv_du.{0,2}``)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            _conv(channels, channels // reduction, 1), nn.ReLU(),
            _conv(channels // reduction, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same (each channel scaled by a weight in ``(0, 1)``)."""
        b, c, h, w = x.shape
        rows, cols = _soca_region(h, w)
        root = sqrtm_newton_schulz(covariance_pool(x[:, :, rows, cols]))
        return self.conv_du(root.mean(dim=1).view(b, c, 1, 1)) * x


class _EmbeddedGaussian(nn.Module):
    """SAN's non-local block (embedded Gaussian, keys and values max-pooled 2x2):
    ``x + W(softmax_j(theta(x)_i . phi(x)_j) g(x)_j)`` with 1x1 convs ``theta``, ``phi.0``,
    ``g.0`` (C -> C') and ``W`` (C' -> C); the softmax runs over the pooled positions j."""

    def __init__(self, channels: int, inter: int) -> None:
        super().__init__()
        self.inter = inter
        self.g = nn.Sequential(_conv(channels, inter, 1), nn.MaxPool2d(2))
        self.theta = _conv(channels, inter, 1)
        self.phi = nn.Sequential(_conv(channels, inter, 1), nn.MaxPool2d(2))
        self.W = _conv(inter, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` (H, W >= 2) -> same."""
        b, _, h, w = x.shape
        value = self.g(x).reshape(b, self.inter, -1).transpose(1, 2)  # (B, M', C')
        query = self.theta(x).reshape(b, self.inter, -1).transpose(1, 2)  # (B, M, C')
        key = self.phi(x).reshape(b, self.inter, -1)  # (B, C', M')
        attn = torch.softmax(query.matmul(key), dim=-1)
        y = attn.matmul(value).transpose(1, 2).reshape(b, self.inter, h, w)
        return self.W(y) + x


class _QuadrantNonLocal(nn.Module):
    """SAN's region-level non-local module: the same non-local block applied separately to the
    four quadrants (split at ``H // 2``, ``W // 2``). ``soca`` is part of the checkpoints but not
    used by the authors' forward (nor here)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.soca = _SOCA(channels, 8)
        self.non_local = _EmbeddedGaussian(channels, channels // 8)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` (H, W >= 4) -> same."""
        h, w = x.shape[-2:]
        h1, w1 = h // 2, w // 2
        top = torch.cat([self.non_local(x[..., :h1, :w1]), self.non_local(x[..., :h1, w1:])], dim=3)
        bottom = torch.cat([self.non_local(x[..., h1:, :w1]), self.non_local(x[..., h1:, w1:])], dim=3)
        return torch.cat([top, bottom], dim=2)


class _PlainResBlock(nn.Module):
    """``x + conv(relu(conv(x)))`` (``conv_first.{0,2}``), SAN's residual block."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_first = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        return self.conv_first(x) + x


class _LSRAG(nn.Module):
    """Local-source residual attention group: ``x + conv(SOCA(RB(...RB(x))))``. ``gamma`` is in
    the checkpoints but unused by the authors' forward (nor here)."""

    def __init__(self, channels: int, n_resblocks: int, reduction: int) -> None:
        super().__init__()
        self.rcab = nn.ModuleList(_PlainResBlock(channels) for _ in range(n_resblocks))
        self.soca = _SOCA(channels, reduction)
        self.conv_last = _conv(channels, channels)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        y = x
        for block in self.rcab:
            y = block(y)
        return self.conv_last(self.soca(y)) + x


class SAN(_PaperSR, nn.Module):
    """SAN: Second-order Attention Network (Dai, Cai, Zhang, Xia & Zhang, "Second-order Attention
    Network for Single Image Super-Resolution", CVPR 2019).

    ``x * 255`` -> ``sub_mean`` -> ``head`` (3x3) -> region non-local module -> ``n_resgroups``
    local-source residual attention groups, each followed by the share-source skip
    ``+ gamma * (non-local output)`` -> the same region non-local module again -> ``+ head
    output`` -> ``tail`` (conv + PixelShuffle upsampler, 3x3 conv) -> ``add_mean`` -> ``/ 255``.
    Each group is ``n_resblocks`` residual blocks, second-order channel attention (SOCA:
    covariance pooling of the whole feature map, 5 Newton-Schulz iterations for its square
    root, mean over rows, two 1x1 convs, sigmoid), a 3x3 conv and a skip. The region non-local
    module applies one embedded-Gaussian non-local block (C/8 channels, 2x2 max-pooled keys and
    values) to each quadrant of the feature map separately.

    Key layout of LAM_Demo's ``ModelZoo/NN/san.py`` (file ``SAN_BI4X.pt``): ``sub_mean``,
    ``add_mean``, ``head.0``, ``gamma``, ``RG.{g}.rcab.{b}.conv_first.{0,2}``,
    ``RG.{g}.soca.conv_du.{0,2}``, ``RG.{g}.conv_last``, ``RG.{g}.gamma``, ``conv_last``,
    ``tail.0.{0,2}``, ``tail.1``, ``non_local.soca.conv_du.{0,2}``,
    ``non_local.non_local.{g.0,theta,phi.0,W}``. ``conv_last``, ``RG.{g}.gamma`` and
    ``non_local.soca`` are stored but unused, as in the authors' forward.

    Shapes: ``(B, 3, H, W)`` in ``[0, 1]``, ``H, W >= 4`` (each quadrant's keys are max-pooled
    2x2) -> ``(B, 3, scale H, scale W)``. Receptive field: global (covariance pooling).
    An image whose features have zero covariance (e.g. a constant image) gives NaN, as in the
    authors' code (the square root divides by the covariance's trace).

    Args:
        n_feats: feature channels (64, a multiple of 8: the non-local block uses n_feats // 8).
        n_resgroups: residual groups (20); n_resblocks: residual blocks per group (10).
        reduction: channel reduction of the groups' SOCA (16).
        scale: upscaling factor (2, 3, 4 or 8).
    """

    rgb_range = 255.0

    def __init__(
        self, n_feats: int = 64, n_resgroups: int = 20, n_resblocks: int = 10, reduction: int = 16,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.sub_mean = MeanShift(1.0, DIV2K_MEAN, -1.0)
        self.add_mean = MeanShift(1.0, DIV2K_MEAN, 1.0)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.gamma = nn.Parameter(torch.zeros(1))
        self.RG = nn.ModuleList(_LSRAG(n_feats, n_resblocks, reduction) for _ in range(n_resgroups))
        self.conv_last = _conv(n_feats, n_feats)
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, 3))
        self.non_local = _QuadrantNonLocal(n_feats)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` (H, W >= 4) -> ``(B, 3, scale H, scale W)``."""
        if min(x.shape[-2:]) < 4:
            raise ValueError(f"SAN needs an input of at least 4x4 pixels, got {tuple(x.shape[-2:])}")
        shallow = self.head(self.sub_mean(x * self.rgb_range))
        y = source = self.non_local(shallow)
        for group in self.RG:
            y = group(y) + self.gamma * source
        y = self.non_local(y) + shallow
        return self.add_mean(self.tail(y)) / self.rgb_range


# --------------------------------------------------------------------------------------------
# RNAN: residual non-local attention network
# --------------------------------------------------------------------------------------------
class _NonLocal(nn.Module):
    """RNAN's non-local block (embedded Gaussian over all positions): ``x + W(f g(x))`` with
    ``f = softmax(theta(x)^T phi(x))`` normalised over dim 1 (the *query* positions, as in the
    authors' code), 1x1 convs ``g``, ``theta``, ``phi`` (C -> C/2) and ``W`` (C/2 -> C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.inter = channels // 2
        self.g = _conv(channels, self.inter, 1)
        self.W = _conv(self.inter, channels, 1)
        self.theta = _conv(channels, self.inter, 1)
        self.phi = _conv(channels, self.inter, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        b, _, h, w = x.shape
        value = self.g(x).reshape(b, self.inter, -1).transpose(1, 2)  # (B, M, C')
        query = self.theta(x).reshape(b, self.inter, -1).transpose(1, 2)  # (B, M, C')
        key = self.phi(x).reshape(b, self.inter, -1)  # (B, C', M)
        attn = torch.softmax(query.matmul(key), dim=1)
        y = attn.matmul(value).transpose(1, 2).reshape(b, self.inter, h, w)
        return self.W(y) + x


class _Trunk(nn.Module):
    """Trunk branch: two residual blocks (``body.{0,1}``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ResBlock(channels), ResBlock(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        return self.body(x)


class _MaskBranch(nn.Module):
    """Mask branch: [non-local block,] residual block -> stride-2 conv -> 2 residual blocks ->
    transposed conv (6x6, stride 2) + skip -> residual block -> 1x1 conv -> sigmoid."""

    def __init__(self, channels: int, non_local: bool) -> None:
        super().__init__()
        first: list[nn.Module] = [_NonLocal(channels)] if non_local else []
        self.MB_RB1 = nn.Sequential(*first, ResBlock(channels))
        self.MB_Down = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        self.MB_RB2 = nn.Sequential(ResBlock(channels), ResBlock(channels))
        self.MB_Up = nn.Sequential(nn.ConvTranspose2d(channels, channels, 6, stride=2, padding=2))
        self.MB_RB3 = nn.Sequential(ResBlock(channels))
        self.MB_1x1conv = nn.Sequential(_conv(channels, channels, 1))
        self.MB_sigmoid = nn.Sequential(nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` with even H, W -> mask ``(B, C, H, W)`` in ``(0, 1)``."""
        skip = self.MB_RB1(x)
        up = self.MB_Up(self.MB_RB2(self.MB_Down(skip)))
        return self.MB_sigmoid(self.MB_1x1conv(self.MB_RB3(skip + up)))


class _ResAttention(nn.Module):
    """Residual (non-local) attention module: ``r = RB(x)``, ``h = trunk(r) * mask(r) + r``,
    two residual blocks."""

    def __init__(self, channels: int, non_local: bool) -> None:
        super().__init__()
        self.RA_RB1 = nn.Sequential(ResBlock(channels))
        self.RA_TB = nn.Sequential(_Trunk(channels))
        self.RA_MB = nn.Sequential(_MaskBranch(channels, non_local))
        self.RA_tail = nn.Sequential(ResBlock(channels), ResBlock(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` with even H, W -> same."""
        r = self.RA_RB1(x)
        return self.RA_tail(self.RA_TB(r) * self.RA_MB(r) + r)


class _RNANGroup(nn.Module):
    """Residual attention group: attention module, 3x3 conv (``body.{0,1}``); no skip."""

    def __init__(self, channels: int, non_local: bool) -> None:
        super().__init__()
        self.body = nn.Sequential(_ResAttention(channels, non_local), _conv(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` with even H, W -> same."""
        return self.body(x)


class RNAN(_PaperSR, nn.Module):
    """RNAN: Residual Non-local Attention Network (Zhang, Li, Li, Zhong & Fu, "Residual Non-local
    Attention Networks for Image Restoration", ICLR 2019), super-resolution variant.

    ``x * 255`` -> ``sub_mean`` -> ``head`` (3x3) -> one non-local attention group
    (``body_nl_low``) -> ``n_resgroups - 2`` local attention groups and a 3x3 conv (``body``)
    -> one non-local attention group (``body_nl_high``) -> ``+ head output`` -> ``tail`` (conv +
    PixelShuffle upsampler, 3x3 conv) -> ``add_mean`` -> ``/ 255``. An attention group
    multiplies a trunk branch (residual blocks) by a mask branch (residual blocks around a
    stride-2 down / transposed-conv up step, sigmoid); in the non-local groups the mask branch
    starts with a non-local block over all positions of the feature map.

    Key layout of LAM_Demo's ``ModelZoo/NN/rnan.py`` (file ``RNAN_SR_F64G10P48BIX4.pt``):
    ``sub_mean``, ``add_mean``, ``head.0``, ``body_nl_low.0.body.{0,1}``,
    ``body.{g}.body.{0,1}``, ``body.{n_resgroups - 2}``, ``body_nl_high.0.body.{0,1}``,
    ``tail.0.{0,2}``, ``tail.1``; inside an attention module ``RA_RB1.0``, ``RA_TB.0.body.{0,1}``,
    ``RA_MB.0.MB_{RB1,Down,RB2,Up,RB3,1x1conv}``, ``RA_tail.{0,1}`` (residual blocks
    ``.body.{0,2}``, non-local block ``MB_RB1.0.{g,theta,phi,W}``).

    Shapes: ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``. The authors' network
    only runs on even H and W (its mask branch halves and doubles the size); an odd side is
    extended here by one reflected row/column at the bottom/right and the output cropped back,
    a case where the authors' code raises an error. Receptive field: global (non-local blocks).

    Args:
        n_feats: feature channels (64, even).
        n_resgroups: attention groups in all, the two non-local ones included (10, >= 2).
        scale: upscaling factor (2, 3, 4 or 8).
    """

    rgb_range = 255.0

    def __init__(self, n_feats: int = 64, n_resgroups: int = 10, scale: int = 4) -> None:
        super().__init__()
        if n_resgroups < 2:
            raise ValueError(f"RNAN has at least its two non-local groups, got n_resgroups={n_resgroups}")
        self.scale = scale
        self.sub_mean = MeanShift(1.0, DIV2K_MEAN, -1.0)
        self.add_mean = MeanShift(1.0, DIV2K_MEAN, 1.0)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body_nl_low = nn.Sequential(_RNANGroup(n_feats, True))
        self.body = nn.Sequential(
            *[_RNANGroup(n_feats, False) for _ in range(n_resgroups - 2)], _conv(n_feats, n_feats)
        )
        self.body_nl_high = nn.Sequential(_RNANGroup(n_feats, True))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, 3))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``."""
        h, w = x.shape[-2:]
        x = pad_bottom_right(x, h + h % 2, w + w % 2)
        shallow = self.head(self.sub_mean(x * self.rgb_range))
        y = self.body_nl_high(self.body(self.body_nl_low(shallow))) + shallow
        out = self.add_mean(self.tail(y)) / self.rgb_range
        return out[..., : h * self.scale, : w * self.scale]


# --------------------------------------------------------------------------------------------
# DRLN: densely residual Laplacian network
# --------------------------------------------------------------------------------------------
class _LaplacianAttention(nn.Module):
    """DRLN's Laplacian channel attention: global average pool, three dilated 3x3 convs + ReLU
    (dilation 3, 5, 7; C -> C/r each, ``c1..c3``), concatenated, 3x3 conv + sigmoid (``c4``,
    3C/r -> C), times the input. (On the pooled 1x1 map only the kernels' centres act.)"""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        mid = channels // reduction
        self.c1 = _ConvAct(channels, mid, 3, padding=3, dilation=3)
        self.c2 = _ConvAct(channels, mid, 3, padding=5, dilation=5)
        self.c3 = _ConvAct(channels, mid, 3, padding=7, dilation=7)
        self.c4 = _ConvAct(3 * mid, channels, 3, padding=1, act=nn.Sigmoid)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        y = F.adaptive_avg_pool2d(x, 1)
        return x * self.c4(torch.cat([self.c1(y), self.c2(y), self.c3(y)], dim=1))


class _DenseResidualBlock(nn.Module):
    """DRLN's dense residual Laplacian module: residual blocks on C, 2C, 4C channels, each fed the
    concatenation of the input and all earlier outputs, a 1x1 conv + ReLU (8C -> C, ``g``) and
    the Laplacian attention (``ca``)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.r1 = _ResidualBlock(channels)
        self.r2 = _ResidualBlock(2 * channels)
        self.r3 = _ResidualBlock(4 * channels)
        self.g = _ConvAct(8 * channels, channels, 1, 0)
        self.ca = _LaplacianAttention(channels, reduction)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same."""
        c = x
        for block in (self.r1, self.r2, self.r3):
            c = torch.cat([c, block(c)], dim=1)
        return self.ca(self.g(c))


#: DRLN's cascading groups of blocks ``b{i}`` (fusions ``c{i}``); each group adds its input.
DRLN_GROUPS: tuple[tuple[int, ...], ...] = (
    (1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12), (13, 14, 15, 16), (17, 18, 19, 20)
)


class DRLN(_PaperSR, nn.Module):
    """DRLN: Densely Residual Laplacian Network (Anwar & Barnes, "Densely Residual Laplacian
    Super-Resolution", IEEE TPAMI 2022, arXiv:1906.12021).

    ``x * 255`` -> ``sub_mean`` -> ``head`` (3x3) -> 20 dense residual Laplacian blocks
    ``b1..b20`` in six cascading groups (:data:`DRLN_GROUPS`) -> ``+ head output`` ->
    ``upsample`` ([3x3 conv, ReLU, PixelShuffle(2)] x2 at x4) -> ``tail`` (3x3) -> ``add_mean``
    -> ``/ 255``. In a group with input ``a``, the first block reads ``a``, each later block the
    previous fusion's output; the fusion ``c{i}`` (3x3 conv + ReLU) reads the concatenation of
    the previous group's last fusion output (the head output for group 1) and all of the group's
    block outputs so far; the group returns its last fusion output ``+ a``. As in the authors'
    code, block 5 reads the group input ``a`` instead of the output of fusion ``c4``.

    Key layout of LAM_Demo's ``ModelZoo/NN/drln.py`` (and of the official DRLN release):
    ``sub_mean.shifter``, ``add_mean.shifter``, ``head``, ``b{i}.r{1,2,3}.body.{0,2}``,
    ``b{i}.g.body.0``, ``b{i}.ca.c{1..4}.body.0``, ``c{i}.body.0``, ``upsample.up.body.{0,3}``,
    ``tail``. Shapes: ``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``.
    Receptive field: global (the attention pools the whole feature map).

    Args:
        n_feats: feature channels (64).
        reduction: channel reduction of the attention (16).
        scale: upscaling factor (2, 3, 4 or 8).
    """

    rgb_range = 255.0

    def __init__(self, n_feats: int = 64, reduction: int = 16, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale
        self.sub_mean = _Shifter(-1.0)
        self.add_mean = _Shifter(1.0)
        self.head = _conv(3, n_feats)
        for group in DRLN_GROUPS:
            for i in group:
                self.add_module(f"b{i}", _DenseResidualBlock(n_feats, reduction))
        for group in DRLN_GROUPS:
            for j, i in enumerate(group):
                self.add_module(f"c{i}", _ConvAct((j + 2) * n_feats, n_feats, 3, 1))
        self.upsample = _UpsampleBlock(n_feats, scale, multi_scale=False)
        self.tail = _conv(n_feats, 3)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> ``(B, 3, scale H, scale W)``."""
        shallow = self.head(self.sub_mean(x * self.rgb_range))
        a = carry = shallow
        for group in DRLN_GROUPS:
            cat = carry
            o = a
            for j, i in enumerate(group):
                b = getattr(self, f"b{i}")(a if j == 0 or i == 5 else o)
                cat = torch.cat([cat, b], dim=1)
                o = getattr(self, f"c{i}")(cat)
            a, carry = o + a, o
        out = self.tail(self.upsample(a + shallow))
        return self.add_mean(out) / self.rgb_range


# --------------------------------------------------------------------------------------------
# FSRCNN (the LAM_Demo version: 9x9 transposed conv)
# --------------------------------------------------------------------------------------------
class FSRCNNLAM(_PaperSR, nn.Module):
    """FSRCNN as in LAM_Demo (Dong, Loy & Tang, "Accelerating the Super-Resolution Convolutional
    Neural Network", ECCV 2016): 5x5 conv (3 -> d) + PReLU -> 1x1 shrink (d -> s) + PReLU ->
    ``m`` x [3x3 conv + PReLU] -> 1x1 expand (s -> d) + PReLU -> 9x9 transposed conv with stride
    ``scale`` (d -> 3). No mean subtraction, no skip; works in ``[0, 1]``.

    Key layout of LAM_Demo's ``ModelZoo/NN/fsrcnn.py``: ``first_part.{0,1}``,
    ``mid_part.{0 .. 2m+3}`` (convs at even, PReLUs at odd indices), ``last_part``. The stride
    (scale) is not visible in the weights: state dicts load as x4 unless a ``config`` says
    otherwise. (Unrelated to lamcam's own ``FSRCNN`` arch, which has another layout.)

    Receptive field: local, ``3 + 2 (2 + m)`` LR pixels at x4 (15 for m = 4): the transposed
    conv reaches 3 LR pixels for a quarter of the output positions (2 for the others), widened
    by 2 by the 5x5 conv and 1 by each 3x3 conv on each side.

    Args:
        scale: upscaling factor (the transposed conv's stride).
        num_channels: image channels (3 here; 1 for Y-channel models).
        d, s, m: FSRCNN's feature, shrink channels and mapping depth (56, 12, 4).
    """

    def __init__(self, scale: int = 4, num_channels: int = 3, d: int = 56, s: int = 12, m: int = 4) -> None:
        super().__init__()
        self.scale, self.in_channels, self.m = scale, num_channels, m
        self.first_part = nn.Sequential(_conv(num_channels, d, 5), nn.PReLU(d))
        mid: list[nn.Module] = [_conv(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            mid += [_conv(s, s, 3), nn.PReLU(s)]
        mid += [_conv(s, d, 1), nn.PReLU(d)]
        self.mid_part = nn.Sequential(*mid)
        self.last_part = nn.ConvTranspose2d(d, num_channels, 9, stride=scale, padding=4,
                                            output_padding=scale - 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in ``[0, 1]`` -> ``(B, C, scale H, scale W)``."""
        return self.last_part(self.mid_part(self.first_part(x)))

    def receptive_field(self) -> int | str:
        """LR pixels (side of a square) one output pixel can depend on."""
        return _fsrcnn_rf(self.scale, self.m)


def _fsrcnn_rf(scale: int, m: int, kernel: int = 9, padding: int = 4) -> int:
    # output o of the transposed conv reads inputs i with 0 <= o + padding - i * scale < kernel
    reach = max(
        sum(1 for i in range(-kernel, kernel + 1) if 0 <= o + padding - i * scale < kernel)
        for o in range(scale)
    )
    return reach + 2 * (2 + m)


# --------------------------------------------------------------------------------------------
# configs from state dicts, registration
# --------------------------------------------------------------------------------------------
def _count(state: Mapping[str, Tensor], pattern: str) -> int:
    """Number of consecutive ``i`` from 0 with ``pattern.format(i)`` in ``state``."""
    n = 0
    while pattern.format(n) in state:
        n += 1
    return n


def _scale_of(state: Mapping[str, Tensor], pattern: str, step: int, channels: int) -> int:
    """Product of the PixelShuffle factors of the convs ``pattern.format(0, step, 2 step, ...)``
    (output channels ``f^2 * channels``)."""
    scale, i = 1, 0
    while pattern.format(i) in state:
        ratio = state[pattern.format(i)].shape[0] / channels
        f = round(math.sqrt(ratio))
        if f < 2 or f * f != ratio:
            raise ValueError(f"{pattern.format(i)} is not a PixelShuffle conv")
        scale *= f
        i += step
    if scale == 1:
        raise ValueError("no upsampler")
    return scale


def _carn_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    n = int(state["entry.weight"].shape[0])
    group = n // int(state["b1.b1.body.0.weight"].shape[1])
    multi = "upsample.up2.body.0.weight" in state
    scale = 4 if multi else _scale_of(state, "upsample.up.body.{}.weight", 3, n)
    return {"n_feats": n, "scale": scale, "multi_scale": multi, "group": group}


def _san_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    n = int(state["head.0.weight"].shape[0])
    return {
        "n_feats": n,
        "n_resgroups": _count(state, "RG.{}.conv_last.weight"),
        "n_resblocks": _count(state, "RG.0.rcab.{}.conv_first.0.weight"),
        "reduction": n // int(state["RG.0.soca.conv_du.0.weight"].shape[0]),
        "scale": _scale_of(state, "tail.0.{}.weight", 2, n),
    }


def _rnan_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    n = int(state["head.0.weight"].shape[0])
    return {
        "n_feats": n,
        "n_resgroups": _count(state, "body.{}.body.1.weight") + 2,
        "scale": _scale_of(state, "tail.0.{}.weight", 2, n),
    }


def _drln_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    n = int(state["head.weight"].shape[0])
    return {
        "n_feats": n,
        "reduction": n // int(state["b1.ca.c1.body.0.weight"].shape[0]),
        "scale": _scale_of(state, "upsample.up.body.{}.weight", 3, n),
    }


def _fsrcnn_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    first = state["first_part.0.weight"]
    return {
        "num_channels": int(first.shape[1]),
        "d": int(first.shape[0]),
        "s": int(state["mid_part.0.weight"].shape[0]),
        "m": sum(1 for k in state if k.startswith("mid_part.") and k.endswith(".bias")) - 2,
        "scale": 4,  # the transposed conv's stride is not stored
    }


#: arch name -> (class, infer_config, receptive field of the default config).
ARCHS: dict[str, tuple[type[nn.Module], Callable[[Mapping[str, Tensor]], dict[str, Any]], int | str]] = {
    "CARN": (CARN, _carn_config, int(sr.receptive_field(_OpsView(_carn_ops(4))))),  # type: ignore[arg-type]
    "CARN-M": (CARNM, _carn_config, int(sr.receptive_field(_OpsView(_carn_ops(4))))),  # type: ignore[arg-type]
    "SAN": (SAN, _san_config, "global"),
    "RNAN": (RNAN, _rnan_config, "global"),
    "DRLN": (DRLN, _drln_config, "global"),
    "FSRCNN-LAM": (FSRCNNLAM, _fsrcnn_config, _fsrcnn_rf(4, 4)),
}


def register_all() -> None:
    """Register the paper zoo's architectures with :func:`lamcam.zoo.register_arch`."""
    from lamcam.zoo.registry import register_arch

    for name, (cls, infer, rf) in ARCHS.items():
        register_arch(
            name, cls, task="sr", infer_config=infer,
            defaults={"scale": 4, "in_channels": 3, "input_range": 1.0, "receptive_field": rf},
        )
