"""Read and write safetensors files through the official ``safetensors`` package, defensively.

Layout of a ``.safetensors`` file::

    [8 bytes]  N, unsigned 64-bit little-endian: length of the JSON header in bytes
    [N bytes]  UTF-8 JSON object; every key except ``"__metadata__"`` names a tensor:
               {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
    [rest]     data section: the raw little-endian bytes of every tensor, back to back.

Why the package and not a parser of our own (lamcam had one until issue 9): the package is
maintained with the format (new dtypes such as ``F8_E4M3`` arrive there first), it memory-maps
the file instead of reading it (loading costs no memory up front, and at most the file's size
once the tensors are used), and its header parser is bounded (100 MB header limit, JSON nesting
limit, overflow-checked offsets). This module adds what lamcam needs around it:

* a cheap sanity check before the package sees a file: only the first 8 bytes are read and
  the file is ``stat``-ed, and a header length above :data:`MAX_HEADER_BYTES` or beyond the end
  of the file is refused, so no file makes lamcam read or allocate more than its real header
  (at most :data:`MAX_HEADER_BYTES`) before the tensors are used;
* one error type: every malformed, truncated or lying file raises :class:`ValueError` whose
  message names the file and says what is wrong, with the package's exception chained;
* atomic writes (temporary file in the destination directory, fsync, :func:`os.replace`), and
  argument checks that fail before the disk is touched.

Loaded tensors live in a private (copy-on-write) memory map of the file: they are writable,
changes never reach the file, and replacing the file (as :func:`save_file` does, through
:func:`os.replace`) does not affect them. Truncating a file *in place* while tensors loaded from
it are still alive is not supported (the operating system may then kill the process on access);
copy them (``t.clone()``) if that can happen.

Public API::

    save_file(tensors, path, metadata=None)   # atomic write
    load_file(path) -> dict[str, Tensor]
    read_metadata(path) -> dict[str, str]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch

__all__ = ["DTYPES", "MAX_HEADER_BYTES", "save_file", "load_file", "read_metadata"]

#: safetensors dtype tag -> torch dtype, for the dtypes :func:`save_file` writes. Reading is not
#: limited to these: :func:`load_file` returns whatever the package can represent in torch.
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Unsigned wide integers and 8-bit floats exist in recent torch versions only.
for _tag, _attr in (
    ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
):  # fmt: skip
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        DTYPES[_tag] = getattr(torch, _attr)

_TAGS: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

#: Refuse headers larger than this before the package parses them (the package's own limit).
MAX_HEADER_BYTES = 100_000_000

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _prepared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate ``tensors`` and return contiguous CPU tensors that share no memory."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> torch.Tensor, got {type(tensors)}")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be str, got {name!r} ({type(name).__name__})")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot be used as a tensor name")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _TAGS:
            supported = ", ".join(str(d) for d in _TAGS)
            raise ValueError(
                f"tensor {name!r} has unsupported dtype {t.dtype}; supported: {supported}"
            )
        if t.layout != torch.strided or t.device.type == "meta":
            raise ValueError(
                f"tensor {name!r} has no data to write ({t.layout}, device {t.device}); "
                "pass a dense tensor with data"
            )
        c = t.detach().to("cpu").contiguous()
        ptr = c.untyped_storage().data_ptr()
        if c.numel() and ptr in seen:  # tied weights: the package refuses shared memory
            c = c.clone()
        seen.add(c.untyped_storage().data_ptr())
        out[name] = c
    return out


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping str -> str, got {type(metadata)}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"metadata must map str -> str, got {k!r}: {v!r} "
                f"({type(k).__name__} -> {type(v).__name__}); json.dumps non-str values first"
            )
    return dict(metadata) or None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_file(
    tensors: Mapping[str, torch.Tensor],
    path: PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` to ``path`` in safetensors format, atomically.

    The arguments are checked first (invalid input fails before the disk is touched); the
    package then writes a temporary file in the destination directory, which is fsynced and
    moved over ``path`` with :func:`os.replace`. A failure or interruption at any point leaves
    ``path`` as it was and removes the temporary file.

    Args:
        tensors: name -> tensor (any shape, a dtype of :data:`DTYPES`; moved to CPU and made
            contiguous for writing; tensors sharing memory, e.g. tied weights, are copied).
        path: destination file; its parent directory must exist.
        metadata: optional free-form str -> str mapping stored under ``"__metadata__"``.

    Raises:
        TypeError: a key is not a str, a value is not a tensor, or metadata is not str -> str.
        ValueError: unsupported dtype or layout, or a tensor name ``"__metadata__"``.
    """
    prepared = _prepared(tensors)
    meta = _check_metadata(metadata)
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.close(fd)
        safetensors.torch.save_file(prepared, tmp, metadata=meta)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # mkstemp creates 0600 files; give the result the mode a plain open() would have given.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _bad(source: str, what: str) -> ValueError:
    return ValueError(f"{source}: not a valid safetensors file: {what}")


