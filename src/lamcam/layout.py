"""What a layer's output *is*: a channels-first map, a channels-last map, or ViT-style tokens.

A CAM needs the target layer's output as ``(B, C, *S)``: channels, then the spatial grid. Models
do not all produce that. ``nn.Conv2d`` gives ``(B, C, H, W)``; Swin stages (timm, torchvision)
give channels-last ``(B, H, W, C)``; ViT blocks give tokens ``(B, N, D)`` with class,
distillation or register tokens in front of the patch grid; attention internals give
``(B, heads, N, d)``, which is no map at all. Reading the wrong one as a map gives a silently
wrong explanation, so :func:`decide_layout` decides, and refuses when it cannot:

1. **From the shape.** A reading is *possible* when its spatial sizes fit the input's (each at
   most the input's size plus a little padding). When two readings are possible, the one whose
   grid keeps the input's aspect ratio (the same stride along height and width, to rounding) is
   taken. Tokens must leave a grid with the input's aspect ratio after dropping the prefix.
2. **From the model**, when the shape alone leaves two readings (e.g. ``(B, 8, 8, 8)``): the
   module that produced the output says which axis holds the channels (a convolution, BatchNorm
   or pooling layer works channels-first; an ``nn.Linear`` or plain ``nn.LayerNorm`` over the
   last axis works channels-last), and the prefix-token count is read off the model (timm's
   ``num_prefix_tokens``, or its class/distillation/register token parameters).
3. Otherwise an error that names ``reshape=``.

The decision is a :class:`Layout`, recorded in every result (``res.layouts``).

Example:
    >>> decide_layout((2, 7, 7, 768), (224, 224)).kind
    'channels_last'
    >>> str(decide_layout((2, 197, 384), (224, 224)))
    'tokens (B, 197, 384): 1 prefix token dropped, 14×14 grid, 384 channels'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch  # noqa: F401 - used by the docstring examples
from torch import Tensor, nn

__all__ = [
    "Layout",
    "LayoutError",
    "attention_ancestor",
    "attention_cores",
    "channel_hint",
    "decide_layout",
    "prefix_hint",
]

#: Kinds of layout.
CHANNELS_FIRST, CHANNELS_LAST, TOKENS, RESHAPE = "channels_first", "channels_last", "tokens", "reshape"

_SLACK = 2  # a spatial size may exceed the input's by this much (padding)
_ASPECT_TOL = 1.5  # grid sizes may differ from input size / common stride by this much (rounding)
MAX_PREFIX = 16  # most leading tokens tried when the model does not declare its prefix


class LayoutError(ValueError):
    """A layer's output cannot be read as a map with certainty; pass ``reshape=``."""


