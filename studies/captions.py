"""Captioned shapes: images of one or two coloured groups of shapes, their captions and exact
ground truth, plus a small image-to-caption model (:class:`ShapesCaptioner`).

Every image shows **one or two groups**. A group is 1-3 instances of one shape class
(:data:`lamcam.zoo.shapes.CLASSES`) painted in one named palette colour (:data:`COLOURS`); two
groups differ in class *and* colour, and an image holds at most four instances. The caption names
each group with a count word, a colour word and a (singular or plural) shape word, e.g.
``"two red squares"`` or ``"one blue circle and three yellow stars"``. Groups are mentioned in
class order (circle, square, triangle, cross, star, ring), so the caption is a function of the
image.

Conventions (as in :mod:`lamcam.zoo.shapes`):

* ``image``: ``(H, W, 3)`` float32 in ``[0, 1]``. Instances are painted with hard edges in the
  *exact* palette colour. The background is a desaturated, darkened version of the shapes
  backgrounds with every channel in ``[0.25, 0.6]``, so no background pixel has a palette colour
  (every palette colour has a channel >= 0.8 or <= 0.15) and every instance stays visible.
* ``masks``: ``(n, H, W)`` bool, the visible pixels of instance ``i``; ``group_of[i]`` is the
  index of its group in caption order (0 = first phrase).
* Tokens: ``<bos> w_1 ... w_k <eos> <pad> ...`` over :data:`VOCAB`, padded to :data:`MAX_LEN`.

Determinism: :func:`make_caption_sample` draws everything from the generator it is given;
:func:`make_caption_dataset` gives sample ``i`` the generator
:func:`lamcam.zoo.shapes.sample_rng` ``(seed, i)``, so a data set is a pure function of
``(seed, index)`` and does not depend on ``n`` or on chunking.

The model is trained by :mod:`studies.caption` (it is not in the zoo registry).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lamcam.zoo.shapes import _SHAPES, CLASSES, _background, _place, rasterize, sample_rng

__all__ = [
    "BOS",
    "COLOURS",
    "COUNT_WORDS",
    "EOS",
    "MAX_LEN",
    "PAD",
    "PLURALS",
    "VOCAB",
    "CaptionDataset",
    "CaptionSample",
    "Group",
    "ShapesCaptioner",
    "TeacherForced",
    "caption_text",
    "detokenize",
    "make_caption_dataset",
    "make_caption_sample",
    "phrase_positions",
    "token_logprob_target",
    "token_logprobs",
    "tokenize",
]

#: Palette: colour word -> exact RGB painted for instances of that colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.15),
    "blue": (0.1, 0.25, 0.95),
    "yellow": (0.95, 0.9, 0.1),
    "white": (1.0, 1.0, 1.0),
}
#: Count words for 1, 2, 3 instances.
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three")
#: Plural of each shape class.
PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "cross": "crosses", "star": "stars", "ring": "rings",
}
PAD, BOS, EOS = 0, 1, 2
#: The vocabulary; a token id is an index into it.
VOCAB: tuple[str, ...] = (
    ("<pad>", "<bos>", "<eos>") + COUNT_WORDS + tuple(COLOURS)
    + tuple(w for c in CLASSES for w in (c, PLURALS[c])) + ("and",)
)
_INDEX = {w: i for i, w in enumerate(VOCAB)}
#: Token sequence length: <bos> + "three red circles and one blue star" (7 words) + <eos>.
MAX_LEN = 9
_MAX_TOTAL = 4  # instances per image (what lamcam.zoo.shapes._place supports)
_BG_LO, _BG_HI = 0.25, 0.6
# Instance-count pairs for two-group images (total <= 4), drawn uniformly.
_PAIRS = ((1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2))


# --------------------------------------------------------------------------------------------
# captions and tokens
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """One group of a caption: ``count`` instances of ``shape`` in ``colour``.

    Example:
        >>> Group("star", "red", 2).phrase
        'two red stars'
    """

    shape: str
    colour: str
    count: int

    @property
    def phrase(self) -> str:
        """``"<count> <colour> <shape or plural>"``."""
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        return f"{COUNT_WORDS[self.count - 1]} {self.colour} {noun}"


def caption_text(groups: Sequence[Group]) -> str:
    """The caption of ``groups`` (in the given order), phrases joined by ``"and"``.

    Example:
        >>> caption_text([Group("circle", "blue", 1), Group("star", "yellow", 3)])
        'one blue circle and three yellow stars'
    """
    return " and ".join(g.phrase for g in groups)


def tokenize(caption: str, max_len: int = MAX_LEN) -> list[int]:
    """``"two red squares"`` -> ``[<bos>, two, red, squares, <eos>, <pad>, ...]`` (``max_len`` ids).

    Example:
        >>> detokenize(tokenize("two red squares"))
        'two red squares'
    """
    words = caption.split()
    unknown = [w for w in words if w not in _INDEX or _INDEX[w] <= EOS]
    if unknown:
        raise ValueError(f"words not in the caption vocabulary: {unknown}")
    ids = [BOS] + [_INDEX[w] for w in words] + [EOS]
    if len(ids) > max_len:
        raise ValueError(f"caption {caption!r} needs {len(ids)} tokens, more than max_len={max_len}")
    return ids + [PAD] * (max_len - len(ids))


def detokenize(ids: Sequence[int] | Tensor) -> str:
    """Token ids -> caption text: skips ``<bos>``/``<pad>``, stops at the first ``<eos>``."""
    words = []
    for t in (ids.tolist() if isinstance(ids, Tensor) else ids):
        t = int(t)
        if t == EOS:
            break
        if t in (PAD, BOS):
            continue
        words.append(VOCAB[t])
    return " ".join(words)


def phrase_positions(groups: Sequence[Group], g: int) -> list[int]:
    """Positions, in the token sequence of ``caption_text(groups)``, of group ``g``'s phrase.

    Position 0 is ``<bos>``; every phrase has three words, joined by ``"and"``.

    Example:
        >>> gs = [Group("circle", "blue", 1), Group("star", "yellow", 3)]
        >>> phrase_positions(gs, 0), phrase_positions(gs, 1)
        ([1, 2, 3], [5, 6, 7])
    """
    if not 0 <= g < len(groups):
        raise IndexError(f"group {g} of a caption with {len(groups)} group(s)")
    start = 1 + 4 * g
    return [start, start + 1, start + 2]


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------
@dataclass
class CaptionSample:
    """One image with its caption and exact ground truth.

    Attributes:
        image: ``(H, W, 3)`` float32 in ``[0, 1]``.
        groups: the groups in caption order.
        masks: ``(n, H, W)`` bool, visible pixels of each instance.
        group_of: ``(n,)`` int64, the group (index into ``groups``) of each instance.
    """

    image: np.ndarray
    groups: list[Group]
    masks: np.ndarray
    group_of: np.ndarray

    @property
    def caption(self) -> str:
        """The caption text."""
        return caption_text(self.groups)

    @property
    def tokens(self) -> list[int]:
        """``tokenize(caption)``, :data:`MAX_LEN` ids."""
        return tokenize(self.caption)

    def group_masks(self, g: int) -> np.ndarray:
        """``(k, H, W)`` instance masks of group ``g``."""
        return self.masks[self.group_of == g]


def _caption_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A shapes background, desaturated and mapped into ``[0.25, 0.6]`` per channel."""
    bg = _background(rng, size)
    grey = bg.mean(axis=-1, keepdims=True)
    return _BG_LO + (_BG_HI - _BG_LO) * (0.75 * grey + 0.25 * bg)


