"""Train the shipped x4 super-resolution models and write them as safetensors.

Usage::

    python -m training.train_sr --model all --out src/lamcam/zoo/weights
    python -m training.train_sr --model sr_edsr --steps 50      # a short dry run
    python -m training.train_sr --model none --samples src/lamcam/zoo/samples/sr \\
        --figure docs/img/sr_samples.png

Needs scikit-image (the training images are its bundled data, see :mod:`training.sr_data`).
Recipe (every model): ``torch.manual_seed(seed)`` for the random initialisation, then
``model.init_bilinear()`` -- the identity path of the network (head, long skip, upsampler,
tail) is set so that the untrained network computes bilinear upsampling exactly, while every
other weight keeps its random value (the last conv of the residual body is zeroed). With a
budget of a few minutes on two CPU cores, a from-scratch start spends the whole budget learning
to reproduce the image (a dry run of the FSRCNN: still 1.9 dB *below* bicubic after 400 steps);
from the bilinear start every model is above bicubic within ~200 steps. Then a seeded
:class:`~training.sr_data.PatchSampler` (seed + 1) for the patches, Adam (betas 0.9, 0.99),
L1 loss, learning rate warmed up linearly over the first 3 % of the steps and then decayed by a
cosine to 2 % of the peak, ``torch.set_num_threads(threads)``. The number of steps is fixed per
model, so the run is reproducible on one machine; ``--time-limit`` (seconds) only guards against
overruns and is recorded when it cut a run short.

Evaluation: the held-out images (:data:`~training.sr_data.HELDOUT_IMAGES`), cropped to a
multiple of 4 at the bottom/right, degraded with :func:`~training.sr_data.degrade`; Y-PSNR /
RGB PSNR / Y-SSIM of the model and of bicubic upsampling, border of 4 pixels shaved.

The weights file stores in ``__metadata__``: ``name``, ``arch``, ``task`` ("sr"), ``scale``,
``in_channels``, ``input_range``, ``config`` (JSON), ``receptive_field`` (LR pixels or
"global"), ``num_params``, ``heldout`` (JSON: scores per held-out image), ``psnr_y_gain``
(mean Y-PSNR gain over bicubic, dB), ``steps``, ``batch_size``, ``lr_patch``, ``lr``,
``train_time_s``, ``seed``, ``train_images`` / ``heldout_images`` (JSON), ``degradation``,
``torch_version`` and ``command``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from lamcam._safetensors import save_file
from lamcam.zoo.sr import EDSR, FSRCNN, RCAN, SwinIRLite, receptive_field
from training import sr_data

ARCHS: dict[str, type[nn.Module]] = {
    "FSRCNN": FSRCNN,
    "EDSR": EDSR,
    "RCAN": RCAN,
    "SwinIRLite": SwinIRLite,
}

DEGRADATION = (
    "LR = round(255 * clamp(F.interpolate(HR, size=(H/4, W/4), mode='bicubic', "
    "align_corners=False, antialias=True), 0, 1)) / 255"
)


@dataclass(frozen=True)
class Recipe:
    """How one shipped SR model is built and trained."""

    name: str
    arch: str
    config: dict[str, Any]
    steps: int
    lr: float
    batch_size: int = 16
    lr_patch: int = 24
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "sr_fsrcnn": Recipe(
        "sr_fsrcnn", "FSRCNN", {"d": 96, "s": 48, "mapping": 6, "scale": 4}, steps=3000, lr=2e-3,
        description="FSRCNN-like plain CNN, receptive field 19 LR px",
    ),
    "sr_edsr": Recipe(
        "sr_edsr", "EDSR", {"n_feats": 32, "n_resblocks": 8, "scale": 4}, steps=1600, lr=1e-3,
        description="EDSR-like residual CNN (official EDSR key layout), receptive field 41 LR px",
    ),
    "sr_rcan": Recipe(
        "sr_rcan", "RCAN",
        {"n_feats": 32, "n_resgroups": 3, "n_resblocks": 4, "reduction": 8, "scale": 4},
        steps=1200, lr=1e-3,
        description="RCAN-like channel-attention CNN (spandrel RCAN key layout), global field",
    ),
    "sr_swinir": Recipe(
        "sr_swinir", "SwinIRLite",
        {"dim": 48, "depths": [4, 4], "heads": 4, "window": 8, "mlp_ratio": 2.0, "scale": 4},
        steps=1000, lr=1e-3,
        description="SwinIR-like window self-attention network, receptive field 74 LR px",
    ),
}


def heldout_pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, LR (1, 3, h, w), HR (1, 3, 4h, 4w))`` for every held-out image."""
    out = []
    for name in sr_data.HELDOUT_IMAGES:
        hr = sr_data.crop_to_multiple(sr_data.load_skimage(name))[None]
        out.append((name, sr_data.degrade(hr), hr))
    return out


