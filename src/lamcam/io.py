"""Image input/output with clear errors and explicit conversion warnings.

Everything that enters lamcam from disk goes through :func:`load_image`, which always returns a
``float32`` tensor of shape ``(C, H, W)`` with values in ``[0, 1]``. Any conversion that changes
the data (alpha compositing, palette expansion, grayscale replication, CMYK conversion, 16-bit
rescaling, resizing, ...) is announced with a :class:`UserWarning` so that nothing happens
silently. Files that cannot be read raise :class:`ImageLoadError` (a :class:`ValueError`) naming
the file, the reason and what to do about it, with the original exception chained: missing,
empty, truncated or corrupt files, decompression bombs (a pixel count above Pillow's
``Image.MAX_IMAGE_PIXELS``, or a PNG text/ICC-profile chunk that inflates beyond Pillow's limit),
NaN or infinite pixels in floating-point images, and -- with ``max_pixels`` -- images too large
for the job (:class:`ImageTooLargeError`, decided from the header before any pixel is decoded).

Files are written atomically (:mod:`lamcam._files`): never half-written under the final name.

Example:
    >>> import tempfile, pathlib, torch
    >>> from lamcam.io import load_image, save_image
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> x = torch.rand(3, 8, 8)
    >>> p = save_image(x, d / "x.png")
    >>> y = load_image(p)
    >>> y.shape, y.dtype
    (torch.Size([3, 8, 8]), torch.float32)
    >>> bool((y - x).abs().max() <= 0.5 / 255 + 1e-6)
    True
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from lamcam._memory import format_bytes

__all__ = [
    "ImageLoadError",
    "ImageTooLargeError",
    "OutputDirError",
    "load_image",
    "load_fitted",
    "load_instance_masks",
    "save_image",
    "ensure_writable_dir",
]


class ImageLoadError(ValueError):
    """An image file could not be read.

    The message always names the file, says why it failed and what to do. ``path`` and
    ``reason`` are also available as attributes.
    """

    def __init__(self, path: str | os.PathLike, reason: str, hint: str = "") -> None:
        self.path = Path(path)
        self.reason = reason
        self.hint = hint
        msg = f"cannot load image '{path}': {reason}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)


#: Peak memory of :func:`load_image` per pixel (measured: about 30 bytes for an 8-bit RGB image:
#: Pillow's 4-byte pixels, the float32 (H, W, 3) array and its (3, H, W) copy).
DECODE_BYTES_PER_PIXEL = 30


class ImageTooLargeError(ImageLoadError):
    """The image has more pixels than allowed (``max_pixels``); found from the header alone.

    Attributes ``width``, ``height``, ``pixels`` and ``limit`` give the numbers, so that callers
    (the command line) can explain the memory the job would need and how to raise the limit.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], limit: int,
                 hint: str = "") -> None:
        self.width, self.height = int(size[0]), int(size[1])
        self.pixels = self.width * self.height
        self.limit = int(limit)
        reason = (
            f"{self.width}x{self.height} pixels ({self.pixels:,}) is more than the limit of "
            f"{self.limit:,} pixels (decoding alone would take about "
            f"{format_bytes(self.pixels * DECODE_BYTES_PER_PIXEL)}: "
            f"{DECODE_BYTES_PER_PIXEL} bytes per pixel)"
        )
        hint = hint or (
            "crop or downscale it, or raise the limit (load_image(..., "
            f"max_pixels={self.pixels}) or more)"
        )
        super().__init__(path, reason, hint)


class OutputDirError(OSError):
    """An output directory could not be created or is not writable."""


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

_BOMB_HINT = (
    "if the file is trusted and really that large, downscale it first (or raise "
    "PIL.Image.MAX_IMAGE_PIXELS); otherwise it may be a decompression bomb: do not use it"
)
_CHUNK_HINT = (
    "it may be a decompression bomb; re-save only the pixels (dropping the metadata), or if the "
    "file is trusted raise PIL.PngImagePlugin.MAX_TEXT_CHUNK / MAX_TEXT_MEMORY"
)


def _chunk_bomb(e: ValueError) -> bool:
    """Pillow's PNG text/iCCP chunk guards raise plain ValueErrors with these messages."""
    msg = str(e).lower()
    return "decompressed data too large" in msg or "too much memory used in text chunks" in msg


