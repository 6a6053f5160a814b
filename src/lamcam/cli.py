"""The ``lamcam`` command line.

Subcommands:

* ``lamcam cam IMAGE... --model NAME|CHECKPOINT`` -- attribution maps for image files;
* ``lamcam lam IMAGE --model(s) ... --row R --col C`` -- Local Attribution Maps of
  super-resolution models for one output window, with the paper's figure and the DI
  (``--dense``: the DI of every window on a grid, as a heatmap);
* ``lamcam demo`` -- every bundled sample through every bundled classifier and CAM method,
  with an HTML report.

* ``lamcam layers MODEL`` -- the layers of a model with their output shapes, default marked.

Exit status: 0 success; 1 some input images could not be read (missing, truncated, corrupt, or
not an image file at all: the same code in ``cam``, ``lam`` and ``eval``) or their outputs could
not be written (the others were processed; each failure is reported on stderr with the file named);
2 usage or configuration error (bad option, unwritable output directory, unknown model or layer,
target out of range, ...); 3 unexpected internal error. Errors are reported on one line on
stderr; ``--debug`` adds the Python traceback.

Progress and chatter: long commands show a progress bar iff stderr is a terminal (never in log
files); ``-q``/``--quiet`` drops bars, result lines and notes (errors are still printed);
``-v``/``--verbose`` adds the resolved model/layer facts.

Outputs: the output directory is created only when the first file is written, after every
argument, the model, the layer, the target and the window have been checked; a failed run leaves
no empty directory. Every file is written atomically (encoded in memory, written to a temporary file in the
output directory and renamed over the final name), so no output is ever half-written, even if
the process is killed. Options that can fail (``--cmap``, ...) are checked before anything is
written. Output names are decided up front for the whole batch so that two inputs never write
the same file (``a/x.png``, ``b/x.png``, ``c/x_2.png`` give ``x``, ``x_3`` and ``x_2``); one note
on stderr lists the existing files a run replaced. Images larger than ``--max-pixels`` are
refused from their header, before decoding, with the memory they would need.

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
    "cam, gradcam, gradcam++, gradcam++softmax, guided-backprop, guided-gradcam, guided-gradcam++, "
    "hirescam, xgradcam, layercam, scorecam, ablationcam, eigencam"
)

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

#: Default ``--max-pixels`` of ``lamcam cam`` / ``lamcam eval``: the image is only decoded (about
#: 30 bytes per pixel, 0.5 GB at this size) and resized to the classifier's input.
CAM_MAX_PIXELS = 4096 * 4096
#: Default ``--max-pixels`` of ``lamcam lam``: the image is decoded whole (0.5 GB at this size).
#: Whole-image LAM keeps the activations of every layer for the backward pass (14-55 kB per LR
#: pixel per path point for the bundled SR models), but networks with a bounded receptive field
#: run on a crop around the window; LAM itself refuses, with the numbers, what does not fit.
LAM_MAX_PIXELS = 4096 * 4096


class CliError(Exception):
    """A user-facing error: printed on one line, exit status ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


#: Set by :func:`main` from ``--quiet`` / ``--verbose``: -1 quiet, 0 normal, 1 verbose.
_VERBOSITY = 0


def _err(msg: str) -> None:
    print(f"lamcam: error: {msg}", file=sys.stderr)


def _note(msg: str) -> None:
    if _VERBOSITY >= 0:
        print(f"lamcam: note: {msg}", file=sys.stderr)


#: The progress bar of the running command, if any: result lines are written above it.
_BAR: Any = None


def _info(msg: str) -> None:
    """A result line on stdout (dropped by --quiet)."""
    if _VERBOSITY < 0:
        return
    if _BAR is not None:
        _BAR.write(msg, file=sys.stdout)
        sys.stdout.flush()
    else:
        print(msg, flush=True)


def _detail(msg: str) -> None:
    """A --verbose line on stderr (resolved model and layer facts)."""
    if _VERBOSITY > 0:
        print(f"lamcam: {msg}", file=sys.stderr)


def _progress() -> bool | None:
    """``progress=`` for the library: off with --quiet, else a bar iff stderr is a terminal."""
    return False if _VERBOSITY < 0 else None


