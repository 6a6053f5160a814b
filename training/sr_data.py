"""Training and evaluation data for the super-resolution zoo, and the SR quality metrics.

Images: scikit-image's bundled data images (public domain / CC0, shipped inside the
``scikit-image`` wheel and loaded without network access). scikit-image is needed only to
*train* (``python -m training.train_sr``); the metrics and :func:`degrade` below are plain
torch, and the held-out samples the tests use are bundled as PNGs.

* :data:`TRAIN_IMAGES` -- the only images patches are drawn from.
* :data:`HELDOUT_IMAGES` -- never trained on: ``brick`` (a regular grid of bricks), ``chelsea``
  (fur, whiskers), ``rocket`` (lattice towers, sky).

Degradation (``degrade``), the one used for training, evaluation and the bundled samples::

    HR  (1, 3, H, W) float in [0, 1], H and W multiples of 4 (crop first)
    LR  = F.interpolate(HR, size=(H/4, W/4), mode="bicubic", align_corners=False,
                        antialias=True).clamp(0, 1)
    LR  = round(LR * 255) / 255                   (8-bit quantisation, as in a PNG)

Grey-level images are replicated to three channels. Training patches are augmented with a
random element of the dihedral group (flips, transposes).

Metrics (the usual SR conventions): PSNR on the Y channel of BT.601
(``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for ``R, G, B`` in ``[0, 1]``, i.e. MATLAB's
``rgb2ycbcr``) with ``shave = scale`` pixels removed at every border, on the 0..255 scale;
RGB PSNR on the same shaved region with data range 1; SSIM on Y (Gaussian window 11, sigma 1.5,
``K1 = 0.01``, ``K2 = 0.03``, data range 255, 'valid' filtering, mean of the SSIM map).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SCALE",
    "TRAIN_IMAGES",
    "HELDOUT_IMAGES",
    "LICENSES",
    "load_skimage",
    "crop_to_multiple",
    "degrade",
    "bicubic_upscale",
    "PatchSampler",
    "rgb_to_y",
    "psnr_y",
    "psnr_rgb",
    "ssim_y",
    "evaluate_pair",
]

SCALE = 4

#: scikit-image data images used for training (all load offline).
TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut",
    "camera",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "text",
)
#: Held out: never trained on. ``brick`` has the regular grid texture.
HELDOUT_IMAGES: tuple[str, ...] = ("brick", "chelsea", "rocket")

#: Licence statements from scikit-image's docstrings of these images.
LICENSES: dict[str, str] = {
    "astronaut": "NASA, public domain",
    "camera": "CC0 (Lav Varshney)",
    "coffee": "CC0 (Rachel Michetti)",
    "coins": "Brooklyn Museum, no known copyright restrictions",
    "grass": "CC0 (DeviantArt linolafett)",
    "gravel": "CC0 (CC0Textures)",
    "hubble_deep_field": "NASA, public domain",
    "immunohistochemistry": "CMMI, no known copyright restrictions",
    "retina": "CC0 (Mikael Häggström, Wikimedia Commons)",
    "text": "public domain (Wikipedia)",
    "brick": "CC0 (CC0Textures)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "SpaceX, public domain",
}


def load_skimage(name: str) -> Tensor:
    """scikit-image data image ``name`` as float ``(3, H, W)`` RGB in ``[0, 1]``.

    Grey images are replicated to 3 channels, alpha is dropped. Needs ``scikit-image``
    (training only: ``pip install scikit-image``).
    """
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the SR training data are scikit-image's bundled images: pip install scikit-image"
        ) from e
    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name}() is {arr.dtype}, expected uint8")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 255.0


def crop_to_multiple(img: Tensor, m: int = SCALE) -> Tensor:
    """Crop ``(..., H, W)`` at the bottom/right so that H and W are multiples of ``m``."""
    h, w = img.shape[-2:]
    return img[..., : h - h % m, : w - w % m]


def degrade(hr: Tensor, scale: int = SCALE, quantize: bool = True) -> Tensor:
    """LR image of ``hr`` ``(B, C, H, W)`` (H, W multiples of ``scale``): antialiased bicubic.

    ``F.interpolate(size=(H/scale, W/scale), mode="bicubic", antialias=True)``, clamped to
    ``[0, 1]`` and (``quantize``) rounded to 8 bits. Returns ``(B, C, H/scale, W/scale)``.
    """
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of {scale}; crop_to_multiple first")
    lr = F.interpolate(
        hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 1)
    return torch.round(lr * 255) / 255 if quantize else lr


def bicubic_upscale(lr: Tensor, scale: int = SCALE) -> Tensor:
    """The baseline: ``F.interpolate(lr, scale_factor=scale, mode="bicubic").clamp(0, 1)``."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# patches