# Substrings of the package's error messages -> what they mean, appended to its message.
_HINTS = (
    ("header too small", "the file is too short to hold a header"),
    ("incomplete metadata", "the tensors do not cover the data section exactly: truncated "
     "file, or extra bytes after the last tensor"),
    ("invalid offset", "data_offsets overlap, leave a hole, run backwards or start past the "
     "data"),
    ("invalid shape, data type, or offset", "the byte size given by data_offsets does not "
     "match dtype and shape"),
    ("overflow", "the shape's element count overflows"),
    ("expected struct HashMetadata", "the header is not a JSON object"),
    ("unknown variant", "unsupported dtype"),
    ("Dtype not understood", "unsupported dtype (torch has no such type)"),
    ("recursion limit", "the header JSON is nested too deeply"),
)


def _describe(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    text = text.removeprefix("Error while deserializing header: ")
    hints = [hint for key, hint in _HINTS if key in text]
    return text + (f" ({'; '.join(hints)})" if hints else "")


def _precheck(path: PathLike) -> str:
    """Refuse missing files and absurd header lengths after reading only 8 bytes; return name."""
    p = Path(path)
    source = str(p)
    if not p.exists():
        raise FileNotFoundError(f"{source}: no such safetensors file")
    if not p.is_file():
        raise _bad(source, "not a regular file")
    size = p.stat().st_size
    with p.open("rb") as fh:
        prefix = fh.read(8)
    if len(prefix) < 8:
        raise _bad(
            source, f"file is {size} bytes, too short for the 8-byte header length (truncated?)"
        )
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_BYTES:
        raise _bad(source, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if n > size - 8:
        raise _bad(
            source, f"header length says {n} bytes but only {size - 8} follow (truncated file?)"
        )
    return source


def _open(path: PathLike, read_tensors: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    source = _precheck(path)
    try:
        with safetensors.safe_open(source, framework="pt", device="cpu") as f:
            meta = f.metadata()
            tensors = {name: f.get_tensor(name) for name in f.keys()} if read_tensors else {}
    except (OSError, MemoryError):  # cannot open / read the file: not a format problem
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # SafetensorError, and Rust panics (PanicException)
        raise _bad(source, _describe(e)) from e
    return tensors, dict(meta or {})


def load_file(path: PathLike) -> dict[str, torch.Tensor]:
    """Load every tensor of the safetensors file ``path`` as CPU tensors.

    The file is memory-mapped (copy-on-write): nothing is read until a tensor is used, and the
    tensors are writable without changing the file. Every dtype of the format that torch has
    loads (including ``F8_E4M3`` / ``F8_E5M2`` as ``torch.float8_e4m3fn`` / ``float8_e5m2``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        OSError: the file cannot be opened or read (permissions, I/O error).
        ValueError: the file is truncated, malformed or lies about its contents (the message
            names the file and the problem; the package's exception is chained).
    """
    return _open(path, read_tensors=True)[0]


def read_metadata(path: PathLike) -> dict[str, str]:
    """Return the ``__metadata__`` mapping of ``path`` ({} if absent), reading only the header.

    The whole header is validated against the file size too, so a file this returns for
    without error has a consistent header. Raises like :func:`load_file`.
    """
    return _open(path, read_tensors=False)[1]
