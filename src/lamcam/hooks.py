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
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lamcam.layout import (
    TOKENS,
    Layout,
    LayoutError,
    _token_grid,
    attention_ancestor,
    attention_cores,
    channel_hint,
    decide_layout,
    prefix_hint,
)
from lamcam.targets import TopK, extract_logits, no_logits_error

LayerSpec = str | nn.Module | Sequence[str | nn.Module] | None

__all__ = [
    "LayerSpec",
    "LayerTap",
    "auto_layer",
    "model_guard",
    "model_lock",
    "resolve_layers",
    "tokens_to_grid",
    "zero_head_hint",
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
    if not isinstance(layer, str | nn.Module | Sequence) or isinstance(layer, bytes):
        raise TypeError(
            f"a layer is a dotted name (e.g. 'layer4'), an nn.Module of the model, or a list of "
            f"them, not {type(layer).__name__} {layer!r}"
            + (f"; for the module at index {layer} of a Sequential pass the name '{layer}'"
               if isinstance(layer, int) and not isinstance(layer, bool) else "")
        )
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

    The first ``p`` tokens (class token, register tokens; the smallest ``p`` that works) are
    dropped and the remaining ``N - p`` must form the ``h × w`` grid that one integer patch stride
    makes of the input (each size the floor or ceiling of the input's size / stride).

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
    _, n, d = tokens.shape
    for p in range(0, min(max_prefix, n - 1) + 1):
        grid = _token_grid(n - p, spatial)
        if grid is not None:
            return Layout(TOKENS, (n, d), grid, d, prefix=p).to_map(tokens), p
    raise ValueError(
        f"cannot arrange {n} tokens on a grid of the {spatial[0]}x{spatial[1]} input "
        f"(tried dropping 0..{max_prefix} prefix tokens); pass reshape=callable returning (B, C, h, w)"
    )


@dataclass
class LayerTap:
    """Record the output of one layer during a forward pass.

    The hook stores the layer's output tensor (making it a gradient-tracking leaf if the layers
    before it are frozen) and returns a clone to the rest of the network, so later in-place
    operations modify the clone and never the recorded activation. It acts only on the thread
    that created the tap: other threads' forward passes of the same model pass untouched.
    """

    name: str
    module: nn.Module
    outputs: list[Tensor] = field(default_factory=list)
    thread: int = field(default_factory=threading.get_ident)

    def hook(self, module: nn.Module, inputs: tuple, output: object) -> Tensor | None:
        if threading.get_ident() != self.thread:  # another thread's forward pass of this model
            return None
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


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock lamcam holds on ``model`` while a train-mode forward pass may change it.

    One per model object, created on first use; hold it yourself to keep your own train-mode
    forward passes from interleaving with lamcam's.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Context in which hooks may be added to ``model``; on exit the model is as it was.

    Yields a list to which the caller appends hook handles; all are removed on exit. If any
    module is in train mode its buffers (BatchNorm running statistics, counters) are restored,
    since a forward pass in train mode updates them. Parameters' ``requires_grad`` and ``.grad``
    are never touched by lamcam, so nothing needs restoring there.

    Threads: lamcam's hooks act only on the thread that registered them (:class:`LayerTap`), so
    explanations of an eval-mode model run concurrently. A model with any module in train mode
    is explained under :func:`model_lock`: saving and restoring buffers must not interleave with
    another thread's forward pass, so such calls on one model run one at a time.
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []
    saved: list[tuple[Tensor, Tensor]] = []
    training = any(m.training for m in model.modules())
    lock = model_lock(model) if training else contextlib.nullcontext()
    with lock:
        if training:
            saved = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            yield handles
        finally:
            for h in handles:
                h.remove()
            with torch.no_grad():
                for buf, copy in saved:
                    buf.copy_(copy)


_PASS_THROUGH = ("Identity", "Permute", "Flatten")


def _is_layer_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


@dataclass
class _Probe:
    """What one forward and backward pass on the first image says about every module."""

    order: list[str] = field(default_factory=list)  # modules with a tensor output, firing order
    outputs: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    passes_on: dict[str, str] = field(default_factory=dict)  # container -> child whose output it returns
    fed_by: dict[str, str] = field(default_factory=dict)  # module -> module whose output is its input


def _probe(model: nn.Module, x: Tensor, score: Callable[[object], Tensor]) -> tuple[_Probe, Tensor]:
    """Run ``model`` on ``x`` recording every module's output; return the probe and the score.

    The caller holds :func:`model_guard` until it has taken gradients of the score: restoring
    train-mode buffers earlier would invalidate the graph.

    Each hook hands the network a copy of the module's output (as :class:`LayerTap` does), so the
    recorded outputs stay gradient leaves of the score whatever in-place operations follow, and
    the copies tell which module returned which tensor.
    """
    pr = _Probe()
    handed: dict[int, tuple[str, Tensor, int]] = {}  # id(copy) -> (module, copy, version)
    thread = threading.get_ident()

    def make(name: str) -> Callable:
        def hook(_m: nn.Module, inputs: tuple, out: object) -> object:
            if threading.get_ident() != thread:
                return None
            pr.counts[name] = pr.counts.get(name, 0) + 1
            if not isinstance(out, Tensor) or not out.is_floating_point():
                return None
            src = handed.get(id(out))
            if src is not None and src[1] is out and src[0].startswith(name + "."):
                pr.passes_on[name] = src[0]
            first = inputs[0] if inputs else None
            if isinstance(first, Tensor):
                feed = handed.get(id(first))
                if feed is not None and feed[1] is first and feed[2] == first._version:
                    pr.fed_by[name] = feed[0]
            leaf = out if out.requires_grad else out.detach().requires_grad_(True)
            pr.order.append(name)
            pr.outputs[name] = leaf
            copy = leaf.clone()
            handed[id(copy)] = (name, copy, copy._version)
            return copy

        return hook

    handles = [mod.register_forward_hook(make(name)) for name, mod in model.named_modules() if name]
    try:
        with torch.enable_grad():
            s = score(model(x))
    finally:
        for h in handles:
            h.remove()
    return pr, s


def auto_layer(
    model: nn.Module, x: Tensor, target: object = None
) -> tuple[str, nn.Module, Layout]:
    """Pick the layer a CAM method should explain when none is named.

    One forward and one backward pass on the first image (the model is left as it was) decide:

    1. **Candidates**: modules that run once and whose output is a map of the image, as
       :func:`lamcam.layout.decide_layout` reads it (channels-first, channels-last or tokens)
       with more than one position; never a module inside an attention block.
    2. **Gradient**: the candidates whose map receives gradient from the explained score (the
       predicted class, or ``target`` when it is a callable) at some position. This drops the
       last blocks of a ViT whose head reads the class token: after the last attention, the patch
       tokens never reach the head.
    3. **The last of them** in execution order: the last feature map before pooling in a CNN, the
       last block's first norm in a ViT / DeiT / DINOv2.
    4. **Tidy**: if that is a final per-token LayerNorm, identity or permute, the stage it
       normalises (Swin: the last stage, channels-last, read as such); a container of stages (a
       ``Sequential`` whose children change resolution and are blocks themselves) is named by its
       last stage (``layers.3``, not ``layers``).

    Returns:
        ``(name, module, layout)``.

    Raises:
        ValueError: no module outputs a map, or the score's gradient is exactly zero at every
            candidate (e.g. an all-zero classifier head).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(8, 2))
        >>> auto_layer(net, torch.rand(1, 3, 16, 16))[0]
        '1'
    """
    def score(outputs: object) -> Tensor:
        if callable(target) and not isinstance(target, Tensor | TopK):
            return target(outputs).sum()
        logits = extract_logits(outputs)
        if logits is None:
            raise no_logits_error(outputs)
        return logits.amax(1).sum()

    batch_norm_training = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                              for m in model.modules())
    probe_x = x if batch_norm_training else x[:1]  # BatchNorm in train mode needs a batch
    with model_guard(model):
        return _choose(model, x, *_probe(model, probe_x, score))


def _choose(model: nn.Module, x: Tensor, pr: _Probe, s: Tensor) -> tuple[str, nn.Module, Layout]:
    """:func:`auto_layer`'s steps 1-4 on a probe pass whose score ``s`` is still differentiable."""
    modules = dict(model.named_modules())
    spatial = tuple(x.shape[2:])
    prefix = prefix_hint(model)
    layouts: dict[str, Layout] = {}
    cores = attention_cores(model)
    for name in pr.order:
        out = pr.outputs[name]
        if pr.counts[name] != 1 or attention_ancestor(model, name, cores) is not None:
            continue
        try:
            lay = decide_layout(out.shape, spatial, prefix=prefix, name=repr(name))
        except LayoutError:
            try:
                lay = decide_layout(out.shape, spatial, prefix=prefix, name=repr(name),
                                    channels_hint=channel_hint(model, name, out.shape))
            except LayoutError:
                continue
        if math.prod(lay.grid) > 1:
            layouts[name] = lay
    if not layouts:
        tokens = [n for n in pr.order if pr.outputs[n].ndim == 3][-4:]
        hint = f" Token-shaped layers: {', '.join(tokens)}." if tokens else ""
        raise ValueError(
            f"could not pick a layer automatically: no layer of {type(model).__name__} outputs a "
            f"map of the {len(spatial)}-D input (channels-first, channels-last or tokens on a grid). "
            f"Name one with layer=... and, if needed, reshape=...{hint}"
        )
    names = list(layouts)
    grads = torch.autograd.grad(s, [pr.outputs[n] for n in names], allow_unused=True)
    alive = []
    for n, g in zip(names, grads, strict=True):
        if g is not None and bool((layouts[n].to_map(g.detach()) != 0).any()):
            alive.append(n)
    if not alive:
        raise ValueError(
            f"could not pick a layer automatically: the score's gradient is exactly zero at every "
            f"layer of {type(model).__name__} that outputs a map. {zero_head_hint(model)}"
        )
    name = alive[-1]
    # A final per-token norm / identity / permute: explain what it normalises (Swin's last stage).
    if name == names[-1]:
        while (type(modules[name]).__name__ in _PASS_THROUGH or _is_layer_norm(modules[name])) \
                and pr.fed_by.get(name) in alive:
            name = pr.fed_by[name]
    # The outermost module returning that tensor; a container of stages is named by its last stage.
    parents = {child: parent for parent, child in pr.passes_on.items()}
    while parents.get(name) in layouts:
        name = parents[name]
    while isinstance(modules[name], nn.Sequential | nn.ModuleList) and name in pr.passes_on:
        kids = [f"{name}.{k}" for k, _ in modules[name].named_children()]
        shapes = {tuple(pr.outputs[k].shape) for k in kids if k in pr.outputs}
        child = pr.passes_on[name]
        if len(shapes) < 2 or child not in kids or child not in layouts \
                or next(modules[child].children(), None) is None:  # a layer, not a stage
            break
        name = child
    return name, modules[name], layouts[name]


def zero_head_hint(model: nn.Module) -> str:
    """Why every gradient may be zero: an all-zero classifier head, if the model has one."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and not bool(linears[-1][1].weight.detach().any()):
        n = linears[-1][0]
        return (f"Its classifier head {n!r} has all-zero weights (torchvision's ViT initialises its "
                "head to zeros), so every gradient is zero: load trained weights, or initialise the "
                f"head first, e.g. torch.nn.init.normal_(model.{n}.weight, std=0.02).")
    return ("Check that the model is trained (or at least randomly initialised) and that the "
            "target depends on the image.")