def make_caption_sample(rng: np.random.Generator, size: int = 64, n_groups: int | None = None
                        ) -> CaptionSample:
    """Draw one captioned image.

    Args:
        rng: source of all randomness.
        size: image side in pixels (shape sizes scale with it; >= 48 recommended).
        n_groups: 1 or 2; drawn with equal probability when None.

    Returns:
        A :class:`CaptionSample` with ``image (size, size, 3)`` and ``masks (n, size, size)``,
        ``n <= 4``.
    """
    if n_groups is None:
        n_groups = int(rng.integers(1, 3))
    if n_groups not in (1, 2):
        raise ValueError(f"n_groups must be 1 or 2, got {n_groups}")
    if n_groups == 1:
        counts: tuple[int, ...] = (int(rng.integers(1, 4)),)
    else:
        counts = _PAIRS[int(rng.integers(len(_PAIRS)))]
    shapes = rng.choice(len(CLASSES), size=n_groups, replace=False)
    colours = rng.choice(len(COLOURS), size=n_groups, replace=False)
    names = list(COLOURS)
    drawn = [Group(CLASSES[int(s)], names[int(c)], k)
             for s, c, k in zip(shapes, colours, counts, strict=True)]
    order = sorted(range(n_groups), key=lambda i: CLASSES.index(drawn[i].shape))
    groups = [drawn[i] for i in order]
    rank = {i: r for r, i in enumerate(order)}

    canvas = _caption_background(rng, size)
    n = sum(counts)
    centres, radii = _place(rng, n, size)
    group_of = np.repeat([rank[i] for i in range(n_groups)], counts).astype(np.int64)
    owner = np.full((size, size), -1, dtype=np.int64)
    for i, ((cx, cy), r) in enumerate(zip(centres, radii, strict=True)):
        grp = groups[int(group_of[i])]
        theta = rng.uniform(0.0, 2 * np.pi)
        win, inside = rasterize(_SHAPES[grp.shape], cx, cy, r, theta, size)
        canvas[win][inside] = COLOURS[grp.colour]
        owner[win][inside] = i
    masks = owner[None] == np.arange(n)[:, None, None]
    return CaptionSample(canvas.astype(np.float32), groups, masks, group_of)


