"""How close Grad-CAM++ comes to its cost floor, and what batching targets saves.

    python benchmarks/bench_cam.py [--batch 32] [--size 224] [--repeats 5]

Prints, measured side by side in one run (interleaved, medians; the machine is noisy):

* Grad-CAM++ ÷ floor, where floor = one forward pass with the layer's output captured plus one
  ``torch.autograd.grad`` of the summed predicted scores to that output (target ≤ 1.1);
* top-5 maps in one call vs five separate calls, one target each (target ≥ 2.5× faster);
* the same for Grad-CAM and the softmax variant, for reference.

The network is a ResNet-18-shaped model (BasicBlocks [2, 2, 2, 2], widths 64–512, 1000 classes)
defined here with random weights: timing does not depend on what the weights learned.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import lamcam


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.down(x))


class ResNet18Like(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(Block(cin, cout, stride), Block(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


def floor(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> None:
    """The least any gradient-based CAM must do: forward, then gradients to the layer's output.

    Also used by bench_peers.py. With frozen layers before it, the output becomes the leaf.
    """
    store = []

    def hook(_m, _i, out):
        if not out.requires_grad:
            out = out.detach().requires_grad_(True)
            store.append(out)
            return out
        store.append(out)
        return None

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = model(x)
            score = out.gather(1, out.argmax(1, keepdim=True)).sum()
            torch.autograd.grad(score, store[0])
    finally:
        handle.remove()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNet18Like().eval()
    for p in model.parameters():  # the usual case for explaining: a frozen, trained model
        p.requires_grad_(False)
    x = torch.rand(args.batch, 3, args.size, args.size)
    gcpp = lamcam.GradCAMPlusPlus(model, "layer4")
    gc = lamcam.GradCAM(model, "layer4")
    soft = lamcam.GradCAMPlusPlusSoftmax(model, "layer4")
    top5 = model(x).topk(5, 1).indices

    def five_calls(cam):
        for k in range(5):
            cam(x, target=top5[:, k])

    cases = {
        "floor": lambda: floor(model, model.layer4, x),
        "gradcam++": lambda: gcpp(x),
        "gradcam": lambda: gc(x),
        "gradcam++ top5 one call": lambda: gcpp(x, target=lamcam.TopK(5)),
        "gradcam++ top5 five calls": lambda: five_calls(gcpp),
        "gradcam top5 one call": lambda: gc(x, target=lamcam.TopK(5)),
        "gradcam top5 five calls": lambda: five_calls(gc),
        "gradcam++softmax": lambda: soft(x),
    }
    for fn in cases.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every case alike
        for name, fn in cases.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"ResNet-18-shaped net, batch {args.batch} x 3 x {args.size}^2, layer4, "
          f"{args.threads} threads, {args.repeats} interleaved repeats (medians)")
    for k, v in med.items():
        print(f"  {k:<28s} {v * 1000:9.1f} ms")
    print(f"Grad-CAM++ / floor (fwd + grad to layer):   {med['gradcam++'] / med['floor']:.3f}"
          "   (target <= 1.1)")
    print(f"Grad-CAM   / floor:                          {med['gradcam'] / med['floor']:.3f}")
    print(f"top-5 Grad-CAM++: five calls / one call:     "
          f"{med['gradcam++ top5 five calls'] / med['gradcam++ top5 one call']:.2f}x"
          "   (target >= 2.5x)")
    print(f"top-5 Grad-CAM:   five calls / one call:     "
          f"{med['gradcam top5 five calls'] / med['gradcam top5 one call']:.2f}x")
    print(f"Grad-CAM++ softmax (1000-class Jacobian) / floor: "
          f"{med['gradcam++softmax'] / med['floor']:.2f}")


if __name__ == "__main__":
    main()