@torch.no_grad()
def evaluate(model: nn.Module, pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict:
    """Scores per held-out image (see :func:`training.sr_data.evaluate_pair`)."""
    model.eval()
    return {name: sr_data.evaluate_pair(model(lr), lr, hr).as_dict() for name, lr, hr in pairs}


def _lr_at(step: int, total: int, peak: float) -> float:
    warm = max(1, int(0.03 * total))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def train_one(
    recipe: Recipe,
    images: list[torch.Tensor],
    pairs: list[tuple[str, torch.Tensor, torch.Tensor]],
    out_dir: Path | None,
    *,
    seed: int = 0,
    steps: int | None = None,
    time_limit: float | None = None,
    eval_every: int = 0,
    command: str = "",
) -> dict:
    """Train ``recipe``, evaluate on ``pairs``, save ``<out_dir>/<name>.safetensors``.

    Returns a summary dict (name, params, receptive_field, steps, train_time_s, heldout, path).
    """
    steps = steps or recipe.steps
    torch.manual_seed(seed)
    model = ARCHS[recipe.arch](**recipe.config)
    model.init_bilinear()  # start from exact bilinear upsampling (see the module docstring)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    sampler = sr_data.PatchSampler(images, recipe.lr_patch, sr_data.SCALE, seed=seed + 1)
    opt = torch.optim.Adam(params, lr=recipe.lr, betas=(0.9, 0.99))
    loss_fn = nn.L1Loss()
    t0 = time.perf_counter()
    done = 0
    bar = tqdm(range(steps), desc=recipe.name, leave=False, mininterval=2.0)
    run = 0.0
    for step in bar:
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
        model.train()
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, recipe.lr)
        lr_img, hr_img = sampler.batch(recipe.batch_size)
        loss = loss_fn(model(lr_img), hr_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        run = 0.95 * run + 0.05 * loss.item() if step else loss.item()
        bar.set_postfix(loss=f"{run:.4f}")
        if eval_every and done % eval_every == 0 and done < steps:
            sc = evaluate(model, pairs)
            gain = np.mean([s["psnr_y"] - s["bicubic_psnr_y"] for s in sc.values()])
            tqdm.write(f"{recipe.name} step {done}: loss {run:.4f}, Y-PSNR gain {gain:+.3f} dB "
                       f"({time.perf_counter() - t0:.0f} s)")
    train_time = time.perf_counter() - t0
    scores = evaluate(model, pairs)
    gain = float(np.mean([s["psnr_y"] - s["bicubic_psnr_y"] for s in scores.values()]))
    rf = receptive_field(model)
    summary = {
        "name": recipe.name,
        "arch": recipe.arch,
        "params": n_params,
        "receptive_field": "global" if rf is None else rf,
        "steps": done,
        "train_time_s": round(train_time, 1),
        "psnr_y_gain": round(gain, 4),
        "heldout": scores,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{recipe.name}.safetensors"
        meta = {
            "name": recipe.name,
            "arch": recipe.arch,
            "task": "sr",
            "scale": str(sr_data.SCALE),
            "in_channels": "3",
            "input_range": "1.0",
            "config": json.dumps(recipe.config),
            "receptive_field": str(summary["receptive_field"]),
            "num_params": str(n_params),
            "heldout": json.dumps(scores),
            "psnr_y_gain": f"{gain:.4f}",
            "steps": str(done),
            "planned_steps": str(steps),
            "batch_size": str(recipe.batch_size),
            "lr_patch": str(recipe.lr_patch),
            "lr": str(recipe.lr),
            "train_time_s": f"{train_time:.1f}",
            "seed": str(seed),
            "train_images": json.dumps(list(sr_data.TRAIN_IMAGES)),
            "heldout_images": json.dumps(list(sr_data.HELDOUT_IMAGES)),
            "degradation": DEGRADATION,
            "torch_version": torch.__version__,
            "command": command,
        }
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, path, metadata=meta)
        summary["path"] = str(path)
        summary["bytes"] = path.stat().st_size
    return summary


# --------------------------------------------------------------------------------------------
# bundled samples
# --------------------------------------------------------------------------------------------
#: Held-out crops bundled as PNG: name -> (image, top, left, HR height, HR width).
SAMPLE_CROPS: dict[str, tuple[str, int, int, int, int]] = {
    "brick": ("brick", 128, 128, 256, 256),
    "chelsea": ("chelsea", 40, 120, 256, 256),
    "rocket": ("rocket", 100, 384, 256, 256),
}


def _to_png(img: torch.Tensor, path: Path) -> None:
    arr = (img[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path, optimize=True)


def write_samples(out_dir: Path) -> list[Path]:
    """Write ``<name>_hr.png``, ``<name>_lr.png`` and ``samples.json`` for :data:`SAMPLE_CROPS`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, (src, top, left, h, w) in SAMPLE_CROPS.items():
        full = sr_data.load_skimage(src)
        hr = full[None, :, top : top + h, left : left + w]
        if hr.shape[-2:] != (h, w) or h % 4 or w % 4:
            raise ValueError(f"bad crop for {name}: {tuple(hr.shape)}")
        lr = sr_data.degrade(hr)
        _to_png(hr, out_dir / f"{name}_hr.png")
        _to_png(lr, out_dir / f"{name}_lr.png")
        entries[name] = {
            "lr": f"{name}_lr.png",
            "hr": f"{name}_hr.png",
            "source": f"skimage.data.{src}() (scikit-image {_skimage_version()})",
            "crop": {"top": top, "left": left, "height": h, "width": w},
            "license": sr_data.LICENSES[src],
            "degradation": DEGRADATION,
            "held_out": True,
        }
    path = out_dir / "samples.json"
    path.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    return sorted(out_dir.glob("*.png")) + [path]


#: Region of each bundled sample shown in the figure: name -> (top, left) of a 96 px HR crop.
FIGURE_CROPS: dict[str, tuple[int, int]] = {"brick": (80, 80), "chelsea": (40, 10), "rocket": (60, 16)}


def save_figure(path: Path, crop: int = 96) -> None:
    """Figure of the bundled samples: LR, bicubic, the four shipped models, HR (a ``crop`` px HR
    region, :data:`FIGURE_CROPS`; Y-PSNR of the whole sample in each title). Needs the weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lamcam import zoo

    def png(p: Path) -> torch.Tensor:
        arr = np.asarray(Image.open(p).convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255

    names = list(RECIPES)
    models = {n: zoo.load(n) for n in names}
    samples = zoo.sr_samples()
    cols = ["LR (nearest)", "bicubic", *names, "HR"]
    fig, axes = plt.subplots(len(samples), len(cols), figsize=(1.9 * len(cols), 2.1 * len(samples)))
    for r, s in enumerate(samples):
        lr, hr = png(s["lr"]), png(s["hr"])
        outs = {"LR (nearest)": F.interpolate(lr, scale_factor=4, mode="nearest"),
                "bicubic": sr_data.bicubic_upscale(lr), "HR": hr}
        with torch.no_grad():
            outs.update({n: m(lr).clamp(0, 1) for n, m in models.items()})
        t, lft = FIGURE_CROPS.get(s["name"], ((hr.shape[-2] - crop) // 2, (hr.shape[-1] - crop) // 2))
        for c, col in enumerate(cols):
            ax = axes[r, c]
            img = outs[col][0, :, t : t + crop, lft : lft + crop].permute(1, 2, 0).numpy()
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = col
            if col not in ("LR (nearest)", "HR"):
                title += f"\n{sr_data.psnr_y(outs[col], hr):.2f} dB"
            ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(s["name"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _skimage_version() -> str:
    import skimage

    return skimage.__version__


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=[*RECIPES, "all", "none"], default="all")
    p.add_argument("--out", type=Path, default=None, help="directory for <name>.safetensors")
    p.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=None, help="seconds per model (safety)")
    p.add_argument("--eval-every", type=int, default=0, help="held-out evaluation interval")
    p.add_argument("--samples", type=Path, default=None, help="also write the bundled samples")
    p.add_argument("--figure", type=Path, default=None,
                   help="after training, save a figure of the shipped models on the samples")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m training.train_sr " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.samples is not None:
        for path in write_samples(args.samples):
            print(f"wrote {path} ({path.stat().st_size} bytes)")
    names = list(RECIPES) if args.model == "all" else [] if args.model == "none" else [args.model]
    if not names:
        if args.figure is not None:
            save_figure(args.figure)
        return 0
    images = [sr_data.load_skimage(n) for n in sr_data.TRAIN_IMAGES]
    pairs = heldout_pairs()
    for name in names:
        s = train_one(
            RECIPES[name], images, pairs, args.out, seed=args.seed, steps=args.steps,
            time_limit=args.time_limit, eval_every=args.eval_every, command=command,
        )
        print(f"{name}: {s['params']} params, RF {s['receptive_field']}, {s['steps']} steps in "
              f"{s['train_time_s']} s, mean Y-PSNR gain {s['psnr_y_gain']:+.3f} dB")
        for img, sc in s["heldout"].items():
            print(f"  {img:8s} Y-PSNR {sc['psnr_y']:.2f} (bicubic {sc['bicubic_psnr_y']:.2f})  "
                  f"RGB {sc['psnr_rgb']:.2f} ({sc['bicubic_psnr_rgb']:.2f})  "
                  f"SSIM {sc['ssim_y']:.4f} ({sc['bicubic_ssim_y']:.4f})")
        if "path" in s:
            print(f"  -> {s['path']} ({s['bytes']} bytes)")
    if args.figure is not None:
        save_figure(args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
