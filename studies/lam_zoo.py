"""Study (c): LAM across the SR zoo — Diffusion Index, PSNR, receptive field and content.

Claims tested (Gu & Dong, CVPR 2021, §5): networks that use a wider range of input pixels (higher
Diffusion Index) reconstruct better (higher PSNR); a larger theoretical receptive field does not by
itself mean a larger DI; and networks draw on more distant pixels for regular content (stripes,
grids), whose repetitions they can exploit, than for irregular texture.

Patches:

* natural — the three held-out images (brick, chelsea, rocket; 64² LR each), 8 windows of 16² SR
  pixels per image, picked greedily by edge energy (LAM's gradient detector on the HR image) with
  no two windows overlapping and a margin of 16 SR pixels to the border;
* synthetic — 256² HR images degraded exactly like the training data: stripes and grids (square
  waves, period 10–16 HR pixels, random orientation and colours) and, as the irregular control,
  "dead leaves" (random overlapping discs); the window is the image centre.

Every LR input is 64², so DIs are comparable across patches (DI counts all LR pixels).

Run::

    python -m studies.lam_zoo            # full study, publishes into docs/results.md
    python -m studies.lam_zoo --quick
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lamcam.batch.windows import edge_energy, edge_windows
from studies._common import (
    StudyRun,
    command_line,
    csv_text,
    md_table,
    publish,
    setup_from_args,
    study_parser,
)

NAME = "lam_zoo"
MODELS = ("sr_fsrcnn", "sr_edsr", "sr_rcan", "sr_swinir")
WINDOW = 16
SCALE = 4
HR = 256
SEED = 7300
KINDS = ("stripes", "grid", "dead-leaves")


# --------------------------------------------------------------------------------------------
# patches
# --------------------------------------------------------------------------------------------
def pick_windows(hr: torch.Tensor, k: int, window: int = WINDOW, margin: int = WINDOW,
                 scale: int = SCALE) -> list[tuple[int, int, float]]:
    """The ``k`` highest edge-energy windows on the LR grid, pairwise non-overlapping (the
    criterion lives in the library, :func:`lamcam.batch.windows.edge_windows`, which ``lamcam
    batch lam --windows edges:K`` uses too). Returns ``[(row, col, energy)]`` in SR pixels."""
    return edge_windows(hr, k, window, scale=scale, margin=margin)


def periodicity(hr: torch.Tensor, row: int, col: int, size: int = 48) -> float:
    """Share of the (mean-removed) spectral energy of the ``size``² grey neighbourhood centred on
    the window that lies in its 4 strongest spectral peaks (and their mirrors; each peak with its
    3×3 block of bins, where the Hann window spreads it): ~1 for a pure grating, small for
    irregular texture. Frequencies below 2.5 cycles per neighbourhood (smooth shading) are left
    out of both."""
    g = hr.mean(0).double()
    h, w = g.shape
    cr, cc = row + WINDOW // 2, col + WINDOW // 2
    r0 = int(min(max(cr - size // 2, 0), h - size))
    c0 = int(min(max(cc - size // 2, 0), w - size))
    p = g[r0:r0 + size, c0:c0 + size]
    p = (p - p.mean()) * torch.outer(torch.hann_window(size, dtype=torch.float64),
                                     torch.hann_window(size, dtype=torch.float64))
    s = torch.fft.fft2(p).abs().pow(2)
    f = torch.fft.fftfreq(size, dtype=torch.float64) * size
    s = s * (torch.hypot(f[:, None], f[None, :]) >= 2.5)  # ignore periods > size/2.5 (shading)
    total = float(s.sum())
    if total == 0:
        return 0.0
    # a Hann-windowed grating spreads over a 3x3 block of bins: sum each peak's block
    ring = torch.nn.functional.pad(s[None, None], (1, 1, 1, 1), mode="circular")
    block = torch.nn.functional.avg_pool2d(ring, 3, stride=1)[0, 0] * 9
    peak = s == torch.nn.functional.max_pool2d(ring, 3, stride=1)[0, 0]
    top = torch.topk(torch.where(peak, s, torch.zeros_like(s)).flatten(), 8).indices  # 4 + mirrors
    return float(min(1.0, float(block.flatten()[top].sum()) / total))


def synthetic_hr(kind: str, rng: np.random.Generator, size: int = HR) -> torch.Tensor:
    """``(3, size, size)`` HR test image: ``stripes``, ``grid`` or ``dead-leaves``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c1, c2 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
    while np.abs(c1 - c2).sum() < 0.8:
        c2 = rng.uniform(0.1, 0.9, 3)
    if kind in ("stripes", "grid"):
        period = rng.uniform(10.0, 16.0)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        a = (np.mod(u / period, 1.0) < 0.5).astype(np.float64)
        if kind == "grid":
            v = -xx * np.sin(theta) + yy * np.cos(theta)
            b = (np.mod(v / period, 1.0) < 0.5).astype(np.float64)
            a = np.abs(a - b)  # checkerboard
        t = a
    elif kind == "dead-leaves":
        t = np.zeros((size, size))
        painted = np.zeros((size, size), dtype=bool)
        img = np.zeros((size, size, 3))
        while not painted.all():
            r = rng.uniform(3.0, 24.0)
            cx, cy = rng.uniform(-r, size + r, 2)
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & ~painted
            img[disc] = rng.uniform(0.05, 0.95, 3)
            painted |= disc
        return torch.from_numpy(img).permute(2, 0, 1).float()
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    img = t[..., None] * c1 + (1 - t[..., None]) * c2
    return torch.from_numpy(img).permute(2, 0, 1).float()


