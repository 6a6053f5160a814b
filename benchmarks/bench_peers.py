"""lamcam beside its peers (captum, torchcam, pytorch-grad-cam) on the same models.

    python benchmarks/bench_peers.py [--batch 16] [--threads 1] [--repeats 5] [--import-runs 7]
    python benchmarks/bench_peers.py --quick     # smoke run: batch 2, 2 repeats, 2 import runs

Models (random weights, eval mode, parameters left as loaded, i.e. ``requires_grad=True``):
torchvision ResNet-50 at ``layer4`` and timm ViT-S/16 at ``blocks.11.norm1``, whose tokens
``(B, 197, 384)`` become a 14 x 14 grid (class token dropped, channels first). The input is a
standard-normal batch, like normalised images (a uniform [0, 1) batch drives the random ViT to
maps that are all zero after the ReLU). The target is the predicted class of each image. Cases:
lamcam Grad-CAM and Grad-CAM++, captum ``LayerGradCam``, torchcam ``GradCAM`` and ``GradCAMpp``,
pytorch-grad-cam ``GradCAM`` and ``GradCAMPlusPlus``.

Prints markdown tables of

1. agreement with a reference written here (plain forward hook + ``torch.autograd.grad`` in
   float64): Grad-CAM ``relu(sum_k mean_ij(g_k) A_k)`` and Grad-CAM++ by eq. 19 of Chattopadhay
   et al. without epsilon; max |difference| after per-image min-max normalisation of both, at the
   layer's resolution where a library returns raw maps, else after upsampling the reference the same
   way (bilinear, align_corners=False). Grad-CAM++ maps are also compared with two variants, to tell
   what a library computes: eq. 19 with 1e-6 added to the denominator, and weights sum_ij relu(g)^3;
2. whether the model is left as it was: hooks on any module (or global ones), parameter ``.grad``,
   ``requires_grad`` and ``training`` flags, buffers, parameter values; checked right after the call
   (explainer alive), after the library's own cleanup (leaving its ``with`` block), and once with the
   model in train mode (batch 2);
3. time / floor, where floor = one forward pass with the layer's output captured + one
   ``torch.autograd.grad`` of the summed predicted scores to that output; all cases interleaved in each
   repeat (the starting case rotates from repeat to repeat, so no case always runs right after
   pytorch-grad-cam's full backward pass), medians of the times and of each repeat's ratio to its
   floor. Explainers are built before the timed call and torn down after it (untimed), so no
   library's hooks are on the model while another case runs; captum gets the predicted classes
   (it needs explicit targets), the others find them in their own forward pass;
4. import time beyond ``import torch`` (and beyond torchvision for pytorch-grad-cam, which imports it):
   medians over fresh processes, libraries interleaved.

torchvision is imported through ``tests/torchvision_ops.py`` (PyPI's wheel beside the CPU torch).
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.metadata as md
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from bench_cam import floor  # the same floor as bench_cam.py (this folder is on sys.path)
from torch import Tensor, nn

import lamcam

ROOT = Path(__file__).resolve().parents[1]
GRID = 14  # ViT-S/16 at 224 x 224: 14 x 14 patches
EPS_PGC = 1e-6  # the epsilon pytorch-grad-cam adds to the Grad-CAM++ denominator


def load_stack() -> SimpleNamespace:
    """torchvision (through the tests' helper) first, then timm and the peers that need it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from torchvision_ops import import_torchvision

    tv = import_torchvision()
    import cv2
    import timm
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam import GradCAMPlusPlus as PgcGradCAMPlusPlus
    from torchcam.methods import GradCAM as TcGradCAM
    from torchcam.methods import GradCAMpp as TcGradCAMpp

    return SimpleNamespace(tv=tv, timm=timm, cv2=cv2, LayerGradCam=LayerGradCam,
                           TcGradCAM=TcGradCAM, TcGradCAMpp=TcGradCAMpp,
                           PgcGradCAM=PgcGradCAM, PgcGradCAMPlusPlus=PgcGradCAMPlusPlus)


# --------------------------------------------------------------------------------------------
# Models and the token reshape
# --------------------------------------------------------------------------------------------


def tokens_chw(t: Tensor) -> Tensor:
    """ViT tokens (B, 1 + 14*14, C) -> (B, C, 14, 14): class token dropped, channels first."""
    b, _, c = t.shape
    return t[:, 1:, :].transpose(1, 2).reshape(b, c, GRID, GRID)


class TokenGridView(nn.Module):
    """Runs a ViT so that one token layer's patch tokens pass through ``self.grid`` as (B, C, h, w).

    captum's ``LayerGradCam`` averages gradients over dims >= 2 and sums over dim 1, so it needs a
    module whose output is a channels-first grid. ``grid`` is an identity module on the patch
    tokens, rearranged; the class token goes around it. The forward hook lives only during this
    module's forward, so the ViT itself is left as it was.
    """

    def __init__(self, vit: nn.Module, layer: str) -> None:
        super().__init__()
        self.vit = vit
        self.layer = vit.get_submodule(layer)
        self.grid = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        def through_grid(_m, _i, out: Tensor) -> Tensor:
            g = self.grid(tokens_chw(out))
            return torch.cat([out[:, :1], g.flatten(2).transpose(1, 2)], dim=1)

        handle = self.layer.register_forward_hook(through_grid)
        try:
            return self.vit(x)
        finally:
            handle.remove()


@dataclass
class Bench:
    name: str
    model: nn.Module
    layer: str
    to_grid: Callable[[Tensor], Tensor] | None  # token layers: (B, N, C) -> (B, C, h, w)


def build_models(st: SimpleNamespace, which: list[str]) -> list[Bench]:
    out = []
    if "resnet50" in which:
        torch.manual_seed(0)
        out.append(Bench("ResNet-50", st.tv.models.resnet50(weights=None).eval(), "layer4", None))
    if "vit_s16" in which:
        torch.manual_seed(0)
        vit = st.timm.create_model("vit_small_patch16_224", pretrained=False).eval()
        out.append(Bench("ViT-S/16", vit, "blocks.11.norm1", tokens_chw))
    return out


# --------------------------------------------------------------------------------------------
# The floor and the float64 reference
# --------------------------------------------------------------------------------------------


def reference(b: Bench, x: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Raw float64 maps (B, h, w) at the layer: Grad-CAM, Grad-CAM++ (eq. 19) and two variants."""
    m64 = copy.deepcopy(b.model).double()
    store: list[Tensor] = []

    def hook(_m, _i, out):
        store.append(out)
        return out.clone()  # later in-place ops cannot touch the recorded activation

    handle = m64.get_submodule(b.layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = m64(x.double())
            score = logits.gather(1, targets[:, None]).sum()
            (g,) = torch.autograd.grad(score, store[0])
    finally:
        handle.remove()
    a = store[0].detach()
    if b.to_grid is not None:
        a, g = b.to_grid(a), b.to_grid(g)
    del m64
    dims = (2, 3)

    def cam(w: Tensor) -> Tensor:
        return torch.relu((w[:, :, None, None] * a).sum(1))

    g2, g3 = g * g, g * g * g
    sum_a = a.sum(dims, keepdim=True)
    den = 2 * g2 + sum_a * g3
    nz = den != 0
    alpha = torch.where(nz, g2 / torch.where(nz, den, torch.ones_like(den)), 0.0)
    alpha_eps = torch.where(g != 0, g2 / (den + EPS_PGC), 0.0)
    pos = g.clamp(min=0)
    return {
        "gc": cam(g.mean(dims)),
        "gcpp": cam((alpha * pos).sum(dims)),
        "gcpp_eps": cam((alpha_eps * pos).sum(dims)),
        "gcpp_relu3": cam((pos**3).sum(dims)),
    }


def minmax(m: Tensor) -> Tensor:
    """Per-image min-max to [0, 1] over the last two dims, float64; a constant map becomes 0."""
    m = m.double()
    lo = m.amin((-2, -1), keepdim=True)
    span = m.amax((-2, -1), keepdim=True) - lo
    return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1.0), 0.0)


def max_diff(lib_map: Tensor, ref_raw: Tensor) -> float:
    """max |minmax(lib) - minmax(ref)|; the reference is upsampled first if the map is larger."""
    if lib_map.shape[-2:] != ref_raw.shape[-2:]:
        ref_raw = F.interpolate(ref_raw[:, None], size=lib_map.shape[-2:], mode="bilinear",
                                align_corners=False)[:, 0]
    return float((minmax(lib_map) - minmax(ref_raw)).abs().max())


# --------------------------------------------------------------------------------------------
# Is the model left as it was?
# --------------------------------------------------------------------------------------------

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def snapshot(model: nn.Module) -> dict[str, Any]:
    mm = torch.nn.modules.module
    return {
        "hooks": {(n, d): tuple(getattr(m, d)) for n, m in model.named_modules() for d in _HOOK_DICTS
                  if getattr(m, d, None)},
        "global": {d: tuple(getattr(mm, d)) for d in _GLOBAL_HOOKS if getattr(mm, d, None)},
        "grad": {n for n, p in model.named_parameters() if p.grad is not None},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "buffers": {n: t.detach().clone() for n, t in model.named_buffers()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
    }


def changes(before: dict[str, Any], model: nn.Module) -> str:
    now = snapshot(model)
    out = []
    hooks = set(now["hooks"].items()) - set(before["hooks"].items())
    n_hooks = sum(len(v) for _, v in hooks)
    n_global = sum(len(v) for v in now["global"].values()) - sum(len(v) for v in before["global"].values())
    if n_hooks:
        out.append(f"leaves {n_hooks} hook{'s' * (n_hooks > 1)}")
    if n_global:
        out.append(f"leaves {n_global} global hooks")
    if now["grad"] - before["grad"]:
        out.append(f"fills .grad ({len(now['grad'] - before['grad'])} params)")
    if now["requires_grad"] != before["requires_grad"]:
        out.append("changes requires_grad")
    flips = sum(before["training"][k] != v for k, v in now["training"].items())
    if flips:
        out.append(f"changes training flag of {flips} modules")
    bufs = sum(not torch.equal(before["buffers"][k], v) for k, v in now["buffers"].items())
    if bufs:
        out.append(f"changes {bufs} buffers")
    if any(not torch.equal(before["params"][k], v) for k, v in now["params"].items()):
        out.append("changes parameters")
    return "; ".join(out) or "ok"


def restore(model: nn.Module, snap: dict[str, Any]) -> None:
    """Undo what a case left (grads, flags, buffers), so the next case starts from the same model."""
    model.zero_grad(set_to_none=True)
    mods = dict(model.named_modules())
    for n, flag in snap["training"].items():
        mods[n].training = flag
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.requires_grad_(snap["requires_grad"][n])
        for n, t in model.named_buffers():
            t.copy_(snap["buffers"][n])
    gc.collect()


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    library: str
    method: str  # "gc" or "gcpp"; "" for the floor
    setup: Callable[[], Any]  # untimed: build the explainer
    run: Callable[[Any, Tensor], Any]  # timed: the call
    result: Callable[[Any], Tensor] | None = None  # the call's output -> a map (B, h, w)
    form: str = ""  # "raw": at the layer's resolution; "upsampled": at the input's
    cleanup: Callable[[Any], None] | None = None  # the library's own cleanup (leaving `with`)

    @property
    def label(self) -> str:
        names = {"gc": "Grad-CAM", "gcpp": "Grad-CAM++"}
        return f"{self.library} {names[self.method]}" if self.method else self.library


def make_cases(st: SimpleNamespace, b: Bench, targets: Tensor) -> list[Case]:
    model, layer = b.model, b.model.get_submodule(b.layer)
    reshape = b.to_grid

    def tc_setup(cls):
        kw = {"reshape_transform": reshape} if reshape is not None else {}
        return lambda: cls(model, b.layer, **kw)

    def tc_run(cam, x):  # torchcam: the caller runs the model, the extractor computes from scores
        scores = model(x)
        return cam(class_idx=scores.argmax(1).tolist(), scores=scores)

    def pgc_setup(cls):
        return lambda: cls(model=model, target_layers=[layer], reshape_transform=reshape)

    # captum needs a module whose output is (B, C, h, w): for the ViT, the grid view above
    captum_model = model if reshape is None else TokenGridView(model, b.layer)
    captum_layer = layer if reshape is None else captum_model.grid

    def leave(obj):
        obj.__exit__(None, None, None)

    return [
        Case("floor", "", lambda: None, lambda _s, x: floor(model, layer, x)),
        Case("lamcam", "gc", lambda: lamcam.GradCAM(model, layer=b.layer), lambda e, x: e(x),
             lambda r: r.raw, "raw"),
        Case("lamcam", "gcpp", lambda: lamcam.GradCAMPlusPlus(model, layer=b.layer), lambda e, x: e(x),
             lambda r: r.raw, "raw"),
        Case("captum", "gc", lambda: st.LayerGradCam(captum_model, captum_layer),
             lambda e, x: e.attribute(x, target=targets[: x.shape[0]], relu_attributions=True),
             lambda r: r[:, 0], "raw"),
        Case("torchcam", "gc", tc_setup(st.TcGradCAM), tc_run, lambda r: r[0], "raw", leave),
        Case("torchcam", "gcpp", tc_setup(st.TcGradCAMpp), tc_run, lambda r: r[0], "raw", leave),
        Case("pytorch-grad-cam", "gc", pgc_setup(st.PgcGradCAM),
             lambda e, x: e(input_tensor=x, targets=None), torch.from_numpy, "upsampled", leave),
        Case("pytorch-grad-cam", "gcpp", pgc_setup(st.PgcGradCAMPlusPlus),
             lambda e, x: e(input_tensor=x, targets=None), torch.from_numpy, "upsampled", leave),
    ]


def run_case(case: Case, x: Tensor) -> tuple[float, Any]:
    """Build (untimed), call (timed), tear down (untimed); the model is reset by the caller."""
    state = case.setup()
    t0 = time.perf_counter()
    out = case.run(state, x)
    dt = time.perf_counter() - t0
    if case.cleanup is not None:
        case.cleanup(state)
    return dt, out


def interleaved_times(cases: list, x: Tensor, model: nn.Module, snap: dict[str, Any],
                      repeats: int) -> dict[str, list[float]]:
    """Every case once per repeat, the starting case rotating, the model reset after each call:
    ``{label: [seconds per repeat]}``."""
    times: dict[str, list[float]] = {c.label: [] for c in cases}
    for r in range(repeats):
        for case in cases[r % len(cases):] + cases[: r % len(cases)]:
            dt, out = run_case(case, x)
            del out
            restore(model, snap)
            times[case.label].append(dt)
    return times


def check_state(case: Case, model: nn.Module, x: Tensor, snap: dict[str, Any]) -> tuple[str, str, Any]:
    """(after the call, after the library's cleanup, the call's output)."""
    state = case.setup()
    out = case.run(state, x)
    after_call = changes(snap, model)
    if case.cleanup is None:
        after_cleanup = "(no cleanup step)"
    else:
        case.cleanup(state)
        after_cleanup = changes(snap, model)
    del state
    return after_call, after_cleanup, out


# --------------------------------------------------------------------------------------------
# Import time
# --------------------------------------------------------------------------------------------

IMPORTS = [  # (label, statement timed, statement run before the clock starts)
    ("torch (itself)", "import torch", ""),
    ("torchvision, beyond torch", "import_torchvision()", "import torch; " + "from torchvision_ops "
     "import import_torchvision"),
    ("lamcam", "import lamcam", "import torch"),
    ("captum", "from captum.attr import LayerGradCam", "import torch"),
    ("torchcam", "from torchcam.methods import GradCAM, GradCAMpp", "import torch"),
    ("pytorch-grad-cam, beyond torchvision", "from pytorch_grad_cam import GradCAM, GradCAMPlusPlus",
     "import torch; from torchvision_ops import import_torchvision; import_torchvision()"),
]


def import_times(runs: int) -> dict[str, list[float]]:
    tests = str(ROOT / "tests")
    out: dict[str, list[float]] = {label: [] for label, _, _ in IMPORTS}
    for r in range(runs):  # interleaved; the starting library rotates from run to run
        order = IMPORTS[r % len(IMPORTS):] + IMPORTS[: r % len(IMPORTS)]
        for label, stmt, pre in order:
            code = (f"import sys, time; sys.path.insert(0, {tests!r}); {pre or 'pass'}\n"
                    f"t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)")
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 cwd=ROOT, check=True)
            out[label].append(float(res.stdout.strip().splitlines()[-1]))
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def versions() -> str:
    names = ["torch", "torchvision", "timm", "lamcam", "captum", "torchcam", "grad-cam",
             "opencv-python-headless"]
    return ", ".join(f"{n} {md.version(n)}" for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=None, help="images per call (16; --quick: 2)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (5; --quick: 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--import-runs", type=int, default=None,
                    help="fresh processes per library (7; --quick: 2)")
    ap.add_argument("--models", nargs="+", default=["resnet50", "vit_s16"], choices=["resnet50", "vit_s16"])
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 2, 2 repeats, 2 import runs")
    args = ap.parse_args()
    quick = args.quick
    batch = args.batch or (2 if quick else 16)
    repeats = args.repeats or (2 if quick else 5)
    import_runs = args.import_runs if args.import_runs is not None else (2 if quick else 7)
    if args.size != 224 and "vit_s16" in args.models:
        ap.error("the ViT-S/16 case needs --size 224 (a 14 x 14 token grid)")

    t_start = time.perf_counter()
    st = load_stack()
    torch.set_num_threads(args.threads)
    st.cv2.setNumThreads(args.threads)  # pytorch-grad-cam resizes with OpenCV
    print(f"# Peers side by side: batch {batch} x 3 x {args.size}^2, {args.threads} thread(s), "
          f"{repeats} interleaved repeats (medians)\n")
    print(versions() + "\n")

    agree_rows, state_rows, time_rows = [], [], []
    for b in build_models(st, args.models):
        torch.manual_seed(0)
        x = torch.randn(batch, 3, args.size, args.size)  # like normalised images (see the docstring)
        model = b.model
        with torch.no_grad():
            targets = model(x).argmax(1)
        ref = reference(b, x, targets)
        print(f"{b.name}: layer {b.layer}, predicted classes {targets.tolist()}")
        for key, label in (("gc", "Grad-CAM"), ("gcpp", "Grad-CAM++")):
            flat = ref[key].flatten(1)
            print(f"  reference {label}: {int((flat.amax(1) == 0).sum())} of {batch} maps all zero; "
                  f"positive at {float((flat > 0).double().mean()):.1%} of the layer's positions")
        cases = make_cases(st, b, targets)
        snap = snapshot(model)

        # 1 + 2: one call per case (also the warm-up): agreement and the model's state
        for case in cases:
            if not case.method:
                case.run(None, x)
                continue
            after_call, after_cleanup, out = check_state(case, model, x, snap)
            restore(model, snap)
            lib_map = case.result(out).detach()
            row = [b.name, case.label, case.form, max_diff(lib_map, ref[case.method])]
            if case.method == "gcpp":
                row += [max_diff(lib_map, ref["gcpp_eps"]), max_diff(lib_map, ref["gcpp_relu3"])]
            else:
                row += [None, None]
            agree_rows.append(row)
            state_rows.append([b.name, case.label, after_call, after_cleanup])
            del out, lib_map
            gc.collect()

        # 2b: the same in train mode, on two images
        model.train()
        snap_train = snapshot(model)
        for case in cases:
            if case.method:
                after_call, after_cleanup, _ = check_state(case, model, x[:2], snap_train)
                restore(model, snap_train)
                after = after_call if case.cleanup is None else after_cleanup
                for row in state_rows:
                    if row[0] == b.name and row[1] == case.label:
                        row.append(after)
        model.eval()
        restore(model, snap)

        # 3: time / floor, interleaved
        times = interleaved_times(cases, x, model, snap, repeats)
        base = times["floor"]
        for case in cases:
            t = times[case.label]
            ratios = [v / f for v, f in zip(t, base, strict=True)]
            time_rows.append([b.name, case.label, statistics.median(t), statistics.median(ratios),
                              min(ratios), max(ratios)])
        del ref, cases
        gc.collect()

    print("\n## Agreement with the float64 reference (max |difference| after per-image min-max)\n")
    print("| model | library / method | compared at | vs reference (Grad-CAM; Grad-CAM++ eq. 19) "
          "| vs eq. 19 + 1e-6 in the denominator | vs weights sum relu(g)^3 |")
    print("|---|---|---|---|---|---|")
    for name, label, form, d, d_eps, d_r3 in agree_rows:
        where = "layer (raw map)" if form == "raw" else f"input ({args.size}², upsampled)"
        extra = " | ".join("—" if v is None else f"{v:.2e}" for v in (d_eps, d_r3))
        print(f"| {name} | {label} | {where} | {d:.2e} | {extra} |")

    print("\n## Is the model left as it was?\n")
    print("| model | library / method | eval mode, after the call | after the library's cleanup "
          "(leaving its `with`) | train mode, batch 2 |")
    print("|---|---|---|---|---|")
    for row in state_rows:
        print("| " + " | ".join(row) + " |")

    print("\n## Time ÷ floor (medians of interleaved repeats)\n")
    print("| model | case | median time | median ratio to the floor | range of the ratio |")
    print("|---|---|---|---|---|")
    for name, label, t, ratio, lo, hi in time_rows:
        spread = "—" if label == "floor" else f"{lo:.2f}–{hi:.2f}"
        print(f"| {name} | {label} | {t * 1000:.0f} ms | {ratio:.2f} | {spread} |")

    if import_runs > 0:
        imp = import_times(import_runs)
        print(f"\n## Import time (median of {import_runs} fresh processes, interleaved)\n")
        print("| library | statement timed | median | range |")
        print("|---|---|---|---|")
        for label, stmt, _ in IMPORTS:
            v = imp[label]
            print(f"| {label} | `{stmt}` | {statistics.median(v) * 1000:.0f} ms | "
                  f"{min(v) * 1000:.0f}–{max(v) * 1000:.0f} ms |")

    print(f"\nTotal runtime: {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