@dataclass
class CaptionDataset:
    """A generated captioned data set.

    Attributes:
        images: ``(N, 3, H, W)`` float32 tensor in ``[0, 1]``.
        tokens: ``(N, MAX_LEN)`` int64 tensor of caption token ids.
        samples: the ``N`` :class:`CaptionSample` objects (images as numpy, masks, groups).
        seed: the data-set seed.
    """

    images: Tensor
    tokens: Tensor
    samples: list[CaptionSample]
    seed: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def make_caption_dataset(n: int, seed: int, size: int = 64, *, start: int = 0) -> CaptionDataset:
    """Samples ``start .. start + n - 1`` of data set ``seed``: sample ``i`` is
    ``make_caption_sample(sample_rng(seed, i), size)``.
    """
    samples = [make_caption_sample(sample_rng(seed, start + j), size) for j in range(n)]
    images = np.stack([s.image for s in samples]) if samples else np.zeros((0, size, size, 3), np.float32)
    return CaptionDataset(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        tokens=torch.tensor([s.tokens for s in samples], dtype=torch.long).reshape(n, MAX_LEN),
        samples=samples,
        seed=int(seed),
    )


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
class ShapesCaptioner(nn.Module):
    """CNN encoder + GRU decoder with dot-product attention over the encoder's feature grid.

    * ``encoder`` (``nn.Sequential``): four conv3x3-BN-ReLU stages with ``widths`` channels; the
      first conv has stride 2 and 2x2 max-pools follow stages 2 and 3, so the last module
      ``encoder.relu4`` outputs the feature map ``(B, widths[-1], H/8, W/8)`` (the CAM layer).
    * decoder: ``h_0 = tanh(init(mean feature))``; a GRU reads the embedded input tokens; at each
      step the hidden state queries the ``H/8 * W/8`` grid cells (keys and values are linear maps
      of the features) and ``[h_t, context_t]`` goes through a two-layer head to the logits.

    ``forward(images (B, 3, H, W) in [0, 1], tokens_in (B, L)) -> logits (B, L, len(VOCAB))``
    (teacher forcing: ``logits[:, t]`` predicts token ``t + 1`` of the caption).
    """

    def __init__(self, vocab_size: int = len(VOCAB), widths: Sequence[int] = (16, 32, 64, 128),
                 hidden: int = 128, embed: int = 32) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must give the channels of the 4 conv stages, got {widths}")
        chans = (3, *widths)
        layers: list[tuple[str, nn.Module]] = []
        for k in range(1, 5):
            stride = 2 if k == 1 else 1  # the stem halves the resolution (cheap at 64x64)
            conv = nn.Conv2d(chans[k - 1], chans[k], 3, stride=stride, padding=1, bias=False)
            layers += [(f"conv{k}", conv),
                       (f"bn{k}", nn.BatchNorm2d(chans[k])), (f"relu{k}", nn.ReLU())]
            if k in (2, 3):
                layers.append((f"pool{k}", nn.MaxPool2d(2)))
        self.encoder = nn.Sequential(OrderedDict(layers))
        c = chans[-1]
        self.init = nn.Linear(c, hidden)
        self.key = nn.Linear(c, hidden)
        self.value = nn.Linear(c, hidden)
        self.embed = nn.Embedding(vocab_size, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.query = nn.Linear(hidden, hidden)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, vocab_size))
        self.hidden = hidden

    #: Dotted name of the CAM layer (the encoder's last ReLU).
    cam_layer = "encoder.relu4"

    def encode(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> feature map ``(B, C, H/8, W/8)``."""
        return self.encoder((images - 0.5) / 0.25)

    def _memory(self, feats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        grid = feats.flatten(2).transpose(1, 2)  # (B, N, C)
        h0 = torch.tanh(self.init(grid.mean(1)))  # (B, hidden)
        return h0, self.key(grid), self.value(grid)

    def _step_out(self, h: Tensor, keys: Tensor, values: Tensor) -> Tensor:
        """``h (B, L, hidden)`` -> logits ``(B, L, V)``."""
        att = torch.softmax(self.query(h) @ keys.transpose(1, 2) / self.hidden**0.5, dim=-1)
        return self.head(torch.cat([h, att @ values], dim=-1))

    def decode(self, feats: Tensor, tokens_in: Tensor) -> Tensor:
        """Teacher-forced logits ``(B, L, V)`` from features ``(B, C, h, w)`` and ``tokens_in (B, L)``."""
        h0, keys, values = self._memory(feats)
        hs, _ = self.gru(self.embed(tokens_in), h0[None].contiguous())
        return self._step_out(hs, keys, values)

    def forward(self, images: Tensor, tokens_in: Tensor) -> Tensor:
        """``images (B, 3, H, W)``, ``tokens_in (B, L)`` -> logits ``(B, L, V)``."""
        return self.decode(self.encode(images), tokens_in)

    @torch.no_grad()
    def generate(self, images: Tensor, max_len: int = MAX_LEN) -> Tensor:
        """Greedy decoding: ``(B, max_len)`` ids starting with ``<bos>``, ``<pad>`` after ``<eos>``."""
        h0, keys, values = self._memory(self.encode(images))
        b = images.shape[0]
        out = torch.full((b, max_len), PAD, dtype=torch.long, device=images.device)
        out[:, 0] = BOS
        done = torch.zeros(b, dtype=torch.bool, device=images.device)
        h = h0[None].contiguous()
        for t in range(1, max_len):
            y, h = self.gru(self.embed(out[:, t - 1 : t]), h)
            nxt = self._step_out(y, keys, values)[:, 0].argmax(-1)
            out[:, t] = torch.where(done, torch.full_like(nxt, PAD), nxt)
            done |= nxt == EOS
        return out


class TeacherForced(nn.Module):
    """``images -> logits``: a captioner with a fixed batch of input tokens, so that a CAM method
    (which calls ``model(images)``) can explain caption scores.

    Args:
        captioner: a :class:`ShapesCaptioner` (any ``model(images, tokens_in)`` works).
        tokens_in: ``(B, L)`` input tokens for the images that will be passed (``tokens[:, :-1]``).

    Its CAM layer is ``"captioner." + captioner.cam_layer``.
    """

    def __init__(self, captioner: nn.Module, tokens_in: Tensor) -> None:
        super().__init__()
        self.captioner = captioner
        self.tokens_in = tokens_in

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> logits ``(B, L, V)``."""
        if images.shape[0] != self.tokens_in.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {self.tokens_in.shape[0]} token rows")
        return self.captioner(images, self.tokens_in)


def token_logprobs(logits: Tensor, tokens_out: Tensor) -> Tensor:
    """Log-probabilities ``(B, L)`` of ``tokens_out (B, L)`` under ``logits (B, L, V)``."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens_out[..., None])[..., 0]


def token_logprob_target(tokens_out: Tensor, weights: Tensor) -> Callable[[Tensor], Tensor]:
    """A CAM target: ``logits (B, L, V) -> (B,)`` sum of the log-probabilities of the selected tokens.

    Args:
        tokens_out: ``(B, L)`` the tokens to score (``tokens[:, 1:]`` for teacher forcing).
        weights: ``(B, L)`` bool or float: which positions count (the whole caption: every
            non-pad position; a phrase: its three positions).

    Example:
        >>> logits = torch.zeros(1, 3, 4)                     # uniform: log p = -log 4 per token
        >>> f = token_logprob_target(torch.tensor([[1, 2, 0]]), torch.tensor([[True, True, False]]))
        >>> round(float(f(logits)[0]), 4), round(-2 * float(torch.log(torch.tensor(4.0))), 4)
        (-2.7726, -2.7726)
    """
    w = weights.to(torch.get_default_dtype()) if weights.dtype == torch.bool else weights

    def score(logits: Tensor) -> Tensor:
        return (token_logprobs(logits, tokens_out.to(logits.device)) * w.to(logits)).sum(dim=1)

    return score
