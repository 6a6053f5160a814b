"""Integration paths for path-attribution methods, and the one Gaussian kernel.

A path ``γ: [0, 1] → inputs`` runs from a baseline ``γ(0)`` to the input ``γ(1)``. Each path
gives its points ``γ(α)`` and its derivative ``dγ/dα``, batched over α, so quadratures
(:mod:`lamcam.integrate`) can evaluate many path points per network pass.

* :class:`StraightPath` — Integrated Gradients: ``γ(α) = b + α (x − b)``.
* :class:`BlurPath` — LAM's progressive blurring: ``γ(α) = G(σ (1 − α)) ⊗ x``, baseline the input
  blurred with σ (SPEC §2).

Example:
    >>> x = torch.rand(1, 3, 16, 16)
    >>> p = BlurPath(x, sigma=1.2)
    >>> torch.allclose(p.points(torch.tensor([1.0]))[0], x[0], atol=1e-6)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BlurPath", "StraightPath", "blur", "blur_crops", "gaussian_kernel", "gaussian_kernel_dsigma",
    "reflect_pad",
]

_SIGMA_OFFSET = 1e-5  # LAM_Demo's kernel uses (σ + 1e-5) so that σ = 0 gives a delta


def _grid(size: int, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the kernel size must be a positive odd number, got {size}")
    r = torch.arange(size, dtype=dtype, device=device) - size // 2
    return r[:, None] ** 2 + r[None, :] ** 2  # x² + y²


def gaussian_kernel(sigma: float | Tensor, size: int = 9, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | None = None) -> Tensor:
    """The isotropic ``size × size`` Gaussian of LAM (SPEC §2), normalised to sum 1.

    ``exp(−(x² + y²) / (2 (σ + 1e-5)²))`` at integer offsets ``−size//2 … size//2``. ``sigma`` may
    be a tensor of shape ``(N,)``, giving ``(N, size, size)``.

    Example:
        >>> k = gaussian_kernel(1.2)
        >>> k.shape, round(float(k.sum()), 6), bool(k[4, 4] == k.max())
        (torch.Size([9, 9]), 1.0, True)
        >>> float(gaussian_kernel(0.0)[4, 4])   # σ = 0 is the identity
        1.0
    """
    s = torch.as_tensor(sigma, dtype=dtype, device=device)
    d2 = _grid(size, dtype, device)
    s = s.reshape(*s.shape, 1, 1) + _SIGMA_OFFSET
    k = torch.exp(-d2 / (2 * s * s))
    return k / k.sum(dim=(-2, -1), keepdim=True)


def gaussian_kernel_dsigma(sigma: float | Tensor, size: int = 9, *,
                           dtype: torch.dtype = torch.float64,
                           device: torch.device | None = None) -> Tensor:
    """``∂G/∂σ`` of the normalised kernel of :func:`gaussian_kernel`, analytically.

    With ``e = exp(−r²/(2s²))``, ``s = σ + 1e-5``, ``Z = Σ e`` and ``G = e/Z``:
    ``∂G/∂σ = G (r² − Σ G r²) / s³``.

    Example:
        >>> h = 1e-6
        >>> fd = (gaussian_kernel(1.2 + h) - gaussian_kernel(1.2 - h)) / (2 * h)
        >>> torch.allclose(gaussian_kernel_dsigma(1.2), fd, atol=1e-8)
        True
    """
    s = torch.as_tensor(sigma, dtype=dtype, device=device)
    d2 = _grid(size, dtype, device)
    g = gaussian_kernel(s, size, dtype=dtype, device=device)
    s = s.reshape(*s.shape, 1, 1) + _SIGMA_OFFSET
    mean_d2 = (g * d2).sum(dim=(-2, -1), keepdim=True)
    return g * (d2 - mean_d2) / s**3


def blur(images: Tensor, kernels: Tensor) -> Tensor:
    """Convolve each channel with a kernel, reflect-101 borders (as ``cv2.filter2D``'s default).

    Args:
        images: ``(C, H, W)`` or ``(N, C, H, W)``.
        kernels: ``(l, l)`` for all images, or ``(N, l, l)``: one kernel per image (N path points
            of one image, ``images`` then ``(C, H, W)`` or ``(1, C, H, W)``).

    Returns:
        ``(N, C, H, W)`` (``(C, H, W)`` in, one kernel: ``(1, C, H, W)``).

    Example:
        >>> x = torch.rand(1, 3, 8, 8)
        >>> torch.allclose(blur(x, gaussian_kernel(0.0, dtype=x.dtype)), x)
        True
    """
    x = images.unsqueeze(0) if images.ndim == 3 else images
    k = kernels.to(x.dtype)
    single = k.ndim == 2
    if single:
        k = k[None]
    n_k, size = k.shape[0], k.shape[-1]
    pad = size // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(
            f"the image ({x.shape[-2]}x{x.shape[-1]}) is too small for a {size}x{size} blur kernel "
            f"(reflect padding needs more than {pad} pixels per side); use a smaller kernel_size"
        )
    c = x.shape[1]
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if single or x.shape[0] == n_k:
        # one kernel for every image, or image i with kernel i: grouped conv over (N*C) channels
        if single:
            w = k.expand(c, size, size)[:, None]
            return F.conv2d(xp, w, groups=c)
        w = k[:, None].expand(n_k, c, size, size).reshape(n_k * c, 1, size, size)
        out = F.conv2d(xp.reshape(1, n_k * c, *xp.shape[-2:]), w, groups=n_k * c)
        return out.reshape(n_k, c, *x.shape[-2:])
    if x.shape[0] != 1:
        raise ValueError(f"{x.shape[0]} images and {n_k} kernels: give one image or one kernel each")
    # one image, N kernels: each channel convolved with every kernel
    w = k[:, None].repeat(c, 1, 1, 1)  # (C*N, 1, l, l), channel-major
    out = F.conv2d(xp, w, groups=c)  # (1, C*N, H, W)
    return out.reshape(c, n_k, *x.shape[-2:]).transpose(0, 1)


def reflect_pad(image: Tensor, kernel_size: int) -> Tensor:
    """``(C, H, W)`` -> ``(1, C, H + 2p, W + 2p)``, p = kernel_size // 2, reflect-101 as :func:`blur`.

    Blurring a region of this padded image with a valid convolution gives exactly the region of
    the blurred whole image (:func:`blur_crops`).
    """
    pad = kernel_size // 2
    x = image.unsqueeze(0) if image.ndim == 3 else image
    if min(x.shape[-2:]) <= pad:
        raise ValueError(
            f"the image ({x.shape[-2]}x{x.shape[-1]}) is too small for a {kernel_size}x{kernel_size} "
            f"blur kernel (reflect padding needs more than {pad} pixels per side); use a smaller "
            "kernel_size"
        )
    return F.pad(x, (pad, pad, pad, pad), mode="reflect")


def blur_crops(padded: Tensor, kernels: Tensor, boxes: list[tuple[int, int, int, int]]) -> Tensor:
    """Regions of the whole image blurred with each kernel, without blurring the whole image.

    Args:
        padded: ``(1, C, H + 2p, W + 2p)`` from :func:`reflect_pad`.
        kernels: ``(N, l, l)`` (l = 2p + 1).
        boxes: ``(top, left, height, width)`` regions of the image, all of one size (h, w).

    Returns:
        ``(N, len(boxes), C, h, w)``: entry ``[k, b]`` equals
        ``blur(image, kernels[k])[0, :, top:top + h, left:left + w]`` for box b.

    Example:
        >>> x = torch.rand(3, 20, 20)
        >>> k = gaussian_kernel(torch.tensor([0.5, 1.0]), 9, dtype=x.dtype)
        >>> crops = blur_crops(reflect_pad(x, 9), k, [(3, 5, 8, 6)])
        >>> torch.allclose(crops[:, 0], blur(x, k)[:, :, 3:11, 5:11], atol=1e-6)
        True
    """
    return _blur_regions(_regions(padded, boxes, kernels.shape[-1]), kernels, padded.shape[1],
                         len(boxes))


def _regions(padded: Tensor, boxes: list[tuple[int, int, int, int]], size: int) -> Tensor:
    """``(1, B*C, h + 2p, w + 2p)``: each box of the padded image with its blur margin."""
    if not boxes:
        raise ValueError("no boxes to blur")
    pad = size // 2
    h, w = boxes[0][2], boxes[0][3]
    if any((b[2], b[3]) != (h, w) for b in boxes):
        raise ValueError("blur_crops needs boxes of one size")
    return torch.cat([padded[:, :, t:t + h + 2 * pad, l_:l_ + w + 2 * pad]
                      for t, l_, _, _ in boxes], dim=1)


def _blur_regions(regions: Tensor, kernels: Tensor, c: int, n_boxes: int) -> Tensor:
    """:func:`blur_crops` on regions cut once by :func:`_regions` (reused for every kernel)."""
    size = kernels.shape[-1]
    pad = size // 2
    h, w = regions.shape[-2] - 2 * pad, regions.shape[-1] - 2 * pad
    k = kernels.to(regions.dtype)
    n_k = k.shape[0]
    groups = n_boxes * c
    weight = k[None].expand(groups, n_k, size, size).reshape(groups * n_k, 1, size, size)
    out = F.conv2d(regions, weight, groups=groups)  # (1, B*C*N, h, w), group-major
    return out.reshape(n_boxes, c, n_k, h, w).permute(2, 0, 1, 3, 4)


class StraightPath:
    """``γ(α) = b + α (x − b)``: Integrated Gradients' path.

    Args:
        x: the input ``(C, H, W)`` (or any shape); baseline: same shape (default zeros: black).

    Example:
        >>> p = StraightPath(torch.ones(1, 2, 2))
        >>> p.points(torch.tensor([0.25, 1.0]))[:, 0, 0, 0].tolist()
        [0.25, 1.0]
    """

    name = "straight"

    def __init__(self, x: Tensor, baseline: Tensor | None = None) -> None:
        self.x = x
        self.baseline = torch.zeros_like(x) if baseline is None else baseline.to(x)
        if self.baseline.shape != x.shape:
            raise ValueError(f"baseline {tuple(self.baseline.shape)} != input {tuple(x.shape)}")

    def points(self, alphas: Tensor) -> Tensor:
        a = alphas.to(self.x.dtype).reshape(-1, *([1] * self.x.ndim))
        return self.baseline + a * (self.x - self.baseline)

    def derivative(self, alphas: Tensor) -> Tensor:
        return (self.x - self.baseline).expand(len(alphas), *self.x.shape)

    def start(self) -> Tensor:
        return self.baseline


class BlurPath:
    """LAM's progressive-blurring path ``γ(α) = G(σ (1 − α)) ⊗ x``.

    ``γ(0)`` is ``x`` blurred with σ (the baseline), ``γ(1) = x`` (σ = 0 gives the delta kernel).
    ``dγ/dα = −σ · (∂G/∂σ)(σ (1 − α)) ⊗ x`` analytically.

    Args:
        x: ``(C, H, W)`` image.
        sigma: the baseline's blur (LAM default 1.2); kernel_size: odd kernel side (default 9).
        boxes: regions ``(top, left, height, width)`` of ``x``, all of one size: the path then
            runs over those regions of the *whole image's* blur path (the blur sees the pixels
            around each region, and the image border as :func:`blur` does), which is what
            receptive-field cropping needs. One box gives points ``(N, C, h, w)``; several give
            ``(N, B, C, h, w)``. ``path.x`` is the region(s) of ``x``.

    Example:
        >>> x = torch.rand(3, 24, 24)
        >>> whole = BlurPath(x).points(torch.tensor([0.5]))[:, :, 4:12, 6:16]
        >>> crop = BlurPath(x, boxes=[(4, 6, 8, 10)]).points(torch.tensor([0.5]))
        >>> crop.shape, torch.allclose(crop, whole, atol=1e-6)
        (torch.Size([1, 3, 8, 10]), True)
    """

    name = "blur"

    def __init__(self, x: Tensor, sigma: float = 1.2, kernel_size: int = 9,
                 boxes: list[tuple[int, int, int, int]] | None = None) -> None:
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.kernel_size = int(kernel_size)
        # kernels are built in float64 and cast once in blur()
        self._kw = {"dtype": torch.float64, "device": x.device}
        self.boxes = None if boxes is None else [tuple(int(v) for v in b) for b in boxes]
        if self.boxes is None:
            self.x = x
            self._padded = None
        else:
            h_img, w_img = x.shape[-2:]
            for t, l_, h, w in self.boxes:
                if not (0 <= t and 0 <= l_ and h > 0 and w > 0 and t + h <= h_img and l_ + w <= w_img):
                    raise ValueError(f"box {(t, l_, h, w)} leaves the {h_img}x{w_img} image")
            self._padded = reflect_pad(x, self.kernel_size)
            # the boxes' regions are cut once; every path point only convolves them
            self._regions = _regions(self._padded, self.boxes, self.kernel_size)
            crops = [x[..., t:t + h, l_:l_ + w] for t, l_, h, w in self.boxes]
            self.x = crops[0] if len(crops) == 1 else torch.stack(crops)

    def _apply(self, kernels: Tensor) -> Tensor:
        if self._padded is None:
            return blur(self.x, kernels)
        out = _blur_regions(self._regions, kernels, self._padded.shape[1], len(self.boxes))  # type: ignore[arg-type]
        return out[:, 0] if len(self.boxes) == 1 else out  # type: ignore[arg-type]

    def sigmas(self, alphas: Tensor) -> Tensor:
        return self.sigma * (1 - alphas.to(torch.float64))

    def points(self, alphas: Tensor) -> Tensor:
        return self._apply(gaussian_kernel(self.sigmas(alphas).to(self.x.device), self.kernel_size,
                                           **self._kw))

    def derivative(self, alphas: Tensor) -> Tensor:
        dk = gaussian_kernel_dsigma(self.sigmas(alphas).to(self.x.device), self.kernel_size,
                                    **self._kw)
        return self._apply(-self.sigma * dk)

    def start(self) -> Tensor:
        return self._apply(gaussian_kernel(self.sigma, self.kernel_size, **self._kw)[None])[0]
