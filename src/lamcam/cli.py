"""The ``lamcam`` command line.

Subcommands:

* ``lamcam cam IMAGE... --model NAME|CHECKPOINT`` -- attribution maps for image files;
* ``lamcam lam IMAGE --model(s) ... --row R --col C`` -- Local Attribution Maps of
  super-resolution models for one output window, with the paper's figure and the DI;
* ``lamcam demo`` -- every bundled sample through every bundled classifier and CAM method,
  with an HTML report.

Exit status: 0 success; 1 some input images could not be read (the others were processed);
2 usage or configuration error (bad option, unwritable output directory, unknown model or layer,
target out of range, ...); 3 unexpected internal error. Errors are reported on one line on
stderr; ``--debug`` adds the Python traceback.

Adding a subcommand: write ``_add_<name>_parser(subparsers)`` that registers its options and
``set_defaults(func=<handler>)`` with a handler ``(args) -> int``, and append it to
``_SUBCOMMANDS``.

Example:
    >>> main(["--version"])  # doctest: +ELLIPSIS
    lamcam ...
    0
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lamcam.integrate import QUADRATURES

__all__ = ["main", "build_parser", "parse_target", "CliError"]

#: CAM-family methods shown in help texts (the authoritative list is ``lamcam.METHODS``).
_METHOD_HELP = (
    "cam, gradcam, gradcam++, gradcam++softmax, guided-backprop, guided-gradcam, guided-gradcam++"
)

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class CliError(Exception):
    """A user-facing error: printed on one line, exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _err(msg: str) -> None:
    print(f"lamcam: error: {msg}", file=sys.stderr)


def _note(msg: str) -> None:
    print(f"lamcam: note: {msg}", file=sys.stderr)


def _show_warning(message: Any, category: Any, filename: Any, lineno: Any, file=None, line=None):
    """Warnings become one-line notes on stderr (no source line, no file:line noise)."""
    _note(str(message))


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------


def parse_target(spec: str, classes: Sequence[str] | None = None) -> Any:
    """Turn a ``--target`` string into a lamcam target.

    ``"pred"`` -> ``None`` (predicted class); ``"3"`` -> ``3``; ``"top5"`` -> ``lamcam.TopK(5)``;
    a class name from ``classes`` -> its index.

    Raises:
        CliError: unrecognised specification.

    Example:
        >>> parse_target("pred") is None, parse_target("2"), parse_target("star", ["o", "star"])
        (True, 2, 1)
        >>> parse_target("top3").k
        3
    """
    s = spec.strip()
    if s.lower() in ("pred", "predicted", "none"):
        return None
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    m = re.fullmatch(r"top-?(\d+)", s.lower())
    if m:
        from lamcam import TopK

        k = int(m.group(1))
        if k < 1:
            raise CliError(f"--target {spec!r}: k must be at least 1")
        return TopK(k)
    if classes:
        lowered = [c.lower() for c in classes]
        if s.lower() in lowered:
            return lowered.index(s.lower())
        raise CliError(
            f"--target {spec!r} is not 'pred', a class index, 'topK' or a class name "
            f"(classes: {', '.join(classes)})"
        )
    raise CliError(f"--target {spec!r} is not 'pred', a class index or 'topK' (e.g. top5)")


def _model_meta(model: Any) -> dict[str, Any]:
    meta = getattr(model, "lamcam_meta", None)
    return dict(meta) if isinstance(meta, dict) else {}


def _class_name(classes: Sequence[str] | None, idx: int) -> str:
    if classes and 0 <= idx < len(classes):
        return str(classes[idx])
    return f"class {idx}"