def _bomb_error(path: Path, e: BaseException) -> ImageLoadError:
    if isinstance(e, Image.DecompressionBombError):
        return ImageLoadError(path, f"image is implausibly large ({e})", _BOMB_HINT)
    from PIL import PngImagePlugin

    limit = getattr(PngImagePlugin, "MAX_TEXT_CHUNK", None)
    what = f" (more than {format_bytes(limit)})" if isinstance(limit, int) else ""
    return ImageLoadError(
        path, f"a compressed metadata chunk (text or ICC profile) inflates too much{what}: {e}",
        _CHUNK_HINT)


def _warn(path: Path, what: str) -> None:
    """Warn, attributing the warning to the first caller outside this module."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{path.name}: {what}", UserWarning, stacklevel=level)


def _parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            msg = f"size must be an int or a (height, width) pair, got {size!r}"
            raise ValueError(msg) from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff_format(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _open_checked(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode ``path`` (first frame), turning every failure into ImageLoadError.

    With ``max_pixels``, the size is checked from the header before anything is decoded."""
    if not path.exists():
        raise ImageLoadError(path, "file does not exist", "check the path and spelling")
    if path.is_dir():
        raise ImageLoadError(path, "it is a directory, not an image file", "pass an image file")
    try:
        n_bytes = path.stat().st_size
    except OSError as e:
        raise ImageLoadError(path, f"cannot stat file: {e.strerror or e}") from e
    if n_bytes == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)", "re-export or re-download it")
    try:
        with warnings.catch_warnings():
            if max_pixels is not None:  # our own limit, checked below, replaces Pillow's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError as e:
        kind = _sniff_format(path)
        if kind is not None:
            raise ImageLoadError(
                path,
                f"starts like a {kind} file but is truncated or corrupt",
                "re-export or re-download the image",
            ) from e
        raise ImageLoadError(
            path,
            "not a recognised image format",
            "expected PNG, JPEG, BMP, TIFF, GIF, WebP...; check that it really is an image",
        ) from e
    except Image.DecompressionBombError as e:
        raise _bomb_error(path, e) from e
    except PermissionError as e:
        raise ImageLoadError(path, "permission denied", "check the file permissions") from e
    except OSError as e:
        raise ImageLoadError(path, f"cannot open file: {e}") from e
    except ValueError as e:  # Pillow's guards against oversized PNG chunks, broken headers
        if _chunk_bomb(e):
            raise _bomb_error(path, e) from e
        raise ImageLoadError(path, f"file is corrupt or could not be decoded ({e})",
                             "re-export or re-download the image") from e
    if max_pixels is not None and img.width * img.height > max_pixels:
        img.close()
        raise ImageTooLargeError(path, img.size, max_pixels)
    try:
        _load_pixels(img, path)
    except BaseException:
        img.close()
        raise
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1:
        _warn(path, f"file has {n_frames} frames; using the first one")
    return img


