"""Minimal reader and writer for the safetensors file format (no dependency on ``safetensors``).

Layout of a ``.safetensors`` file::

    [8 bytes]  N, unsigned 64-bit little-endian: length of the JSON header in bytes
    [N bytes]  UTF-8 JSON object; every key except ``"__metadata__"`` names a tensor:
               {"dtype": "F32", "shape": [d0, d1, ...], "data_offsets": [begin, end]}
               ``data_offsets`` are byte offsets relative to the start of the data section.
               ``"__metadata__"`` (optional) is an object mapping str -> str.
    [rest]     data section: the raw little-endian, C-contiguous bytes of every tensor,
               packed back to back without holes.

Core lamcam may only depend on torch, numpy, pillow, matplotlib and tqdm, so the shipped model
weights are read and written by this module. Files written here load with the official
``safetensors`` package and vice versa (checked in ``tests/test_safetensors.py``).

Public API::

    save_file(tensors, path, metadata=None)   # atomic write
    load_file(path) -> dict[str, Tensor]
    read_metadata(path) -> dict[str, str]
    save_bytes(tensors, metadata=None) -> bytes
    load_bytes(data, source="<bytes>") -> dict[str, Tensor]

Every malformed or truncated input raises :class:`ValueError` whose message names the file and
says what is wrong.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = [
    "DTYPES",
    "save_file",
    "load_file",
    "read_metadata",
    "save_bytes",
    "load_bytes",
]

#: safetensors dtype tag -> torch dtype.
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
# Unsigned wide integers exist in recent torch versions only (limited op support, but storage,
# copying and comparison work).
for _tag, _attr in (("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64")):
    if isinstance(getattr(torch, _attr, None), torch.dtype):
        DTYPES[_tag] = getattr(torch, _attr)

_TAGS: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

#: Refuse headers larger than this (the official implementation uses the same limit).
MAX_HEADER_BYTES = 100_000_000

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def _tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a contiguous CPU tensor ``t`` (any shape, any supported dtype)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8)  # same storage reinterpreted as bytes; works for 0 elements too
    if sys.byteorder == "big" and t.element_size() > 1:  # pragma: no cover - little-endian CI
        raw = raw.reshape(-1, t.element_size()).flip(1).reshape(-1)
    return raw.numpy().tobytes()


def save_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialise ``tensors`` (name -> tensor of any shape) and ``metadata`` to safetensors bytes.

    Tensors are stored sorted by decreasing element size, then by name, so every tensor's data
    starts at a multiple of its element size (the header is padded to 8 bytes).

    Raises:
        TypeError: a key is not a str, a value is not a tensor, or metadata is not str -> str.
        ValueError: unsupported dtype, or a tensor name ``"__metadata__"``.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping name -> torch.Tensor, got {type(tensors)}")
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
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a mapping str -> str, got {type(metadata)}")
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(
                    f"metadata must map str -> str, got {k!r}: {v!r} "
                    f"({type(k).__name__} -> {type(v).__name__}); json.dumps non-str values first"
                )

    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for name in order:
        t = tensors[name]
        data = _tensor_bytes(t)
        header[name] = {
            "dtype": _TAGS[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)  # pad with spaces so the data section is 8-aligned
    return struct.pack("<Q", len(hbytes)) + hbytes + b"".join(chunks)


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

    The bytes are first serialised in memory (so invalid input fails before touching the disk),
    then written to a temporary file in the destination directory, flushed and fsynced, and moved
    over ``path`` with :func:`os.replace`. A failure at any point leaves ``path`` as it was and
    removes the temporary file.

    Args:
        tensors: name -> tensor (any shape; moved to CPU and made contiguous for writing).
        path: destination file; its parent directory must exist.
        metadata: optional free-form str -> str mapping stored under ``"__metadata__"``.
    """
    payload = save_bytes(tensors, metadata)
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
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


