"""Model-randomisation sanity check (Adebayo et al., NeurIPS 2018), cascading from the top.

The trained model's parameters are replaced by random ones layer by layer, from the output
towards the input, on a *copy* of the model (the user's model is never touched); after each step
the maps are recomputed and compared with the trained model's by Spearman rank correlation. A
method that explains the model must lose its correlation as the weights are randomised; guided
backprop famously does not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["cascading_randomization", "spearman"]


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share the mean of their positions), float64, over the last dim."""
    x = x.double()
    order = torch.argsort(x, dim=-1, stable=True)
    ranks = torch.empty_like(x)
    ranks.scatter_(-1, order, torch.arange(x.shape[-1], dtype=torch.float64).expand_as(x).clone())
    out = torch.empty_like(ranks)
    for i in range(x.shape[0]):  # average tied ranks
        vals, inverse = torch.unique(x[i], return_inverse=True)
        sums = torch.zeros(len(vals), dtype=torch.float64).index_add_(0, inverse, ranks[i])
        counts = torch.zeros(len(vals), dtype=torch.float64).index_add_(
            0, inverse, torch.ones_like(ranks[i]))
        out[i] = (sums / counts)[inverse]
    return out


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of ``(N, ...)`` tensors (flattened), ``(N,)``.

    Tied values get average ranks. A constant row has no defined correlation: NaN.

    Example:
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[10.0, 20.0, 30.0, 35.0]]))
        tensor([1.], dtype=torch.float64)
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]]))
        tensor([-1.], dtype=torch.float64)
    """
    ra = _ranks(a.detach().flatten(1))
    rb = _ranks(b.detach().flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(den > 0, (ra * rb).sum(1) / torch.where(den > 0, den, 1.0), torch.nan)


def _reinit(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if p.ndim > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif "weight" in name:  # norm scales
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def cascading_randomization(
    model: nn.Module,
    explain: Callable[[nn.Module, Tensor], Tensor],
    images: Tensor,
    layers: Sequence[str] | None = None,
    *,
    seed: int = 0,
    absolute: bool = True,
) -> list[tuple[str, float]]:
    """Mean Spearman correlation of maps after randomising each layer cumulatively, top first.

    Args:
        model: the trained model (copied; never modified).
        explain: ``(model, images) -> maps (N, ...)``, e.g.
            ``lambda m, x: lamcam.GradCAM(m, "layer3")(x, target=t).maps``.
        layers: names of the modules to randomise, in order (top first); default: every module
            with parameters of its own, from the last registered to the first.
        absolute: compare ``|maps|`` (the usual choice for signed gradient maps).

    Returns:
        ``[("trained", 1.0), (layer, mean ρ), ...]`` — the trained model's maps against themselves
        first, then after each cumulative randomisation.
    """
    work = copy.deepcopy(model)
    if layers is None:
        layers = [n for n, m in work.named_modules()
                  if n and any(True for _ in m.parameters(recurse=False))][::-1]
    modules = dict(work.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"unknown layers {missing}; use names from model.named_modules()")
    g = torch.Generator().manual_seed(seed)

    def maps_of(m: nn.Module) -> Tensor:
        out = explain(m, images).detach()
        return out.abs() if absolute else out

    ref = maps_of(work)
    curve = [("trained", float(torch.nanmean(spearman(ref, ref))))]
    for name in layers:
        _reinit(modules[name], g)
        curve.append((name, float(torch.nanmean(spearman(ref, maps_of(work))))))
    return curve