# --------------------------------------------------------------------------------------------
class PatchSampler:
    """Random ``(LR, HR)`` training batches from a list of HR images.

    Each patch: an image chosen uniformly, an HR crop of ``lr_patch * scale`` pixels at a
    uniform position, a uniform dihedral transform; crops whose standard deviation is below
    ``flat_std`` (flat sky, black background) are redrawn up to 10 times. Uses only its own
    ``torch.Generator`` (seeded), so a seed fixes the whole stream.

    Args:
        images: ``(3, H, W)`` HR images in ``[0, 1]`` (each at least one patch large).
        lr_patch: LR patch side; scale: SR factor; seed: generator seed.
    """

    def __init__(
        self,
        images: Sequence[Tensor],
        lr_patch: int = 32,
        scale: int = SCALE,
        seed: int = 0,
        flat_std: float = 0.02,
    ) -> None:
        self.images = list(images)
        self.lr_patch, self.scale, self.flat_std = lr_patch, scale, flat_std
        self.gen = torch.Generator().manual_seed(seed)
        hp = lr_patch * scale
        for i, img in enumerate(self.images):
            if min(img.shape[-2:]) < hp:
                raise ValueError(f"image {i} ({tuple(img.shape)}) is smaller than a {hp} px patch")

    def _crop(self) -> Tensor:
        hp = self.lr_patch * self.scale
        for _ in range(10):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=self.gen))]
            h, w = img.shape[-2:]
            y = int(torch.randint(h - hp + 1, (1,), generator=self.gen))
            x = int(torch.randint(w - hp + 1, (1,), generator=self.gen))
            crop = img[:, y : y + hp, x : x + hp]
            if float(crop.std()) >= self.flat_std:
                break
        k = int(torch.randint(8, (1,), generator=self.gen))
        if k & 1:
            crop = crop.flip(-1)
        if k & 2:
            crop = crop.flip(-2)
        if k & 4:
            crop = crop.transpose(-1, -2)
        return crop

    def batch(self, n: int) -> tuple[Tensor, Tensor]:
        """``(LR (n, 3, p, p), HR (n, 3, p*scale, p*scale))``, LR from :func:`degrade`."""
        hr = torch.stack([self._crop() for _ in range(n)]).contiguous()
        return degrade(hr, self.scale), hr


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def rgb_to_y(img: Tensor) -> Tensor:
    """BT.601 luma on the 0..255 scale (16..235): ``(B, 3, H, W)`` in [0, 1] -> ``(B, 1, H, W)``."""
    w = img.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return 16.0 + (img * w).sum(1, keepdim=True)


def _shave(x: Tensor, shave: int) -> Tensor:
    return x[..., shave : x.shape[-2] - shave, shave : x.shape[-1] - shave] if shave else x


def _psnr(a: Tensor, b: Tensor, peak: float) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr_y(sr: Tensor, hr: Tensor, shave: int = SCALE) -> float:
    """PSNR (dB) of the BT.601 Y channel, ``shave`` border pixels removed, peak 255.

    ``sr`` is clamped to ``[0, 1]`` and rounded to 8 bits first, like a saved image.
    """
    sr = torch.round(sr.clamp(0, 1) * 255) / 255
    return _psnr(_shave(rgb_to_y(sr), shave), _shave(rgb_to_y(hr), shave), 255.0)


def psnr_rgb(sr: Tensor, hr: Tensor, shave: int = SCALE) -> float:
    """PSNR (dB) over the three RGB channels, ``shave`` border pixels removed, peak 1."""
    sr = torch.round(sr.clamp(0, 1) * 255) / 255
    return _psnr(_shave(sr, shave), _shave(hr, shave), 1.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(sr: Tensor, hr: Tensor, shave: int = SCALE) -> float:
    """SSIM (Wang et al. 2004) of the Y channels, ``shave`` border pixels removed.

    Gaussian window 11x11, sigma 1.5, 'valid' filtering, ``C1 = (0.01 * 255)^2``,
    ``C2 = (0.03 * 255)^2``, mean of the SSIM map (averaged over the batch).
    """
    sr = torch.round(sr.clamp(0, 1) * 255) / 255
    x = _shave(rgb_to_y(sr), shave).double()
    y = _shave(rgb_to_y(hr), shave).double()
    win = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mx * mx
    syy = F.conv2d(y * y, win) - my * my
    sxy = F.conv2d(x * y, win) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


@dataclass(frozen=True)
class PairScores:
    """Scores of an SR output and of the bicubic baseline against the HR image."""

    psnr_y: float
    psnr_rgb: float
    ssim_y: float
    bicubic_psnr_y: float
    bicubic_psnr_rgb: float
    bicubic_ssim_y: float

    def as_dict(self) -> dict[str, float]:
        """Rounded to 4 decimals, for JSON."""
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def evaluate_pair(sr: Tensor, lr: Tensor, hr: Tensor, scale: int = SCALE) -> PairScores:
    """Y-PSNR, RGB PSNR and Y-SSIM of ``sr`` and of bicubic(``lr``) against ``hr`` (``(1, 3, ., .)``)."""
    bic = bicubic_upscale(lr, scale)
    return PairScores(
        psnr_y(sr, hr, scale),
        psnr_rgb(sr, hr, scale),
        ssim_y(sr, hr, scale),
        psnr_y(bic, hr, scale),
        psnr_rgb(bic, hr, scale),
        ssim_y(bic, hr, scale),
    )
