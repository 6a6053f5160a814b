"""The rest of the CAM family beside pytorch-grad-cam and torchcam: time ÷ floor and agreement.

    .venv/bin/python benchmarks/bench_family.py [--repeats 3] [--batch 8] [--perturb-size 64]
    .venv/bin/python benchmarks/bench_family.py --quick   # smoke run: 1 repeat, batch 2, perturb-size 64

``make bench`` installs the peers (torchcam, pytorch-grad-cam). Model: torchvision ResNet-50 with
random weights in eval mode (imported through ``tests/torchvision_ops.py``), layer ``layer4``,
standard-normal input, target = each image's predicted class. Methods and cases:

* HiResCAM, XGrad-CAM, LayerCAM (lamcam, pytorch-grad-cam; torchcam for XGrad-CAM and LayerCAM) and
  Eigen-CAM (lamcam, pytorch-grad-cam): batch ``--batch`` x 3 x 224². Floor of the gradient ones:
  ``bench_cam.floor`` (one forward with the layer's output captured + one ``torch.autograd.grad``
  to it); of Eigen-CAM: that forward under no_grad + ``torch.linalg.svd`` of each image's centred
  (positions x channels) matrix.
* Score-CAM (lamcam, pytorch-grad-cam, torchcam) and Ablation-CAM (lamcam, pytorch-grad-cam): one
  image of ``--perturb-size``², one forward pass per channel (2048), ``--perturb-batch`` inputs per
  pass in every library. Floor: the first forward + 2048 plain forward passes of the model in chunks
  of that size, under no_grad (the work the definition cannot avoid).

All cases of one method are interleaved in each repeat, the starting case rotating from repeat to
repeat; explainers are built before and torn down after the timed call (untimed), the model's
grads and flags reset between cases. Reported: medians of the times and of each repeat's ratio to
its floor. Progress bars are off: lamcam's by ``progress=False``, pytorch-grad-cam's by replacing
the ``tqdm`` its Score-/Ablation-CAM modules call with a pass-through; torchcam has none.

Agreement: max |difference| between lamcam's ``res.maps`` and each peer's map, both min-max
normalised per image at input resolution (torchcam's layer-resolution maps upsampled bilinearly,
align_corners=False, first). Known definitional differences:

* XGrad-CAM: the peers add 1e-7 / 1e-8 to ``Σ A``; lamcam gives weight 0 where ``Σ A = 0``.
* Score-CAM: all three weight a channel by the softmax over channels of the target logit on its
  masked input (torchcam 0.5 subtracts the unmasked logit first, which the softmax cancels; older
  torchcam took a softmax over classes). Masks: pytorch-grad-cam upsamples with align_corners=True
  then min-max normalises (+1e-8), torchcam normalises at the layer's resolution then upsamples,
  lamcam upsamples (align_corners=False) then normalises. pytorch-grad-cam scores in float32.
* Ablation-CAM: ``w = (y - y_c) / y`` in both; pytorch-grad-cam swaps the layer for its cached
  output (the layer is not rerun per pass, so it can beat the floor) and sets the channel to
  ``min - 1e7`` instead of 0 when the layer's minimum is not 0; lamcam zeroes it in the output.
* Eigen-CAM: pytorch-grad-cam keeps ``relu`` of the projection with the SVD's arbitrary sign;
  lamcam keeps the signed projection (sign chosen to correlate with ``Σ_c A_c``), min-max
  normalised, so the two agree only where the sign matches and the projection is positive.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from bench_cam import floor  # this folder is on sys.path when run as a script
from bench_peers import ROOT, interleaved_times, minmax, restore, run_case, snapshot
from torch import Tensor, nn

import lamcam

LAYER = "layer4"
METHODS = {"hirescam": "HiResCAM", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM", "eigencam": "Eigen-CAM",
           "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM"}  # lamcam.cam.METHODS key -> label


@dataclass
class Case:
    label: str  # "floor" or the library
    setup: Callable[[], Any]  # untimed: build the explainer
    run: Callable[[Any, Tensor], Any]  # timed
    result: Callable[[Any, Tensor], Tensor] | None = None  # output, input -> maps (B, H, W) at input size
    cleanup: Callable[[Any], None] | None = None  # untimed


def load_peers() -> SimpleNamespace:
    sys.path.insert(0, str(ROOT / "tests"))
    from torchvision_ops import import_torchvision

    tv = import_torchvision()
    import cv2
    import pytorch_grad_cam as pgc
    import pytorch_grad_cam.ablation_cam
    import pytorch_grad_cam.score_cam
    import torchcam.methods as tc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    quiet = SimpleNamespace(tqdm=lambda it, *_a, **_k: it)  # no progress bars in the timed calls
    pytorch_grad_cam.score_cam.tqdm = quiet
    pytorch_grad_cam.ablation_cam.tqdm = quiet
    return SimpleNamespace(tv=tv, cv2=cv2, pgc=pgc, tc=tc, target=ClassifierOutputTarget)


def layer_output(model: nn.Module, layer: nn.Module, x: Tensor) -> Tensor:
    store = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store[0]


def eigen_floor(model: nn.Module, layer: nn.Module, x: Tensor) -> None:
    a = layer_output(model, layer, x)
    m = a.flatten(2).transpose(1, 2)  # (B, N, C)
    torch.linalg.svd(m - m.mean(1, keepdim=True), full_matrices=False)


def perturb_floor(model: nn.Module, layer: nn.Module, x: Tensor, batch_size: int) -> None:
    channels = layer_output(model, layer, x).shape[1]
    with torch.no_grad():
        for c0 in range(0, channels, batch_size):
            n = min(batch_size, channels - c0)
            model(x.expand(n, *x.shape[1:]).contiguous())


def make_cases(st: SimpleNamespace, model: nn.Module, method: str, targets: list[int],
               batch_size: int, size: int) -> list[Case]:
    layer = model.get_submodule(LAYER)
    lam_cls = lamcam.cam.METHODS[method]
    kw = {"batch_size": batch_size, "progress": False} if method in ("scorecam", "ablationcam") else {}
    names = {"hirescam": "HiResCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
             "scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "eigencam": "EigenCAM"}

    if method in ("scorecam", "ablationcam"):
        cases = [Case("floor", lambda: None, lambda _s, x: perturb_floor(model, layer, x, batch_size))]
    elif method == "eigencam":
        cases = [Case("floor", lambda: None, lambda _s, x: eigen_floor(model, layer, x))]
    else:
        cases = [Case("floor", lambda: None, lambda _s, x: floor(model, layer, x))]

    def leave(obj: Any) -> None:
        obj.__exit__(None, None, None)

    def pgc_setup() -> Any:
        cam = getattr(st.pgc, names[method])(model=model, target_layers=[layer])
        if hasattr(cam, "batch_size"):
            cam.batch_size = batch_size
        return cam

    def pgc_run(cam: Any, x: Tensor) -> Any:
        return cam(input_tensor=x, targets=[st.target(c) for c in targets[: x.shape[0]]])

    def tc_setup() -> Any:
        extra = {"batch_size": batch_size} if method == "scorecam" else {}
        return getattr(st.tc, names[method])(model, LAYER, input_shape=(3, size, size), **extra)

    def tc_run(cam: Any, x: Tensor) -> Any:  # torchcam: the caller runs the model
        scores = model(x)
        return cam(class_idx=scores.argmax(1).tolist(), scores=scores)

    def tc_maps(out: Any, x: Tensor) -> Tensor:
        return F.interpolate(out[0][:, None].float(), size=x.shape[2:], mode="bilinear",
                             align_corners=False)[:, 0]

    cases.append(Case("lamcam", lambda: lam_cls(model, layer=LAYER, **kw), lambda e, x: e(x),
                      lambda r, _x: r.maps))
    cases.append(Case("pytorch-grad-cam", pgc_setup, pgc_run, lambda r, _x: torch.from_numpy(r), leave))
    if method in ("xgradcam", "layercam", "scorecam"):
        cases.append(Case("torchcam", tc_setup, tc_run, tc_maps, leave))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=None, help="images per call, gradient/Eigen (8; quick 2)")
    ap.add_argument("--perturb-size", type=int, default=None,
                    help="Score-/Ablation-CAM side (64: the cost is per channel)")
    ap.add_argument("--perturb-batch", type=int, default=64, help="masked/ablated inputs per pass")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (3; quick 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--quick", action="store_true", help="1 repeat, batch 2, perturb-size 64")
    args = ap.parse_args()
    batch = args.batch or (2 if args.quick else 8)
    psize = args.perturb_size or 64
    repeats = args.repeats or (1 if args.quick else 3)

    t_start = time.perf_counter()
    st = load_peers()
    torch.set_num_threads(args.threads)
    st.cv2.setNumThreads(args.threads)  # pytorch-grad-cam resizes with OpenCV
    dists = ("torch", "torchvision", "lamcam", "grad-cam", "torchcam")
    vers = ", ".join(f"{n} {md.version(n)}" for n in dists)
    print(f"# CAM family side by side: ResNet-50 at {LAYER}, {torch.get_num_threads()} thread(s), "
          f"{repeats} interleaved repeat(s) (medians)\n\n{vers} (grad-cam is pytorch-grad-cam)\n")
    torch.manual_seed(0)
    model = st.tv.models.resnet50(weights=None).eval()
    snap = snapshot(model)

    time_rows, agree_rows = [], []
    for method in args.methods:
        perturb = method in ("scorecam", "ablationcam")
        torch.manual_seed(0)
        x = torch.randn(1, 3, psize, psize) if perturb else torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            targets = model(x).argmax(1).tolist()
        cases = make_cases(st, model, method, targets, args.perturb_batch, x.shape[-1])
        shape = "x".join(map(str, x.shape))
        print(f"{METHODS[method]}: input {shape}, predicted classes {targets}", flush=True)

        # one untimed call per case (also the warm-up): the maps, for agreement
        maps = {}
        for case in cases:
            _, out = run_case(case, x)
            restore(model, snap)
            if case.result is not None:
                maps[case.label] = minmax(case.result(out, x).detach())
            del out
        for label, m in maps.items():
            if label != "lamcam":
                agree_rows.append([METHODS[method], label, float((m - maps["lamcam"]).abs().max())])

        times = interleaved_times(cases, x, model, snap, repeats)
        for case in cases:
            t = times[case.label]
            ratio = statistics.median(v / f for v, f in zip(t, times["floor"], strict=True))
            time_rows.append([METHODS[method], case.label, statistics.median(t), ratio])
        done = [f"{row[1]} {row[2] * 1000:.0f} ms (x{row[3]:.2f})" for row in time_rows[-len(cases):]]
        agree = [f"{row[1]} {row[2]:.1e}" for row in agree_rows if row[0] == METHODS[method]]
        print(f"  {'; '.join(done)}; max |diff| vs lamcam: {', '.join(agree)}", flush=True)

    print("\n## Time ÷ floor (medians of interleaved repeats)\n")
    print("| method | case | median time | × floor |\n|---|---|---|---|")
    for name, label, t, ratio in time_rows:
        print(f"| {name} | {label} | {t * 1000:.0f} ms | {ratio:.2f} |")
    print("\n## Agreement with lamcam (max |difference| of per-image min-max maps at input size)\n")
    print("| method | peer | max abs diff |\n|---|---|---|")
    for name, label, d in agree_rows:
        print(f"| {name} | {label} | {d:.2e} |")
    print(f"\nTotal runtime: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
