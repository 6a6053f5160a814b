"""Finding layers by name, tapping their outputs, and leaving the model exactly as it was.

Everything that touches a user's model lives here, so that the promise "explaining leaves no
trace" is kept in one place:

* :func:`resolve_layers` turns a dotted name, a module or a list of either into ``(name, module)``
  pairs, and picks a sensible layer when none is given (:func:`auto_layer`).
* :class:`LayerTap` records a layer's true output during one forward pass. It hands the rest of
  the network a *copy*, so an in-place activation after the layer (``nn.ReLU(inplace=True)``)
  cannot overwrite the values we explain, and gradients are taken w.r.t. the layer's real output.
* :func:`model_guard` removes every hook we add and restores buffers (BatchNorm running statistics
  of a model in train mode) even when the forward pass raises.
"""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

__all__ = [
    "LayerSpec",
    "LayerTap",
    "auto_layer",
    "model_guard",
    "resolve_layers",
    "tokens_to_grid",
]


def _closest_names(model: nn.Module, name: str, n: int = 5) -> list[str]:
    names = [k for k, _ in model.named_modules() if k]
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.4)
    if not close:  # fall back to names sharing the last component, then to the tail of the list
        last = name.rsplit(".", 1)[-1]
        close = [k for k in names if k.rsplit(".", 1)[-1] == last][:n] or names[-n:]
    return close


def resolve_layers(model: nn.Module, layer: LayerSpec) -> list[tuple[str, nn.Module]]:
    """Turn a layer specification into ``[(dotted_name, module), ...]``.

    Args:
        model: the network.
        layer: a dotted name from ``model.named_modules()`` (``"layer4"``, ``"features.28"``),
            a module object of ``model``, or a list of either. ``None`` is resolved by
            :func:`auto_layer`, which needs an input, so it is rejected here.

    Raises:
        ValueError: the name does not exist (the message lists the closest names), or the module
            is not part of ``model``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        >>> resolve_layers(net, "0")[0][0]
        '0'
    """
    if layer is None:
        raise ValueError("resolve_layers needs a layer; use auto_layer(model, x) to pick one")
    specs = [layer] if isinstance(layer, str | nn.Module) else list(layer)
    if not specs:
        raise ValueError("an empty list of layers was given; name at least one layer")
    modules = dict(model.named_modules())
    by_id = {id(m): k for k, m in model.named_modules(remove_duplicate=False)}
    out: list[tuple[str, nn.Module]] = []
    for spec in specs:
        if isinstance(spec, str):
            if spec not in modules or spec == "":
                close = ", ".join(repr(c) for c in _closest_names(model, spec))
                raise ValueError(
                    f"no layer named {spec!r} in {type(model).__name__}. Closest names: {close}. "
                    "List them all with [n for n, _ in model.named_modules()]."
                )
            out.append((spec, modules[spec]))
        elif isinstance(spec, nn.Module):
            if id(spec) not in by_id:
                raise ValueError(
                    f"the module {type(spec).__name__} given as layer is not part of "
                    f"{type(model).__name__}; pass a module of this model or its dotted name"
                )
            if spec is model:
                raise ValueError("the layer is the whole model; choose an inner layer")
            out.append((by_id[id(spec)], spec))
        else:
            raise TypeError(f"a layer is a dotted name or an nn.Module, not {type(spec).__name__}")
    return out


def tokens_to_grid(
    tokens: Tensor, spatial: Sequence[int], max_prefix: int = 16
) -> tuple[Tensor, int]:
    """Reshape ViT-style tokens ``(B, N, D)`` to a grid ``(B, D, h, w)``.

    The grid is inferred from the number of tokens and the input's aspect ratio: the first
    ``p`` tokens (class token, register tokens; the smallest ``p`` that works) are dropped and the
    remaining ``N - p`` must form an ``h × w`` grid with ``h / w == H / W``.

    Returns:
        ``(grid, p)``: the ``(B, D, h, w)`` tensor and the number of prefix tokens dropped.

    Example:
        >>> g, p = tokens_to_grid(torch.zeros(2, 1 + 14 * 14, 64), (224, 224))
        >>> tuple(g.shape), p
        ((2, 64, 14, 14), 1)
    """
    if tokens.ndim != 3:
        raise ValueError(f"token output must be (B, N, D), got shape {tuple(tokens.shape)}")
    if len(spatial) != 2:
        raise ValueError("token grids are inferred for 2-D inputs only; pass reshape= yourself")
    b, n, d = tokens.shape
    height, width = spatial
    for p in range(0, min(max_prefix, n - 1) + 1):
        m = n - p
        # h * w = m and h * W = w * H  =>  h = sqrt(m * H / W)
        h = round(math.sqrt(m * height / width))
        if h > 0 and m % h == 0:
            w = m // h
            if h * width == w * height:
                grid = tokens[:, p:, :].transpose(1, 2).reshape(b, d, h, w)
                return grid, p
    raise ValueError(
        f"cannot arrange {n} tokens on a grid with the input's aspect {height}x{width} "
        f"(tried dropping 0..{max_prefix} prefix tokens); pass reshape=callable returning (B, C, h, w)"
    )