def _load_pixels(img: Image.Image, path: Path) -> None:
    """Decode the pixels now, so that truncation and corruption surface here."""
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise _bomb_error(path, e) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, ValueError) and _chunk_bomb(e):  # a text chunk after the pixel data
            raise _bomb_error(path, e) from e
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower() or isinstance(e, EOFError):
            reason = f"file is truncated or corrupt ({reason})"
        else:
            reason = f"file is corrupt or could not be decoded ({reason})"
        raise ImageLoadError(path, reason, "re-export or re-download the image") from e


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG header (Pillow decodes 16-bit colour PNGs to 8 bits silently)."""
    try:
        with open(path, "rb") as f:
            head = f.read(29)
    except OSError:
        return None
    if len(head) < 29 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _apply_exif_orientation(img: Image.Image, path: Path) -> Image.Image:
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - broken EXIF must not prevent loading the pixels
        return img
    if orientation in (None, 1):
        return img
    _warn(path, f"rotated/flipped according to its EXIF orientation tag ({orientation})")
    return ImageOps.exif_transpose(img)


def _to_float_array(img: Image.Image, path: Path) -> np.ndarray:
    """Decode ``img`` into an ``(H, W, C)`` float32 array in [0, 1] with C in {1, 3}.

    Alpha is composited on white. Every non-trivial conversion warns.
    """
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
            scale = 255.0
            what = "32-bit integer image with values in 0..255"
        else:
            scale = 65535.0
            what = "16-bit grayscale image"
        if arr.size and (arr.min() < 0 or arr.max() > scale):
            _warn(path, f"{what} has values outside 0..{int(scale)}; clipped")
        _warn(path, f"{what} rescaled to [0, 1] (divided by {int(scale)})")
        return np.clip(arr / scale, 0.0, 1.0).astype(np.float32)[..., None]
    if mode == "F":
        arr = np.asarray(img).astype(np.float32)
        finite = np.isfinite(arr)
        if not finite.all():
            n_nan = int(np.isnan(arr).sum())
            n_inf = int(arr.size - finite.sum()) - n_nan
            raise ImageLoadError(
                path,
                f"floating-point image has {n_nan} NaN and {n_inf} infinite pixel(s) "
                f"out of {arr.size}",
                "lamcam does not guess missing values: replace them (e.g. numpy.nan_to_num or an "
                "inpainting of your choice) and save the image again",
            )
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            _warn(path, "floating-point image has values outside [0, 1]; clipped")
        else:
            _warn(path, "floating-point image used as is (assumed to be in [0, 1])")
        return np.clip(arr, 0.0, 1.0)[..., None]
    if mode == "1":
        _warn(path, "1-bit black-and-white image converted to 8-bit grayscale")
        img = img.convert("L")
        mode = "L"
    if mode == "P":
        has_alpha = "transparency" in img.info or (
            img.palette is not None and img.palette.mode == "RGBA"
        )
        img = img.convert("RGBA" if has_alpha else "RGB")
        _warn(path, f"palette image converted to {img.mode}")
        mode = img.mode
    if mode == "PA":
        img = img.convert("RGBA")
        _warn(path, "palette image with alpha converted to RGBA")
        mode = "RGBA"
    if mode == "CMYK":
        img = img.convert("RGB")
        _warn(path, "CMYK image converted to RGB (naive conversion, no colour profile applied)")
        mode = "RGB"
    if mode in ("La", "RGBa"):
        img = img.convert(mode[:-1] + "A")
        mode = img.mode
    if mode in ("LA", "RGBA"):
        rgba = np.asarray(img).astype(np.float32) / 255.0
        color, alpha = rgba[..., :-1], rgba[..., -1:]
        if alpha.min() < 1.0:
            _warn(path, f"{mode} image has transparency; alpha composited on a white background")
        else:
            _warn(path, f"{mode} image: fully opaque alpha channel dropped")
        return color * alpha + (1.0 - alpha)
    if mode not in ("L", "RGB"):
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageLoadError(path, f"unsupported pixel mode {mode!r} ({e})") from e
        _warn(path, f"{mode} image converted to RGB")
    arr = np.asarray(img).astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr


def load_image(
    path: str | os.PathLike,
    *,
    mode: str = "RGB",
    size: int | Sequence[int] | None = None,
    max_pixels: int | None = None,
) -> torch.Tensor:
    """Load an image file as a ``float32`` tensor of shape ``(C, H, W)`` in ``[0, 1]``.

    Args:
        path: image file (anything Pillow reads: PNG, JPEG, BMP, TIFF, GIF, WebP, ...).
        mode: ``"RGB"`` (``C == 3``) or ``"L"`` (``C == 1``, ITU-R 601-2 luma).
        size: if given, resize to ``(size, size)`` (int) or ``(h, w)`` with bilinear
            interpolation (antialiased when shrinking). A warning says that it resized.
        max_pixels: refuse images with more pixels (width x height) than this, from the file's
            header, before decoding anything (:class:`ImageTooLargeError`; decoding takes about
            :data:`DECODE_BYTES_PER_PIXEL` bytes per pixel). ``None``: only Pillow's
            decompression-bomb guard (``PIL.Image.MAX_IMAGE_PIXELS``) applies. A limit above
            twice Pillow's also needs ``PIL.Image.MAX_IMAGE_PIXELS`` raised.

    Returns:
        Tensor ``(C, H, W)``, ``float32``, values in ``[0, 1]``. 8-bit images give exactly
        ``value / 255``; 16-bit images ``value / 65535``.

    Raises:
        ImageLoadError: missing, empty, truncated, corrupt or non-image file, decompression
            bomb, NaN/inf pixels (the message names the file, the reason and what to do; the
            underlying exception is chained as ``__cause__``).
        ImageTooLargeError: more than ``max_pixels`` pixels (an :class:`ImageLoadError`).
        ValueError: invalid ``mode``, ``size`` or ``max_pixels``.

    Warns:
        UserWarning: whenever the data are converted: palette expanded, alpha composited on white,
        grayscale replicated to 3 channels, colour reduced to grayscale, CMYK converted,
        16-bit rescaled, EXIF rotation applied, extra frames ignored, image resized.

    Example:
        >>> import tempfile, pathlib, warnings
        >>> from PIL import Image
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "g.png"
        >>> Image.new("L", (4, 2), 51).save(p)
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     x = load_image(p)
        >>> x.shape, round(float(x[0, 0, 0]), 3), "replicated" in str(w[0].message)
        (torch.Size([3, 2, 4]), 0.2, True)
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    target_hw = _parse_size(size)
    if max_pixels is not None and (isinstance(max_pixels, bool) or int(max_pixels) < 1):
        raise ValueError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    path = Path(path)
    with _open_checked(path, None if max_pixels is None else int(max_pixels)) as img:
        if img.format == "PNG" and img.mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16:
            _warn(path, f"16-bit {img.mode} PNG reduced to 8 bits per channel by the decoder")
        img = _apply_exif_orientation(img, path)
        try:
            arr = _to_float_array(img, path)
        except (OSError, ValueError) as e:
            if isinstance(e, ImageLoadError):
                raise
            raise ImageLoadError(path, f"could not decode pixels ({e})", "re-export it") from e
    channels = arr.shape[-1]
    if mode == "RGB" and channels == 1:
        _warn(path, "grayscale image replicated to 3 channels for an RGB model")
        arr = np.repeat(arr, 3, axis=-1)
    elif mode == "L" and channels == 3:
        _warn(path, "colour image converted to grayscale (ITU-R 601-2 luma)")
        arr = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        arr = arr[..., None]
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()
    if target_hw is not None and tuple(x.shape[-2:]) != target_hw:
        h, w = x.shape[-2:]
        _warn(path, f"resized from {h}x{w} to {target_hw[0]}x{target_hw[1]} (HxW, bilinear)")
        shrink = target_hw[0] < h or target_hw[1] < w
        x = F.interpolate(
            x[None], size=target_hw, mode="bilinear", align_corners=False, antialias=shrink
        )[0].clamp_(0.0, 1.0)
    return x


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------


