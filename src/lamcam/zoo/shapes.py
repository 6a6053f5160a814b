"""Seeded multi-instance "shapes" images with exact per-instance ground truth.

Every image shows 1-4 instances of ONE shape class on a textured background. Colour, size,
position and rotation are drawn independently per instance, and colours are independent of the
class, so a classifier has to look at the outline. Because the ground truth (a visible-pixel mask
and a box per instance) is exact, the images are good test cases for attribution maps: a correct
map should put its mass on the instances.

Classes (:data:`CLASSES`): circle, square, triangle, cross, star, ring.

Conventions
-----------
* ``image``: ``(H, W, 3)`` float32 in ``[0, 1]``, row-major (``y`` down, ``x`` right).
* ``masks``: ``(n, H, W)`` bool, the pixels where instance ``i`` is *visible*
  (instances are painted in order; a later one hides the part of an earlier one below it,
  which only happens at touching edges). Every ``True`` pixel has exactly the instance colour.
* ``boxes``: ``(n, 4)`` int64 ``(x0, y0, x1, y1)`` with ``x0, y0`` inclusive and ``x1, y1``
  exclusive, i.e. ``masks[i, y0:y1, x0:x1]`` holds all of instance ``i``; it is the tight
  bounding box of the mask.
* Shapes are drawn with hard edges (no anti-aliasing), so masks and pixels agree exactly.

Determinism: :func:`make_sample` draws everything from the :class:`numpy.random.Generator` it is
given. :func:`make_dataset` gives sample ``i`` its own generator seeded by ``(seed, i)``, so the
same ``seed`` gives identical arrays, and ``make_dataset(300, s)`` is the first 300 samples of
``make_dataset(2000, s)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "CLASSES",
    "DEFAULT_SIZE",
    "ShapesSample",
    "ShapesDataset",
    "make_sample",
    "make_dataset",
    "rasterize",
    "sample_rng",
]

#: Class names, in label order.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "star", "ring")

#: Default image side in pixels (the shipped classifiers are trained at this size).
DEFAULT_SIZE = 64

# Radius range (in pixels at size 64; scaled with the image size) of the circumscribed circle of
# an instance, by instance count: fewer instances are allowed to be larger.
_RADIUS = {1: (8.0, 15.0), 2: (7.5, 13.0), 3: (7.0, 11.5), 4: (7.0, 10.5)}
# Two instances' circumscribed circles may overlap by at most this fraction of their radii sum.
_MIN_SEPARATION = 0.9
_MAX_INSTANCES = 4


# --------------------------------------------------------------------------------------------
# shapes: boolean tests in normalised, rotated coordinates (circumradius 1)
# --------------------------------------------------------------------------------------------
def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 0.9**2


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.7


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1, inradius 0.5: inside all three half-planes n_k . p <= 0.5.
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = np.pi / 2 + k * 2 * np.pi / 3 + np.pi  # edge normals point away from the vertices
        inside &= u * np.cos(a) + v * np.sin(a) <= 0.5
    return inside


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


_STAR_INNER = 0.45


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: outer vertices at angles 2*pi*k/5 (radius 1), inner ones halfway between.
    rho = np.hypot(u, v)
    sector = 2 * np.pi / 5
    b = np.mod(np.arctan2(v, u), sector)
    b = np.minimum(b, sector - b)  # fold onto [0, pi/5]: outer vertex at 0, inner at pi/5
    px, py = rho * np.cos(b), rho * np.sin(b)
    ix, iy = _STAR_INNER * np.cos(sector / 2), _STAR_INNER * np.sin(sector / 2)
    # Inside when p lies on the origin's side of the edge outer (1, 0) -> inner (ix, iy).
    ex, ey = ix - 1.0, iy
    cross_p = ex * py - ey * (px - 1.0)
    cross_o = ex * 0.0 - ey * (0.0 - 1.0)
    return cross_p * cross_o >= 0


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 <= 0.92**2) & (r2 >= 0.5**2)


_SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "star": _star,
    "ring": _ring,
}
assert tuple(_SHAPES) == CLASSES


# --------------------------------------------------------------------------------------------
# backgrounds
# --------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bilinearly upsampled coarse random colour grid, ``(size, size, 3)``."""
    g = int(rng.integers(2, 6))
    grid = rng.random((g, g, 3))
    t = np.linspace(0.0, g - 1.0, size)
    i0 = np.minimum(np.floor(t).astype(int), g - 2)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f)[..., None] + grid[i0 + 1] * f[..., None]  # (size, g, 3)
    cols = rows[:, i0] * (1 - f)[None] + rows[:, i0 + 1] * f[None]  # (size, size, 3)
    return cols


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft sinusoidal stripes between two random colours, random period and direction."""
    c1, c2 = rng.random(3), rng.random(3)
    period = rng.uniform(6.0, 24.0) * size / DEFAULT_SIZE
    phi = rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    s = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period + rng.uniform(0, 6.3))
    t = (0.5 + 0.5 * np.tanh(rng.uniform(0.5, 3.0) * s))[..., None]
    return c1 * (1 - t) + c2 * t


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """Linear gradient between two random colours along a random direction."""
    c1, c2 = rng.random(3), rng.random(3)
    phi = rng.uniform(0.0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    t = xx * np.cos(phi) + yy * np.sin(phi)
    t = ((t - t.min()) / max(t.max() - t.min(), 1e-9))[..., None]
    return c1 * (1 - t) + c2 * t


_BACKGROUNDS = (_smooth_noise, _stripes, _gradient)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    bg = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))](rng, size)
    sigma = rng.uniform(0.0, 0.05)
    bg = bg + rng.normal(0.0, sigma, bg.shape)
    return np.clip(bg, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------
@dataclass
class ShapesSample:
    """One generated image with its exact ground truth.

    Attributes:
        image: ``(H, W, 3)`` float32 in ``[0, 1]``.
        label: class index into :data:`CLASSES`.
        masks: ``(n, H, W)`` bool, visible pixels of each instance.
        boxes: ``(n, 4)`` int64 ``(x0, y0, x1, y1)``, end-exclusive tight boxes of ``masks``.
        colors: ``(n, 3)`` float32, the flat RGB colour of each instance.
    """

    image: np.ndarray
    label: int
    masks: np.ndarray
    boxes: np.ndarray
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))

    @property
    def n_instances(self) -> int:
        """Number of instances ``n`` (1..4)."""
        return int(self.masks.shape[0])

    @property
    def class_name(self) -> str:
        """Name of the class, ``CLASSES[label]``."""
        return CLASSES[self.label]


def _place(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rejection-sample ``n`` centres ``(n, 2)`` (x, y) and circumradii ``(n,)`` in pixels.

    Every instance lies fully inside the image, and two instances' circumscribed circles overlap
    by at most ``1 - _MIN_SEPARATION`` of their radii sum (they may touch, rarely overlap).
    """
    lo, hi = (r * size / DEFAULT_SIZE for r in _RADIUS[n])
    for _ in range(100):  # restart the whole layout if it gets stuck (very rare)
        centres: list[tuple[float, float]] = []
        radii: list[float] = []
        for _i in range(n):
            r = rng.uniform(lo, hi)
            for _try in range(60):
                # keep the circumscribed circle inside the pixel grid
                c = rng.uniform(r, size - 1 - r, 2)
                if all(
                    np.hypot(c[0] - x, c[1] - y) >= _MIN_SEPARATION * (r + q)
                    for (x, y), q in zip(centres, radii, strict=True)
                ):
                    centres.append((float(c[0]), float(c[1])))
                    radii.append(r)
                    break
                r = max(lo * 0.8, r * 0.97)  # shrink a little after failures
            else:
                break
        if len(centres) == n:
            return np.array(centres), np.array(radii)
    raise RuntimeError(f"could not place {n} instances in a {size}x{size} image")


