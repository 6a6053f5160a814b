"""The path-integration engine shared by LAM, Integrated Gradients, saliency and input × gradient.

``attr_i = ∫₀¹ ∂D(F(γ(α)))/∂γ_i · dγ_i/dα dα`` for a scalar objective D of the network output,
discretised by a quadrature:

* ``"riemann"`` — the official LAM discretisation (the default): the network is evaluated at
  ``γ_k = γ(k/m)`` for k = 1..m only, and ``attr = Σ_k ∇D(γ_k) ⊙ (γ_k − γ_{k−1})``.
* ``"trapezoid"`` — ``Σ_k ½ (∇D(γ_{k−1}) + ∇D(γ_k)) ⊙ (γ_k − γ_{k−1})``, k = 1..m (m + 1 points).
* ``"gauss-legendre"`` — m Gauss–Legendre nodes on [0, 1] with the path's analytic derivative:
  ``Σ_i w_i ∇D(γ(α_i)) ⊙ γ'(α_i)``.

Path points are fed to the network in chunks of ``batch_size`` per forward/backward pass; only the
gradient w.r.t. the points is computed (never parameter gradients); nothing is kept beyond the
running sum. Completeness: ``Σ attr = D(F(γ(1))) − D(F(γ(0)))`` for the exact integral; the
relative error of a discretisation against it is reported.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lamcam.hooks import model_guard

__all__ = [
    "QUADRATURES", "PathIntegral", "auto_batch_size", "batch_for_budget", "integrate_path", "plan",
    "probe_point_bytes",
]

QUADRATURES = ("riemann", "trapezoid", "gauss-legendre")

Objective = Callable[[Tensor], Tensor]  # network outputs (N, ...) -> (N,)


@dataclass
class PathIntegral:
    """Result of :func:`integrate_path`.

    Attributes:
        attribution: ``x.shape``, the integrated attribution.
        output: the network's output at the input ``γ(1)`` (detached), or ``None`` if the
            quadrature never evaluates it.
        objective_input, objective_baseline: ``D(F(γ(1)))`` and ``D(F(γ(0)))``.
        completeness_error: ``|Σ attr − (D(F(γ(1))) − D(F(γ(0))))| / |D(F(γ(1))) − D(F(γ(0)))|``.
        passes: network evaluations with gradients (path points).
    """

    attribution: Tensor
    output: Tensor | None
    objective_input: float
    objective_baseline: float
    completeness_error: float
    passes: int


def plan(quadrature: str, steps: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Evaluation points and how each point's gradient is weighted.

    Returns ``(alphas, terms)``: the α of each network evaluation, and for each evaluation a
    ``(kind, data)`` description: ``("diff", [(weight, a_from, a_to), ...])`` — multiply the
    gradient by ``weight · (γ(a_to) − γ(a_from))`` for each listed segment — or
    ``("deriv", [weight])`` — multiply by ``weight · γ'(α)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    m = steps
    if quadrature == "riemann":
        alphas = np.arange(1, m + 1) / m
        terms = [("diff", [(1.0, (k - 1) / m, k / m)]) for k in range(1, m + 1)]
    elif quadrature == "trapezoid":
        alphas = np.arange(0, m + 1) / m
        terms = []
        for k in range(m + 1):
            seg = []
            if k > 0:
                seg.append((0.5, (k - 1) / m, k / m))
            if k < m:
                seg.append((0.5, k / m, (k + 1) / m))
            terms.append(("diff", seg))
    elif quadrature == "gauss-legendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        alphas = (nodes + 1) / 2
        terms = [("deriv", [w / 2]) for w in weights]
    else:
        raise ValueError(f"unknown quadrature {quadrature!r}; choose one of {QUADRATURES}")
    return alphas, terms


def _params_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def probe_point_bytes(model: nn.Module, x: Tensor) -> tuple[Tensor, int]:
    """One forward pass at batch 1 without gradients: ``(output, estimated bytes per path point)``.

    The estimate is the sum of every leaf module's output size plus the input, times 3 for what
    autograd keeps and the backward's temporaries.
    """
    total = 0

    thread = threading.get_ident()

    def hook(_m: nn.Module, _i: tuple, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor) and threading.get_ident() == thread:
            total += out.numel() * out.element_size()

    with model_guard(model) as handles:
        handles.extend(m.register_forward_hook(hook) for m in model.modules()
                       if not list(m.children()))
        with torch.no_grad():
            out = model(x.unsqueeze(0))
    return out, 3 * (total + x.numel() * x.element_size())


def batch_for_budget(point_bytes: int, limit: int, memory_budget: float = 1.0e9) -> int:
    """Path points per pass so that one forward/backward stays within ``memory_budget`` bytes."""
    return int(max(1, min(limit, memory_budget // max(point_bytes, 1))))


def auto_batch_size(model: nn.Module, x: Tensor, limit: int, memory_budget: float = 1.0e9) -> int:
    """:func:`batch_for_budget` from a probe pass (:func:`probe_point_bytes`)."""
    return batch_for_budget(probe_point_bytes(model, x)[1], limit, memory_budget)


def _chunks(n: int, size: int) -> Iterator[range]:
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def integrate_path(
    model: nn.Module,
    path,  # noqa: ANN001 — StraightPath | BlurPath | anything with points/derivative/start
    objective: Objective,
    *,
    steps: int = 50,
    quadrature: str = "riemann",
    batch_size: int | None = None,
    memory_budget: float = 1.0e9,
    progress: bool | str | None = None,
    completeness: bool = True,
) -> PathIntegral:
    """Integrate ``∇D(F(γ)) · dγ`` along ``path``.

    Args:
        model: the network; called on ``(n, *x.shape)`` batches of path points.
        path: gives ``points(alphas)``, ``derivative(alphas)`` and ``start()``
            (see :mod:`lamcam.paths`).
        objective: ``outputs (n, ...) -> (n,)`` scalar per path point.
        steps, quadrature: see the module docstring.
        batch_size: path points per pass; ``None`` picks the largest that fits
            ``memory_budget`` bytes (estimated by :func:`auto_batch_size`).
        progress: show a tqdm bar (a string is used as its description); ``None`` (default):
            iff stderr is a terminal (:func:`lamcam._progress.show`).
        completeness: evaluate ``D(F(γ(0)))`` (one extra forward pass without gradients) to
            report the completeness error.

    Example:
        >>> from lamcam.paths import StraightPath
        >>> _ = torch.manual_seed(0)  # a random net whose output sum nearly cancels has no
        >>> net = nn.Conv2d(1, 1, 3, padding=1, bias=False)  # meaningful relative error
        >>> x = torch.rand(1, 4, 4)
        >>> r = integrate_path(net, StraightPath(x), lambda y: y.sum((1, 2, 3)), steps=3)
        >>> r.completeness_error < 1e-5   # a linear network: exact for any step count
        True
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("path attributions need autograd, which torch.inference_mode() disables; "
                           "call lamcam outside the inference_mode block (torch.no_grad() is fine)")
    x = path.x
    alphas, terms = plan(quadrature, steps)
    n = len(alphas)
    if batch_size is None:
        batch_size = auto_batch_size(model, x, n, memory_budget)
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (or None to choose from the memory "
                         f"budget), got {batch_size!r}")
    with model_guard(model):  # train-mode buffers are restored; see lamcam.hooks.model_guard
        return _integrate(model, path, objective, alphas, terms, batch_size, quadrature, progress,
                          completeness)