def load_fitted(
    path: str | os.PathLike,
    *,
    mode: str = "RGB",
    size: Sequence[int] | None = None,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, str]:
    """Load an image and fit it to a classifier's input ``size`` ``(h, w)`` without distorting it.

    The short side is resized to match (aspect ratio kept, bilinear, antialiased when shrinking)
    and the result centre-cropped: the rule of ``lamcam cam``, ``lamcam eval`` and the explorer.

    Returns:
        ``(tensor (C, h, w) in [0, 1], text)``; ``text`` says what was done ('' when the image
        already had the size, or when ``size`` is ``None``).

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/wide.png"
        >>> Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(p)
        >>> x, text = load_fitted(p, size=(10, 10))
        >>> tuple(x.shape), text
        ((3, 10, 10), 'resized from 40x20 to 20x10, aspect kept, centre-cropped to 10x10')
    """
    import math

    x = load_image(path, mode=mode, max_pixels=max_pixels)
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x, ""
    h, w = (int(s) for s in x.shape[-2:])
    th, tw = (int(s) for s in size)
    s = max(th / h, tw / w)
    rh, rw = max(th, math.ceil(h * s - 1e-9)), max(tw, math.ceil(w * s - 1e-9))
    shrink = rh < h or rw < w
    y = F.interpolate(x[None], size=(rh, rw), mode="bilinear", align_corners=False,
                      antialias=shrink)[0].clamp_(0.0, 1.0)
    top, left = (rh - th) // 2, (rw - tw) // 2
    y = y[:, top:top + th, left:left + tw].contiguous()
    crop = "" if (rh, rw) == (th, tw) else f", centre-cropped to {tw}x{th}"
    return y, f"resized from {w}x{h} to {rw}x{rh}, aspect kept{crop}"