def _safe_name(text: str) -> str:
    """File-name-safe version of a class name (``"golden retriever"`` -> ``"golden_retriever"``)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def _make_explainer(method: str, model: Any, layer: Any, explicit_layer: bool = False) -> Any:
    """``lamcam.make_explainer``, noting when a --layer given by the user goes unused."""
    from lamcam.cam import GuidedBackprop, make_explainer

    explainer = make_explainer(method, model, layer)
    if explicit_layer and type(explainer) is GuidedBackprop:
        _note(f"method {method!r} does not use a layer; --layer ignored")
    return explainer


def _load_model(spec: str, arch: str | None) -> Any:
    from lamcam import zoo

    return zoo.load(spec, arch=arch)


def _input_mode(meta: dict[str, Any]) -> str:
    channels = meta.get("channels", meta.get("in_channels", 3))
    return "L" if channels == 1 else "RGB"


def _input_hw(meta: dict[str, Any]) -> tuple[int, int] | None:
    size = meta.get("input_size")
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


# --------------------------------------------------------------------------------------------
# lamcam cam
# --------------------------------------------------------------------------------------------


def _add_cam_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cam",
        parents=[common],
        help="class activation maps for image files",
        description=(
            "Explain a classifier's decision on image files. Writes, per image:\n"
            "  <stem>_<method>.png  overlay (gradient image for guided-* methods);\n"
            "                       with --target topK, one per rank:\n"
            "                       <stem>_<method>_top<r>_<class>.png\n"
            "  <stem>_<method>.npy  the raw layer-resolution map(s)\n"
            "and prints one line per image (prediction, probability, target)."
        ),
        epilog=(
            "examples:\n"
            "  lamcam cam img.png --model shapes_vgg\n"
            "  lamcam cam a.png b.jpg --model shapes_resnet --method gradcam --target top3\n"
            "  lamcam cam x.png --model ckpt.safetensors --arch shapes_vgg --layer features.20\n"
            "\nexit status: 0 ok, 1 some images could not be read, 2 usage/configuration error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    p.add_argument(
        "--model",
        required=True,
        metavar="NAME|CHECKPOINT",
        help="bundled model name (see lamcam.zoo.list_models()) or a checkpoint path",
    )
    p.add_argument("--arch", default=None, help="architecture of a checkpoint given to --model")
    p.add_argument(
        "--layer",
        default=None,
        metavar="L",
        help="layer to explain: dotted module name, or several separated by commas "
        "(default: the model's default layer, else picked automatically)",
    )
    p.add_argument(
        "--method",
        default="gradcam++",
        metavar="M",
        help=f"attribution method: {_METHOD_HELP} (default: gradcam++)",
    )
    p.add_argument(
        "--target",
        default="pred",
        metavar="T",
        help="class to explain: 'pred' (predicted, default), a class index, a class name, "
        "or topK (e.g. top5) for the K best classes",
    )
    p.add_argument(
        "--out", default="lamcam-out", metavar="DIR", help="output directory (default: lamcam-out)"
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1] (default: 0.5)"
    )
    p.add_argument(
        "--cmap", default="jet", help="matplotlib colormap of the overlay (default: jet)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="images per forward pass (default: 16)",
    )
    p.set_defaults(func=_run_cam)


def _run_cam(args: argparse.Namespace) -> int:
    import torch

    from lamcam.io import ImageLoadError, ensure_writable_dir, load_image

    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    out_dir = ensure_writable_dir(args.out)  # fail before any work

    model = _load_model(args.model, args.arch)
    meta = _model_meta(model)
    classes = meta.get("classes")
    target = parse_target(args.target, classes)
    layer: Any = args.layer if args.layer is not None else meta.get("default_layer")
    if isinstance(layer, str) and "," in layer:
        layer = [s.strip() for s in layer.split(",") if s.strip()]
    explainer = _make_explainer(args.method, model, layer, explicit_layer=args.layer is not None)
    hw = _input_hw(meta)
    mode = _input_mode(meta)

    failed: list[str] = []
    used_stems: dict[str, int] = {}
    queue: list[tuple[Path, str, torch.Tensor]] = []

    def flush() -> None:
        if not queue:
            return
        batch = torch.stack([x for _, _, x in queue])
        res = explainer(batch, target=target)
        probs = torch.softmax(res.logits.detach().float(), dim=1)
        pred = probs.argmax(dim=1)
        for i, (path, stem, image) in enumerate(queue):
            _write_cam_outputs(
                args, out_dir, res, i, path, stem, image, probs[i], int(pred[i]), classes
            )
        queue.clear()

    for name in args.images:
        path = Path(name)
        try:
            x = load_image(path, mode=mode, size=hw)
        except ImageLoadError as e:
            _err(f"{e} (skipped)")
            failed.append(name)
            continue
        stem = path.stem
        n = used_stems.get(stem, 0)
        used_stems[stem] = n + 1
        if n:
            stem = f"{stem}_{n + 1}"
            _note(f"{name}: another input has the same name; writing outputs as {stem}_*")
        queue.append((path, stem, x))
        if len(queue) >= args.batch_size:
            flush()
    flush()

    if failed:
        _err(f"{len(failed)} of {len(args.images)} image(s) could not be read: {', '.join(failed)}")
        return EXIT_PARTIAL
    return EXIT_OK


def _write_cam_outputs(
    args: argparse.Namespace,
    out_dir: Path,
    res: Any,
    i: int,
    path: Path,
    stem: str,
    image: Any,
    probs: Any,
    pred: int,
    classes: Sequence[str] | None,
) -> None:
    """Write the PNG(s) and the .npy of image ``i`` of ``res`` and print its summary line."""
    import numpy as np

    from lamcam.viz import gradient_image, overlay_cam

    method = args.method
    kind = getattr(res, "kind", "cam")
    maps = res.maps[i].detach().cpu()
    multi = maps.ndim == (4 if kind == "gradient" else 3)
    targets = getattr(res, "targets", None)
    if targets is None:
        t_idx: list[int | None] = [None] * (maps.shape[0] if multi else 1)
    else:
        t = targets[i]
        t_idx = [int(v) for v in t.reshape(-1).tolist()]

    raw = getattr(res, "raw", None)
    raws = raw if isinstance(raw, tuple) else (res.maps if raw is None else raw,)
    arrs = [r[i].detach().cpu().float().numpy() for r in raws]
    if len(arrs) == 1:
        np.save(out_dir / f"{stem}_{method}.npy", arrs[0])
    elif len({a.shape for a in arrs}) == 1:  # several layers of one resolution: (L, ...)
        np.save(out_dir / f"{stem}_{method}.npy", np.stack(arrs))
    else:  # several layers of different resolutions: one file per layer
        names = list(getattr(res, "layer_names", [])) or [str(j) for j in range(len(arrs))]
        for lname, a in zip(names, arrs, strict=False):
            np.save(out_dir / f"{stem}_{method}_{_safe_name(lname)}.npy", a)

    def render(m: Any) -> Any:
        if kind == "gradient":
            return gradient_image(m)
        return overlay_cam(image, m, alpha=args.alpha, cmap=args.cmap)

    written: list[Path] = []
    if multi:
        for r in range(maps.shape[0]):
            c = t_idx[r] if r < len(t_idx) else None
            cname = _safe_name(_class_name(classes, c)) if c is not None else "target"
            png = out_dir / f"{stem}_{method}_top{r + 1}_{cname}.png"
            render(maps[r]).save(png)
            written.append(png)
    else:
        png = out_dir / f"{stem}_{method}.png"
        render(maps).save(png)
        written.append(png)

    pred_txt = f"pred {_class_name(classes, pred)} (p={float(probs[pred]):.3f})"
    if targets is None:
        tgt_txt = "target custom score"
    elif multi:
        tgt_txt = "targets " + ", ".join(
            f"{_class_name(classes, c)} (p={float(probs[c]):.3f})" for c in t_idx if c is not None
        )
    else:
        c = t_idx[0]
        tgt_txt = f"target {_class_name(classes, c)} (p={float(probs[c]):.3f})"
    shown = written[0] if len(written) == 1 else out_dir / f"{stem}_{method}_top*.png"
    print(f"{path}: {pred_txt}, {tgt_txt} -> {shown}", flush=True)


# --------------------------------------------------------------------------------------------
# lamcam lam
# --------------------------------------------------------------------------------------------



def _add_lam_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "lam",
        parents=[common],
        help="Local Attribution Map of a super-resolution (image-to-image) model",
        description=(
            "Explain which LR pixels a super-resolution network used for one window of its\n"
            "output (LAM, Gu & Dong 2021: path-integrated gradients along progressive blurring,\n"
            "objective = the edge strength in the window). Writes, for IMAGE and each model:\n"
            "  <stem>_<model>_lam.png      the LAM panel (LR + window, map, blends, area of\n"
            "                              contribution, SR output, Diffusion Index)\n"
            "  <stem>_<model>_lam.npy      the signed attribution (C, H, W) on the LR image\n"
            "  <stem>_<model>_lam_map.npy  the 2-D map |sum_c attribution| / max, (H, W)\n"
            "  <stem>_<model>_lam.json     DI, pixels95, completeness error and all parameters\n"
            "and with --models also <stem>_lam_comparison.png/.json. Prints one line per model.\n"
            "The image is used at its own size (never resized); DI depends on that size."
        ),
        epilog=(
            "examples:\n"
            "  lamcam lam lr.png --model sr_edsr --row 96 --col 128\n"
            "  lamcam lam lr.png --models sr_fsrcnn,sr_edsr,sr_rcan,sr_swinir --row 96 --col 128\n"
            "  lamcam lam lr.png --model net.safetensors --arch EDSR --row 20 --col 30 --coords lr\n"
            "\nexit status: 0 ok, 1 the image file could not be read (corrupt/truncated/missing),\n"
            "2 usage or configuration error (window off the image, not an image file, model\n"
            "output not an integer multiple of the input, NaN output, bad checkpoint, ...)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMAGE", help="the LR image file")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="NAME|CHECKPOINT",
                       help="bundled model name (see lamcam.zoo.list_models()) or a checkpoint")
    which.add_argument("--models", metavar="M1,M2,...",
                       help="several models (comma-separated): one LAM each, plus a comparison "
                       "figure with a DI bar chart")
    p.add_argument("--arch", default=None, help="architecture of checkpoints given to --model(s)")
    p.add_argument("--row", type=int, required=True, metavar="R",
                   help="window row (see --coords; default: top-left corner, SR pixels)")
    p.add_argument("--col", type=int, required=True, metavar="C", help="window column")
    p.add_argument("--window", type=int, default=16, metavar="W",
                   help="window side in SR pixels (default: 16)")
    p.add_argument("--coords", choices=("sr", "sr-center", "lr"), default="sr",
                   help="how --row/--col are given: 'sr' top-left corner in SR pixels (the "
                   "paper's convention, default), 'sr-center' window centre in SR pixels, 'lr' "
                   "top-left corner in LR pixels (multiplied by the scale)")
    p.add_argument("--sigma", type=float, default=1.2, help="blur of the baseline (default: 1.2)")
    p.add_argument("--steps", type=int, default=50, metavar="M",
                   help="path steps / network passes (default: 50)")
    p.add_argument("--kernel-size", type=int, default=9, metavar="L",
                   help="odd side of the blur kernel (default: 9)")
    p.add_argument("--quadrature", choices=QUADRATURES, default="riemann",
                   help="path quadrature (default: riemann, the official discretisation)")
    p.add_argument("--objective", choices=("gradient", "mean"), default="gradient",
                   help="window objective: edge strength (default, the paper's) or mean intensity")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="path points per forward/backward pass (default: from a 1 GB budget)")
    p.add_argument("--input-range", type=float, choices=(1.0, 255.0), default=None,
                   metavar="1|255",
                   help="value range the model expects (default: the model's metadata, else 1)")
    p.add_argument("--out", default="lamcam-out", metavar="DIR",
                   help="output directory (default: lamcam-out)")
    p.set_defaults(func=_run_lam)


def _lam_model_names(specs: Sequence[str]) -> list[str]:
    """File-name-safe, unique short names for model specs (a checkpoint path gives its stem)."""
    names: list[str] = []
    for spec in specs:
        base = _safe_name(Path(spec).stem if Path(spec).suffix or "/" in spec else spec)
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _jsonable(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, recursively."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _load_lam_image(path: Path, mode: str) -> Any:
    """``load_image`` with the exit codes of ``lamcam lam``: 2 for a file that is not an image
    at all (or a directory), 1 for an image that cannot be read (missing, corrupt, truncated)."""
    from lamcam.io import ImageLoadError, load_image

    try:
        return load_image(path, mode=mode)
    except ImageLoadError as e:
        not_image = e.reason.startswith(("not a recognised image format", "it is a directory"))
        raise CliError(str(e), EXIT_USAGE if not_image else EXIT_PARTIAL) from None


def _run_lam(args: argparse.Namespace) -> int:
    import json
    import time

    import numpy as np

    from lamcam.io import ensure_writable_dir
    from lamcam.lam import LAM

    if args.window < 1:
        raise CliError(f"--window must be positive, got {args.window}")
    if args.steps < 1:
        raise CliError(f"--steps must be positive, got {args.steps}")
    if not args.sigma > 0:
        raise CliError(f"--sigma must be positive, got {args.sigma}")
    if args.kernel_size < 1 or args.kernel_size % 2 == 0:
        raise CliError(f"--kernel-size must be a positive odd number, got {args.kernel_size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    if args.models is not None:
        specs = [m.strip() for m in args.models.split(",") if m.strip()]
        if not specs:
            raise CliError("--models is empty")
    else:
        specs = [args.model]
    out_dir = ensure_writable_dir(args.out)  # fail before any work

    image_path = Path(args.image)
    stem = image_path.stem
    names = _lam_model_names(specs)
    images: dict[str, Any] = {}
    plans: list[tuple[str, str, Any, Any]] = []  # (name, spec, LAM, image)
    for spec, name in zip(specs, names, strict=True):
        model = _load_model(spec, args.arch)
        meta = _model_meta(model)
        mode = _input_mode(meta)
        if mode not in images:
            images[mode] = _load_lam_image(image_path, mode)
        input_range = args.input_range or float(meta.get("input_range", 1.0))
        lam = LAM(model, sigma=args.sigma, kernel_size=args.kernel_size, steps=args.steps,
                  quadrature=args.quadrature, objective=args.objective,
                  batch_size=args.batch_size, input_range=input_range, progress=True)
        plans.append((name, spec, lam, images[mode]))
    if len(plans) > 1:  # check every model's scale and window before the expensive part
        for name, _, lam, x in plans:
            try:
                scale = lam.scale_of(x)  # the probe LAM caches and reuses
                lam.window_origin(args.row, args.col, args.window, scale,
                                  (x.shape[-2] * scale, x.shape[-1] * scale), args.coords)
            except ValueError as e:
                raise CliError(f"{name}: {' '.join(str(e).split())}") from None

    results: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    for name, spec, lam, x in plans:
        t0 = time.perf_counter()
        try:
            r = lam(x, args.row, args.col, args.window, coords=args.coords)
        except ValueError as e:
            prefix = f"{name}: " if len(plans) > 1 else ""
            raise CliError(prefix + " ".join(str(e).split())) from None
        seconds = time.perf_counter() - t0
        base = out_dir / f"{stem}_{name}_lam"
        png = base.with_suffix(".png")
        r.figure(path=png, title=f"{name}  ·  {image_path.name}")
        np.save(base.with_suffix(".npy"), r.attribution.detach().cpu().float().numpy())
        np.save(out_dir / f"{stem}_{name}_lam_map.npy", r.map.detach().cpu().float().numpy())
        record = {"model": name, "model_spec": spec, "image": str(image_path),
                  "seconds": round(seconds, 3), **r.to_dict()}
        base.with_suffix(".json").write_text(json.dumps(_jsonable(record), indent=2) + "\n",
                                             encoding="utf-8")
        results[name] = r
        records.append(record)
        n_px = r.map.numel()
        ce = r.completeness_error
        ce_txt = f"{100 * ce:.2g} %" if ce == ce else "n/a"
        print(f"{image_path}: {name}: DI {r.diffusion_index:.2f}, pixels95 {r.pixels95}/{n_px}, "
              f"completeness error {ce_txt}, {seconds:.1f} s -> {png}", flush=True)

    if len(results) > 1:
        from lamcam.viz.lam import lam_comparison_figure

        png = out_dir / f"{stem}_lam_comparison.png"
        lam_comparison_figure(results, png, title=f"LAM across models  ·  {image_path.name}")
        summary = {"image": str(image_path), "models": records}
        (out_dir / f"{stem}_lam_comparison.json").write_text(
            json.dumps(_jsonable(summary), indent=2) + "\n", encoding="utf-8")
        print(f"{image_path}: comparison of {len(results)} models -> {png}", flush=True)
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# lamcam demo
# --------------------------------------------------------------------------------------------


def _add_demo_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="CAM methods on the bundled classifiers, LAM on the bundled SR models; HTML report",
        description=(
            "Run every bundled sample image through the bundled classifiers with every "
            "CAM-family method, write one side-by-side figure per (model, image); run LAM "
            "for every bundled super-resolution model on the same window of a bundled SR "
            "sample (per-model figures, a comparison figure, a DI/PSNR table); write an "
            "index.html linking them, and print a summary."
        ),
    )
    p.add_argument(
        "--out", default="lamcam-out", metavar="DIR", help="output directory (default: lamcam-out)"
    )
    p.add_argument(
        "--models",
        default=None,
        metavar="M1,M2",
        help="comma-separated model names or checkpoints (default: every bundled classifier "
        "and SR model); registered SR models go to the LAM study, the others to the CAM study",
    )
    p.add_argument(
        "--no-lam", action="store_true", help="skip the LAM study of the SR models"
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        metavar="N",
        help="only the first N sample images (default: all)",
    )
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from lamcam.demo import run_demo
    from lamcam.io import ensure_writable_dir

    out_dir = ensure_writable_dir(args.out)
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise CliError("--models is empty")
    if args.max_images is not None and args.max_images < 1:
        raise CliError(f"--max-images must be positive, got {args.max_images}")
    summary = run_demo(out_dir, models=models, max_images=args.max_images, lam=not args.no_lam)
    print(summary.format())
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# lamcam eval
# --------------------------------------------------------------------------------------------
_EVAL_GROUPS = ("faithfulness", "deletion", "localisation")


def _add_eval_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "eval",
        parents=[common],
        help="score CAM methods: Average Drop, Win %%, deletion/insertion, localisation",
        description=(
            "Score several attribution methods on one classifier over a set of images and write\n"
            "  summary.md    the table (best per column in bold), Win %%, results by instance count\n"
            "  summary.csv   one row per method;  per_image.csv  one row per (method, image)\n"
            "  *.png         metric bars, mean deletion/insertion curves, coverage by instance count\n"
            "Images come from files (ground-truth instance masks are read from <stem>_mask.png\n"
            "beside each image: 0 = background, k = instance k; labels from a samples.json) or\n"
            "from the generated shapes set with exact masks (--shapes N)."
        ),
        epilog=(
            "examples:\n"
            "  lamcam eval --shapes 200 --model shapes_resnet --methods cam,gradcam,gradcam++\n"
            "  lamcam eval src/lamcam/zoo/samples/*.png --model shapes_vgg --out eval-vgg\n"
            "  lamcam eval photos/ --model ckpt.pth --arch shapes_vgg --metrics faithfulness\n"
            "\nexit status: 0 ok, 1 some images could not be read, 2 usage/configuration error"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="*", metavar="IMAGE|DIR", help="image files or folders")
    p.add_argument("--shapes", type=int, default=None, metavar="N",
                   help="evaluate on N generated shapes images with exact instance masks")
    p.add_argument("--seed", type=int, default=7000,
                   help="seed of the generated set (default 7000; the zoo trained on 1000)")
    p.add_argument("--model", default="shapes_resnet", metavar="NAME|CHECKPOINT",
                   help="bundled classifier or checkpoint (default: shapes_resnet)")
    p.add_argument("--arch", default=None, help="architecture of a checkpoint given to --model")
    p.add_argument("--methods", default="cam,gradcam,gradcam++", metavar="M1,M2",
                   help=f"comma-separated methods from: {_METHOD_HELP} (default: cam,gradcam,gradcam++)")
    p.add_argument("--layer", default=None, metavar="L", help="layer for CAM methods (default: the "
                   "model's default layer, else picked automatically)")
    p.add_argument("--target", default="pred", choices=("pred", "label"),
                   help="explain the predicted class (default) or the true label")
    p.add_argument("--metrics", default=None, metavar="G1,G2",
                   help=f"metric groups from {', '.join(_EVAL_GROUPS)} (default: all the data supports)")
    p.add_argument("--steps", type=int, default=32, help="deletion/insertion steps (default 32)")
    p.add_argument("--substrate", default="zeros", choices=("zeros", "blur"),
                   help="what deleted pixels become (default zeros, as in RISE)")
    p.add_argument("--input", default="raw", choices=("raw", "normalised"),
                   help="what the model's input tensor is, recorded with Average Drop (default raw)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per call (default 16)")
    p.add_argument("--out", default="lamcam-eval", metavar="DIR",
                   help="output directory (default: lamcam-eval)")
    p.set_defaults(func=_run_eval)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def _eval_inputs(specs: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in _IMAGE_SUFFIXES
                           and not q.stem.endswith("_mask"))
            if not found:
                raise CliError(f"no images in folder {p}")
            paths.extend(found)
        elif p.stem.endswith("_mask"):
            continue  # a ground-truth mask picked up by a shell glob
        else:
            paths.append(p)
    return paths


def _instance_masks(path: Path, hw: tuple[int, int]) -> Any:
    """``(n, H, W)`` bool from ``<stem>_mask.png`` (0 background, k = instance k), or None."""
    import numpy as np
    import torch
    from PIL import Image

    mp = path.with_name(path.stem + "_mask.png")
    if not mp.is_file():
        return None
    try:
        with Image.open(mp) as im:
            a = np.asarray(im.convert("L") if im.mode not in ("L", "P", "I", "I;16") else im)
    except OSError as e:
        raise CliError(f"cannot read mask {mp}: {e}") from e
    if a.ndim != 2:
        raise CliError(f"mask {mp} must be a single-channel label image")
    ids = [int(v) for v in np.unique(a) if v != 0]
    if not ids:
        raise CliError(f"mask {mp} is empty (no object pixels); remove it or the image")
    m = torch.from_numpy(np.stack([a == k for k in ids]))
    if tuple(m.shape[1:]) != tuple(hw):
        raise CliError(f"mask {mp} is {a.shape[1]}x{a.shape[0]} but the image is used at "
                       f"{hw[1]}x{hw[0]}; give a mask of the image's size")
    return m


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from lamcam.evaluation import MetricUnavailableError, evaluate
    from lamcam.io import ImageLoadError, ensure_writable_dir, load_image

    if (args.shapes is None) == (not args.images):
        raise CliError("give image files/folders or --shapes N (one of the two)")
    if args.shapes is not None and args.shapes < 1:
        raise CliError(f"--shapes must be positive, got {args.shapes}")
    if args.batch_size < 1 or args.steps < 1:
        raise CliError("--batch-size and --steps must be positive")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise CliError("--methods is empty")
    groups = None
    if args.metrics is not None:
        groups = [g.strip() for g in args.metrics.split(",") if g.strip()]
        bad = [g for g in groups if g not in _EVAL_GROUPS]
        if bad or not groups:
            raise CliError(f"unknown metric group(s) {bad}; choose from {', '.join(_EVAL_GROUPS)}")
    out_dir = ensure_writable_dir(args.out)

    model = _load_model(args.model, args.arch)
    meta = _model_meta(model)
    layer: Any = args.layer if args.layer is not None else meta.get("default_layer")
    failed: list[str] = []
    labels = None
    if args.shapes is not None:
        from lamcam.zoo.shapes import DEFAULT_SIZE, make_dataset

        hw = _input_hw(meta) or (DEFAULT_SIZE, DEFAULT_SIZE)
        if hw[0] != hw[1]:
            raise CliError(f"--shapes makes square images; the model takes {hw[1]}x{hw[0]}")
        ds = make_dataset(args.shapes, args.seed, hw[0])
        images, labels, masks = ds.images, ds.labels, ds.masks
        ids: list[Any] = [f"shapes-{args.seed}-{i}" for i in range(args.shapes)]
        source = f"{args.shapes} generated shapes images (seed {args.seed})"
    else:
        from lamcam.demo import load_samples

        paths = _eval_inputs(args.images)
        hw = _input_hw(meta)
        xs, kept = [], []
        for path in paths:
            try:
                xs.append(load_image(path, mode=_input_mode(meta), size=hw))
                kept.append(path)
            except ImageLoadError as e:
                _err(f"{e} (skipped)")
                failed.append(str(path))
        if not xs:
            raise CliError("none of the images could be read", EXIT_PARTIAL)
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) > 1:
            raise CliError(f"images have different sizes {sorted(shapes)} and the model declares no "
                           "input size; resize them to one size first")
        images = torch.stack(xs)
        hw = tuple(images.shape[2:])
        masks = [_instance_masks(p, hw) for p in kept]
        if any(m is None for m in masks):
            missing = sum(m is None for m in masks)
            if groups is not None and "localisation" in groups:
                raise CliError(f"localisation needs ground-truth masks, but {missing} of {len(masks)} "
                               "images have no <stem>_mask.png beside them; add masks or drop "
                               "'localisation' from --metrics")
            if missing < len(masks):
                _note(f"{missing} of {len(masks)} images have no mask: localisation metrics skipped")
            masks = None
        if args.target == "label":
            infos = load_samples(kept)
            if any(s.label is None for s in infos):
                raise CliError("--target label needs labels in a samples.json beside the images; "
                               "use --target pred")
            labels = torch.tensor([s.label for s in infos])
        ids = [str(p) for p in kept]
        source = f"{len(kept)} image file(s)"
    try:
        ev = evaluate(model, images, methods, labels=labels, instance_masks=masks, layer=layer,
                      target=args.target, groups=groups, input=args.input, steps=args.steps,
                      substrate=args.substrate, batch_size=args.batch_size, image_ids=ids)
    except MetricUnavailableError as e:
        raise CliError(str(e)) from e
    ev.config = {"model": args.model, "data": source, **ev.config}
    written = ev.write(out_dir, title=f"lamcam eval: {args.model}")
    print(ev.markdown())
    print(f"wrote {len(written)} files to {out_dir} (summary.md, summary.csv, per_image.csv, plots)")
    if failed:
        _err(f"{len(failed)} image(s) could not be read: {', '.join(failed)}")
        return EXIT_PARTIAL
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------

_SUBCOMMANDS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _add_cam_parser,
    _add_lam_parser,
    _add_eval_parser,
    _add_demo_parser,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``lamcam`` argument parser (one subparser per entry of ``_SUBCOMMANDS``).

    Example:
        >>> build_parser().parse_args(["demo", "--out", "x"]).out
        'x'
    """
    from lamcam import __version__

    # --debug is accepted both before and after the subcommand; SUPPRESS keeps the subparser
    # from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Python tracebacks on errors",
    )
    parser = argparse.ArgumentParser(
        prog="lamcam",
        description="Exact CAM-family and LAM attribution maps for PyTorch image models.",
        epilog="Run 'lamcam <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"lamcam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add in _SUBCOMMANDS:
        add(sub, common)
    return parser


def _is_library_error(e: BaseException) -> bool:
    library = (ValueError, LookupError, TypeError, OSError, RuntimeError, ImportError)
    if isinstance(e, library):
        return True
    try:
        import lamcam

        base = getattr(lamcam, "LamcamError", None)
    except Exception:  # pragma: no cover - broken install
        return False
    return isinstance(base, type) and isinstance(e, base)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Example:
        >>> main([])  # doctest: +ELLIPSIS
        usage: lamcam ...
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as e:  # --help, --version, usage errors
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else EXIT_USAGE)
    if getattr(args, "command", None) is None:
        parser.print_usage(sys.stdout)
        print("lamcam: choose a command: " + ", ".join(_command_names(parser)), file=sys.stdout)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args))
        except CliError as e:
            if debug:
                traceback.print_exc()
            _err(str(e))
            return e.code
        except KeyboardInterrupt:
            _err("interrupted")
            return 130
        except Exception as e:  # noqa: BLE001 - the CLI's job is to turn these into one line
            if debug:
                traceback.print_exc()
            msg = " ".join(str(e).split()) or type(e).__name__
            if _is_library_error(e):
                _err(msg)
                return EXIT_USAGE
            _err(f"internal error: {type(e).__name__}: {msg} (re-run with --debug for details)")
            return EXIT_INTERNAL


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:  # argparse exposes no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []
