"""Guided Backpropagation (Springenberg et al. 2015) without touching the model's modules.

Every ReLU the model calls during the forward pass — ``nn.ReLU`` modules (in place or not),
``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms — is intercepted by a
:class:`torch.overrides.TorchFunctionMode` and computed by :class:`_SwitchableReLU`, whose
forward is exactly the ReLU (in place where the model asked for it) and whose backward is either
the ordinary ReLU gradient or, while guided mode is on, the *guided* one: it passes back only
positive gradient, at positions with positive input. So one forward pass serves both the
ordinary gradients a CAM method needs and the guided input gradient, the whole batch at once,
and the model's modules are never replaced.

.. warning::
   Guided Backpropagation and the Guided Grad-CAM variants fail the model-randomisation sanity
   check (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): their input-resolution
   detail mostly reflects the image (edges), not what the trained weights learned. Use them for
   sharper pictures, never as evidence of what the model relies on.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = ["GuidedReLUMode", "warn_unseen_activations"]

_RELU_FUNCS = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_INPLACE_FUNCS = {torch.relu_, torch.Tensor.relu_}
# Activations that are not ReLU: guided backprop gates ReLUs only, so their presence is worth a word.
_OTHER_ACTIVATIONS = (
    nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.SELU, nn.Mish, nn.Hardswish, nn.Softplus,
    nn.Tanh, nn.Sigmoid, nn.ReLU6, nn.CELU,
)


class _Switch:
    """Shared flag read by every intercepted ReLU's backward."""

    def __init__(self) -> None:
        self.guided = False


class _SwitchableReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, inplace: bool, switch: _Switch) -> Tensor:  # type: ignore[override]
        if inplace:
            out = x.relu_()
            ctx.mark_dirty(x)
        else:
            out = x.relu()
        ctx.save_for_backward(out)
        ctx.switch = switch
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        grad_in = grad * (out > 0)
        if ctx.switch.guided:
            grad_in = grad_in.clamp(min=0)
        return grad_in, None, None


class GuidedReLUMode(TorchFunctionMode):
    """Intercept every ReLU call; ``mode.switch.guided`` selects the backward rule.

    ``mode.count`` counts the ReLU calls seen, so callers can tell a model with no visible ReLU.

    Example:
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> with GuidedReLUMode() as mode:
        ...     loss = (torch.relu(x) * torch.tensor([1.0, -1.0])).sum()
        >>> torch.autograd.grad(loss, x, retain_graph=True)[0].tolist()   # plain ReLU gradient
        [1.0, -1.0]
        >>> mode.switch.guided = True
        >>> torch.autograd.grad(loss, x)[0].tolist()                      # negative gradient blocked
        [1.0, 0.0]
    """

    def __init__(self) -> None:
        super().__init__()
        self.switch = _Switch()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _RELU_FUNCS or func in _RELU_INPLACE_FUNCS:
            x = args[0] if args else kwargs["input"]
            inplace = func in _RELU_INPLACE_FUNCS or bool(
                kwargs.get("inplace", args[1] if len(args) > 1 else False)
            )
            if isinstance(x, Tensor) and torch.is_grad_enabled() and x.requires_grad:
                self.count += 1
                return _SwitchableReLU.apply(x, inplace, self.switch)
        return func(*args, **kwargs)


def warn_unseen_activations(model: nn.Module, relu_calls: int) -> None:
    """Warn when guided backprop cannot gate what the model uses instead of ReLU."""
    others = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _OTHER_ACTIVATIONS)})
    if relu_calls == 0:
        warnings.warn(
            f"guided backprop saw no ReLU call in {type(model).__name__}'s forward pass "
            "(a scripted model, or relu written as clamp/maximum); the result is the plain "
            "input gradient",
            stacklevel=3,
        )
    if others:
        warnings.warn(
            f"{type(model).__name__} also uses {', '.join(others)}; guided backprop gates ReLUs "
            "only, these pass gradients back unguided",
            stacklevel=3,
        )
