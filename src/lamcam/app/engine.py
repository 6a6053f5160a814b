"""The explorer's work, without any web framework: what ``lamcam serve`` computes and writes.

Everything the pages do goes through these functions, so they are tested without a browser and
the browser tests only check that the page shows what they return.

* :class:`Limits` bounds uploads in bytes and pixels; :func:`check_upload` and the loaders refuse
  anything larger with a message that gives both numbers.
* :class:`ModelCache` loads each model once (bundled name or uploaded file, by content hash),
  through :func:`lamcam.zoo.load`, i.e. the library's safe path: ``.safetensors`` through the
  safetensors package, ``.pth`` with ``weights_only=True``, other SR files through spandrel.
* :class:`SessionFiles` gives every browser session its own directory under one temporary root;
  nothing is written anywhere else, and the root is removed when the server stops.
* :func:`run_lam` and :func:`run_cam` compute with :class:`lamcam.LAM` and the CAM classes and
  write every output atomically into a fresh run directory.

Example:
    >>> place_window(x=130, y=7, window=16, sr_hw=(256, 256))   # a click -> the window's top-left
    (0, 122)
    >>> user_message(OSError("cannot read /tmp/lamcam-serve-x/gradio/ab12/model.pth: corrupt"))
    'cannot read model.pth: corrupt'
    >>> window_text(0, 122, 16, scale=4)
    'SR window: row 0, col 122, 16x16 px  ·  LR: row 0, col 30.5, 4x4 px  (x4)'
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lamcam.zoo.registry import input_hw, input_mode, model_meta

__all__ = [
    "AppError",
    "Limits",
    "ModelCache",
    "SessionFiles",
    "LAMOptions",
    "LAMRun",
    "CAMRun",
    "bundled_lr_images",
    "bundled_cam_images",
    "bundled_models",
    "check_upload",
    "load_lr_image",
    "load_cam_image",
    "place_window",
    "window_text",
    "window_view",
    "view_zoom",
    "layer_choices",
    "run_lam",
    "run_cam",
    "user_message",
    "model_meta",
    "input_mode",
]


class AppError(ValueError):
    """Something the user can fix (a bad upload, a window off the image...); shown in the page."""


@dataclass(frozen=True)
class Limits:
    """What the explorer accepts (``lamcam serve --max-upload-mb ... --max-pixels ...``).

    Attributes:
        upload_bytes: largest uploaded image file.
        checkpoint_bytes: largest uploaded checkpoint file.
        image_pixels: largest image (width x height) on the CAM page; it is read from the file's
            header, before decoding.
        lam_pixels: largest LR image on the LAM page (LAM keeps activations for the backward
            pass and the page shows the image at SR size).
    """

    upload_bytes: int = 20 * 2**20
    checkpoint_bytes: int = 256 * 2**20
    image_pixels: int = 2048 * 2048
    lam_pixels: int = 256 * 256


def check_upload(path: str | Path, limit: int, what: str) -> Path:
    """``path`` if it is a readable file of at most ``limit`` bytes, else :class:`AppError`."""
    from lamcam._memory import format_bytes

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise AppError(f"the uploaded {what} cannot be read ({e.strerror}); upload it again") from e
    if size > limit:
        raise AppError(f"the uploaded {what} {p.name!r} is {format_bytes(size)}, above this server's "
                       f"limit of {format_bytes(limit)}; upload a smaller file (or start the server with a "
                       "higher limit)")
    return p


def user_message(e: BaseException) -> str:
    """One line for the page from a library error (ImageLoadError, ZooError, LAMMemoryError...)."""
    text = " ".join(str(e).split()) or type(e).__name__
    # the server's temporary paths mean nothing to the user (and are none of their business):
    # keep the file name only, quoted or not
    text = re.sub(r"'(/[^']*/)([^/']+)'", r"'\2'", text)
    return re.sub(r"(?<![\w.~])/(?:[^\s/'\":]+/)+([^\s/'\":]+)", r"\1", text)


# --------------------------------------------------------------------------------------------
# bundled things
# --------------------------------------------------------------------------------------------


def bundled_lr_images() -> dict[str, Path]:
    """The bundled LR test images for the LAM page: ``{name: path}`` (64 x 64, x4 of 256 x 256)."""
    from lamcam.zoo import sr_samples

    return {s["name"]: Path(s["lr"]) for s in sr_samples()}


def bundled_cam_images() -> dict[str, Path]:
    """The bundled shapes images for the CAM page: ``{file stem: path}``."""
    from lamcam.zoo import samples

    return {p.stem: p for p in samples()}


def bundled_models(task: str) -> list[str]:
    """Names of the bundled models for ``task`` (``"sr"`` or ``"classification"``)."""
    from lamcam.zoo import list_models

    return list_models(task)


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ModelCache:
    """Models loaded once and shared by every session (thread-safe, least recently used out).

    Keys are bundled names, or the SHA-256 of an uploaded file's bytes, so the same checkpoint
    uploaded twice (or by two users) is loaded once. Explaining from several threads is safe on
    a shared model: lamcam never changes a model it explains (see :func:`lamcam.hooks.model_lock`).

    Attributes:
        loads: how many times a model was actually loaded (a cache hit does not count).

    Example:
        >>> cache = ModelCache()
        >>> m1, new1 = cache.get("sr_fsrcnn")
        >>> m2, new2 = cache.get("sr_fsrcnn")
        >>> m1 is m2, new1, new2, cache.loads
        (True, True, False, 1)
    """

    def __init__(self, max_models: int = 8) -> None:
        self.max_models = int(max_models)
        self.loads = 0
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._guard = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def key(self, spec: str | Path) -> str:
        """The cache key of a bundled name or a file."""
        p = Path(spec)
        return f"sha256:{_file_key(p)}" if p.is_file() else str(spec)

    def get(self, spec: str | Path, *, max_bytes: int | None = None) -> tuple[nn.Module, bool]:
        """``(model, loaded_now)`` for a bundled name or an uploaded checkpoint file.

        Raises:
            AppError: the file is too large, or :func:`lamcam.zoo.load` refused it (the message
                says why: not a checkpoint, unsafe pickle, unknown architecture...).
        """
        from lamcam.zoo import ZooError, load

        p = Path(spec)
        if p.is_file() and max_bytes is not None:
            check_upload(p, max_bytes, "checkpoint")
        key = self.key(spec)
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key], False
            lock = self._loading.setdefault(key, threading.Lock())
        with lock:  # one load per key, even when two sessions ask at once
            with self._guard:
                if key in self._models:
                    return self._models[key], False
            try:
                model = load(str(spec))
            except (ZooError, OSError, ValueError, RuntimeError, ImportError) as e:
                with self._guard:
                    self._loading.pop(key, None)
                name = p.name if p.is_file() else str(spec)
                raise AppError(f"cannot load model {name!r}: {user_message(e)}") from e
            model.eval()
            with self._guard:
                self._models[key] = model
                self._models.move_to_end(key)
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
                self.loads += 1
                self._loading.pop(key, None)
            return model, True


# --------------------------------------------------------------------------------------------
# session files
# --------------------------------------------------------------------------------------------


class SessionFiles:
    """One temporary root for a server; one directory per browser session inside it.

    Example:
        >>> files = SessionFiles()
        >>> run = files.new_run("abc123", "lam")
        >>> run.parent.parent == files.root / "sessions", run.name
        (True, 'lam-0001')
        >>> files.drop("abc123"); (files.root / "sessions" / "abc123").exists()
        False
        >>> files.close(); files.root.exists()
        False
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="lamcam-serve-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def _path(self, session: str | None) -> Path:
        """``root/sessions/<name>``: a Gradio session hash as it is; anything else (or nothing)
        made file-name safe, with a hash of the original so that two strings never share one."""
        raw = session or ""
        name = re.sub(r"[^A-Za-z0-9_-]", "", raw)[:64]
        if name != raw or not name:
            name = f"{name or 'anonymous'}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
        return self.root / "sessions" / name

    def session_dir(self, session: str | None) -> Path:
        """The directory of ``session`` (a Gradio session hash), created on first use."""
        d = self._path(session)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def new_run(self, session: str | None, kind: str) -> Path:
        """A fresh directory for one run of ``kind`` (``lam-0001``, ``lam-0002``, ... per kind)."""
        d = self.session_dir(session)
        with self._lock:
            key = f"{d}|{kind}"
            n = self._counts.get(key, 0) + 1
            while (d / f"{kind}-{n:04d}").exists():
                n += 1
            self._counts[key] = n
            run = d / f"{kind}-{n:04d}"
            run.mkdir()
        return run

    def drop(self, session: str | None) -> None:
        """Remove a session's files (its browser tab closed)."""
        d = self._path(session)
        with self._lock:
            for key in [k for k in self._counts if k.startswith(f"{d}|")]:
                del self._counts[key]
        shutil.rmtree(d, ignore_errors=True)

    def close(self) -> None:
        """Remove the whole root (the server stops)."""
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------