def _parse_header(head: bytes, source: str) -> dict:
    """Decode and structurally validate the JSON header bytes ``head``."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(source, f"header is not UTF-8 ({e})") from None
    if not text.lstrip().startswith("{"):
        raise _bad(source, f"header does not start with a JSON object (begins {text[:20]!r})")
    try:
        header = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(source, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(source, "header is not a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and (
        not isinstance(meta, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        raise _bad(source, "'__metadata__' must be an object mapping str -> str")
    return header


def _check_header_len(prefix: bytes, total: int, source: str) -> int:
    """Return the header length N from the 8-byte ``prefix`` of a ``total``-byte file."""
    if len(prefix) < 8:
        raise _bad(
            source, f"file is {total} bytes, too short for the 8-byte header length (truncated?)"
        )
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise _bad(source, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > total:
        raise _bad(
            source, f"header length says {n} bytes but only {total - 8} follow (truncated file?)"
        )
    return n


_Spec = tuple[str, torch.dtype, list, int, int]


def _tensor_specs(header: dict, data_len: int, source: str) -> list[_Spec]:
    """Validate every tensor entry against a data section of ``data_len`` bytes.

    Returns (name, dtype, shape, begin, end) per tensor, checked so that sizes match the shape,
    all ranges lie inside the data section, do not overlap, and cover it without holes.
    """
    specs: list[_Spec] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _bad(source, f"entry for tensor {name!r} is not an object")
        missing = {"dtype", "shape", "data_offsets"} - entry.keys()
        if missing:
            raise _bad(source, f"tensor {name!r} lacks {sorted(missing)}")
        tag, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if tag not in DTYPES:
            raise _bad(
                source, f"tensor {name!r} has unsupported dtype {tag!r} (known: {sorted(DTYPES)})"
            )
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _bad(source, f"tensor {name!r} has invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise _bad(source, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        dtype = DTYPES[tag]
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        begin, end = offsets
        if end - begin != nbytes:
            raise _bad(
                source,
                f"tensor {name!r} ({tag}, shape {shape}) needs {nbytes} bytes but its "
                f"data_offsets [{begin}, {end}] span {end - begin}",
            )
        if end > data_len:
            raise _bad(
                source,
                f"tensor {name!r} needs bytes [{begin}, {end}) of the data section but it has "
                f"only {data_len} bytes (truncated file?)",
            )
        specs.append((name, dtype, shape, begin, end))
    pos = 0
    for name, _, _, begin, end in sorted(specs, key=lambda s: (s[3], s[4])):
        if begin != pos:
            kind = "overlaps the previous tensor" if begin < pos else "leaves a hole before it"
            raise _bad(source, f"tensor {name!r} at byte {begin} {kind} (expected {pos})")
        pos = end
    if pos != data_len:
        raise _bad(
            source, f"data section has {data_len} bytes but the tensors describe only {pos}"
        )
    return specs


def _to_tensor(raw: bytes | memoryview, dtype: torch.dtype, shape: list) -> torch.Tensor:
    """Build a tensor (owning a private, writable copy of ``raw``) of ``dtype`` and ``shape``."""
    buf = bytearray(raw)
    if not buf:
        return torch.empty(shape, dtype=dtype)
    t = torch.frombuffer(buf, dtype=torch.uint8)
    size = torch.empty((), dtype=dtype).element_size()
    if sys.byteorder == "big" and size > 1:  # pragma: no cover - little-endian CI
        t = t.reshape(-1, size).flip(1).reshape(-1).contiguous()
    return t.view(dtype).reshape(shape)


def load_bytes(data: bytes, source: str = "<bytes>") -> dict[str, torch.Tensor]:
    """Parse safetensors ``data`` into name -> CPU tensor (tensors own their memory).

    ``source`` is used in error messages (a file name or ``"<bytes>"``).
    """
    view = memoryview(data)
    n = _check_header_len(bytes(view[:8]), len(data), source)
    header = _parse_header(bytes(view[8 : 8 + n]), source)
    body = view[8 + n :]
    specs = _tensor_specs(header, len(body), source)
    return {
        name: _to_tensor(body[begin:end], dtype, shape)
        for name, dtype, shape, begin, end in specs
    }


def _read_all(path: PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such safetensors file")
    return p.read_bytes()


def load_file(path: PathLike) -> dict[str, torch.Tensor]:
    """Load every tensor of the safetensors file ``path`` as CPU tensors.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is truncated or malformed (message names the file and the problem).
    """
    return load_bytes(_read_all(path), str(path))


def read_metadata(path: PathLike) -> dict[str, str]:
    """Return the ``__metadata__`` mapping of ``path`` ({} if absent), reading only the header.

    The tensor entries are validated too (without reading their data), so a file that this
    returns for without error has a consistent header.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such safetensors file")
    source = str(p)
    size = p.stat().st_size
    with p.open("rb") as fh:
        n = _check_header_len(fh.read(8), size, source)
        head = fh.read(n)
    header = _parse_header(head, source)
    _tensor_specs(header, size - 8 - n, source)
    return dict(header.get("__metadata__") or {})
