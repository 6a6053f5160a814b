"""Receptive-field cropping: cropped against whole-image LAM on a large image, and dense DI maps.

    python benchmarks/bench_crop.py [--model sr_edsr] [--size 512] [--repeats 1] [--device cpu]

Prints, measured side by side in one run:

1. LAM with the paper's defaults (σ 1.2, 50 Riemann steps, window 16) at ``size``² LR, on the
   receptive-field crop (``crop="auto"``, the default) and on the whole image (``crop=False``),
   interleaved, medians; the largest attribution difference relative to its maximum and the DI
   difference (target: ≥ 10× faster at equal result);
2. peak memory of each, in a fresh process per mode (growth of the peak resident set beyond the
   loaded model on CPU; ``torch.cuda.max_memory_allocated`` on CUDA) (target: cropped < 1 GB);
3. dense DI maps (``LAM.dense``, window 16) at 128² LR for a plain CNN (stride 16) and a residual
   CNN (stride 32), their time against one whole-image LAM with the same quadrature on the same
   image, measured, beside the cost model ``windows × crop pixels / image pixels``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import lamcam


def textured_image(size: int, seed: int = 0) -> torch.Tensor:
    """A natural LR test image: a bundled SR sample (held out from training) tiled to ``size``."""
    samples = lamcam.zoo.sr_samples()
    img = lamcam.io.load_image(samples[seed % len(samples)]["lr"])
    reps = (1, -(-size // img.shape[1]), -(-size // img.shape[2]))
    return img.repeat(*reps)[:, :size, :size].contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_child(model_name: str, size: int, mode: str, device: str) -> None:
    """Run in a fresh process: print the peak memory growth (bytes) of one LAM run."""
    torch.set_num_threads(2)
    dev = torch.device(device)
    model = lamcam.zoo.load(model_name).to(dev)
    x = textured_image(size).to(dev)
    row = size * model.lamcam_meta["scale"] // 2
    with torch.no_grad():  # warm up kernels and the allocator on a small image (not the large one:
        model(x[None, :, :64, :64])  # its inference peak would hide part of LAM's growth)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lamcam.LAM(model, progress=False, crop=(mode == "crop") and "auto")(x, row, row, 16)
    if dev.type == "cuda":
        after = torch.cuda.max_memory_allocated(dev)
    else:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_growth": after - before}))


def memory_report(args: argparse.Namespace, size: int) -> None:
    print(f"\n2. Peak memory of one LAM at {size}x{size} LR beyond the loaded model (fresh process "
          "each)")
    for mode in ("crop", "whole"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--device",
                              args.device, "--memory-child", str(size), mode],
                             capture_output=True, text=True, check=True)
        growth = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]
        print(f"  {mode:5s}: {growth / 1e9:.3f} GB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sr_edsr")
    ap.add_argument("--size", type=int, default=512, help="LR side of the large image")
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repeats of part 1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--only-memory", action="store_true", help="run part 2 alone")
    ap.add_argument("--skip-large", action="store_true", help="skip part 1")
    ap.add_argument("--memory-child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.model, int(args.memory_child[0]), args.memory_child[1], args.device)
        return
    torch.set_num_threads(2)
    dev = torch.device(args.device)
    model = lamcam.zoo.load(args.model).to(dev)
    scale = model.lamcam_meta["scale"]
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} params, x{scale}, "
          f"device {dev}, {torch.get_num_threads()} threads, torch {torch.__version__}")

    size = args.size
    if args.only_memory:
        memory_report(args, size)
        return
    if not args.skip_large:
        large(args, model, dev, size, scale)
    if not args.skip_memory:
        memory_report(args, size)
    dense(dev)


def large(args: argparse.Namespace, model: torch.nn.Module, dev: torch.device, size: int,
          scale: int) -> None:
    x = textured_image(size).to(dev)
    row, col = size * scale // 2 - 8, size * scale // 3
    crop, whole = lamcam.LAM(model, progress=False), lamcam.LAM(model, progress=False, crop=False)
    print(f"\n1. LAM (defaults) at {size}x{size} LR, window ({row}, {col}): cropped vs whole image "
          f"(interleaved, {args.repeats} repeat(s), medians)")
    crop(x, row, col)  # warm-up, and the field is declared (or measured once)
    times: dict[str, list[float]] = {"crop": [], "whole": []}
    res = {}
    for _ in range(args.repeats):
        for name, lam in (("crop", crop), ("whole", whole)):
            _sync(dev)
            t0 = time.perf_counter()
            res[name] = lam(x, row, col)
            _sync(dev)
            times[name].append(time.perf_counter() - t0)
    t_c, t_w = statistics.median(times["crop"]), statistics.median(times["whole"])
    a, b = res["crop"], res["whole"]
    diff = float((a.attribution - b.attribution).abs().max() / b.attribution.abs().max())
    box = a.params["crop"]["box"]
    print(f"  crop {box} ({a.params['crop']['field']['source']} field, radius "
          f"{a.params['crop']['field']['radius']})")
    print(f"  cropped {t_c:.2f} s, whole image {t_w:.2f} s -> {t_w / t_c:.1f}x faster; "
          f"max |attr diff| / max |attr| = {diff:.1e}; DI {a.diffusion_index:.4f} vs "
          f"{b.diffusion_index:.4f}; pixels95 {a.pixels95} vs {b.pixels95}")


def dense(dev: torch.device) -> None:
    print("\n3. Dense DI maps (window 16) at 128x128 LR against one whole-image LAM with the same "
          "quadrature")
    x = textured_image(128, seed=1).to(dev)
    runs = [("sr_fsrcnn", 16, "riemann", 50), ("sr_fsrcnn", 16, "gauss-legendre", 10),
            ("sr_edsr", 32, "gauss-legendre", 10)]
    for name, stride, quad, steps in runs:
        m = lamcam.zoo.load(name).to(dev)
        lam = lamcam.LAM(m, progress=False, quadrature=quad, steps=steps)
        one = lamcam.LAM(m, progress=False, quadrature=quad, steps=steps, crop=False)
        _sync(dev)
        t0 = time.perf_counter()
        one(x, 200, 200)
        _sync(dev)
        t_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = lam.dense(x, window=16, stride=stride)
        _sync(dev)
        t_dense = time.perf_counter() - t0
        print(f"  {name} stride {stride}, {quad}-{steps}: {d.params['windows']} windows in "
              f"{t_dense:.1f} s = {t_dense / t_one:.1f} whole-image LAMs ({t_one:.2f} s each); "
              f"cost model {d.params['whole_image_lams']:.1f}; DI median "
              f"{float(d.di.quantile(0.5)):.2f}, max {float(d.di.max()):.2f}")

if __name__ == "__main__":
    main()
