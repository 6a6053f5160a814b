"""LAM against its cost floor, Gauss-Legendre against the official Riemann sum, and peak memory.

    python benchmarks/bench_lam.py [--model sr_edsr] [--repeats 3]

Prints, measured side by side in one run (interleaved, medians):

1. LAM with the paper's defaults (σ 1.2, kernel 9, 50 steps, right Riemann, window 16) on the
   whole image (``crop=False``: the engine's own overhead) ÷ floor, floor = steps × (one forward +
   one input-gradient backward at batch 1), at 64² and 128² LR (target ≤ 1.05); receptive-field
   cropping is measured by benchmarks/bench_crop.py;
2. the fewest Gauss-Legendre steps whose completeness error is at most right-Riemann-50's, on
   several textured windows, and the speed-up that gives;
3. peak resident memory of whole-image LAM at 256² LR, beyond the loaded model (target ≤ 1 GB),
   each in a fresh process, beside a LAM_Demo-style loop (batch 1, parameter gradients
   accumulated, all SR outputs kept) for contrast.
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
from lamcam.lam import GradientDetector
from lamcam.paths import BlurPath


def textured_image(size: int, seed: int = 0) -> torch.Tensor:
    """A natural-looking LR test image: a bundled SR sample tiled/cropped to ``size``."""
    samples = lamcam.zoo.sr_samples()
    img = lamcam.io.load_image(samples[seed % len(samples)]["lr"])
    reps = (1, -(-size // img.shape[1]), -(-size // img.shape[2]))
    return img.repeat(*reps)[:, :size, :size].contiguous()


def floor(model, x: torch.Tensor, row: int, col: int, steps: int = 50) -> None:
    """steps × (forward + input-gradient backward) at batch 1 on the path points."""
    objective = GradientDetector(row, col, 16)
    pts = BlurPath(x, 1.2).points(torch.arange(1, steps + 1, dtype=torch.float64) / steps)
    for k in range(steps):
        p = pts[k:k + 1].clone().requires_grad_(True)
        torch.autograd.grad(objective(model(p)).sum(), p)


def median_time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def memory_child(model_name: str, size: int, mode: str) -> None:
    """Run in a fresh process: print peak RSS growth (bytes) of one LAM run."""
    torch.set_num_threads(2)
    model = lamcam.zoo.load(model_name)
    x = textured_image(size)
    sr_row = size * model.lamcam_meta["scale"] // 2
    with torch.no_grad():  # warm up allocator and kernels at the same size
        model(x[None])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if mode == "lamcam":
        lamcam.LAM(model, progress=False, crop=False)(x, sr_row, sr_row, 16)
    else:  # LAM_Demo-style: batch 1, .backward() (parameter grads), every SR output kept
        pts = BlurPath(x, 1.2).points(torch.arange(1, 51, dtype=torch.float64) / 50)
        outputs = []
        objective = GradientDetector(sr_row, sr_row, 16)
        for k in range(50):
            p = pts[k:k + 1].clone().requires_grad_(True)
            out = model(p)
            objective(out).sum().backward()
            outputs.append(out)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_growth": after - before}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sr_edsr")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.model, int(args.memory_child[0]), args.memory_child[1])
        return
    torch.set_num_threads(2)
    model = lamcam.zoo.load(args.model)
    scale = model.lamcam_meta["scale"]
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} params, x{scale}, "
          f"2 threads, device {next(model.parameters()).device}")

    print("\n1. LAM (defaults) / floor = 50 x (forward + input-gradient backward, batch 1)")
    for size in (64, 128):
        x = textured_image(size)
        row = col = size * scale // 2 - 8
        lam = lamcam.LAM(model, progress=False, crop=False)
        lam(x, row, col)  # warm-up
        times: dict[str, list[float]] = {"lam": [], "floor": []}
        for _ in range(args.repeats):  # interleaved
            t0 = time.perf_counter()
            lam(x, row, col)
            t1 = time.perf_counter()
            floor(model, x, row, col)
            times["lam"].append(t1 - t0)
            times["floor"].append(time.perf_counter() - t1)
        t_lam, t_floor = statistics.median(times["lam"]), statistics.median(times["floor"])
        bs = lam._batch(next(iter(lam._probes.values()))[1])
        print(f"  {size}x{size} LR: LAM {t_lam:.2f} s, floor {t_floor:.2f} s, ratio "
              f"{t_lam / t_floor:.3f} (target <= 1.05; auto batch size {bs})")

    print("\n2. Gauss-Legendre steps matching right-Riemann-50's completeness error (64x64 LR)")
    x = textured_image(64, seed=1)
    found = []
    for (row, col) in ((40, 40), (100, 60), (60, 180), (180, 120), (128, 128)):
        ref = lamcam.LAM(model, progress=False)(x, row, col).completeness_error
        for m in (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 50):
            err = lamcam.LAM(model, quadrature="gauss-legendre", steps=m, progress=False)(
                x, row, col).completeness_error
            if err <= ref:
                break
        found.append(m)
        print(f"  window ({row}, {col}): Riemann-50 error {ref:.2e}; Gauss-Legendre reaches it at "
              f"{m} steps ({err:.2e})")
    m = max(found)
    lam_r = lamcam.LAM(model, progress=False)
    lam_g = lamcam.LAM(model, quadrature="gauss-legendre", steps=m, progress=False)
    t_r = median_time(lambda: lam_r(x, 100, 60), args.repeats)
    t_g = median_time(lambda: lam_g(x, 100, 60), args.repeats)
    print(f"  worst case {m} steps: time {t_g:.2f} s vs {t_r:.2f} s -> speed-up {t_r / t_g:.2f}x")

    print("\n3. Peak memory at 256x256 LR, defaults (fresh process each; growth beyond the model)")
    for mode in ("lamcam", "lam_demo_style"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--memory-child",
                              "256", mode], capture_output=True, text=True, check=True)
        growth = json.loads(out.stdout.strip().splitlines()[-1])["peak_growth"]
        print(f"  {mode:<16s} {growth / 2**20:8.0f} MiB" + ("   (target <= 1 GB)"
                                                          if mode == "lamcam" else ""))


if __name__ == "__main__":
    main()