def build_patches(per_image: int, per_kind: int) -> list[dict[str, Any]]:
    """All patches: ``{"id", "source", "kind", "lr", "hr", "row", "col", "energy", "periodicity"}``."""
    from lamcam.io import load_image
    from lamcam.zoo import sr_samples
    from training.sr_data import degrade

    patches = []
    for s in sr_samples():
        if not s.get("held_out"):
            continue
        hr, lr = load_image(s["hr"]), load_image(s["lr"])
        for j, (r, c, en) in enumerate(pick_windows(hr, per_image)):
            patches.append({"id": f"{s['name']}-{j}", "source": s["name"], "kind": "natural",
                            "lr": lr, "hr": hr, "row": r, "col": c, "energy": en,
                            "periodicity": periodicity(hr, r, c)})
    from lamcam.zoo.shapes import sample_rng

    centre = (HR // 2 - WINDOW // 2) // SCALE * SCALE
    for k, kind in enumerate(KINDS):
        for j in range(per_kind):
            hr = synthetic_hr(kind, sample_rng(SEED + k, j))
            lr = degrade(hr[None])[0]
            en = float(edge_energy(hr)[centre:centre + WINDOW, centre:centre + WINDOW].sum())
            patches.append({"id": f"{kind}-{j}", "source": "synthetic", "kind": kind, "lr": lr, "hr": hr,
                            "row": centre, "col": centre, "energy": en,
                            "periodicity": periodicity(hr, centre, centre)})
    return patches


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
def _spearman(a: Sequence[float], b: Sequence[float]) -> float:
    from lamcam.metrics import spearman

    if len(a) < 3:
        return math.nan
    return float(spearman(torch.tensor([list(a)], dtype=torch.float64),
                          torch.tensor([list(b)], dtype=torch.float64))[0])


def _local_psnr(sr: torch.Tensor, hr: torch.Tensor, row: int, col: int, pad: int = 8) -> float:
    from lamcam.demo import psnr_y

    r0, c0 = max(row - pad, 0), max(col - pad, 0)
    r1, c1 = row + WINDOW + pad, col + WINDOW + pad
    return psnr_y(sr[:, r0:r1, c0:c1], hr[:, r0:r1, c0:c1], shave=0)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = study_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--per-image", type=int, default=8, help="natural windows per held-out image (8)")
    p.add_argument("--per-kind", type=int, default=6, help="synthetic images per kind (6)")
    p.add_argument("--steps", type=int, default=12, help="LAM path steps (default 12, Gauss-Legendre)")
    p.add_argument("--quadrature", default="gauss-legendre",
                   help="path quadrature (default gauss-legendre; the paper: riemann with 50 steps)")
    p.add_argument("--check", type=int, default=2,
                   help="natural patches per model re-run with the paper's Riemann-50 to compare DIs")
    args = p.parse_args(argv)
    docs = setup_from_args(args)
    per_image = 1 if args.quick else args.per_image
    per_kind = 1 if args.quick else args.per_kind
    steps = 6 if args.quick else args.steps
    check = 1 if args.quick else args.check
    models = MODELS[:2] if args.quick else MODELS
    config = {"per_image": per_image, "per_kind": per_kind, "steps": steps, "quadrature": args.quadrature,
              "check": check, "sigma": 1.2, "kernel": 9,
              "window": WINDOW, "models": list(models), "seed": SEED, "quick": args.quick}
    run = StudyRun(NAME, config, root=args.root, fresh=args.fresh)
    t0 = time.perf_counter()
    patches = build_patches(per_image, per_kind)

    from lamcam import LAM, zoo
    from lamcam.demo import psnr_y
    from training.sr_data import bicubic_upscale

    res: dict[tuple[str, str], dict[str, Any]] = {}
    maps: dict[tuple[str, str], torch.Tensor] = {}
    units = [(m, pt) for m in models for pt in patches]
    cache_models: dict[str, Any] = {}
    for model_name, pt in tqdm(units, desc=NAME, unit="LAM"):
        key = f"{model_name}/{pt['id']}"
        if not (run.has(key) and run.has_tensors(key)):
            if model_name not in cache_models:
                cache_models[model_name] = zoo.load(model_name).eval()
            t1 = time.perf_counter()
            lam = LAM(cache_models[model_name], steps=steps, quadrature=args.quadrature, progress=False)
            r = lam(pt["lr"], pt["row"], pt["col"], WINDOW)
            run.save_tensors(key, {"map": r.map.float(), "sr": r.sr.float().clamp(0, 1)})
            run.save(key, {"di": r.diffusion_index, "pixels95": r.pixels95,
                           "completeness": r.completeness_error,
                           "psnr_local": _local_psnr(r.sr, pt["hr"], pt["row"], pt["col"])},
                     time.perf_counter() - t1)
        res[(model_name, pt["id"])] = run.load(key)
        maps[(model_name, pt["id"])] = run.load_tensors(key)["map"]

    # the paper's discretisation on a few patches: how far are its DIs from ours?
    natural = [pt for pt in patches if pt["kind"] == "natural"]
    check_rows = []
    for model_name in models:
        for pt in natural[:: max(1, len(natural) // check)][:check]:
            key = f"check/{model_name}/{pt['id']}"

            def paper(model_name=model_name, pt=pt) -> dict[str, float]:
                net = cache_models.get(model_name) or zoo.load(model_name).eval()
                r = LAM(net, steps=50, quadrature="riemann", progress=False)(pt["lr"], pt["row"], pt["col"],
                                                                            WINDOW)
                return {"di": r.diffusion_index, "completeness": r.completeness_error}

            v = run.cached(key, paper)
            ours = res[(model_name, pt["id"])]
            check_rows.append([model_name, pt["id"], v["di"], ours["di"], ours["di"] - v["di"],
                               v["completeness"], ours["completeness"]])

    # whole-image PSNR on the held-out images (and bicubic) — cheap, recomputed
    images = {pt["source"]: pt for pt in natural}
    psnr: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, pt in images.items():
            psnr.setdefault("bicubic", {})[name] = psnr_y(bicubic_upscale(pt["lr"][None])[0], pt["hr"], SCALE)
            for m in models:
                if m not in cache_models:
                    cache_models[m] = zoo.load(m).eval()
                sr = cache_models[m](pt["lr"][None])[0]
                psnr.setdefault(m, {})[name] = psnr_y(sr, pt["hr"], SCALE)
    wall = time.perf_counter() - t0

    # ---- tables ---------------------------------------------------------------------------
    def di_of(m: str, kinds: Sequence[str]) -> list[float]:
        return [res[(m, pt["id"])]["di"] for pt in patches if pt["kind"] in kinds]

    rf = {m: zoo.info(m).get("receptive_field") for m in models}
    mean_psnr = {m: float(np.mean(list(psnr[m].values()))) for m in models}
    mean_di = {m: float(np.mean(di_of(m, ["natural"]))) for m in models}
    rows = []
    for m in models:
        d = np.array(di_of(m, ["natural"]))
        comp = [res[(m, pt["id"])]["completeness"] for pt in patches]
        sd = d.std(ddof=1) if d.size > 1 else 0.0
        gain = mean_psnr[m] - float(np.mean(list(psnr["bicubic"].values())))
        rows.append([m, "global" if rf[m] in (None, "global") else rf[m], f"{d.mean():.2f} ± {sd:.2f}",
                     float(np.median(d)), mean_psnr[m], gain, float(np.median(comp))])
    rho_di_psnr = _spearman([mean_di[m] for m in models], [mean_psnr[m] for m in models])
    rf_rank = [math.inf if rf[m] in (None, "global") else float(rf[m]) for m in models]
    rho_di_rf = _spearman([mean_di[m] for m in models], rf_rank)
    # per patch: for every pair of models, does the higher DI go with the higher local PSNR?
    agree = total = 0
    for pt in natural:
        for i, a in enumerate(models):
            for b in models[i + 1:]:
                ra, rb = res[(a, pt["id"])], res[(b, pt["id"])]
                dd, dp = ra["di"] - rb["di"], ra["psnr_local"] - rb["psnr_local"]
                if dd == 0 or dp == 0 or not math.isfinite(dp):
                    continue
                total += 1
                agree += (dd > 0) == (dp > 0)
    concord = agree / total if total else math.nan

    content_rows = []
    for m in models:
        by = {k: float(np.mean(di_of(m, [k]))) for k in (*KINDS, "natural")}
        regular = float(np.mean(di_of(m, ["stripes", "grid"])))
        content_rows.append([m, by["stripes"], by["grid"], by["dead-leaves"], by["natural"],
                             regular / by["dead-leaves"] if by["dead-leaves"] > 0 else math.nan])
    per_model_periodic = {}
    for m in models:
        per_model_periodic[m] = _spearman([pt["periodicity"] for pt in natural], di_of(m, ["natural"]))

    # ---- figures --------------------------------------------------------------------------
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figures: dict[str, Any] = {}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for m in models:
        axes[0].scatter([mean_di[m]], [mean_psnr[m]], s=40)
        axes[0].annotate(m.replace("sr_", ""), (mean_di[m], mean_psnr[m]), fontsize=8,
                         xytext=(4, 2), textcoords="offset points")
    axes[0].set(xlabel="mean DI (natural patches)", ylabel="mean PSNR-Y (dB, held-out)",
                title=f"DI vs PSNR (Spearman {rho_di_psnr:.2f}, n={len(models)})")
    data = [di_of(m, ["natural"]) for m in models]
    axes[1].boxplot(data)
    axes[1].set_xticks(range(1, len(models) + 1), [m.replace("sr_", "") for m in models])
    axes[1].set(ylabel="DI", title=f"DI per model, {len(natural)} natural patches")
    width = 0.8 / 4
    for j, k in enumerate((*KINDS, "natural")):
        axes[2].bar(np.arange(len(models)) + (j - 1.5) * width,
                    [float(np.mean(di_of(m, [k]))) for m in models], width, label=k)
    axes[2].set_xticks(range(len(models)), [m.replace("sr_", "") for m in models])
    axes[2].set(ylabel="mean DI", title="DI by content")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    figures["di_overview.png"] = fig

    show = [next(pt for pt in patches if pt["kind"] == k)
            for k in ("natural", "stripes", "grid", "dead-leaves")]
    fig, axes = plt.subplots(len(show), len(models) + 1,
                             figsize=(2.1 * (len(models) + 1), 2.1 * len(show)))
    for r, pt in enumerate(show):
        lr = pt["lr"].permute(1, 2, 0).numpy()
        rr, cc = pt["row"] / SCALE, pt["col"] / SCALE
        for c in range(len(models) + 1):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(lr)
                ax.set_ylabel(pt["id"], fontsize=8)
            else:
                m = models[c - 1]
                ax.imshow(lr.mean(2), cmap="gray", alpha=0.6)
                ax.imshow(maps[(m, pt["id"])].numpy(), cmap="hot", alpha=0.7, vmin=0, vmax=0.3)
                ax.set_title(f"{m.replace('sr_', '')} DI {res[(m, pt['id'])]['di']:.2f}", fontsize=8)
            ax.add_patch(plt.Rectangle((cc - 0.5, rr - 0.5), WINDOW / SCALE, WINDOW / SCALE, fill=False,
                                       ec="cyan", lw=1))
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("LAM maps (|attribution|, clipped at 0.3 of the max) — window in cyan", fontsize=9)
    fig.tight_layout()
    figures["maps.png"] = fig

    # ---- markdown -------------------------------------------------------------------------
    cmd = command_line(NAME, argv)
    bic = float(np.mean(list(psnr["bicubic"].values())))
    md = ["## (c) LAM across the SR zoo\n",
          "Claims tested (LAM paper, §5): higher Diffusion Index goes with higher PSNR across networks; "
          "a large receptive field does not by itself give a large DI; regular content (stripes, grids) "
          "draws on more distant pixels than irregular texture.\n",
          f"Command: `{cmd}`. LAM with the paper's blur path (σ = 1.2, kernel 9, gradient detector, 16² "
          f"SR window) on 64² LR inputs (×4), integrated with {steps}-point {args.quadrature} quadrature "
          "(docs/benchmarks.md: 10 Gauss–Legendre points match Riemann-50's completeness at 5.8× the "
          f"speed; the check table below compares DIs). {len(natural)} natural patches ({per_image} per "
          f"held-out image, chosen by edge energy) and {len(patches) - len(natural)} synthetic ones "
          f"({per_kind} each of {', '.join(KINDS)}). Compute time {run.seconds() / 60:.1f} min (this "
          f"invocation {wall / 60:.1f} min).\n",
          md_table(["model", "receptive field (LR px)", "DI natural (mean ± sd)", "DI median",
                    "PSNR-Y held-out (dB)", "gain over bicubic (dB)", "median completeness err"],
                   rows, 3),
          f"\nBicubic: {bic:.2f} dB. Spearman ρ(mean DI, mean PSNR) over the {len(models)} models = "
          f"**{rho_di_psnr:.2f}**; ρ(mean DI, receptive field, global ranked largest) = "
          f"**{rho_di_rf:.2f}**. "
          f"Per patch, for every pair of models, the one with the higher DI also had the higher local "
          f"PSNR-Y (window ± 8 px) in **{100 * concord:.0f} %** of {total} comparisons "
          "(50 % = no relation).\n",
          "\nDI by content (mean over patches; last column: mean DI on stripes and grids ÷ on dead "
          "leaves):\n",
          md_table(["model", "stripes", "grid", "dead leaves", "natural", "regular ÷ irregular"],
                   content_rows, 3),
          "\nWithin the natural patches, Spearman ρ between the periodicity score (share of spectral "
          "energy in the 4 strongest frequencies of the 48² neighbourhood) and DI: "
          + ", ".join(f"{m.replace('sr_', '')} {per_model_periodic[m]:.2f}" for m in models) + ".\n",
          "\nOur quadrature against the paper's Riemann-50 on the same patches (DI and relative "
          "completeness error):\n",
          md_table(["model", "patch", "DI Riemann-50", f"DI {args.quadrature}-{steps}", "difference",
                    "completeness R-50", f"completeness {args.quadrature}-{steps}"], check_rows, 3),
          f"\n![DI overview](results/{NAME}/di_overview.png)\n",
          f"\n![LAM maps](results/{NAME}/maps.png)\n",
          "\n### What it shows\n"]
    order_di = sorted(models, key=lambda m: mean_di[m], reverse=True)
    order_psnr = sorted(models, key=lambda m: mean_psnr[m], reverse=True)
    md.append(f"- DI ranking (natural patches): {' > '.join(m.replace('sr_', '') for m in order_di)}; "
              f"PSNR ranking: {' > '.join(m.replace('sr_', '') for m in order_psnr)}. "
              + ("With this few networks the relation cannot be judged" if math.isnan(rho_di_psnr) else
                 "The paper's 'higher DI, higher PSNR' holds across our four models."
                 if rho_di_psnr >= 0.8 else
                 "The paper's 'higher DI, higher PSNR' holds only partly here"
                 if rho_di_psnr > 0 else "The paper's 'higher DI, higher PSNR' does not hold here")
              + f" (ρ = {rho_di_psnr:.2f} over only {len(models)} networks trained for the same short "
              f"budget; their mean PSNRs span {max(mean_psnr.values()) - min(mean_psnr.values()):.2f} dB).")
    finite = [m for m in models if rf[m] not in (None, "global")]
    if finite:
        big = max(finite, key=lambda m: rf[m])
        md.append(f"- Receptive field: {big.replace('sr_', '')} has the largest finite one ({rf[big]} LR px) "
                  f"and mean DI {mean_di[big]:.2f}; "
                  + ", ".join(f"{m.replace('sr_', '')} {mean_di[m]:.2f}" for m in models if m != big)
                  + ". " + ("" if math.isnan(rho_di_rf) else
                            "A larger receptive field does not by itself give a larger DI, as the paper "
                            "says." if rho_di_rf < 0.8 else "Here DI does rise with the receptive field."))
    reg = [r[5] for r in content_rows]
    md.append(f"- Regular vs irregular content: DI on stripes and grids is {min(reg):.2f}–{max(reg):.2f}× "
              "the DI on dead-leaves texture. "
              + ("Every model draws on more distant pixels for regular content, as the paper reports."
                 if min(reg) > 1 else "Not every model draws on more pixels for regular content."
                 if max(reg) > 1 else "The paper's observation does not hold for our models."))
    files = {"patches.csv": csv_text(
        ["model", "patch", "kind", "row", "col", "edge_energy", "periodicity", "di", "pixels95",
         "completeness_error", "psnr_local"],
        ([m, pt["id"], pt["kind"], pt["row"], pt["col"], pt["energy"], pt["periodicity"],
          *(res[(m, pt["id"])][k] for k in ("di", "pixels95", "completeness", "psnr_local"))]
         for m in models for pt in patches)),
        "psnr.csv": csv_text(["model", *images], ([m, *(psnr[m][n] for n in images)]
                                                  for m in ("bicubic", *models)))}
    publish(NAME, "\n".join(md) + "\n", docs=docs, figures=figures, files=files)
    print(f"published to {docs / 'results.md'} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