@contextmanager
def _image_errors(path: Path, max_pixels: int) -> Iterator[None]:
    """The library's image errors as :class:`AppError`, in the page's words."""
    from lamcam.io import ImageLoadError, ImageTooLargeError

    try:
        yield
    except ImageTooLargeError as e:
        raise AppError(f"the image {path.name!r} has {e.pixels:,} pixels, above this page's limit "
                       f"of {max_pixels:,}; crop or downscale it") from e
    except ImageLoadError as e:
        raise AppError(f"the image {path.name!r} cannot be read: {e.reason}") from e


def load_lr_image(path: str | Path, mode: str, limits: Limits, *,
                  uploaded: bool = False) -> torch.Tensor:
    """The LR image for LAM as ``(C, H, W)`` in [0, 1]; :class:`AppError` when it cannot be."""
    from lamcam.io import load_image

    p = Path(path)
    if uploaded:
        check_upload(p, limits.upload_bytes, "image")
    with _image_errors(p, limits.lam_pixels):
        return load_image(p, mode=mode, max_pixels=limits.lam_pixels)


def load_cam_image(path: str | Path, model: nn.Module, limits: Limits, *,
                   uploaded: bool = False) -> tuple[torch.Tensor, str]:
    """The image for a classifier, fitted to its input size (:func:`lamcam.io.load_fitted`)."""
    from lamcam.io import load_fitted

    p = Path(path)
    if uploaded:
        check_upload(p, limits.upload_bytes, "image")
    with _image_errors(p, limits.image_pixels):
        return load_fitted(p, mode=input_mode(model), size=input_hw(model),
                           max_pixels=limits.image_pixels)