def _integrate(model: nn.Module, path, objective: Objective, alphas: np.ndarray,  # noqa: ANN001
               terms: list, batch_size: int, quadrature: str, progress: bool | str | None,
               completeness: bool) -> PathIntegral:
    """:func:`integrate_path` once its arguments are checked and the model is guarded."""
    x = path.x
    n = len(alphas)
    acc = torch.zeros_like(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    output = None
    obj_input = math.nan
    nan_seen = False
    bar = None
    from lamcam._progress import show

    if show(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=progress if isinstance(progress, str) else quadrature,
                   unit="step", leave=False)
    cache: dict[float, Tensor] = {}

    def point(a: float) -> Tensor:  # γ(a), for the difference terms (cached for reuse)
        if a not in cache:
            cache[a] = path.points(torch.tensor([a], dtype=torch.float64))[0]
        return cache[a]

    try:
        with torch.enable_grad():
            for idx in _chunks(n, batch_size):
                a = torch.as_tensor(alphas[idx.start:idx.stop], dtype=torch.float64)
                pts = path.points(a).detach().requires_grad_(True)
                out = model(pts)
                obj = objective(out)
                if obj.shape != (len(idx),):
                    raise ValueError(
                        f"the objective must return one value per path point, shape ({len(idx)},); "
                        f"got {tuple(obj.shape)}"
                    )
                if not obj.requires_grad:
                    raise ValueError("the objective's values do not depend on the model's output "
                                     "(no gradient); compute them from the output it receives")
                (grad,) = torch.autograd.grad(obj.sum(), pts)
                if bool(torch.isnan(grad).any()):
                    nan_seen = True
                    grad = torch.nan_to_num(grad, nan=0.0)
                derivs = None
                for j, i in enumerate(idx):
                    kind, data = terms[i]
                    g = grad[j].to(acc.dtype)
                    if kind == "diff":
                        for w, a0, a1 in data:
                            acc += w * g * (point(a1) - point(a0)).to(acc.dtype)
                    else:
                        if derivs is None:
                            derivs = path.derivative(a)
                        acc += data[0] * g * derivs[j].to(acc.dtype)
                    if alphas[i] == 1.0:
                        output = out[j].detach()
                        obj_input = float(obj[j].detach())
                # drop cached points no later chunk needs
                lo = float(alphas[idx.stop - 1]) if quadrature != "gauss-legendre" else 0.0
                for key in [k for k in cache if k < lo - 1e-12]:
                    del cache[key]
                if bar is not None:
                    bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    if nan_seen:
        warnings.warn("some gradients were NaN (e.g. sqrt at 0 in the gradient detector) and "
                      "were set to 0, as LAM does", stacklevel=3)
    obj_base = math.nan
    err = math.nan
    if completeness:
        with torch.no_grad():
            if math.isnan(obj_input):
                out1 = model(x.unsqueeze(0))
                output = out1[0]
                obj_input = float(objective(out1)[0])
            obj_base = float(objective(model(path.start().unsqueeze(0)))[0])
        delta = obj_input - obj_base
        total = float(acc.sum())
        err = abs(total - delta) / abs(delta) if delta != 0 else (0.0 if total == 0 else math.inf)
    return PathIntegral(acc.to(x.dtype), output, obj_input, obj_base, err, n)
