"""Seeded short video clips of one moving shape among static distractors, with exact per-frame
ground truth, and a small Conv3d classifier for them.

Every clip shows ONE moving shape (the label is its class, one of :data:`lamcam.zoo.shapes.CLASSES`)
that slides along a straight line at a constant integer velocity, plus 0-2 *static* distractor
shapes whose classes all differ from the moving one (and from each other). Colour, size, rotation
and position are drawn independently per object and the colour is independent of the role, so the
label can only be read off the shape of the object that *moves*: a model has to use motion to
decide which object counts, and a correct explanation should light up the moving object, not the
distractors. The shape tests, backgrounds and colour picking are those of :mod:`lamcam.zoo.shapes`.

Conventions
-----------
* ``clip``: ``(T, H, W, 3)`` float32 in ``[0, 1]`` (``T`` frames, ``y`` down, ``x`` right);
  :class:`ClipsDataset` stores clips as ``(N, 3, T, H, W)`` (the ``nn.Conv3d`` layout).
* The background is one :func:`lamcam.zoo.shapes._background` image, the same in every frame
  except for independent per-frame Gaussian sensor noise (its std drawn per clip in
  ``[0, 0.03]``) on background pixels only. Objects are flat colours with hard edges, so every
  mask pixel has exactly its object's colour in that frame.
* ``masks``: ``(T, H, W)`` bool, the moving object's pixels in each frame. It is painted last and
  never touches a distractor, so these are also its visible pixels.
* ``distractor_masks``: ``(n_d, T, H, W)`` bool, one per distractor (identical in every frame).
* ``centres``: ``(T, 2)`` float64 ``(x, y)`` centre of the moving object's circumscribed circle per
  frame; ``velocity``: ``(2,)`` int64 ``(vx, vy)`` pixels per frame, ``1 <= max(|vx|, |vy|) <= 2``.
  ``centres[t] = centres[0] + t * velocity`` and ``masks[t + 1]`` is ``masks[t]`` shifted by exactly
  ``velocity`` (the object is rendered once as a sprite and pasted at integer offsets). The whole
  object stays inside the frame in every frame (no bouncing, no clipping).
* Every distractor's circumscribed circle keeps at least one pixel of clearance from the moving
  object's circle in every frame and from the other distractors.

Determinism: :func:`make_clip` draws everything from the generator it is given;
:func:`make_clips` gives clip ``i`` the generator :func:`lamcam.zoo.shapes.sample_rng`
``(seed, i)``, so clip ``i`` does not depend on ``n`` or on chunking.

Example:
    >>> s = make_clip(sample_rng(0, 0))
    >>> s.clip.shape, s.masks.shape, s.clip.dtype
    ((8, 32, 32, 3), (8, 32, 32), dtype('float32'))
    >>> bool((np.roll(s.masks[0], tuple(s.velocity[::-1]), axis=(0, 1)) == s.masks[1]).all())
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lamcam.zoo.shapes import _SHAPES, CLASSES, _background, _pick_color, sample_rng

__all__ = [
    "CLIP_FRAMES",
    "CLIP_SIZE",
    "MAX_DISTRACTORS",
    "ClipSample",
    "ClipsC3D",
    "ClipsDataset",
    "make_clip",
    "make_clips",
    "sample_rng",
]

#: Default frame count ``T``.
CLIP_FRAMES = 8
#: Default frame side ``H = W`` in pixels.
CLIP_SIZE = 32
#: Largest number of static distractors.
MAX_DISTRACTORS = 2

# Circumradius range in pixels at size 32 (scaled with the size), the same for every object.
_RADIUS = (5.5, 8.0)
# Velocities: integer (vx, vy) with 1 <= max(|vx|, |vy|) <= 2 (24 directions/speeds).
_VELOCITIES = np.array([(vx, vy) for vy in range(-2, 3) for vx in range(-2, 3) if (vx, vy) != (0, 0)],
                       dtype=np.int64)
_CLEARANCE = 1.0  # pixels between circumscribed circles
_MAX_NOISE = 0.03
_PROPOSALS = 64


@dataclass
class ClipSample:
    """One generated clip with its exact ground truth (see the module docstring).

    Attributes:
        clip: ``(T, H, W, 3)`` float32 in ``[0, 1]``.
        label: class index of the moving object into :data:`CLASSES`.
        masks: ``(T, H, W)`` bool, moving object per frame.
        distractor_masks: ``(n_d, T, H, W)`` bool, one per static distractor.
        distractor_labels: ``(n_d,)`` int64 classes of the distractors (all != ``label``).
        centres: ``(T, 2)`` float64 ``(x, y)`` centre of the moving object per frame.
        velocity: ``(2,)`` int64 ``(vx, vy)`` in pixels per frame.
        radius: circumradius of the moving object in pixels.
        angle: rotation of the moving object in radians (fixed over the clip).
        distractor_centres: ``(n_d, 2)`` float64 ``(x, y)``.
        distractor_radii: ``(n_d,)`` float64.
        colors: ``(1 + n_d, 3)`` float32; row 0 is the moving object.
    """

    clip: np.ndarray
    label: int
    masks: np.ndarray
    distractor_masks: np.ndarray
    distractor_labels: np.ndarray
    centres: np.ndarray
    velocity: np.ndarray
    radius: float
    angle: float = 0.0
    distractor_centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    distractor_radii: np.ndarray = field(default_factory=lambda: np.zeros(0))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))

    @property
    def n_distractors(self) -> int:
        """Number of static distractors ``n_d`` (0..2)."""
        return int(self.distractor_masks.shape[0])

    @property
    def class_name(self) -> str:
        """Name of the moving object's class, ``CLASSES[label]``."""
        return CLASSES[self.label]