def _pick_color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """Random RGB colour that stands out from the pixels ``under`` ``(k, 3)`` it will cover."""
    best, best_score = None, -1.0
    for _ in range(25):
        c = rng.random(3)
        score = float(np.quantile(np.linalg.norm(under - c, axis=1), 0.1))
        if score > best_score:
            best, best_score = c, score
        if score >= 0.35:
            break
    assert best is not None
    return best


def rasterize(shape_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], cx: float, cy: float, r: float,
              theta: float, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """Pixels of one shape instance: centre ``(cx, cy)``, circumradius ``r``, rotated by ``theta``.

    Returns ``(window, inside)``: ``window`` is a ``(rows, cols)`` pair of slices of the
    ``size × size`` grid that holds the whole shape, ``inside`` the bool mask over that window, so
    ``canvas[window][inside] = colour`` paints it.
    """
    x0, x1 = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 2, size)
    y0, y1 = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 2, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = (xx - cx) / r, (yy - cy) / r
    c, s = np.cos(theta), np.sin(theta)
    return (slice(y0, y1), slice(x0, x1)), shape_fn(c * dx + s * dy, -s * dx + c * dy)


def make_sample(
    rng: np.random.Generator,
    size: int = DEFAULT_SIZE,
    n_instances: int | None = None,
    label: int | None = None,
) -> ShapesSample:
    """Draw one image of ``n_instances`` (default: uniform in 1..4) shapes of class ``label``.

    Args:
        rng: source of all randomness (the result is a pure function of its state).
        size: image side ``H = W`` in pixels (shape sizes scale with it; >= 32 recommended).
        n_instances: number of instances, 1..4; drawn uniformly when None.
        label: class index into :data:`CLASSES`; drawn uniformly when None.

    Returns:
        A :class:`ShapesSample` with ``image (size, size, 3)``, ``masks (n, size, size)`` and
        ``boxes (n, 4)``.
    """
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    if n_instances is None:
        n_instances = int(rng.integers(1, _MAX_INSTANCES + 1))
    if not 1 <= n_instances <= _MAX_INSTANCES:
        raise ValueError(f"n_instances must be in 1..{_MAX_INSTANCES}, got {n_instances}")
    shape_fn = _SHAPES[CLASSES[label]]

    canvas = _background(rng, size)
    centres, radii = _place(rng, n_instances, size)
    owner = np.full((size, size), -1, dtype=np.int64)  # index of the visible instance per pixel
    colors = np.zeros((n_instances, 3))
    for i, ((cx, cy), r) in enumerate(zip(centres, radii, strict=True)):
        theta = rng.uniform(0.0, 2 * np.pi)
        win, inside = rasterize(shape_fn, cx, cy, r, theta, size)
        colors[i] = _pick_color(rng, canvas[win][inside])
        canvas[win][inside] = colors[i]
        owner[win][inside] = i

    image = canvas.astype(np.float32)
    masks = owner[None] == np.arange(n_instances)[:, None, None]
    boxes = np.zeros((n_instances, 4), dtype=np.int64)
    for i in range(n_instances):
        ys, xs = np.nonzero(masks[i])
        boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return ShapesSample(image, int(label), masks, boxes, colors.astype(np.float32))


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that :func:`make_dataset` uses for sample ``index`` of dataset ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