def _image_bar(total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` images iff stderr is a terminal and not --quiet (else None)."""
    from lamcam._progress import show

    if total < 2 or not show(_progress()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="image", leave=False)


def _check_out(value: str | Path) -> Path:
    """Check that ``--out`` can be created (or written) without creating it.

    The directory itself is made by :func:`_make_out` when the first file is written, so a run
    that fails validation leaves nothing behind.
    """
    import os

    path = Path(value)
    if path.exists() and not path.is_dir():
        raise CliError(f"output directory '{path}' exists but is not a directory")
    probe = path
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if probe.exists() and not probe.is_dir():
        raise CliError(f"cannot create output directory '{path}': '{probe}' is not a directory")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        what = "write in" if probe == path else "create"
        raise CliError(f"cannot {what} output directory '{path}': '{probe}' is not writable")
    return path


def _make_out(path: Path) -> Path:
    from lamcam.io import ensure_writable_dir

    return ensure_writable_dir(path)


class _OutputClash(CliError):
    """An output file would be written twice in one run, or over one of the run's inputs."""


class _Outputs:
    """Every file one command writes into ``out_dir``.

    The files of one :meth:`write` are written together (:func:`lamcam._files.atomic_write_many`:
    all to temporary files first, then renamed over their names), so an input never ends up with
    some of its outputs new and others missing or stale. A name is written at most once per run
    (case-insensitively, for case-insensitive file systems) and never over one of the run's
    input files: such a clash raises :class:`_OutputClash` before anything of that set is
    written. Files that existed before are listed by :meth:`report` in one note.
    """

    def __init__(self, out_dir: Path, inputs: Sequence[Path] = ()) -> None:
        import os

        self.out_dir = out_dir
        self.replaced: list[str] = []
        self._claimed: set[str] = set()
        self._inputs: set[tuple[int, int]] = set()
        for p in inputs:
            try:
                st = os.stat(p)
            except OSError:
                continue
            self._inputs.add((st.st_dev, st.st_ino))

    def _is_input(self, path: Path) -> bool:
        import os

        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._inputs

    def write(self, files: dict[str, bytes]) -> list[Path]:
        """Write ``{file name: content}`` into the output directory; returns the paths."""
        from lamcam._files import atomic_write_many

        if not self.out_dir.is_dir():  # created on the first write, after all checks
            _make_out(self.out_dir)
        batch: set[str] = set()
        for name in files:
            path = self.out_dir / name
            if name.casefold() in self._claimed or name.casefold() in batch:
                raise _OutputClash(f"{path} was already written by another input of this run; "
                                   "not overwritten")
            if self._is_input(path):
                raise _OutputClash(f"{path} is one of the input files; not overwritten "
                                   "(choose another --out)")
            batch.add(name.casefold())
        existed = [n for n in files if (self.out_dir / n).exists() or (self.out_dir / n).is_symlink()]
        written = atomic_write_many({self.out_dir / n: data for n, data in files.items()})
        self._claimed.update(n.casefold() for n in files)
        self.replaced.extend(existed)
        return written

    def report(self) -> None:
        """One note listing the files that existed before this run and were replaced."""
        n = len(self.replaced)
        if n:
            shown = ", ".join(self.replaced[:4]) + (f" and {n - 4} more" if n > 4 else "")
            _note(f"replaced {n} existing output file(s) in {self.out_dir}: {shown}")


def _output_stems(paths: Sequence[Path]) -> list[str]:
    """One distinct output stem per input, decided for the whole batch up front.

    An input keeps its file stem unless an earlier input has the same one (compared
    case-insensitively); later ones get ``<stem>_2``, ``<stem>_3``, ... skipping every name that
    is the stem of any input, so ``a/x.png``, ``b/x.png``, ``c/x_2.png`` give ``x``, ``x_3``,
    ``x_2``. Deterministic: depends only on the list of paths.

    Example:
        >>> _output_stems([Path("a/x.png"), Path("b/x.png"), Path("c/x_2.png")])
        ['x', 'x_3', 'x_2']
    """
    bases = [p.stem for p in paths]
    taken = {b.casefold() for b in bases}
    used: set[str] = set()
    stems = []
    for base in bases:
        stem, k = base, 2
        if stem.casefold() in used:
            while f"{base}_{k}".casefold() in taken:
                k += 1
            stem = f"{base}_{k}"
            taken.add(stem.casefold())
        used.add(stem.casefold())
        stems.append(stem)
    return stems


def _check_cmap(name: str) -> None:
    """``--cmap`` must name a matplotlib colormap (checked before any output is written)."""
    import difflib

    import matplotlib

    if name in matplotlib.colormaps:
        return
    names = sorted(matplotlib.colormaps, key=str.lower)
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    plain = [n for n in names if not n.endswith("_r")]
    raise CliError(f"--cmap {name!r} is not a matplotlib colormap{hint}; choose from: "
                   f"{', '.join(plain)} (each also reversed with _r)")


def _max_pixels(value: int) -> int | None:
    if value < 0:
        raise CliError(f"--max-pixels must be positive (or 0 for no limit), got {value}")
    return value or None


def _add_max_pixels(p: argparse.ArgumentParser, default: int, why: str) -> None:
    side = int(default**0.5)
    p.add_argument(
        "--max-pixels", type=int, default=default, metavar="N",
        help=f"refuse images with more than N pixels (width x height), checked from the file "
        f"header before decoding (default: {default} = {side}x{side}; {why}; 0: no limit "
        "besides Pillow's decompression-bomb guard)")


def _too_large(e: Any, cost: str, fix: str) -> str:
    """The message for an ``ImageTooLargeError`` ``e`` under ``--max-pixels``."""
    return (f"cannot load image '{e.path}': {e.width}x{e.height} pixels ({e.pixels:,}) is more "
            f"than --max-pixels {e.limit:,}; {cost}; {fix}, or raise the limit with "
            f"--max-pixels {e.pixels} (or more) if you have the memory")


def _load_error_text(e: Any) -> str:
    """The one-line message for an ``ImageLoadError`` of ``lamcam cam`` / ``eval``."""
    from lamcam.io import DECODE_BYTES_PER_PIXEL, ImageTooLargeError, format_bytes

    if not isinstance(e, ImageTooLargeError):
        return str(e)
    need = format_bytes(e.pixels * DECODE_BYTES_PER_PIXEL)
    return _too_large(e, f"decoding it takes about {DECODE_BYTES_PER_PIXEL} bytes per pixel "
                      f"({need}) before it is resized to the model's input",
                      "downscale it first")


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
    from lamcam.targets import parse_target as parse

    try:
        return parse(spec, classes)
    except ValueError as e:
        raise CliError(f"--{e}") from None


def _model_meta(model: Any) -> dict[str, Any]:
    from lamcam.zoo import model_meta

    return model_meta(model)


def _class_name(classes: Sequence[str] | None, idx: int) -> str:
    if classes and 0 <= idx < len(classes):
        return str(classes[idx])
    return f"class {idx}"


def _safe_name(text: str) -> str:
    """File-name-safe version of a class name (``"golden retriever"`` -> ``"golden_retriever"``)."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def _layer_message(msg: str, model_spec: str | None) -> str:
    """A wrong-layer message for a CLI user: point to ``lamcam layers``, not to Python."""
    if "no layer named" not in msg:
        return msg
    msg = re.sub(r"\s*List them all with \[n for n, _ in model\.named_modules\(\)\]\.?", "", msg)
    return f"{msg} List them all, with output shapes, with: lamcam layers {model_spec or 'MODEL'}"


def _check_layer(model: Any, layer: Any, model_spec: str) -> None:
    """Resolve ``--layer`` now (before any output), with the CLI's wrong-layer message."""
    if layer is None:
        return
    from lamcam.hooks import resolve_layers

    if isinstance(layer, str) and "," in layer:
        layer = [s.strip() for s in layer.split(",") if s.strip()]
    try:
        resolve_layers(model, layer)
    except ValueError as e:
        raise CliError(_layer_message(str(e), model_spec)) from e


def _make_explainer(method: str, model: Any, layer: Any, explicit_layer: bool = False,
                    model_spec: str | None = None) -> Any:
    """``lamcam.make_explainer``, noting when a --layer given by the user goes unused."""
    from lamcam.cam import GuidedBackprop, make_explainer

    try:
        explainer = make_explainer(method, model, layer)
    except ValueError as e:
        raise CliError(_layer_message(str(e), model_spec)) from e
    if explicit_layer and type(explainer) is GuidedBackprop:
        _note(f"method {method!r} does not use a layer; --layer ignored")
    return explainer


def _load_model(spec: str, arch: str | None) -> Any:
    from lamcam import zoo

    return zoo.load(spec, arch=arch)


def _input_mode(meta: dict[str, Any]) -> str:
    from lamcam.zoo import input_mode

    return input_mode(meta)


#: How ``lamcam cam`` / ``eval`` fit an image to the classifier's input size (help texts).
FIT_HELP = ("images whose size differs from the model's input are resized so that their short "
            "side matches it (aspect ratio kept, bilinear) and centre-cropped to the input size; "
            "the result line says so")


def _load_fitted(path: Path, mode: str, hw: tuple[int, int] | None,
                 max_pixels: int | None) -> tuple[Any, str]:
    """:func:`lamcam.io.load_fitted` (the CLI's fitting rule, see ``FIT_HELP``)."""
    from lamcam.io import load_fitted

    return load_fitted(path, mode=mode, size=hw, max_pixels=max_pixels)


def _image_inputs(specs: Sequence[str]) -> list[Path]:
    """Image files from files and folders; ``*_mask.png`` ground truths are never images.

    A folder gives its image files (sorted, not recursive); a note says how many mask files
    were skipped.
    """
    paths: list[Path] = []
    masks: list[str] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in _IMAGE_SUFFIXES
                           and q.is_file())
            kept = [q for q in found if not _is_mask(q)]
            masks.extend(str(q) for q in found if _is_mask(q))
            if not kept:
                raise CliError(f"no images in folder {p}")
            paths.extend(kept)
        elif _is_mask(p):
            masks.append(spec)  # a ground-truth mask picked up by a shell glob
        else:
            paths.append(p)
    if masks:
        shown = ", ".join(masks[:3]) + (f" and {len(masks) - 3} more" if len(masks) > 3 else "")
        _note(f"skipped {len(masks)} ground-truth mask file(s) (*_mask.png are not explained as "
              f"images): {shown}")
    if not paths:
        raise CliError("no images to explain (only *_mask.png ground-truth files were given)")
    return paths


def _is_mask(p: Path) -> bool:
    return p.stem.lower().endswith("_mask")


def _input_hw(meta: dict[str, Any]) -> tuple[int, int] | None:
    from lamcam.zoo import input_hw

    return input_hw(meta)


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
            "  <stem>_<method>.png  the image and its overlay side by side, titled (method,\n"
            "                       layer, target, score), with a colour bar (--plain: the\n"
            "                       bare overlay; gradient image for guided-* methods);\n"
            "                       with --target topK, one per rank:\n"
            "                       <stem>_<method>_top<r>_<class>.png\n"
            "  <stem>_<method>.npy  the raw layer-resolution map(s)\n"
            "and prints one line per image (prediction, probability, target).\n"
            "Output names are unique within a run (a later input with an already used stem\n"
            "gets <stem>_2, <stem>_3, ...); files are written atomically; one note lists the\n"
            "existing files that were replaced."
        ),
        epilog=(
            "examples:\n"
            "  lamcam cam img.png --model shapes_vgg\n"
            "  lamcam cam a.png b.jpg --model shapes_resnet --method gradcam --target top3\n"
            "  lamcam cam x.png --model ckpt.safetensors --arch shapes_vgg --layer features.20\n"
            "  lamcam cam photos/ --model shapes_vgg -q\n"
            "  lamcam layers shapes_vgg          (the layers --layer accepts)\n"
            "\nimages: a folder gives its image files; *_mask.png ground-truth files are skipped\n"
            "(with a note). Images whose size differs from the model's input are resized so\n"
            "that their short side matches it (aspect ratio kept) and centre-cropped; the\n"
            "result line says so. Nothing is created in --out before every check has passed.\n"
            "\nexit status: 0 ok, 1 some images could not be read (missing, truncated, corrupt,\n"
            "or not an image file) or written (the others were processed), 2 usage/configuration\n"
            "error (unknown model or layer, target out of range, bad option, ...)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR",
                   help="image files or folders to explain (*_mask.png files are skipped)")
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
        "--cmap", default="turbo", help="matplotlib colormap of the overlay (default: turbo)"
    )
    p.add_argument("--plain", action="store_true",
                   help="write the bare overlay (image size, no title or colour bar) instead of "
                   "the titled figure")
    p.add_argument("--background", choices=("image", "gray"), default="image",
                   help="under the heatmap: the image, or a dimmed grayscale copy (easier to read "
                   "on saturated or striped images)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="images per forward pass (default: 16)",
    )
    _add_max_pixels(p, CAM_MAX_PIXELS, "decoding takes about 30 bytes per pixel")
    p.set_defaults(func=_run_cam)


def _run_cam(args: argparse.Namespace) -> int:
    import torch

    from lamcam.io import ImageLoadError

    if not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    max_pixels = _max_pixels(args.max_pixels)
    _check_cmap(args.cmap)
    out_dir = _check_out(args.out)  # created on the first write, after every check
    paths = _image_inputs(args.images)

    model = _load_model(args.model, args.arch)
    meta = _model_meta(model)
    classes = meta.get("classes")
    target = parse_target(args.target, classes)
    layer: Any = args.layer if args.layer is not None else meta.get("default_layer")
    if isinstance(layer, str) and "," in layer:
        layer = [s.strip() for s in layer.split(",") if s.strip()]
    explainer = _make_explainer(args.method, model, layer, explicit_layer=args.layer is not None,
                                model_spec=args.model)
    hw = _input_hw(meta)
    mode = _input_mode(meta)
    _detail(f"model {args.model}: {type(model).__name__}, input {mode} "
            f"{'x'.join(map(str, hw)) if hw else 'any size'}, layer(s) "
            f"{explainer.layer_names or 'picked automatically on the first batch'}, "
            f"method {args.method}")

    names = [str(p) for p in paths]
    stems = _output_stems(paths)  # for the whole batch, before anything is read or written
    for name, path, stem in zip(names, paths, stems, strict=True):
        if stem != path.stem:
            _note(f"{name}: another input has the same name; writing outputs as {stem}_*")
    outputs = _Outputs(out_dir, inputs=paths)
    failed: list[str] = []
    unwritten: list[str] = []
    queue: list[tuple[str, Path, str, torch.Tensor]] = []
    fits: dict[str, str] = {}

    def flush() -> None:
        if not queue:
            return
        batch = torch.stack([x for *_, x in queue])
        res = explainer(batch, target=target)
        probs = torch.softmax(res.logits.detach().float(), dim=1)
        pred = probs.argmax(dim=1)
        for i, (name, path, stem, image) in enumerate(queue):
            files, line = _cam_outputs(
                args, out_dir, res, i, path, stem, image, probs[i], int(pred[i]), classes
            )
            try:
                outputs.write(files)
            except (OSError, _OutputClash) as e:
                _err(f"{name}: cannot write its outputs: {' '.join(str(e).split())} (skipped)")
                unwritten.append(name)
                continue
            if fits.get(name):  # before the arrow: the line still ends with the output file
                head, arrow, tail = line.rpartition(" -> ")
                line = f"{head} ({fits[name]}){arrow}{tail}"
            _info(line)
        if bar is not None:
            bar.update(len(queue))
        queue.clear()

    global _BAR
    bar = _image_bar(len(paths), "cam")
    _BAR = bar
    try:
        for name, path, stem in zip(names, paths, stems, strict=True):
            try:
                x, fits[name] = _load_fitted(path, mode, hw, max_pixels)
            except ImageLoadError as e:
                _err(f"{_load_error_text(e)} (skipped)")
                failed.append(name)
                if bar is not None:
                    bar.update(1)
                continue
            queue.append((name, path, stem, x))
            if len(queue) >= args.batch_size:
                flush()
        flush()
    finally:
        _BAR = None
        if bar is not None:
            bar.close()
        outputs.report()

    n = len(paths)
    if failed:
        _err(f"{len(failed)} of {n} image(s) could not be read: {', '.join(failed)}")
    if unwritten:
        _err(f"the outputs of {len(unwritten)} of {n} image(s) could not be written: "
             f"{', '.join(unwritten)}")
    return EXIT_PARTIAL if failed or unwritten else EXIT_OK


def _cam_outputs(
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
) -> tuple[dict[str, bytes], str]:
    """The files of image ``i`` of ``res`` (``{name: content}``: the .npy, then the PNG(s)),
    rendered in memory, and its summary line. Nothing is written here."""
    import numpy as np

    from lamcam._files import image_bytes, npy_bytes
    from lamcam.viz import figure_image, gradient_image, overlay_cam, overlay_figure

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
    files: dict[str, bytes] = {}
    if len(arrs) == 1:
        files[f"{stem}_{method}.npy"] = npy_bytes(arrs[0])
    elif len({a.shape for a in arrs}) == 1:  # several layers of one resolution: (L, ...)
        files[f"{stem}_{method}.npy"] = npy_bytes(np.stack(arrs))
    else:  # several layers of different resolutions: one file per layer
        names = list(getattr(res, "layer_names", [])) or [str(j) for j in range(len(arrs))]
        used: set[str] = set()
        for lname, a in zip(names, arrs, strict=False):
            base = _safe_name(lname)
            tag, k = base, 2
            while tag.casefold() in used:  # two layer names with the same file-safe form
                tag, k = f"{base}_{k}", k + 1
            used.add(tag.casefold())
            files[f"{stem}_{method}_{tag}.npy"] = npy_bytes(a)

    def render(m: Any, r: int = 0) -> Any:
        background = getattr(args, "background", "image")
        if getattr(args, "plain", False):  # the bare overlay / gradient image
            if kind == "gradient":
                return gradient_image(m)
            return overlay_cam(image, m, alpha=args.alpha, cmap=args.cmap, background=background)
        c = t_idx[r] if r < len(t_idx) else None
        layer_txt = ", ".join(getattr(res, "layer_names", []) or []) or "input"
        scores = getattr(res, "scores", None)
        score = float(scores[i].reshape(-1)[r]) if scores is not None else float("nan")
        tgt = "custom score" if c is None else f"{_class_name(classes, c)} (p={float(probs[c]):.3f})"
        fig = overlay_figure(
            image, m, kind=kind, title=path.name, alpha=args.alpha, cmap=args.cmap,
            background=background,
            image_title=f"input\npred: {_class_name(classes, pred)} (p={float(probs[pred]):.3f})",
            panel_title=f"{method} · {layer_txt}\ntarget: {tgt}\nscore (logit) {score:.3g}",
        )
        return figure_image(fig)

    pngs: list[str] = []
    if multi:
        for r in range(maps.shape[0]):
            c = t_idx[r] if r < len(t_idx) else None
            cname = _safe_name(_class_name(classes, c)) if c is not None else "target"
            pngs.append(f"{stem}_{method}_top{r + 1}_{cname}.png")
            files[pngs[-1]] = image_bytes(render(maps[r], r))
    else:
        pngs.append(f"{stem}_{method}.png")
        files[pngs[-1]] = image_bytes(render(maps))

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
    shown = out_dir / (pngs[0] if len(pngs) == 1 else f"{stem}_{method}_top*.png")
    return files, f"{path}: {pred_txt}, {tgt_txt} -> {shown}"


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
            "With --dense, the Diffusion Index of every --window on a grid (step --stride)\n"
            "instead of one window (--row/--col not needed), for each model:\n"
            "  <stem>_<model>_dense.png    SR image, DI heatmap (highest-DI windows outlined),\n"
            "                              DI histogram\n"
            "  <stem>_<model>_dense.npy    the DI grid (rows, cols), float64\n"
            "  <stem>_<model>_dense.json   the grid, window corners, pixels95, completeness\n"
            "                              errors and all parameters\n"
            "LAM runs on a crop of the LR image that holds the window's receptive field when the\n"
            "network's field is bounded (same result, less work; --no-crop: the whole image).\n"
            "The image is used at its own size (never resized); DI depends on that size.\n"
            "Files are written atomically; one note lists the existing files that were replaced."
        ),
        epilog=(
            "examples:\n"
            "  lamcam lam lr.png --model sr_edsr --row 96 --col 128\n"
            "  lamcam lam lr.png --models sr_fsrcnn,sr_edsr,sr_rcan,sr_swinir --row 96 --col 128\n"
            "  lamcam lam lr.png --model net.safetensors --arch EDSR --row 20 --col 30 --coords lr\n"
            "  lamcam lam lr.png --model sr_edsr --dense --stride 32\n"
            "  lamcam lam lr.png --model 4x_net.pth --call module --row 40 --col 40 --no-crop\n"
            "\nNothing is created in --out before the models, the image and the window are checked.\n"
            "\nexit status: 0 ok, 1 the image file could not be read (missing, truncated, corrupt,\n"
            "not an image file, decompression bomb, NaN pixels, more than --max-pixels; the same\n"
            "code as in cam and eval) or LAM on it would need more memory than is free (refused\n"
            "up front, with the numbers), 2 usage or configuration error (window off the image,\n"
            "IMAGE is a folder, model output not an integer multiple of the input, NaN output,\n"
            "bad checkpoint, ...)"
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
    p.add_argument("--row", type=int, default=None, metavar="R",
                   help="window row (see --coords; default: top-left corner, SR pixels); "
                   "required unless --dense")
    p.add_argument("--col", type=int, default=None, metavar="C",
                   help="window column; required unless --dense")
    p.add_argument("--dense", action="store_true",
                   help="the DI of every window on a grid (LAM.dense) instead of one window: "
                   "writes <stem>_<model>_dense.png/.npy/.json")
    p.add_argument("--stride", type=int, default=None, metavar="S",
                   help="with --dense: grid step in SR pixels (default: --window, windows tile "
                   "the image)")
    p.add_argument("--no-crop", action="store_true",
                   help="explain on the whole LR image, not on the crop that holds the window's "
                   "receptive field (slower, same result for local networks)")
    p.add_argument("--call", choices=("spandrel", "module"), default=None,
                   help="for checkpoints loaded through spandrel: explain spandrel's call (pad, "
                   "run, clamp to [0, 1], crop; the default) or the bare module")
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
    _add_max_pixels(p, LAM_MAX_PIXELS, "whole-image LAM needs 10-60 kB per LR pixel per path point "
                    "for typical SR networks; networks with a bounded receptive field run on a crop")
    p.set_defaults(func=_run_lam)


def _lam_model_names(specs: Sequence[str]) -> list[str]:
    """File-name-safe, unique short names for model specs (a checkpoint path gives its stem)."""
    names: list[str] = []
    for spec in specs:
        base = _safe_name(Path(spec).stem if Path(spec).suffix or "/" in spec else spec)
        name, k = base, 2
        while name.casefold() in {n.casefold() for n in names}:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def _load_lam_model(spec: str, arch: str | None, call: str | None) -> Any:
    """``lamcam.zoo.load`` for ``lamcam lam``; ``call=`` is passed only when --call was given."""
    from lamcam import zoo

    return zoo.load(spec, arch=arch) if call is None else zoo.load(spec, arch=arch, call=call)


def _jsonable(obj: Any) -> Any:
    from lamcam._files import jsonable

    return jsonable(obj)


def _lam_bytes_per_pixel(model: Any) -> float | None:
    """Bytes per LR pixel per path point that LAM needs with ``model`` (a probe on 32 x 32)."""
    import torch

    from lamcam.integrate import probe_point_bytes

    side = 32
    try:
        param = next(iter(model.parameters()), None)
        kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
        channels = 1 if _input_mode(_model_meta(model)) == "L" else 3
        _, point_bytes = probe_point_bytes(model, torch.zeros(channels, side, side, **kw))
    except Exception:  # noqa: BLE001 - only an estimate for an error message
        return None
    return point_bytes / (side * side)


def _lam_too_large(e: Any, models: Sequence[tuple[str, Any]], batch: int | None) -> str:
    """Why ``lamcam lam`` refuses an image above --max-pixels: the memory LAM would need."""
    from lamcam.io import format_bytes

    per_pixel = [(name, b) for name, m in models if (b := _lam_bytes_per_pixel(m)) is not None]
    if per_pixel:
        name, b = max(per_pixel, key=lambda t: t[1])
        n = batch or 1
        cost = (f"LAM keeps every layer's activations for the backward pass: {name} needs about "
                f"{format_bytes(b)} per LR pixel per path point, so {e.pixels:,} pixels x "
                f"{format_bytes(b)} x batch {n} = {format_bytes(e.pixels * b * n)}")
    else:
        cost = ("LAM keeps every layer's activations for the backward pass (10-60 kB per LR pixel "
                "per path point for typical SR networks)")
    return _too_large(e, cost, "crop the LR image around the window (LAM only looks at its "
                      "neighbourhood) or downscale it")


def _load_lam_image(path: Path, mode: str, max_pixels: int | None,
                    models: Sequence[tuple[str, Any]], batch: int | None) -> Any:
    """``load_image`` with the exit codes of ``lamcam lam``: 2 for a directory (a usage error:
    IMAGE is one file), 1 for a file that cannot be read (missing, corrupt, truncated, not an
    image file at all, decompression bomb, NaN pixels; as in ``cam`` and ``eval``) or is larger
    than ``--max-pixels``."""
    from lamcam.io import ImageLoadError, ImageTooLargeError, load_image

    try:
        return load_image(path, mode=mode, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        raise CliError(_lam_too_large(e, models, batch), EXIT_PARTIAL) from e
    except ImageLoadError as e:
        folder = e.reason.startswith("it is a directory")
        raise CliError(str(e), EXIT_USAGE if folder else EXIT_PARTIAL) from e


def _run_lam(args: argparse.Namespace) -> int:
    import json
    import time

    from lamcam._files import figure_bytes, npy_bytes
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
    if args.dense:
        if args.stride is not None and args.stride < 1:
            raise CliError(f"--stride must be positive, got {args.stride}")
        ignored = [o for o, v in (("--row", args.row), ("--col", args.col)) if v is not None]
        if args.coords != "sr":
            ignored.append("--coords")
        if ignored:
            _note(f"{', '.join(ignored)} ignored with --dense (every window on the grid is "
                  "explained)")
    else:
        missing = [o for o, v in (("--row", args.row), ("--col", args.col)) if v is None]
        if missing:
            raise CliError(f"{' and '.join(missing)} required: the window to explain (or --dense "
                           "for the DI of every window)")
        if args.stride is not None:
            raise CliError("--stride needs --dense")
    if args.models is not None:
        specs = [m.strip() for m in args.models.split(",") if m.strip()]
        if not specs:
            raise CliError("--models is empty")
    else:
        specs = [args.model]
    max_pixels = _max_pixels(args.max_pixels)
    out_dir = _check_out(args.out)  # created on the first write, after every check

    image_path = Path(args.image)
    if _is_mask(image_path):
        raise CliError(f"{image_path} is a ground-truth mask (*_mask.png), not an image to explain",
                       EXIT_PARTIAL)
    stem = image_path.stem
    names = _lam_model_names(specs)
    models = [(name, _load_lam_model(spec, args.arch, args.call))
              for spec, name in zip(specs, names, strict=True)]
    images: dict[str, Any] = {}
    plans: list[tuple[str, str, Any, Any]] = []  # (name, spec, LAM, image)
    for spec, (name, model) in zip(specs, models, strict=True):
        meta = _model_meta(model)
        mode = _input_mode(meta)
        if mode not in images:  # the size is checked from the header, before decoding
            images[mode] = _load_lam_image(image_path, mode, max_pixels, models, args.batch_size)
        input_range = args.input_range or float(meta.get("input_range", 1.0))
        lam = LAM(model, sigma=args.sigma, kernel_size=args.kernel_size, steps=args.steps,
                  quadrature=args.quadrature, objective=args.objective,
                  batch_size=args.batch_size, input_range=input_range, progress=_progress(),
                  crop=False if args.no_crop else "auto")
        plans.append((name, spec, lam, images[mode]))
        _detail(f"model {name} ({spec}): {type(model).__name__}, input {mode}, input range "
                f"{input_range:g}, LR image {images[mode].shape[-1]}x{images[mode].shape[-2]}")
    # every model's scale and window are checked before the expensive part (and before --out)
    for name, _, lam, x in plans:
        try:
            scale = lam.scale_of(x)  # the probe LAM caches and reuses
            sr_hw = (x.shape[-2] * scale, x.shape[-1] * scale)
            if args.dense:
                if args.window > min(sr_hw):
                    raise ValueError(f"the window ({args.window}) must fit in the "
                                     f"{sr_hw[0]}x{sr_hw[1]} SR image")
            else:
                lam.window_origin(args.row, args.col, args.window, scale, sr_hw, args.coords)
        except ValueError as e:
            prefix = f"{name}: " if len(plans) > 1 else ""
            raise CliError(f"{prefix}{' '.join(str(e).split())}") from None

    def json_bytes(obj: Any) -> bytes:
        return (json.dumps(_jsonable(obj), indent=2) + "\n").encode("utf-8")

    outputs = _Outputs(out_dir, inputs=[image_path])
    if args.dense:
        try:
            for name, spec, lam, x in plans:
                _lam_dense(args, name, spec, lam, x, image_path, outputs, json_bytes,
                           prefix=f"{name}: " if len(plans) > 1 else "")
        finally:
            outputs.report()
        return EXIT_OK
    from lamcam.viz.lam import crop_statement

    results: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    try:
        for name, spec, lam, x in plans:
            t0 = time.perf_counter()
            try:
                r = lam(x, args.row, args.col, args.window, coords=args.coords)
            except ValueError as e:
                prefix = f"{name}: " if len(plans) > 1 else ""
                raise CliError(prefix + " ".join(str(e).split())) from e
            seconds = time.perf_counter() - t0
            record = {"model": name, "model_spec": spec, "image": str(image_path),
                      "seconds": round(seconds, 3), **r.to_dict()}
            fig = r.figure(title=f"{name}  ·  {image_path.name}")
            base = f"{stem}_{name}_lam"
            written = outputs.write({  # everything rendered first, then written atomically
                f"{base}.png": figure_bytes(fig, dpi=fig.dpi, facecolor="white"),
                f"{base}.npy": npy_bytes(r.attribution.detach().cpu().float().numpy()),
                f"{base}_map.npy": npy_bytes(r.map.detach().cpu().float().numpy()),
                f"{base}.json": json_bytes(record),
            })
            results[name] = r
            records.append(record)
            n_px = r.map.numel()
            ce = r.completeness_error
            ce_txt = f"{100 * ce:.2g} %" if ce == ce else "n/a"
            crop_txt = crop_statement(r.params, short=True)
            _info(f"{image_path}: {name}: DI {r.diffusion_index:.2f}, pixels95 {r.pixels95}/"
                  f"{n_px}, completeness error {ce_txt}, " + (f"{crop_txt}, " if crop_txt else "")
                  + f"{seconds:.1f} s -> {written[0]}")

        if len(results) > 1:
            from lamcam.viz.lam import lam_comparison_figure

            fig = lam_comparison_figure(results, title=f"LAM across models  ·  {image_path.name}")
            summary = {"image": str(image_path), "models": records}
            written = outputs.write({
                f"{stem}_lam_comparison.png": figure_bytes(fig, dpi=fig.dpi, facecolor="white"),
                f"{stem}_lam_comparison.json": json_bytes(summary),
            })
            _info(f"{image_path}: comparison of {len(results)} models -> {written[0]}")
    finally:
        outputs.report()
    return EXIT_OK


def _lam_dense(args: argparse.Namespace, name: str, spec: str, lam: Any, x: Any, image_path: Path,
               outputs: _Outputs, json_bytes: Callable[[Any], bytes], prefix: str = "") -> None:
    """``lamcam lam --dense`` for one model: ``LAM.dense``, its three files, one line."""
    import time

    from lamcam._files import figure_bytes, npy_bytes
    from lamcam.viz.lam import crop_statement

    t0 = time.perf_counter()
    try:
        d = lam.dense(x, window=args.window, stride=args.stride)
    except ValueError as e:
        raise CliError(prefix + " ".join(str(e).split())) from e
    seconds = time.perf_counter() - t0
    record = {"model": name, "model_spec": spec, "image": str(image_path),
              **d.to_dict()}
    fig = d.figure(title=f"{name}  ·  {image_path.name}")
    di = d.di.detach().cpu().double()
    base = f"{Path(image_path).stem}_{name}_dense"
    written = outputs.write({  # everything rendered first, then written atomically together
        f"{base}.png": figure_bytes(fig, dpi=fig.dpi, facecolor="white"),
        f"{base}.npy": npy_bytes(di.numpy()),
        f"{base}.json": json_bytes(record),
    })
    finite = di[di.isfinite()]
    if finite.numel():
        flat = int(_nan_argmax(di))
        i, j = divmod(flat, di.shape[1])
        stats = (f"median {float(finite.quantile(0.5)):.2f}, max {float(di[i, j]):.2f} at (row "
                 f"{d.rows[i]}, col {d.cols[j]})")
    else:
        stats = "no finite DI"
    crop_txt = crop_statement(d.params, short=True)
    _info(f"{image_path}: {name}: dense DI {len(d.rows)}x{len(d.cols)} windows of {d.window} "
          f"(stride {d.stride}), {stats}, " + (f"{crop_txt}, " if crop_txt else "")
          + f"{seconds:.1f} s -> {written[0]}")


def _nan_argmax(t: Any) -> int:
    """Flat index of the largest finite value of a tensor (first on ties)."""
    import torch

    return int(torch.where(t.isfinite(), t, torch.tensor(-float("inf"), dtype=t.dtype)).flatten()
               .argmax())


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

    out_dir = _check_out(args.out)
    models = None
    if args.models is not None:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise CliError("--models is empty")
    if args.max_images is not None and args.max_images < 1:
        raise CliError(f"--max-images must be positive, got {args.max_images}")
    before = _file_ids(out_dir) if out_dir.is_dir() else {}
    _make_out(out_dir)
    try:
        summary = run_demo(out_dir, models=models, max_images=args.max_images,
                           lam=not args.no_lam, progress=_progress())
    finally:
        after = _file_ids(out_dir)
        replaced = sorted(p for p, fid in before.items() if p in after and after[p] != fid)
        if replaced:
            n = len(replaced)
            shown = ", ".join(replaced[:4]) + (f" and {n - 4} more" if n > 4 else "")
            _note(f"replaced {n} existing output file(s) in {out_dir}: {shown}")
    _info(summary.format())
    return EXIT_OK


def _file_ids(root: Path) -> dict[str, tuple[int, int, int]]:
    """``{relative path: (inode, size, mtime)}`` of the files under ``root``; every lamcam
    writer replaces a file by renaming a new one over it, so a replaced file changes inode."""
    ids = {}
    for p in root.rglob("*"):
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            ids[p.relative_to(root).as_posix()] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return ids


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
            "  summary.md    the table (best per column in bold), Win %, results by instance count\n"
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
            "\nimages: *_mask.png files are ground truth, never explained (skipped with a note).\n"
            "Images whose size differs from the model's input are resized so that their short\n"
            "side matches it (aspect ratio kept) and centre-cropped (a note says so; masks must\n"
            "already be at the input size). Nothing is created in --out before every check.\n"
            "\nexit status: 0 ok, 1 some images could not be read (missing, truncated, corrupt,\n"
            "or not an image file; the others were evaluated), 2 usage/configuration error"
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
    _add_max_pixels(p, CAM_MAX_PIXELS, "decoding takes about 30 bytes per pixel")
    p.set_defaults(func=_run_eval)


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}


def _eval_inputs(specs: Sequence[str]) -> list[Path]:
    return _image_inputs(specs)


def _instance_masks(path: Path, hw: tuple[int, int]) -> Any:
    """``(n, H, W)`` bool from ``<stem>_mask.png`` (:func:`lamcam.io.load_instance_masks`), or
    None when there is no such file."""
    from lamcam.io import ImageLoadError, load_instance_masks

    mp = path.with_name(path.stem + "_mask.png")
    if not mp.is_file():
        return None
    try:
        return load_instance_masks(mp, hw)
    except ImageLoadError as e:
        raise CliError(str(e)) from e


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from lamcam.evaluation import MetricUnavailableError, evaluate
    from lamcam.io import ImageLoadError

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
    max_pixels = _max_pixels(args.max_pixels)
    out_dir = _check_out(args.out)  # created just before writing, after every check
    paths = _eval_inputs(args.images) if args.images else []

    model = _load_model(args.model, args.arch)
    meta = _model_meta(model)
    _check_layer(model, args.layer, args.model)
    layer: Any = args.layer if args.layer is not None else meta.get("default_layer")
    _detail(f"model {args.model}: {type(model).__name__}, layer "
            f"{layer if layer is not None else 'picked automatically'}, methods {', '.join(methods)}")
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

        hw = _input_hw(meta)
        xs, kept, fitted = [], [], []
        for path in paths:
            try:
                x, fit = _load_fitted(path, _input_mode(meta), hw, max_pixels)
                if fit:
                    fitted.append(f"{path}: {fit}")
                xs.append(x)
                kept.append(path)
            except ImageLoadError as e:
                _err(f"{_load_error_text(e)} (skipped)")
                failed.append(str(path))
        if not xs:
            raise CliError("none of the images could be read", EXIT_PARTIAL)
        if fitted:
            _note(f"{len(fitted)} image(s) fitted to the model's input (short side resized, aspect "
                  f"kept, centre-cropped), e.g. {fitted[0]}")
            _detail("; ".join(fitted))
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
                      substrate=args.substrate, batch_size=args.batch_size, image_ids=ids,
                      progress=_progress())
    except MetricUnavailableError as e:
        raise CliError(str(e)) from e
    ev.config = {"model": args.model, "data": source, **ev.config}
    written = ev.write(_make_out(out_dir), title=f"lamcam eval: {args.model}")
    _info(ev.markdown())
    _info(f"wrote {len(written)} files to {out_dir} (summary.md, summary.csv, per_image.csv, plots)")
    if failed:
        _err(f"{len(failed)} image(s) could not be read: {', '.join(failed)}")
        return EXIT_PARTIAL
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# lamcam layers
# --------------------------------------------------------------------------------------------


def _add_layers_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "layers",
        parents=[common],
        help="list a model's layers (the names --layer accepts) with their output shapes",
        description=(
            "List every named module of a model with its output shape, from one forward pass on\n"
            "a dummy (zero) input of the model's input size (its metadata, else --size). The\n"
            "layer lamcam cam/eval explain by default is marked with '*'. Modules that do not\n"
            "run in that pass show '-'."
        ),
        epilog=("examples:\n  lamcam layers shapes_vgg\n  lamcam layers ckpt.pth --arch shapes_vgg\n"
                "  lamcam layers sr_edsr --size 32\n"
                "\nexit status: 0 ok, 2 usage/configuration error (unknown model, bad checkpoint)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="bundled model name or checkpoint path")
    p.add_argument("--arch", default=None, help="architecture of a checkpoint")
    p.add_argument("--size", type=int, default=None, metavar="N",
                   help="side of the dummy input when the model declares no input size (default 64)")
    p.set_defaults(func=_run_layers)


def _run_layers(args: argparse.Namespace) -> int:
    import torch

    if args.size is not None and args.size < 1:
        raise CliError(f"--size must be positive, got {args.size}")
    model = _load_model(args.model, args.arch)
    meta = _model_meta(model)
    hw = _input_hw(meta) or (args.size or 64,) * 2
    channels = 1 if _input_mode(meta) == "L" else 3
    param = next(iter(model.parameters()), None)
    kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
    x = torch.zeros(1, channels, *hw, **kw)
    shapes: dict[str, str] = {}
    handles = []

    def hook(name: str) -> Callable[..., None]:
        def record(_m: Any, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                shapes.setdefault(name, "x".join(str(int(s)) for s in out.shape))
            elif isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
                shapes.setdefault(name, "(" + ", ".join(
                    "x".join(str(int(s)) for s in o.shape) for o in out
                    if isinstance(o, torch.Tensor)) + ")")
            else:
                shapes.setdefault(name, type(out).__name__)
        return record

    named = [(n, m) for n, m in model.named_modules() if n]
    for name, module in named:
        handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    default = meta.get("default_layer")
    how = "the model's default layer"
    if default is None:
        from lamcam.hooks import auto_layer

        try:
            default = auto_layer(model, x)[0]
            how = "picked automatically by lamcam.hooks.auto_layer"
        except (ValueError, RuntimeError, TypeError):
            default, how = None, ""
    width = max((len(n) for n, _ in named), default=4)
    _info(f"{args.model}: {type(model).__name__}, dummy input {'x'.join(map(str, x.shape))}")
    for name, module in named:
        mark = "*" if name == default else " "
        _info(f"{mark} {name:<{width}}  {shapes.get(name, '-'):<20} {type(module).__name__}")
    if default is not None:
        _info(f"* default layer: {default} ({how}); pass another with --layer NAME")
    return EXIT_OK


def _add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="the web explorer: click a patch to see its LAM, pick methods to see CAMs",
        description=(
            "Start the lamcam explorer (Gradio) in this terminal and open it in a browser.\n"
            "LAM page: choose an LR image and SR models (bundled or uploaded checkpoints), click a\n"
            "patch; each model's LAM figure, the DI bar chart and downloads appear. CAM page:\n"
            "choose a classifier, an image, methods, a layer and a target. Needs the app extra:\n"
            "pip install 'lamcam[app]'. Every output stays in a temporary directory, removed\n"
            "when the server stops (Ctrl-C)."
        ),
        epilog=("examples:\n  lamcam serve                       # http://127.0.0.1:7860\n"
                "  lamcam serve --port 8080 --host 0.0.0.0   # serve the network (no auth!)\n"
                "\nexit status: 0 after Ctrl-C, 2 usage error (Gradio missing, port in use)"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="TCP port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                   help="largest uploaded image file (default 20)")
    p.add_argument("--max-checkpoint-mb", type=float, default=256.0, metavar="MB",
                   help="largest uploaded checkpoint (default 256)")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, metavar="N",
                   help="largest image on the CAM page, width x height (default 2048x2048)")
    p.add_argument("--max-lr-pixels", type=int, default=256 * 256, metavar="N",
                   help="largest LR image on the LAM page (default 256x256)")
    p.add_argument("--lam-workers", type=int, default=1, metavar="N",
                   help="LAM runs computed at once; more wait in the queue (default 1)")
    p.add_argument("--cam-workers", type=int, default=2, metavar="N",
                   help="CAM runs computed at once (default 2)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import socket

    for opt, v in (("--port", args.port), ("--lam-workers", args.lam_workers),
                   ("--cam-workers", args.cam_workers), ("--max-pixels", args.max_pixels),
                   ("--max-lr-pixels", args.max_lr_pixels)):
        if v < 1 or (opt == "--port" and v > 65535):
            raise CliError(f"{opt} must be positive{' and at most 65535' if opt == '--port' else ''}"
                           f", got {v}")
    for opt, v in (("--max-upload-mb", args.max_upload_mb),
                   ("--max-checkpoint-mb", args.max_checkpoint_mb)):
        if not v > 0:
            raise CliError(f"{opt} must be positive, got {v}")
    from lamcam.app import Limits, import_gradio, serve

    try:
        import_gradio()
    except ImportError as e:
        raise CliError(str(e)) from None
    with socket.socket() as s:  # Gradio would silently try other ports: say which one is taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as e:
            raise CliError(f"cannot listen on {args.host}:{args.port}: {e.strerror}; choose another "
                           "--port") from None
    # asyncio/uvicorn leave event loops for the garbage collector: not the user's concern
    # and Gradio's own dependencies' deprecations (pandas) are not the server user's either
    for category in (ResourceWarning, DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    limits = Limits(upload_bytes=int(args.max_upload_mb * 2**20),
                    checkpoint_bytes=int(args.max_checkpoint_mb * 2**20),
                    image_pixels=args.max_pixels, lam_pixels=args.max_lr_pixels)
    return serve(args.host, args.port, limits=limits, lam_workers=args.lam_workers,
                 cam_workers=args.cam_workers, quiet=_VERBOSITY < 0)


def _add_batch_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (default: local, in this process)")
    where = g.add_mutually_exclusive_group()
    where.add_argument("--ray", action="store_true",
                       help="run on Ray Data with a local Ray started for this job")
    where.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="run on an existing Ray cluster (the address `ray start --head` "
                       "prints, e.g. 10.0.0.5:6379); the input paths must be readable there")
    g.add_argument("--workers", type=int, default=2, metavar="N",
                   help="Ray actors, each with the model loaded once (default 2)")
    g.add_argument("--batch-size", type=int, default=4, metavar="N",
                   help="items per Ray batch (default 4)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="N",
                   help="CPUs Ray reserves per actor (default 1; each actor runs one torch thread)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads of the local engine (default: torch's own)")
    p.add_argument("--out", required=True, help="results folder (created; a rerun resumes there)")
    p.add_argument("--no-report", action="store_true", help="skip report.html")


def _add_batch_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "batch",
        parents=[common],
        help="dataset-scale CAM jobs and LAM surveys, locally or on Ray, resumable",
        description=(
            "Explain a whole dataset: `batch cam` (CAM metrics per image and method) or\n"
            "`batch lam` (LAM over images x SR models x windows). Rows go to OUT/results.parquet\n"
            "and a report to OUT/report.html. A rerun resumes (finished items are skipped);\n"
            "a changed configuration starts clean. Items that fail are recorded with their error\n"
            "and the others go on. Engines: local (default), --ray, --ray-address. Needs pyarrow\n"
            "(and Ray for --ray): pip install 'lamcam[ray]'."
        ),
        epilog="exit status: 0 all items ok, 1 some items failed, 2 usage error, 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jobs = p.add_subparsers(dest="job", metavar="<job>", required=True)
    c = jobs.add_parser(
        "cam", parents=[common], help="CAM methods over images: scores, map statistics, localisation",
        description="One row per image and method (and rank, with --target topK): target, score, "
                    "probability, layer, map statistics, and localisation metrics where a "
                    "<stem>_mask.png (or a manifest's mask column) gives the ground truth.",
        epilog=("examples:\n  lamcam batch cam data/ --model shapes_resnet --methods gradcam,"
                "gradcam++ --out runs/cam\n  lamcam batch cam 'data/**/*.png' manifest.csv "
                "--model ckpt.pth --ray --workers 2 --out runs/cam"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders, quoted globs, or CSV/JSONL manifests")
    c.add_argument("--model", required=True, help="bundled classifier name or checkpoint")
    c.add_argument("--arch", default=None, help="architecture of a checkpoint without metadata")
    c.add_argument("--methods", default="gradcam,gradcam++",
                   help="comma-separated methods (default gradcam,gradcam++)")
    c.add_argument("--layer", default=None, help="layer (default: the model's default)")
    c.add_argument("--target", default="pred", help="pred, a class index or name, or topK")
    c.add_argument("--save-maps", action="store_true", help="also write each map as .npy")
    c.add_argument("--save-overlays", action="store_true", help="also write each overlay as PNG")
    _add_batch_engine_options(c)
    c.set_defaults(func=_run_batch)
    l_ = jobs.add_parser(
        "lam", parents=[common], help="LAM survey: images x SR models x windows",
        description="One row per image, SR model and window: DI, pixels95, completeness error, "
                    "local PSNR against the HR image (a manifest's hr column, or x_hr.png beside "
                    "x_lr.png), and every parameter.",
        epilog=("windows:\n  edges:K    the K highest edge-energy windows, non-overlapping (the "
                "studies' criterion; on the HR image, else the bicubic-upscaled LR image)\n"
                "  grid:S     every S SR pixels\n  list:R,C;R,C  top-left corners in SR pixels\n"
                "\nexamples:\n  lamcam batch lam lr/ --models sr_fsrcnn,sr_edsr --windows edges:8 "
                "--out runs/lam\n  lamcam batch lam manifest.csv --models ckpt.pth --windows "
                "grid:32 --ray-address 10.0.0.5:6379 --out runs/lam"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    l_.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="LR image files, folders, quoted globs, or CSV/JSONL manifests")
    l_.add_argument("--models", required=True, help="comma-separated SR models or checkpoints")
    l_.add_argument("--windows", default="edges:4", help="edges:K, grid:S or list:R,C;R,C")
    l_.add_argument("--window", type=int, default=16, help="window side in SR pixels (default 16)")
    l_.add_argument("--sigma", type=float, default=1.2, help="blur path sigma (default 1.2)")
    l_.add_argument("--steps", type=int, default=50, help="path steps (default 50)")
    l_.add_argument("--quadrature", default="riemann",
                    choices=["riemann", "trapezoid", "gauss-legendre"])
    l_.add_argument("--kernel-size", type=int, default=9, help="blur kernel (default 9)")
    l_.add_argument("--save-maps", action="store_true", help="also write each attribution as .npy")
    _add_batch_engine_options(l_)
    l_.set_defaults(func=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    import re

    from lamcam.batch import CAMJob, InputError, LAMSurvey, find_inputs, run_job

    for opt, v in (("--workers", args.workers), ("--batch-size", args.batch_size)):
        if v < 1:
            raise CliError(f"{opt} must be positive, got {v}")
    if not args.cpus_per_worker > 0:
        raise CliError(f"--cpus-per-worker must be positive, got {args.cpus_per_worker}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be positive, got {args.threads}")
    try:
        inputs = find_inputs(args.inputs)
    except InputError as e:
        raise CliError(str(e)) from None
    if args.job == "cam":
        from lamcam.cam import METHODS

        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown:
            raise CliError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose "
                           f"from {', '.join(METHODS)}")
        job: Any = CAMJob(inputs, args.model, methods, layer=args.layer, target=args.target,
                          arch=args.arch, save_maps=args.save_maps,
                          save_overlays=args.save_overlays)
        # the model, layer and target are checked now, once, before any item runs
        from lamcam.batch.jobs import make_worker

        try:
            make_worker("cam", job.config(), str(args.out))
        except ValueError as e:
            raise CliError(_layer_message(" ".join(str(e).split()), args.model)) from None
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if not models:
            raise CliError("--models is empty")
        if not re.fullmatch(r"edges:\d+|grid:\d+|list:.+", args.windows):
            raise CliError(f"--windows {args.windows!r}: use edges:K, grid:S or list:R,C;R,C")
        if args.window < 1 or args.steps < 1:
            raise CliError("--window and --steps must be positive")
        if not args.sigma > 0:
            raise CliError(f"--sigma must be positive, got {args.sigma}")
        if args.kernel_size < 1 or args.kernel_size % 2 == 0:
            raise CliError(f"--kernel-size must be a positive odd number, got {args.kernel_size}")
        job = LAMSurvey(inputs, models, windows=args.windows, window=args.window,
                        sigma=args.sigma, steps=args.steps, quadrature=args.quadrature,
                        kernel_size=args.kernel_size, save_maps=args.save_maps)
    engine = "ray" if (args.ray or args.ray_address) else "local"
    try:
        s = run_job(job, args.out, engine=engine, workers=args.workers, batch_size=args.batch_size,
                    cpus_per_worker=args.cpus_per_worker, address=args.ray_address,
                    threads=args.threads, progress=_progress(), say=_note,
                    report=not args.no_report)
    except ImportError as e:
        raise CliError(str(e)) from None
    rate = f" ({s.items_per_second:.2f} items/s)" if s.processed else ""
    report = f"; report {s.report}" if s.report else ""
    _info(f"batch {args.job} ({engine}): {s.items} item(s), {s.skipped} done earlier, "
          f"{s.processed} processed, {s.failed} failed, in {s.seconds:.1f} s{rate} -> "
          f"{s.table}{report}")
    if s.failed:
        for item, error in list(s.errors.items())[:5]:
            _err(f"{item}: {error}")
        more = f" (first 5 above; all in {s.table})" if s.failed > 5 else ""
        _err(f"{s.failed} item(s) failed{more}; a rerun retries them")
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
    _add_layers_parser,
    _add_serve_parser,
    _add_batch_parser,
]


def _add_verbosity(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress bars, result lines or notes (errors are still printed)")
    p.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also print the resolved model and layer facts")


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
    _add_verbosity(common, default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(
        prog="lamcam",
        description="Exact CAM-family and LAM attribution maps for PyTorch image models.",
        epilog="Run 'lamcam <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"lamcam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks on errors")
    _add_verbosity(parser, default=False)
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
    quiet, verbose = bool(getattr(args, "quiet", False)), bool(getattr(args, "verbose", False))
    if quiet and verbose:
        _err("--quiet and --verbose cannot be combined")
        return EXIT_USAGE
    global _VERBOSITY
    _VERBOSITY = -1 if quiet else (1 if verbose else 0)
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
        except MemoryError as e:
            from lamcam._memory import LAMMemoryError

            if not isinstance(e, LAMMemoryError):
                raise
            _err(" ".join(str(e).split()))  # refused up front, with the numbers
            return EXIT_PARTIAL
        except Exception as e:  # noqa: BLE001 - the CLI's job is to turn these into one line
            if debug:
                traceback.print_exc()
            notes = [n.removeprefix("lamcam: ") for n in getattr(e, "__notes__", [])]
            msg = " ".join(" ".join([str(e), *(f"({n})" for n in notes)]).split()) or type(e).__name__
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