def _sprite(shape: str, fx: float, fy: float, r: float, theta: float) -> tuple[np.ndarray, int, int]:
    """Boolean sprite of a shape centred at ``(ox + fx, oy + fy)`` relative to its top-left pixel.

    Returns ``(mask (h, w), ox, oy)``: the shape's centre lies ``(ox + fx, oy + fy)`` pixels right of
    and below the sprite's top-left pixel, with ``fx, fy`` in ``[0, 1)``.
    """
    half = int(np.ceil(r)) + 1
    yy, xx = np.mgrid[-half : half + 2, -half : half + 2].astype(np.float64)
    dx, dy = (xx - fx) / r, (yy - fy) / r
    c, s = np.cos(theta), np.sin(theta)
    return _SHAPES[shape](c * dx + s * dy, -s * dx + c * dy), half, half


def _layout(rng: np.random.Generator, n_d: int, size: int, frames: int
            ) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """Rejection-sample the moving object's start, velocity and radius and the distractors.

    Returns ``(start (2,), velocity (2,), radius, distractor centres (n_d, 2), radii (n_d,))``.
    """
    lo, hi = (r * size / CLIP_SIZE for r in _RADIUS)
    steps = np.arange(frames)[:, None]
    for _ in range(200):
        r = float(rng.uniform(lo, hi))
        v = _VELOCITIES[int(rng.integers(len(_VELOCITIES)))]
        travel = (frames - 1) * v
        # keep the circumscribed circle inside the pixel grid at every frame
        low = r - np.minimum(travel, 0)
        high = size - 1 - r - np.maximum(travel, 0)
        if np.any(high < low):
            continue
        start = rng.uniform(low, high)
        path = start + steps * v  # (T, 2)
        dc, dr = [], []
        for _i in range(n_d):
            # 64 independent (radius, centre) proposals at once; the first valid one is taken
            # (the same distribution as proposing them one at a time)
            q = rng.uniform(lo, hi, _PROPOSALS)
            c = rng.uniform(q[:, None], size - 1 - q[:, None], (_PROPOSALS, 2))
            gap = np.linalg.norm(c[:, None] - path[None], axis=2).min(1) - r - q
            for e, f in zip(dc, dr, strict=True):
                gap = np.minimum(gap, np.linalg.norm(c - e, axis=1) - f - q)
            ok = np.flatnonzero(gap >= _CLEARANCE)
            if not len(ok):
                break
            dc.append(c[ok[0]])
            dr.append(float(q[ok[0]]))
        if len(dc) == n_d:
            return start, v.copy(), r, np.array(dc).reshape(n_d, 2), np.array(dr)
    raise RuntimeError(f"could not lay out a clip with {n_d} distractors at size {size}")


