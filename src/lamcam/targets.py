"""What to explain: turning a target specification into per-image scores.

A target is one of

* ``None`` — the predicted class of each image;
* an ``int`` — that class for every image;
* a sequence or tensor of ``B`` ints — one class per image; a ``(B, K)`` tensor — K classes each;
* :class:`TopK` ``(k)`` — the k highest-scoring classes of each image (k maps per image);
* a callable ``outputs -> (B,)`` — any differentiable score of the model's raw outputs
  (a segmentation region, a caption's summed token log-probabilities, a detection score).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Target", "TopK", "extract_logits", "resolve_target", "parse_target"]


@dataclass(frozen=True)
class TopK:
    """The ``k`` highest-scoring classes of each image, best first.

    Example:
        >>> TopK(5).k
        5
    """

    k: int

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"TopK needs a positive integer k, got {self.k!r}")


Target = None | int | Sequence[int] | Tensor | TopK | Callable[[object], Tensor]


def extract_logits(outputs: object) -> Tensor | None:
    """The ``(B, num_classes)`` logits in a model's outputs, as models return them, or None.

    A tensor is the logits; so is the ``logits`` field of a Hugging Face ``ModelOutput``, of any
    object with a ``logits`` attribute, or of a dict; and the first element of a tuple or list
    (timm's distilled models return ``(logits, distillation_logits)`` in distilled training).

    Example:
        >>> extract_logits({"logits": torch.zeros(2, 5), "loss": None}).shape
        torch.Size([2, 5])
        >>> extract_logits((torch.ones(2, 3), torch.zeros(2, 3))).sum().item()
        6.0
    """
    if isinstance(outputs, Tensor):
        return outputs
    found = outputs.get("logits") if isinstance(outputs, dict) else getattr(outputs, "logits", None)
    if isinstance(found, Tensor):
        return found
    if isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    return None


def no_logits_error(outputs: object) -> ValueError:
    """The error for class targets on outputs that carry no logits."""
    what = type(outputs).__name__
    if isinstance(outputs, dict):
        what += f" with keys {sorted(map(str, outputs))[:8]}"
    return ValueError(
        f"class targets need logits, but the model returned {what}: no tensor, no 'logits' field "
        "and no tuple starting with a tensor. Pass target=callable(outputs) -> (B,) scores that "
        "picks the score to explain"
    )


def resolve_target(outputs: object, target: Target) -> tuple[Tensor, Tensor | None, bool]:
    """Scores to differentiate for each image and target.

    Args:
        outputs: the model's output; unless ``target`` is callable, it must carry ``(B, num_classes)``
            logits (see :func:`extract_logits`).
        target: see the module docstring.

    Returns:
        ``(scores, indices, multi)``: ``scores`` is ``(B, K)`` (pre-softmax class scores, or the
        callable's values with K = 1), ``indices`` the ``(B, K)`` class indices or ``None`` for a
        callable, and ``multi`` whether the caller asked for several targets per image (TopK or a
        2-D tensor), in which case maps keep a K dimension.

    Example:
        >>> logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])
        >>> s, idx, multi = resolve_target(logits, None)
        >>> idx.tolist(), multi
        ([[1], [0]], False)
    """
    if callable(target) and not isinstance(target, TopK | Tensor):
        scores = target(outputs)
        if not isinstance(scores, Tensor):
            raise TypeError(f"the target callable must return a tensor, got {type(scores).__name__}")
        batch = _batch_size(outputs)
        if scores.ndim != 1 or (batch is not None and scores.shape[0] != batch):
            raise ValueError(
                f"the target callable must return one score per image, shape ({batch},); "
                f"got {tuple(scores.shape)}. Reduce over classes/pixels/tokens inside it"
            )
        if not scores.requires_grad:
            raise ValueError(
                "the target callable returned scores that do not depend on the model's outputs "
                "(no gradient); compute them from the outputs it receives"
            )
        return scores[:, None], None, False

    logits = extract_logits(outputs)
    if logits is None:
        raise no_logits_error(outputs)
    if logits.ndim != 2:
        raise ValueError(
            f"class targets need (B, num_classes) logits, the model returned {tuple(logits.shape)}; "
            "pass target=callable(outputs) -> (B,) scores instead"
        )
    outputs = logits
    batch, num_classes = outputs.shape
    multi = False
    if target is None:
        idx = outputs.argmax(dim=1, keepdim=True)
    elif isinstance(target, TopK):
        if target.k > num_classes:
            raise ValueError(f"TopK({target.k}) asked of a model with {num_classes} classes")
        idx = outputs.topk(target.k, dim=1).indices
        multi = True
    elif isinstance(target, bool):
        raise TypeError("target must be a class index, not a bool")
    elif isinstance(target, str | bytes):
        hint = f" (the class index {int(target)})" if str(target).strip().isdigit() else ""
        raise TypeError(f"target {target!r} is a string; pass a class index as an int{hint}, a "
                        "sequence of ints, lamcam.TopK(k), or a callable")
    elif isinstance(target, int):
        idx = torch.full((batch, 1), target, dtype=torch.long, device=outputs.device)
    else:
        try:
            t = torch.as_tensor(target, device=outputs.device)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"target {target!r} is not a class index, a sequence of them, TopK or "
                            "a callable") from e
        if t.numel() == 0:
            raise ValueError("the target is empty; give one class per image, a single int for "
                             "all, TopK(k), or None for the predicted class")
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"target indices must be integers, got dtype {t.dtype}")
        t = t.long()
        if t.ndim == 0:
            idx = t.expand(batch, 1).clone()
        elif t.ndim == 1:
            if t.shape[0] != batch:
                raise ValueError(
                    f"{t.shape[0]} targets given for {batch} images; give one per image, a single "
                    "int for all, or TopK(k)"
                )
            idx = t[:, None]
        elif t.ndim == 2 and t.shape[0] == batch:
            idx, multi = t, True
        else:
            raise ValueError(f"targets of shape {tuple(t.shape)} do not fit a batch of {batch}")
    bad = (idx < 0) | (idx >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"target class {int(idx[bad][0])} is out of range: the model has {num_classes} "
            f"classes (0..{num_classes - 1})"
        )
    return outputs.gather(1, idx), idx, multi


def _batch_size(outputs: object) -> int | None:
    if isinstance(outputs, Tensor):
        return outputs.shape[0]
    if isinstance(outputs, tuple | list) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0].shape[0]
    if isinstance(outputs, dict):
        for v in outputs.values():
            if isinstance(v, Tensor):
                return v.shape[0]
    return None


def parse_target(spec: str, classes: Sequence[str] | None = None) -> int | TopK | None:
    """A target written as text (``lamcam cam --target``, ``lamcam batch cam --target``).

    ``"pred"`` -> ``None`` (predicted class); ``"3"`` -> ``3``; ``"top5"`` -> ``TopK(5)``;
    a class name from ``classes`` (case-insensitive) -> its index.

    Raises:
        ValueError: unrecognised specification (the message lists the forms and the classes).

    Example:
        >>> parse_target("pred") is None, parse_target("2"), parse_target("star", ["o", "star"])
        (True, 2, 1)
        >>> parse_target("top3").k
        3
    """
    import re

    s = spec.strip()
    if s.lower() in ("pred", "predicted", "none"):
        return None
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    m = re.fullmatch(r"top-?(\d+)", s.lower())
    if m:
        k = int(m.group(1))
        if k < 1:
            raise ValueError(f"target {spec!r}: k must be at least 1")
        return TopK(k)
    if classes:
        lowered = [c.lower() for c in classes]
        if s.lower() in lowered:
            return lowered.index(s.lower())
        raise ValueError(f"target {spec!r} is not 'pred', a class index, 'topK' or a class name "
                         f"(classes: {', '.join(classes)})")
    raise ValueError(f"target {spec!r} is not 'pred', a class index or 'topK' (e.g. top5)")