@dataclass
class ShapesDataset(torch.utils.data.Dataset):
    """A generated dataset; indexing gives ``(image (3, H, W) float32, label)``.

    Attributes:
        images: ``(N, 3, H, W)`` float32 tensor in ``[0, 1]``.
        labels: ``(N,)`` int64 tensor of class indices.
        masks: ``N`` bool arrays ``(n_i, H, W)`` (empty list if generated without masks).
        boxes: ``N`` int64 arrays ``(n_i, 4)``, ``(x0, y0, x1, y1)`` end-exclusive.
        n_instances: ``(N,)`` int64 tensor, instance count per image.
        seed: the dataset seed.
        classes: class names, :data:`CLASSES`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: list[np.ndarray]
    boxes: list[np.ndarray]
    n_instances: torch.Tensor
    seed: int
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def make_dataset(
    n: int,
    seed: int,
    size: int = DEFAULT_SIZE,
    *,
    with_masks: bool = True,
    start: int = 0,
) -> ShapesDataset:
    """Generate samples ``start .. start + n - 1`` of the dataset identified by ``seed``.

    Sample ``i`` is ``make_sample(sample_rng(seed, i), size)``, so results do not depend on
    ``n`` or on how a range is split into chunks.

    Args:
        n: number of images.
        seed: dataset seed (use different seeds for training and evaluation sets).
        size: image side in pixels.
        with_masks: keep per-instance masks (set False to save memory for large training sets).
        start: index of the first sample.

    Returns:
        A :class:`ShapesDataset` with ``images (n, 3, size, size)``.
    """
    images = np.empty((n, size, size, 3), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    masks: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    for j in range(n):
        s = make_sample(sample_rng(seed, start + j), size)
        images[j], labels[j], counts[j] = s.image, s.label, s.n_instances
        boxes.append(s.boxes)
        if with_masks:
            masks.append(s.masks)
    return ShapesDataset(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        labels=torch.from_numpy(labels),
        masks=masks,
        boxes=boxes,
        n_instances=torch.from_numpy(counts),
        seed=int(seed),
    )