@dataclass
class LayerTap:
    """Record the output of one layer during a forward pass.

    The hook stores the layer's output tensor (making it a gradient-tracking leaf if the layers
    before it are frozen) and returns a clone to the rest of the network, so later in-place
    operations modify the clone and never the recorded activation.
    """

    name: str
    module: nn.Module
    outputs: list[Tensor] = field(default_factory=list)

    def hook(self, module: nn.Module, inputs: tuple, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(
                f"layer {self.name!r} ({type(module).__name__}) returns {type(output).__name__}, "
                "not a tensor; choose a layer whose output is a tensor"
            )
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_(True)  # frozen layers before this one
        self.outputs.append(output)
        return output.clone()

    @property
    def output(self) -> Tensor:
        if not self.outputs:
            raise RuntimeError(
                f"layer {self.name!r} did not run during the forward pass; choose a layer that the "
                "model's forward actually calls"
            )
        if len(self.outputs) > 1:
            raise ValueError(
                f"layer {self.name!r} ran {len(self.outputs)} times in one forward pass (a shared "
                "module); choose a module that runs once, e.g. its parent block"
            )
        return self.outputs[0]


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Context in which hooks may be added to ``model``; on exit the model is as it was.

    Yields a list to which the caller appends hook handles; all are removed on exit. If any
    module is in train mode its buffers (BatchNorm running statistics, counters) are restored,
    since a forward pass in train mode updates them. Parameters' ``requires_grad`` and ``.grad``
    are never touched by lamcam, so nothing needs restoring there.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    saved: list[tuple[Tensor, Tensor]] = []
    if any(m.training for m in model.modules()):
        saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def auto_layer(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """Pick the layer a CAM method should explain when none is named.

    Runs one forward pass on the first sample of ``x`` (without gradients) and returns the last
    module, in execution order, whose output has the input's rank and more than one spatial
    position, i.e. the last feature map before global pooling and the head. Modules that run more
    than once (shared activations) are skipped. Token models (``(B, N, D)`` outputs) have no
    unambiguous choice: name the layer, e.g. ``"blocks.11.norm1"``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> auto_layer(net, torch.zeros(1, 3, 16, 16))[0]
        '1'
    """
    fired: list[tuple[str, tuple[int, ...]]] = []
    counts: dict[str, int] = {}
    modules = dict(model.named_modules())

    def make(name: str) -> Callable:
        def hook(_m: nn.Module, _i: tuple, out: object) -> None:
            counts[name] = counts.get(name, 0) + 1
            if isinstance(out, Tensor):
                fired.append((name, tuple(out.shape)))

        return hook

    with model_guard(model) as handles:
        for name, mod in modules.items():
            if name:
                handles.append(mod.register_forward_hook(make(name)))
        with torch.no_grad():
            model(x[:1])
    rank = x.ndim
    candidates = [
        n for n, s in fired if len(s) == rank and math.prod(s[2:]) > 1 and counts[n] == 1
    ]
    if not candidates:
        tokens = [n for n, s in fired if len(s) == 3 and s[1] > 1]
        hint = f" Token-shaped layers: {', '.join(tokens[-4:])}." if tokens else ""
        raise ValueError(
            f"could not pick a layer automatically: no layer of {type(model).__name__} outputs a "
            f"feature map of rank {rank} with spatial extent. Name one with layer=...{hint}"
        )
    name = candidates[-1]
    return name, modules[name]
