"""What sharing one model between threads costs and gains.

    python benchmarks/bench_threads.py [--calls 16] [--batch 8] [--repeats 5]

lamcam's hooks act only on the thread that registered them, so explanations of an eval-mode
model run concurrently; a model with modules in train mode is explained under a per-model lock
(see ``lamcam.hooks.model_guard``). This script measures, on the bundled ``shapes_resnet`` with
Grad-CAM++ at batch ``--batch`` and one torch thread per Python thread, interleaved over
``--repeats`` rounds (medians):

* ``--calls`` explanations done by 1 thread, and the same calls split over 2 threads, with the
  model in eval mode and in train mode: the speed-up of 2 threads over 1;
* the cost of the thread check on one thread: the same calls through the public API against a
  bare re-implementation of one Grad-CAM++ pass with plain hooks (no lamcam machinery).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import torch

import lamcam
from lamcam.cam import cam_from_weights, gradcampp_weights


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def split(model, xs: list[torch.Tensor], n_threads: int) -> None:  # noqa: ANN001
    cams = [lamcam.GradCAMPlusPlus(model, "layer3") for _ in range(n_threads)]

    def work(k: int) -> None:
        torch.set_num_threads(1)
        for x in xs[k::n_threads]:
            cams[k](x)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def bare(model, xs: list[torch.Tensor]) -> None:  # noqa: ANN001
    layer = dict(model.named_modules())["layer3"]
    for x in xs:
        store = []
        h = layer.register_forward_hook(lambda m, i, o, store=store: store.append(o))
        try:
            with torch.enable_grad():
                out = model(x)
        finally:
            h.remove()
        score = out.gather(1, out.argmax(1, keepdim=True)).sum()
        (g,) = torch.autograd.grad(score, store[0])
        cam_from_weights(store[0], gradcampp_weights(store[0], g[:, None]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = lamcam.zoo.load("shapes_resnet")
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(args.batch, 3, 64, 64, generator=gen) for _ in range(args.calls)]
    split(model, xs[:2], 1)  # warm-up
    times: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for mode in ("eval", "train"):
            model.train(mode == "train")
            for n in (1, 2):
                times.setdefault(f"{mode}, {n} thread(s)", []).append(timed(lambda n=n: split(model, xs, n)))
        model.eval()
        times.setdefault("bare hooks, 1 thread", []).append(timed(lambda: bare(model, xs)))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"shapes_resnet, Grad-CAM++ at layer3, {args.calls} calls of batch {args.batch}, "
          f"1 torch thread per Python thread, median of {args.repeats}\n")
    print("| case | time |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v * 1000:.0f} ms |")
    print("\n| ratio | measured |\n|---|---|")
    for mode in ("eval", "train"):
        r = med[f"{mode}, 1 thread(s)"] / med[f"{mode}, 2 thread(s)"]
        print(f"| {mode} mode: speed-up of 2 threads over 1 | {r:.2f}x |")
    print(f"| lamcam on 1 thread ÷ bare plain-hook Grad-CAM++ | "
          f"{med['eval, 1 thread(s)'] / med['bare hooks, 1 thread']:.3f} |")


if __name__ == "__main__":
    main()
