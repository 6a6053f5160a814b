"""Train the shipped shapes classifiers and write them as safetensors.

Usage::

    python -m training.train_classifiers --model all --out src/lamcam/zoo/weights

Everything is seeded: the training set is ``make_dataset(n_train, seed=TRAIN_SEED)``, the
held-out set ``make_dataset(n_eval, seed=EVAL_SEED)`` (a different seed, so no image is shared),
and ``torch.manual_seed(seed)`` fixes initialisation and batch order. Augmentation is a random
element of the dihedral group (flips / transposes) per image, which leaves every class unchanged.

The weights file stores in ``__metadata__``: ``arch``, ``name``, ``task``, ``classes`` (JSON
list), ``input_size``, ``default_layer``, ``config`` (JSON kwargs of the architecture),
``accuracy`` (held-out), ``eval_seed``, ``eval_n``, ``seed``, ``train_seed``, ``n_train``,
``epochs``, ``train_time_s``, ``num_params``, ``torch_version``, ``threads`` and the command line.

Reproducible bit for bit only with the same torch build, the same ``--threads`` (the shipped
files: 2) and the same kind of CPU: the thread count and the CPU's instruction set decide the
order of float reductions in the convolutions and matrix products, so one thread and two, or two
CPUs, give different weights (docs/zoo.md). The load of the machine does not matter.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lamcam._safetensors import save_file
from lamcam.zoo.classifiers import (
    RESNET_DEFAULT_LAYER,
    VGG_DEFAULT_LAYER,
    ShapesResNet,
    ShapesVGG,
)
from lamcam.zoo.shapes import CLASSES, DEFAULT_SIZE, ShapesDataset, make_dataset

TRAIN_SEED = 1000
EVAL_SEED = 2000


@dataclass(frozen=True)
class Recipe:
    """How one shipped model is built and trained."""

    name: str
    arch: str
    config: dict
    default_layer: str
    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 5e-4


RECIPES: dict[str, Recipe] = {
    "shapes_vgg": Recipe(
        name="shapes_vgg",
        arch="ShapesVGG",
        config={"num_classes": len(CLASSES), "width": 32},
        default_layer=VGG_DEFAULT_LAYER,
        epochs=3,
        lr=3e-3,
    ),
    "shapes_resnet": Recipe(
        name="shapes_resnet",
        arch="ShapesResNet",
        config={"num_classes": len(CLASSES), "width": 32, "blocks": 1},
        default_layer=RESNET_DEFAULT_LAYER,
        epochs=4,
        lr=3e-3,
    ),
}

_ARCHS = {"ShapesVGG": ShapesVGG, "ShapesResNet": ShapesResNet}


def dihedral_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply an independent random flip/transpose (8 dihedral symmetries) to each image.

    ``x``: ``(B, C, H, H)`` square images -> same shape.
    """
    b = x.shape[0]
    flips = torch.rand(b, 3, generator=gen) < 0.5
    sel = flips[:, 0].view(b, 1, 1, 1)
    x = torch.where(sel, x.flip(3), x)
    sel = flips[:, 1].view(b, 1, 1, 1)
    x = torch.where(sel, x.flip(2), x)
    sel = flips[:, 2].view(b, 1, 1, 1)
    return torch.where(sel, x.transpose(2, 3), x)