@dataclass(frozen=True)
class Layout:
    """How a layer's output ``(B, ...)`` becomes a map ``(B, C, *grid)``.

    Attributes:
        kind: ``"channels_first"``, ``"channels_last"``, ``"tokens"`` or ``"reshape"`` (the user's
            callable).
        shape: the layer output's shape without the batch dimension.
        grid: the spatial shape of the map.
        channels: the number of channels ``C``.
        prefix: leading tokens dropped (class, distillation, register tokens); tokens only.
        decided_by: ``"shape"``, ``"model"`` (the module or the model broke a tie), or ``"user"``.
    """

    kind: str
    shape: tuple[int, ...]
    grid: tuple[int, ...]
    channels: int
    prefix: int = 0
    decided_by: str = "shape"

    def to_map(self, t: Tensor, reshape: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``t`` of shape ``(N, *self.shape)`` (an activation or its gradient) → ``(N, C, *grid)``."""
        if self.kind == CHANNELS_FIRST:
            return t
        if self.kind == CHANNELS_LAST:
            return t.movedim(-1, 1)
        if self.kind == TOKENS:
            return t[:, self.prefix:, :].transpose(1, 2).reshape(t.shape[0], self.channels, *self.grid)
        if reshape is None:
            raise ValueError("a 'reshape' layout needs the reshape callable")
        return reshape(t)

    def __str__(self) -> str:
        dims = ", ".join(str(s) for s in self.shape)
        grid = "×".join(str(g) for g in self.grid)
        if self.kind == TOKENS:
            tok = "token" if self.prefix == 1 else "tokens"
            return (f"tokens (B, {dims}): {self.prefix} prefix {tok} dropped, {grid} grid, "
                    f"{self.channels} channels")
        what = {CHANNELS_FIRST: "channels first", CHANNELS_LAST: "channels last",
                RESHAPE: "reshape="}[self.kind]
        return f"{what} (B, {dims}): {grid} grid, {self.channels} channels"


def _possible(grid: Sequence[int], spatial: Sequence[int]) -> bool:
    return all(1 <= g <= s + _SLACK for g, s in zip(grid, spatial, strict=True))


def _keeps_aspect(grid: Sequence[int], spatial: Sequence[int]) -> bool:
    """Whether height and width of ``grid`` share one stride w.r.t. the input (to rounding).

    Only the last two dimensions are compared (a video's time axis has its own stride); 1-D grids
    always pass.
    """
    if len(grid) < 2:
        return True
    (gh, gw), (sh, sw) = grid[-2:], spatial[-2:]
    stride = math.sqrt((sh / gh) * (sw / gw))
    return abs(gh - sh / stride) <= _ASPECT_TOL and abs(gw - sw / stride) <= _ASPECT_TOL


def _patch_stride(grid: Sequence[int], spatial: Sequence[int]) -> int | None:
    """An integer stride P making every grid size the floor (or every one the ceiling) of size / P."""
    pairs = list(zip(grid, spatial, strict=True))
    for p in range(1, max(spatial) + 1):
        if all(g == s // p for g, s in pairs) or all(g == -(-s // p) for g, s in pairs):
            return p
    return None


def _token_grid(m: int, spatial: Sequence[int]) -> tuple[int, int] | None:
    """The ``h × w = m`` grid that one integer patch stride makes of the input, or None.

    Tokens come from a patch embedding (or patch merging) with one stride along both axes, so
    this is stricter than the aspect test for maps: 28 tokens of a 16×24 input are no 4×7 grid.
    """
    for h in range(1, m + 1):
        if m % h == 0 and _patch_stride((h, m // h), spatial) is not None:
            return h, m // h
    return None


def decide_layout(
    shape: Sequence[int],
    spatial: Sequence[int],
    *,
    channels_hint: str | None = None,
    prefix: int | None = None,
    name: str = "the layer",
) -> Layout:
    """Decide how the output ``shape`` (batch first) of a layer maps onto an input of ``spatial`` size.

    Args:
        shape: the layer output's shape, ``(B, ...)``.
        spatial: the input's spatial shape (``(H, W)``, ``(L,)``, ``(T, H, W)``).
        channels_hint: ``"channels_first"`` or ``"channels_last"`` when the model says which axis
            holds the channels (see :func:`channel_hint`); used only to break a tie.
        prefix: the number of leading tokens the model declares (see :func:`prefix_hint`).
        name: the layer's name, for messages.

    Raises:
        LayoutError: the output is no map of the input (e.g. attention's ``(B, heads, N, d)``),
            or two readings remain possible and the model does not say which.

    Example:
        >>> decide_layout((2, 512, 7, 7), (224, 224)).kind
        'channels_first'
        >>> decide_layout((2, 8, 8, 8), (32, 32), channels_hint="channels_first").decided_by
        'model'
    """
    shape = tuple(int(s) for s in shape)
    spatial = tuple(int(s) for s in spatial)
    rank, nd = len(shape), len(spatial)
    body = shape[1:]
    fix = (f"pass reshape=callable turning {name}'s output (B, {', '.join(map(str, body))}) into "
           f"(B, C, {', '.join('…' * nd)})")
    if rank == nd + 2:
        possible = {}
        if _possible(shape[2:], spatial):
            possible[CHANNELS_FIRST] = Layout(CHANNELS_FIRST, body, shape[2:], shape[1])
        if _possible(shape[1:-1], spatial):
            possible[CHANNELS_LAST] = Layout(CHANNELS_LAST, body, shape[1:-1], shape[-1])
        keep = [r for r in possible.values() if _keeps_aspect(r.grid, spatial)]
        if len(keep) == 1:
            return keep[0]
        # Two readings fit (e.g. (B, 8, 8, 8)), or none keeps the input's aspect ratio (a fixed-size
        # adaptive pool on a non-square input): only the model can tell.
        if channels_hint in possible and (len(keep) == 2 or not keep):
            r = possible[channels_hint]
            return Layout(r.kind, r.shape, r.grid, r.channels, decided_by="model")
        if len(keep) == 2:
            raise LayoutError(
                f"the output of {name}, (B, {', '.join(map(str, body))}), can be read both as "
                f"channels-first (C={shape[1]}) and channels-last (C={shape[-1]}) for an input "
                f"of spatial size {spatial}, and the model does not say which; {fix}, e.g. "
                "reshape=lambda t: t.permute(0, 3, 1, 2) for channels-last"
            )
    if rank == 3 and nd == 2 and shape[2] > 1:
        n, d = shape[1], shape[2]
        tries = [prefix] if prefix is not None and 0 <= prefix < n else range(min(MAX_PREFIX, n - 1) + 1)
        for p in tries:
            grid = _token_grid(n - p, spatial)
            if grid is not None:
                return Layout(TOKENS, body, grid, d, prefix=p,
                              decided_by="model" if prefix is not None else "shape")
    attention = " (attention internals such as (B, heads, N, d) are not maps)" if rank == 4 else ""
    raise LayoutError(
        f"the output of {name}, (B, {', '.join(map(str, body))}), is not a map of an input of "
        f"spatial size {spatial}: it is neither (B, C, {', '.join('…' * nd)}), channels-last, nor "
        f"(B, N, D) tokens on a grid of the input's aspect ratio{attention}; {fix}"
    )


# --------------------------------------------------------------------------------------------
# What the model says
# --------------------------------------------------------------------------------------------

_CF_TYPES = (nn.modules.conv._ConvNd, nn.modules.batchnorm._NormBase, nn.GroupNorm,
             nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
             nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)


def _module_says(module: nn.Module, shape: Sequence[int]) -> str | None:
    """Which axis ``module`` treats as channels when its output has ``shape``, if it tells."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return CHANNELS_FIRST if module.out_channels == shape[1] else None
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return CHANNELS_FIRST if module.num_features == shape[1] else None
    if isinstance(module, nn.GroupNorm):
        return CHANNELS_FIRST if module.num_channels == shape[1] else None
    if isinstance(module, _CF_TYPES):
        return CHANNELS_FIRST
    if isinstance(module, nn.Linear):
        return CHANNELS_LAST if module.out_features == shape[-1] else None
    if (isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward
            and tuple(module.normalized_shape) == (shape[-1],)):
        return CHANNELS_LAST
    return None


def _module_takes(module: nn.Module, shape: Sequence[int]) -> str | None:
    """Which axis ``module`` would treat as channels if ``shape`` were its input, if it tells."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return CHANNELS_FIRST if module.in_channels == shape[1] else None
    if isinstance(module, nn.Linear):
        return CHANNELS_LAST if module.in_features == shape[-1] else None
    return _module_says(module, shape)


def channel_hint(model: nn.Module, name: str, shape: Sequence[int]) -> str | None:
    """Which axis of layer ``name``'s output holds the channels, as far as the model tells.

    The layer itself decides if it is a convolution, normalisation, pooling or linear layer;
    otherwise the last such layer registered inside it; for an element-wise layer (ReLU,
    dropout, identity), the last one registered before it; failing that, the first registered
    after it that would take this shape as input. Registration order usually follows the forward
    pass; this only breaks ties the shape leaves open.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        >>> channel_hint(net, "1", (1, 8, 8, 8))
        'channels_first'
    """
    names = [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    if name not in modules:
        return None

    def leaf(n: str) -> bool:
        return bool(n) and next(modules[n].children(), None) is None

    inside = [n for n in names if n == name or n.startswith(name + ".")]
    before = names[:names.index(name)]
    after = [n for n in names[names.index(name) + 1:] if n not in inside]
    for n in list(reversed(inside)) + list(reversed(before)):
        if n == name or leaf(n):
            said = _module_says(modules[n], shape)
            if said is not None:
                return said
    for n in after:
        if leaf(n):
            said = _module_takes(modules[n], shape)
            if said is not None:
                return said
    return None


_TOKEN_PARAMS = ("cls_token", "class_token", "dist_token", "distillation_token", "reg_token",
                 "register_tokens")


def prefix_hint(model: nn.Module) -> int | None:
    """How many tokens a ViT-style model puts before its patch tokens, if it declares them.

    timm models say so in ``num_prefix_tokens``; otherwise the class, distillation and register
    token parameters are counted (Hugging Face ``cls_token`` / ``distillation_token`` /
    ``register_tokens``, torchvision ``class_token``). ``None`` when the model has none of these.

    Example:
        >>> m = nn.Module(); m.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        >>> prefix_hint(m)
        1
    """
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    count, seen = 0, False
    for pname, p in model.named_parameters():
        if pname.rsplit(".", 1)[-1] in _TOKEN_PARAMS and p.ndim == 3:
            count += p.shape[1]
            seen = True
    return count if seen else None


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or "attention" in type(module).__name__.lower()


def attention_cores(model: nn.Module) -> list[str]:
    """Names of the attention modules of ``model`` (see :func:`attention_ancestor`)."""
    return [n for n, m in model.named_modules() if n and _is_attention(m) and not any(
        _is_attention(c) for c in m.modules() if c is not m)]


def attention_ancestor(model: nn.Module, name: str, cores: Sequence[str] | None = None) -> str | None:
    """The attention module strictly containing layer ``name``, or None.

    An attention module is one whose class is ``nn.MultiheadAttention`` or whose class name
    contains "Attention" and which holds no other such module (so a block named
    ``PartitionAttention`` that wraps norms, an attention core and an MLP is not one; the core is).
    Outputs inside it (queries, keys, values, attention weights, per-head tensors) are no maps.
    ``cores`` may pass :func:`attention_cores` computed once.

    Example:
        >>> class Attention(nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.qkv = nn.Linear(8, 24)
        >>> m = nn.Sequential(nn.LayerNorm(8), Attention())
        >>> attention_ancestor(m, "1.qkv"), attention_ancestor(m, "0")
        ('1', None)
    """
    for core in attention_cores(model) if cores is None else cores:
        if name.startswith(core + "."):
            return core
    return None


def block_norm(model: nn.Module, attention: str) -> str | None:
    """The first LayerNorm of the block holding ``attention`` (ViT's ``norm1``), if any."""
    parent = attention.rsplit(".", 1)[0] if "." in attention else ""
    modules = dict(model.named_modules())
    for n, m in modules[parent].named_children():
        if isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("LayerNorm"):
            return f"{parent}.{n}" if parent else n
    return None