def _tensor_to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    if isinstance(image, torch.Tensor):
        t = image.detach().to("cpu", torch.float32)
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"expected an image (C,H,W) tensor / (H,W,C) array with C in 1, 3, 4, got {arr.shape}"
        )
    u8 = (np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return Image.fromarray(u8)


def save_image(image: torch.Tensor | np.ndarray | Image.Image, path: str | os.PathLike) -> Path:
    """Save an image; the format follows the file extension (PNG recommended: lossless).

    Args:
        image: tensor ``(C, H, W)`` or ``(H, W)`` in ``[0, 1]`` (C in 1, 3, 4), a float array
            ``(H, W, C)`` in ``[0, 1]``, a ``uint8`` array, or a PIL image. Values are clipped
            and rounded to 8 bits, so ``load_image(save_image(x, p))`` is exact for ``x = k/255``.
        path: destination file; missing parent directories are created. Written atomically
            (a temporary file renamed over ``path``): never left half-written.

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = save_image(torch.zeros(3, 4, 4), pathlib.Path(tempfile.mkdtemp()) / "a" / "b.png")
        >>> p.exists()
        True
    """
    path = Path(path)
    from lamcam._files import atomic_save_image

    pil = image if isinstance(image, Image.Image) else _tensor_to_pil(image)
    if path.suffix.lower() in (".jpg", ".jpeg") and pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    return atomic_save_image(path, pil)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (with parents) if needed and check that files can be written in it.

    Meant to be called before any expensive work so that a bad output location fails fast.

    Args:
        path: directory to create / check.

    Returns:
        The directory as a :class:`~pathlib.Path`.

    Raises:
        OutputDirError: the path exists but is not a directory, cannot be created, or is not
            writable. The message names the directory and the reason.

    Example:
        >>> import tempfile, pathlib
        >>> d = ensure_writable_dir(pathlib.Path(tempfile.mkdtemp()) / "out" / "sub")
        >>> d.is_dir()
        True
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output directory '{path}' exists but is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or str(e)
        raise OutputDirError(f"cannot create output directory '{path}': {reason}") from e
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".lamcam-write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        raise OutputDirError(f"output directory '{path}' is not writable: {reason}") from e
    return path


def load_instance_masks(path: str | os.PathLike, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(n, H, W)`` bool, one mask per instance, from a label image (0 = background, k = instance k).

    This is the format of the bundled ``*_mask.png`` files (and of ``lamcam eval``'s
    ``<stem>_mask.png`` ground truth); pass the result, one per image, to
    ``lamcam.evaluation.evaluate(..., instance_masks=...)``.

    Args:
        path: a single-channel label PNG (mode L, P, I or I;16).
        size: ``(H, W)`` the image is used at; a mask of another size is an error (masks are
            never resampled: that would move instance borders).

    Raises:
        ImageLoadError: unreadable, not single-channel, no object pixels, or the wrong size.

    Example:
        >>> import lamcam.zoo
        >>> p = lamcam.zoo.samples()[0]
        >>> m = load_instance_masks(p.with_name(p.stem + "_mask.png"))
        >>> m.dtype, m.ndim, m.shape[0] == lamcam.zoo.sample_annotations()[p.name]["n_instances"]
        (torch.bool, 3, True)
    """
    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L") if im.mode not in ("L", "P", "I", "I;16") else im)
    except (OSError, ValueError) as e:  # ValueError: Pillow's guards against oversized chunks
        raise ImageLoadError(path, f"unreadable mask ({e})") from e
    if a.ndim != 2:
        raise ImageLoadError(path, "a mask must be a single-channel label image")
    ids = [int(v) for v in np.unique(a) if v != 0]
    if not ids:
        raise ImageLoadError(path, "the mask is empty (no object pixels)", "remove it or the image")
    if size is not None and tuple(a.shape) != tuple(size):
        raise ImageLoadError(path, f"the mask is {a.shape[1]}x{a.shape[0]} but the image is used at "
                             f"{size[1]}x{size[0]}", "give a mask of the image's size")
    return torch.from_numpy(np.stack([a == k for k in ids]))