@torch.no_grad()
def evaluate(model: nn.Module, data: ShapesDataset, batch_size: int = 250) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (model put in eval mode)."""
    model.eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        x = data.images[i : i + batch_size].contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1) == data.labels[i : i + batch_size]).sum())
    return correct / len(data)


def train_one(
    recipe: Recipe,
    train: ShapesDataset,
    held_out: ShapesDataset,
    out_dir: Path,
    *,
    seed: int,
    epochs: int | None = None,
    command: str = "",
) -> dict:
    """Train ``recipe``, evaluate on ``held_out``, save ``<out_dir>/<name>.safetensors``.

    Returns a summary dict (name, accuracy, params, train_time_s, path, bytes).
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    epochs = epochs or recipe.epochs
    model = _ARCHS[recipe.arch](**recipe.config).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"{recipe.name} {epoch + 1}/{epochs}", leave=False)
        run_loss = run_acc = 0.0
        for step in bar:
            idx = perm[step * recipe.batch_size : (step + 1) * recipe.batch_size]
            x = dihedral_augment(train.images[idx], gen).contiguous(
                memory_format=torch.channels_last
            )
            y = train.labels[idx]
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_loss = 0.95 * run_loss + 0.05 * float(loss) if step else float(loss)
            acc = float((logits.argmax(1) == y).float().mean())
            run_acc = 0.95 * run_acc + 0.05 * acc if step else acc
            if step % 20 == 0:
                bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}")
        val = evaluate(model, held_out)
        print(
            f"{recipe.name} epoch {epoch + 1}/{epochs}: train loss {run_loss:.4f} "
            f"acc {run_acc:.4f} | held-out acc {val:.4f} | {time.perf_counter() - t0:.0f}s",
            flush=True,
        )
    train_time = time.perf_counter() - t0
    model = model.to(memory_format=torch.contiguous_format).eval()
    accuracy = evaluate(model, held_out)

    meta = {
        "name": recipe.name,
        "arch": recipe.arch,
        "task": "classification",
        "classes": json.dumps(list(CLASSES)),
        "input_size": str(DEFAULT_SIZE),
        "default_layer": recipe.default_layer,
        "config": json.dumps(recipe.config, sort_keys=True),
        "accuracy": f"{accuracy:.4f}",
        "eval_seed": str(held_out.seed),
        "eval_n": str(len(held_out)),
        "seed": str(seed),
        "train_seed": str(train.seed),
        "n_train": str(len(train)),
        "epochs": str(epochs),
        "train_time_s": f"{train_time:.1f}",
        "num_params": str(n_params),
        "torch_version": torch.__version__,
        "threads": str(torch.get_num_threads()),  # the weights depend on it (docs/zoo.md)
        "command": command,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{recipe.name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, path, metadata=meta)
    summary = {
        "name": recipe.name,
        "accuracy": accuracy,
        "params": n_params,
        "train_time_s": round(train_time, 1),
        "path": str(path),
        "bytes": path.stat().st_size,
    }
    print(json.dumps(summary), flush=True)
    return summary


SAMPLES_SEED = 3000
#: (label, n_instances) of the bundled samples: every class once, every count 1..4.
SAMPLE_PLAN = ((0, 3), (1, 2), (2, 4), (3, 1), (4, 4), (5, 2))


def write_samples(out_dir: Path) -> list[Path]:
    """Write the bundled sample images, instance-id masks and ``samples.json`` to ``out_dir``.

    Sample ``k`` is ``make_sample(sample_rng(SAMPLES_SEED, k), label=.., n_instances=..)``
    (a seed used neither for training nor for the held-out evaluation), stored as an 8-bit RGB
    PNG ``<k>_<class>.png`` of size 64x64, and ``<k>_<class>_mask.png`` (8-bit, 0 = background,
    i + 1 = instance i). ``samples.json`` maps file name -> label, class_name, n_instances,
    boxes ``[[x0, y0, x1, y1], ...]`` (end-exclusive), mask_file, seed, index.
    """
    from PIL import Image

    from lamcam.zoo.shapes import make_sample, sample_rng

    out_dir.mkdir(parents=True, exist_ok=True)
    ann: dict[str, dict] = {}
    paths = []
    for k, (label, n) in enumerate(SAMPLE_PLAN):
        s = make_sample(sample_rng(SAMPLES_SEED, k), DEFAULT_SIZE, n_instances=n, label=label)
        stem = f"{k}_{CLASSES[label]}"
        img = (s.image * 255).round().clip(0, 255).astype("uint8")
        Image.fromarray(img).save(out_dir / f"{stem}.png")
        ids = (s.masks * (1 + np.arange(n))[:, None, None]).sum(0).astype("uint8")
        Image.fromarray(ids).save(out_dir / f"{stem}_mask.png")
        ann[f"{stem}.png"] = {
            "label": s.label,
            "class_name": s.class_name,
            "n_instances": s.n_instances,
            "boxes": s.boxes.tolist(),
            "mask_file": f"{stem}_mask.png",
            "seed": SAMPLES_SEED,
            "index": k,
        }
        paths.append(out_dir / f"{stem}.png")
    (out_dir / "samples.json").write_text(json.dumps(ann, indent=1) + "\n")
    return paths


def save_figure(path: Path, per_class: int = 2) -> None:
    """Save a grid of held-out-style samples (``per_class`` rows x one column per class) with
    their ground-truth boxes drawn, for the docs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from lamcam.zoo.shapes import make_sample, sample_rng

    fig, axes = plt.subplots(per_class, len(CLASSES), figsize=(1.6 * len(CLASSES), 1.75 * per_class))
    for r in range(per_class):
        for c, name in enumerate(CLASSES):
            s = make_sample(sample_rng(SAMPLES_SEED + 1, r * len(CLASSES) + c), label=c)
            ax = axes[r, c]
            ax.imshow(s.image, interpolation="nearest")
            for x0, y0, x1, y1 in s.boxes:
                ax.add_patch(
                    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.8, ec="w")
                )
            ax.set_title(f"{name} x{s.n_instances}", fontsize=8)
            ax.axis("off")
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=[*RECIPES, "all", "none"], default="all")
    p.add_argument("--out", type=Path,
                   default=Path(__file__).resolve().parents[1] / "src" / "lamcam" / "zoo" / "weights")
    p.add_argument("--n-train", type=int, default=30000, help="training images")
    p.add_argument("--n-eval", type=int, default=2000, help="held-out images")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=0, help="torch seed (init, batch order, aug)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads; the weights are bit-identical only for the same count "
                        "(the shipped files: 2)")
    p.add_argument("--samples", type=Path, default=None, help="also write bundled samples here")
    p.add_argument("--figure", type=Path, default=None, help="also save the docs sample grid")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m training.train_classifiers " + " ".join(
        sys.argv[1:] if argv is None else argv
    )

    if args.samples is not None:
        print(f"wrote {len(write_samples(args.samples))} samples to {args.samples}")
    if args.figure is not None:
        save_figure(args.figure)
        print(f"saved {args.figure}")
    if args.model == "none":
        return 0

    t = time.perf_counter()
    train = make_dataset(args.n_train, TRAIN_SEED, with_masks=False)
    held_out = make_dataset(args.n_eval, EVAL_SEED, with_masks=False)
    print(
        f"generated {len(train)} train (seed {TRAIN_SEED}) + {len(held_out)} held-out "
        f"(seed {EVAL_SEED}) images in {time.perf_counter() - t:.1f}s",
        flush=True,
    )
    names = list(RECIPES) if args.model == "all" else [args.model]
    for name in names:
        train_one(
            RECIPES[name], train, held_out, args.out, seed=args.seed, epochs=args.epochs,
            command=command,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