def make_clip(
    rng: np.random.Generator,
    size: int = CLIP_SIZE,
    frames: int = CLIP_FRAMES,
    n_distractors: int | None = None,
    label: int | None = None,
) -> ClipSample:
    """Draw one clip: a moving shape of class ``label`` and ``n_distractors`` static ones.

    Args:
        rng: source of all randomness (the result is a pure function of its state).
        size: frame side ``H = W`` in pixels (object sizes scale with it; >= 32 recommended).
        frames: number of frames ``T`` (>= 2).
        n_distractors: 0..2 static distractors of other classes; uniform when None.
        label: class of the moving object; uniform when None.

    Returns:
        A :class:`ClipSample` with ``clip (T, size, size, 3)`` and ``masks (T, size, size)``.
    """
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in 0..{len(CLASSES) - 1}, got {label}")
    if n_distractors is None:
        n_distractors = int(rng.integers(0, MAX_DISTRACTORS + 1))
    if not 0 <= n_distractors <= MAX_DISTRACTORS:
        raise ValueError(f"n_distractors must be in 0..{MAX_DISTRACTORS}, got {n_distractors}")
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    others = [k for k in range(len(CLASSES)) if k != label]
    d_labels = rng.choice(others, size=n_distractors, replace=False).astype(np.int64)

    bg = _background(rng, size)
    start, v, r, d_centres, d_radii = _layout(rng, n_distractors, size, frames)
    noise = float(rng.uniform(0.0, _MAX_NOISE))

    # static distractors: painted into the background once (shape tests as in shapes.make_sample)
    static = bg.copy()
    d_masks = np.zeros((n_distractors, size, size), dtype=bool)
    colors = np.zeros((1 + n_distractors, 3))
    for i in range(n_distractors):
        cx, cy = d_centres[i]
        ix, iy = int(np.floor(cx)), int(np.floor(cy))
        spr, ox, oy = _sprite(CLASSES[int(d_labels[i])], cx - ix, cy - iy, float(d_radii[i]),
                              float(rng.uniform(0.0, 2 * np.pi)))
        d_masks[i] = _paste(spr, ix - ox, iy - oy, size)
        colors[1 + i] = _pick_color(rng, static[d_masks[i]])
        static[d_masks[i]] = colors[1 + i]

    # the moving object: one sprite, pasted at integer offsets (exact translation)
    ix, iy = int(np.floor(start[0])), int(np.floor(start[1]))
    angle = float(rng.uniform(0.0, 2 * np.pi))
    spr, ox, oy = _sprite(CLASSES[label], start[0] - ix, start[1] - iy, r, angle)
    masks = np.stack([_paste(spr, ix - ox + t * int(v[0]), iy - oy + t * int(v[1]), size)
                      for t in range(frames)])
    colors[0] = _pick_color(rng, bg[masks.any(0)])

    painted = masks | d_masks.any(0)[None]
    clip = np.repeat(static[None], frames, axis=0)
    clip = clip + rng.normal(0.0, 1.0, clip.shape) * noise * ~painted[..., None]
    clip = np.clip(clip, 0.0, 1.0)
    clip[masks] = colors[0]
    centres = start[None] + np.arange(frames)[:, None] * v[None]
    return ClipSample(
        clip=clip.astype(np.float32),
        label=int(label),
        masks=masks,
        distractor_masks=np.repeat(d_masks[:, None], frames, axis=1),
        distractor_labels=d_labels,
        centres=centres,
        velocity=v.astype(np.int64),
        radius=r,
        angle=angle,
        distractor_centres=d_centres,
        distractor_radii=d_radii,
        colors=colors.astype(np.float32),
    )


