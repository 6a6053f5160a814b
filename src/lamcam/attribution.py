"""Input attributions for classifiers on the path engine: Integrated Gradients, saliency, input × gradient.

All three are path integrals (:func:`lamcam.integrate.integrate_path`) of the target class score:

* Integrated Gradients (Sundararajan et al. 2017): the straight path from a baseline (black, the
  image blurred with σ, or any tensor) to the image, ``steps`` points.
* input × gradient: one right-Riemann step of the straight path from black, ``∇S(x) ⊙ x``.
* saliency (Simonyan et al. 2014): one right-Riemann step from the baseline ``x − 1``, i.e. the
  plain gradient ``∇S(x)``; the usual picture is its absolute maximum over channels.

Results are :class:`lamcam.cam.CAMResult` with ``kind == "gradient"``: ``maps`` is
``(B, C, *spatial)`` signed attribution.

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> r = IntegratedGradients(net, steps=16, progress=False)(torch.rand(2, 3, 8, 8), target=1)
    >>> r.maps.shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lamcam._progress import show
from lamcam.cam import CAMResult
from lamcam.hooks import model_guard
from lamcam.integrate import integrate_path
from lamcam.paths import StraightPath, blur, gaussian_kernel
from lamcam.targets import Target, resolve_target

__all__ = ["InputXGradient", "IntegratedGradients", "Saliency"]


class IntegratedGradients:
    """Integrated Gradients along the straight path from ``baseline`` to each image.

    Args:
        model: a classifier ``(B, C, *S) -> (B, num_classes)``.
        baseline: "black" (zeros, default), "blur" (the image blurred with ``sigma``, 2-D only),
            or a tensor broadcastable to one image.
        steps, quadrature, batch_size: see :func:`lamcam.integrate.integrate_path`.

    ``res.completeness`` holds each image's relative completeness error.
    """

    method = "integrated-gradients"

    def __init__(self, model: nn.Module, *, baseline: str | Tensor = "black", steps: int = 50,
                 quadrature: str = "riemann", sigma: float = 1.2, batch_size: int | None = None,
                 progress: bool | None = None) -> None:
        self.model = model
        self.baseline = baseline
        self.steps = steps
        self.quadrature = quadrature
        self.sigma = sigma
        self.batch_size = batch_size
        self.progress = progress

    def _baseline(self, x: Tensor) -> Tensor:
        if isinstance(self.baseline, Tensor):
            return self.baseline.to(x).expand_as(x)
        if self.baseline == "black":
            return torch.zeros_like(x)
        if self.baseline == "blur":
            if x.ndim != 3:
                raise ValueError("the blur baseline is for 2-D images (C, H, W)")
            return blur(x, gaussian_kernel(self.sigma))[0]
        raise ValueError(f"baseline must be 'black', 'blur' or a tensor, got {self.baseline!r}")

    def __call__(self, images: Tensor, target: Target = None) -> CAMResult:
        if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim < 3:
            raise TypeError("images must be a float tensor (B, C, *spatial)")
        with torch.no_grad(), model_guard(self.model):
            logits = self.model(images)
        _, idx, multi = resolve_target(logits, target)
        if idx is None:
            raise ValueError("path attributions need class targets; a callable target is not "
                             "supported here")
        maps, errors = [], []
        for b in range(images.shape[0]):
            per_k = []
            for k in range(idx.shape[1]):
                c = int(idx[b, k])
                x = images[b].detach()
                path = StraightPath(x, self._baseline(x))
                r = integrate_path(
                    self.model, path, lambda out, c=c: out[:, c], steps=self.steps,
                    quadrature=self.quadrature, batch_size=self.batch_size,
                    progress=f"{self.method} {b}" if show(self.progress) else False,
                )
                per_k.append(r.attribution)
                errors.append(r.completeness_error)
            maps.append(torch.stack(per_k))
        out = torch.stack(maps)  # (B, K, C, *S)
        scores = logits.gather(1, idx)
        res = CAMResult(
            maps=out if multi else out[:, 0], raw=out if multi else out[:, 0], logits=logits,
            targets=idx if multi else idx[:, 0], scores=scores if multi else scores[:, 0],
            method=self.method, layer_names=[], kind="gradient", images=images.detach(),
        )
        res.completeness = torch.tensor(errors).reshape(idx.shape)  # type: ignore[attr-defined]
        return res


class InputXGradient(IntegratedGradients):
    """``∇S(x) ⊙ x``: one right-Riemann step of the straight path from black."""

    method = "input-x-gradient"

    def __init__(self, model: nn.Module, *, progress: bool = False) -> None:
        super().__init__(model, baseline="black", steps=1, quadrature="riemann", progress=progress)


class Saliency(IntegratedGradients):
    """The gradient ``∇S(x)``: one right-Riemann step from the baseline ``x − 1``.

    ``Saliency.to_map(res.maps)`` gives Simonyan et al.'s picture, ``max_c |∇|`` ``(B, *S)``.
    """

    method = "saliency"

    def __init__(self, model: nn.Module, *, progress: bool = False) -> None:
        super().__init__(model, steps=1, quadrature="riemann", progress=progress)

    def _baseline(self, x: Tensor) -> Tensor:
        return x - 1

    @staticmethod
    def to_map(gradients: Tensor) -> Tensor:
        return gradients.abs().amax(dim=-3)