def image_channels(path: str | Path) -> int | None:
    """How many colour channels the file itself has (1 grey, 3 colour), from its header."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return 1 if im.mode in ("1", "L", "I", "I;16", "F", "LA") else 3
    except Exception:  # noqa: BLE001 - unreadable files are reported by the loaders
        return None


# --------------------------------------------------------------------------------------------
# the LAM window
# --------------------------------------------------------------------------------------------


def place_window(x: int, y: int, window: int, sr_hw: Sequence[int]) -> tuple[int, int]:
    """The window's top-left ``(row, col)`` in SR pixels for a click at SR pixel ``(x, y)``.

    The click is the window's centre (``row = y - window // 2``), moved inside the image when
    the window would stick out. Raises :class:`AppError` when the window is larger than the image.
    """
    h, w = int(sr_hw[0]), int(sr_hw[1])
    if window < 1 or window > min(h, w):
        raise AppError(f"the window ({window} px) must fit in the {w}x{h} SR image")
    row = min(max(int(y) - window // 2, 0), h - window)
    col = min(max(int(x) - window // 2, 0), w - window)
    return row, col


def _num(v: float) -> str:
    return f"{v:g}"


def window_text(row: int, col: int, window: int, scale: int) -> str:
    """Both coordinate systems of a window: SR pixels (the library's) and LR pixels."""
    return (f"SR window: row {row}, col {col}, {window}x{window} px  ·  LR: row {_num(row / scale)}, "
            f"col {_num(col / scale)}, {_num(window / scale)}x{_num(window / scale)} px  (x{scale})")


#: The LAM page shows the image about this many pixels wide (whole multiples of SR pixels).
VIEW_PIXELS = 512


def view_zoom(sr_hw: Sequence[int]) -> int:
    """Display pixels per SR pixel on the LAM page: the largest integer keeping the view within
    :data:`VIEW_PIXELS` (at least 1). A click's pixel divided by it is an SR pixel."""
    return max(1, VIEW_PIXELS // max(int(sr_hw[0]), int(sr_hw[1])))


def window_view(image: torch.Tensor, scale: int, window: tuple[int, int, int] | None = None,
                zoom: int = 1) -> Any:
    """The LR image shown at SR size times ``zoom`` (nearest neighbour, so every display pixel
    belongs to one SR pixel), with the window drawn as a red box outside its pixels; a PIL image
    of ``(W * scale * zoom, H * scale * zoom)``."""
    from PIL import ImageDraw

    from lamcam.viz import to_pil

    im = to_pil(image.detach().float().cpu().clamp(0, 1)).convert("RGB")
    f = scale * zoom
    im = im.resize((im.width * f, im.height * f), resample=0)
    if window is not None:
        row, col, w = (v * zoom for v in window)
        draw = ImageDraw.Draw(im)
        lw = max(1, min(3, w // 8))
        draw.rectangle([col - lw, row - lw, col + w - 1 + lw, row + w - 1 + lw],
                       outline=(255, 0, 0), width=lw)
    return im


# --------------------------------------------------------------------------------------------
# LAM runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LAMOptions:
    """The LAM page's options (the paper's defaults: window 16, sigma 1.2, 50 Riemann steps)."""

    window: int = 16
    sigma: float = 1.2
    steps: int = 50
    quadrature: str = "riemann"
    kernel_size: int = 9

    def check(self) -> None:
        """:class:`AppError` for values :class:`lamcam.LAM` would refuse, in the page's words."""
        from lamcam.integrate import QUADRATURES

        if not 1 <= self.window <= 1024:
            raise AppError(f"window must be between 1 and 1024 SR pixels, got {self.window}")
        if not (self.sigma > 0 and self.sigma <= 50):
            raise AppError(f"sigma must be in (0, 50], got {self.sigma}")
        if not 1 <= self.steps <= 1000:
            raise AppError(f"steps must be between 1 and 1000, got {self.steps}")
        if self.quadrature not in QUADRATURES:
            raise AppError(f"quadrature must be one of {', '.join(QUADRATURES)}")
        if not (1 <= self.kernel_size <= 51 and self.kernel_size % 2 == 1):
            raise AppError(f"kernel_size must be an odd number from 1 to 51, got {self.kernel_size}")


@dataclass
class LAMRun:
    """What one click computed.

    Attributes:
        results: ``{model name: LAMResult}``.
        records: one JSON-ready dict per model (DI, pixels95, completeness, every parameter).
        figures: ``[(png path, caption)]``, one paper figure per model.
        comparison: the page's figure: one row of the paper's panels per model with its DI,
            and the DI bar chart across models (PNG path).
        files: every file written (PNG figures, ``.npy`` attributions and maps, JSON).
        rows: the summary table, one row per model.
        loaded: the models that had to be loaded for this run (empty on a cache hit).
    """

    results: dict[str, Any]
    records: list[dict[str, Any]]
    figures: list[tuple[str, str]]
    comparison: str
    files: list[str]
    rows: list[list[Any]]
    loaded: list[str] = field(default_factory=list)

    HEADER = ("model", "DI", "pixels95", "completeness error", "crop", "seconds")


def model_names(specs: Sequence[str]) -> list[str]:
    """Short unique file-safe names: a bundled name stays, an uploaded file gives its stem."""
    names: list[str] = []
    for spec in specs:
        p = Path(spec)
        base = re.sub(r"[^A-Za-z0-9.+-]+", "_", p.stem if p.suffix else spec).strip("_") or "model"
        name, k = base, 2
        while name.casefold() in {n.casefold() for n in names}:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def run_lam(
    models: Sequence[tuple[str, nn.Module]],
    images: dict[str, torch.Tensor],
    image_name: str,
    row: int,
    col: int,
    options: LAMOptions,
    out_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
    step_bars: bool = False,
) -> LAMRun:
    """LAM of the SR window ``(row, col)`` for each model, written into ``out_dir``.

    Args:
        models: ``[(name, model)]``.
        images: the LR image per input mode (``{"RGB": (3, H, W), "L": (1, H, W)}``).
        image_name: the image's name, for titles and file names.
        row, col: the window's top-left in SR pixels (the library's convention, ``coords="sr"``).
        progress: called as ``progress(done, total, text)`` before each model.
        step_bars: a tqdm bar over each model's path points (the explorer tracks it to draw its
            progress bar).

    Every model gets exactly what ``lamcam.LAM(model, sigma=..., steps=..., quadrature=...)``
    gives for ``(image, row, col, window)``: the page adds nothing to the computation.
    """
    from lamcam._files import atomic_write_many, figure_bytes, jsonable, npy_bytes
    from lamcam._memory import LAMMemoryError
    from lamcam.lam import LAM
    from lamcam.viz.lam import crop_statement

    options.check()
    stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", Path(image_name).stem).strip("_") or "image"
    results: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    figures: list[tuple[str, str]] = []
    files: list[str] = []
    rows: list[list[Any]] = []
    n = len(models)

    def write(named: dict[str, bytes]) -> list[Path]:
        paths = atomic_write_many({out_dir / k: v for k, v in named.items()})
        files.extend(str(p) for p in paths)
        return paths

    def json_bytes(obj: Any) -> bytes:
        return (json.dumps(jsonable(obj), indent=2) + "\n").encode("utf-8")

    for i, (name, model) in enumerate(models):
        if progress is not None:
            progress(i, n, f"LAM of {name} ({i + 1}/{n})")
        x = images[input_mode(model)]
        input_range = float(model_meta(model).get("input_range", 1.0))
        t0 = time.perf_counter()
        try:
            lam = LAM(model, sigma=options.sigma, kernel_size=options.kernel_size,
                      steps=options.steps, quadrature=options.quadrature, input_range=input_range,
                      progress=f"LAM {name}" if step_bars else False)
            r = lam(x, row, col, options.window, coords="sr")
        except LAMMemoryError as e:
            raise AppError(f"{name}: {user_message(e)}") from e
        except (ValueError, RuntimeError) as e:
            raise AppError(f"{name}: {user_message(e)}") from e
        seconds = time.perf_counter() - t0
        record = {"model": name, "image": image_name, "seconds": round(seconds, 3),
                  "input_range": input_range, **r.to_dict()}
        fig = r.figure(title=f"{name}  ·  {image_name}")
        base = f"{stem}_{name}_lam"
        png = write({
            f"{base}.png": figure_bytes(fig, dpi=fig.dpi, facecolor="white"),
            f"{base}.npy": npy_bytes(r.attribution.detach().cpu().float().numpy()),
            f"{base}_map.npy": npy_bytes(r.map.detach().cpu().float().numpy()),
            f"{base}.json": json_bytes(record),
        })[0]
        ce = r.completeness_error
        figures.append((str(png), f"{name}: DI {r.diffusion_index:.6f}"))
        rows.append([name, f"{r.diffusion_index:.6f}", f"{r.pixels95} / {r.map.numel()}",
                     f"{100 * ce:.2g} %" if ce == ce else "n/a",
                     crop_statement(r.params, short=True) or "whole image", f"{seconds:.2f}"])
        results[name] = r
        records.append(record)
    if progress is not None:
        progress(n, n, "figures")
    from lamcam.viz.lam import lam_comparison_figure

    fig = lam_comparison_figure(results, title=f"LAM {'across models' if n > 1 else ''}  ·  "
                                f"{image_name}")
    comparison = str(write({f"{stem}_lam_comparison.png":
                            figure_bytes(fig, dpi=fig.dpi, facecolor="white")})[0])
    summary = {"image": image_name, "window": {"row": row, "col": col, "size": options.window,
                                               "coords": "sr"},
               "options": {"sigma": options.sigma, "steps": options.steps,
                           "quadrature": options.quadrature, "kernel_size": options.kernel_size},
               "models": records, "lamcam_version": _version()}
    write({f"{stem}_lam.json": json_bytes(summary)})
    return LAMRun(results, records, figures, comparison, files, rows)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lamcam")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# CAM runs
# --------------------------------------------------------------------------------------------


def layer_choices(model: nn.Module) -> tuple[list[tuple[str, str]], str | None]:
    """The layers a CAM can explain, as ``[(label, name)]``, and the default layer's name.

    A layer is offered when a forward pass on a dummy input shows that its output is a map of the
    image (:func:`lamcam.layout.decide_layout` reads it), in execution order. The default is the
    model's ``lamcam_meta["default_layer"]``, else :func:`lamcam.hooks.auto_layer`'s choice; its
    label ends in "(default)".
    """
    from lamcam.hooks import auto_layer, model_guard
    from lamcam.layout import LayoutError, channel_hint, decide_layout, prefix_hint

    meta = model_meta(model)
    hw = input_hw(model) or (64, 64)
    param = next(iter(model.parameters()), None)
    kw = {} if param is None else {"device": param.device, "dtype": param.dtype}
    x = torch.zeros(1, 1 if input_mode(model) == "L" else 3, *hw, **kw)
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    with model_guard(model) as handles:
        for name, module in model.named_modules():
            if not name:
                continue

            def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(out.shape)
                    order.append(name)
            handles.append(module.register_forward_hook(hook))
        with torch.no_grad():
            model(x)
    valid = []
    ranks = {n: i for i, (n, _) in enumerate(model.named_modules())}
    prefix = prefix_hint(model)
    for name in sorted(order, key=ranks.__getitem__):
        shape = shapes[name]
        if len(shape) < 3:
            continue
        try:  # as the CAM classes read it: the model breaks ties the shape leaves open
            layout = decide_layout(shape, hw, channels_hint=channel_hint(model, name, shape),
                                   prefix=prefix, name=name)
        except LayoutError:
            continue
        if math.prod(layout.grid) >= 2:  # one position (a pooled output) is no map
            valid.append(name)
    default = meta.get("default_layer")
    if default is None:
        try:
            default = auto_layer(model, x)[0]
        except (ValueError, RuntimeError, TypeError):
            default = None
    if default is not None and default not in valid:
        valid.append(default)
    return [(f"{n} (default)" if n == default else n, n) for n in valid], default


@dataclass
class CAMRun:
    """What one CAM request computed: ``overlays`` ``[(png path, caption)]`` in method order,
    a summary table (``rows``), the files written and the explained class indices."""

    overlays: list[tuple[str, str]]
    rows: list[list[Any]]
    files: list[str]
    targets: dict[str, list[int]]
    note: str = ""

    HEADER = ("method", "rank", "class", "score (logit)", "probability")


def run_cam(
    model: nn.Module,
    image: torch.Tensor,
    image_name: str,
    methods: Sequence[str],
    layer: str | None,
    target: Any,
    out_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
) -> CAMRun:
    """Each of ``methods`` on one image, written into ``out_dir`` (overlay PNGs, ``.npy`` maps, a
    JSON summary). ``target``: ``None`` (predicted), :class:`lamcam.TopK`, or a class index."""
    from lamcam._files import atomic_write_many, image_bytes, jsonable, npy_bytes
    from lamcam.cam import METHODS, make_explainer

    methods = list(dict.fromkeys(methods))  # each method once, in the order given
    if not methods:
        raise AppError("choose at least one method")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise AppError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    classes = model_meta(model).get("classes")
    stem = re.sub(r"[^A-Za-z0-9.+-]+", "_", Path(image_name).stem).strip("_") or "image"
    overlays: list[tuple[str, str]] = []
    rows: list[list[Any]] = []
    files: list[str] = []
    targets: dict[str, list[int]] = {}
    summary: list[dict[str, Any]] = []
    for i, method in enumerate(methods):
        if progress is not None:
            progress(i, len(methods), f"{method} ({i + 1}/{len(methods)})")
        try:
            explainer = make_explainer(method, model, layer)
            res = explainer(image[None], target=target)
        except (ValueError, RuntimeError, TypeError) as e:
            raise AppError(f"{method}: {user_message(e)}") from e
        probs = torch.softmax(res.logits.detach().float(), dim=1)[0]
        pics = res.overlay()
        tgt = res.targets[0].reshape(-1).tolist() if res.targets is not None else []
        scores = res.scores[0].reshape(-1).tolist()
        maps = res.maps[0] if res.multi else res.maps[0:1]  # (K, ...) CAMs or gradients
        targets[method] = [int(t) for t in tgt]
        named: dict[Path, bytes] = {}
        for k, (pic, t, s) in enumerate(zip(pics, tgt, scores, strict=True)):
            cname = str(classes[t]) if classes and 0 <= t < len(classes) else f"class {t}"
            suffix = f"_top{k + 1}" if len(pics) > 1 else ""
            base = f"{stem}_{method}{suffix}".replace("++", "pp")
            big = pic.resize((max(256, pic.width), max(256, pic.height)), resample=0) \
                if pic.width < 256 else pic
            named[out_dir / f"{base}.png"] = image_bytes(big)
            named[out_dir / f"{base}.npy"] = npy_bytes(maps[k].detach().cpu().float().numpy())
            p = float(probs[t])
            rank = f" #{k + 1}" if len(pics) > 1 else ""
            overlays.append((str(out_dir / f"{base}.png"),
                             f"{method}{rank} · {cname} · score {s:.3f} · p {p:.3f}"))
            rows.append([method, k + 1, cname, f"{s:.4f}", f"{p:.4f}"])
            summary.append({"method": method, "rank": k + 1, "class_index": int(t),
                            "class": cname, "score": s, "probability": p,
                            "layers": res.layer_names, "map": f"{base}.npy"})
        files.extend(str(p) for p in atomic_write_many(named) if p.suffix == ".png")
        files.extend(str(p) for p in named if p.suffix == ".npy")
    record = {"image": image_name, "layer": layer, "methods": list(methods),
              "target": repr(target), "results": summary, "lamcam_version": _version()}
    files.extend(str(p) for p in atomic_write_many({
        out_dir / f"{stem}_cam.json": (json.dumps(jsonable(record), indent=2) + "\n").encode()}))
    return CAMRun(overlays, rows, files, targets)