def _paste(sprite: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """A ``(size, size)`` bool canvas with ``sprite`` placed with its top-left pixel at ``(x0, y0)``."""
    out = np.zeros((size, size), dtype=bool)
    h, w = sprite.shape
    ys, xs = slice(max(y0, 0), min(y0 + h, size)), slice(max(x0, 0), min(x0 + w, size))
    out[ys, xs] = sprite[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return out


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
@dataclass
class ClipsDataset(torch.utils.data.Dataset):
    """Generated clips; indexing gives ``(clip (3, T, H, W) float32, label)``.

    Attributes:
        clips: ``(N, 3, T, H, W)`` float32 in ``[0, 1]``.
        labels: ``(N,)`` int64.
        masks: ``(N, T, H, W)`` bool, the moving object per frame (empty if made without masks).
        distractor_masks: ``(N, T, H, W)`` bool, union of the static distractors per frame.
        n_distractors: ``(N,)`` int64.
        velocities: ``(N, 2)`` int64 ``(vx, vy)``.
        seed: the dataset seed.
    """

    clips: Tensor
    labels: Tensor
    masks: Tensor
    distractor_masks: Tensor
    n_distractors: Tensor
    velocities: Tensor
    seed: int
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.clips[i], int(self.labels[i])


def make_clips(n: int, seed: int, size: int = CLIP_SIZE, frames: int = CLIP_FRAMES, *,
               with_masks: bool = True, start: int = 0) -> ClipsDataset:
    """Generate clips ``start .. start + n - 1`` of the data set ``seed``.

    Clip ``i`` is ``make_clip(sample_rng(seed, i), size, frames)``.

    Returns:
        A :class:`ClipsDataset` with ``clips (n, 3, frames, size, size)``.
    """
    clips = np.empty((n, frames, size, size, 3), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    n_d = np.empty(n, dtype=np.int64)
    vel = np.empty((n, 2), dtype=np.int64)
    shape = (n, frames, size, size) if with_masks else (0, frames, size, size)
    masks = np.zeros(shape, dtype=bool)
    dmasks = np.zeros(shape, dtype=bool)
    for j in range(n):
        s = make_clip(sample_rng(seed, start + j), size, frames)
        clips[j], labels[j], n_d[j], vel[j] = s.clip, s.label, s.n_distractors, s.velocity
        if with_masks:
            masks[j] = s.masks
            dmasks[j] = s.distractor_masks.any(0)
    return ClipsDataset(
        clips=torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous(),
        labels=torch.from_numpy(labels),
        masks=torch.from_numpy(masks),
        distractor_masks=torch.from_numpy(dmasks),
        n_distractors=torch.from_numpy(n_d),
        velocities=torch.from_numpy(vel),
        seed=int(seed),
    )


# --------------------------------------------------------------------------------------------
# the classifier
# --------------------------------------------------------------------------------------------
def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
                         nn.ReLU(inplace=False))


class ClipsC3D(nn.Module):
    """A small 3-D CNN for :func:`make_clips` clips: ``(B, 3, T, H, W)`` in [0, 1] → ``(B, classes)``.

    Four Conv3d(3×3×3)-BN-ReLU blocks ``block1..block4``; max-pooling ``(1, 2, 2)`` after block 1
    and ``(2, 2, 2)`` after block 2, so ``block4`` (the last conv block, the CAM layer) has
    ``(T/2, H/4, W/4)`` positions. Heads:

    * ``"linear"``: global average pooling over ``(T, H, W)`` → Linear (the CAM architecture);
    * ``"mlp"``: a per-position MLP (1×1×1 Conv3d → ReLU) before the pooling → Linear, so the
      score is not linear in the last block's activations and its gradient varies with position.

    Example:
        >>> net = ClipsC3D(width=8)
        >>> net(torch.rand(2, 3, 8, 32, 32)).shape
        torch.Size([2, 6])
    """

    default_layer = "block4"

    def __init__(self, num_classes: int = len(CLASSES), width: int = 16, head: str = "linear") -> None:
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        w = width
        self.block1 = _block(3, w)
        self.pool1 = nn.MaxPool3d((1, 2, 2))
        self.block2 = _block(w, 2 * w)
        self.pool2 = nn.MaxPool3d((2, 2, 2))
        self.block3 = _block(2 * w, 4 * w)
        self.block4 = _block(4 * w, 4 * w)
        self.head_kind = head
        self.mlp = (nn.Sequential(nn.Conv3d(4 * w, 4 * w, 1), nn.ReLU(inplace=False))
                    if head == "mlp" else nn.Identity())
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` → last conv block output ``(B, 4w, T/2, H/4, W/4)``."""
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        return self.block4(self.block3(x))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, T, H, W)`` → logits ``(B, num_classes)``."""
        return self.fc(self.pool(self.mlp(self.features(x))).flatten(1))
