"""Small file and table helpers shared by reports, the ``lamcam`` command line and the studies.

Every file lamcam writes goes through :func:`atomic_write_bytes`: the data are first encoded in
memory (:func:`npy_bytes`, :func:`image_bytes`, :func:`figure_bytes`), then written to a temporary
file in the destination directory and moved over the final name with :func:`os.replace`. So a
file under its final name is always complete -- the old version or the new one, never a mix --
even if the process is killed mid-write; an exception removes the temporary file. (A process
killed between the write and the rename can leave a hidden ``.<name>.<random>.tmp`` behind.)

Example:
    >>> print(md_table(["a", "b"], [[1, 0.5]], digits=1), end="")
    | a | b |
    |---|---|
    | 1 | 0.5 |
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "jsonable",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_many",
    "atomic_save_npy",
    "atomic_save_image",
    "atomic_save_figure",
    "npy_bytes",
    "image_bytes",
    "figure_bytes",
    "csv_text",
    "md_table",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and :func:`os.replace`.

    Parent directories are created. ``path`` holds either its old content or ``data``, never a
    part of it; the temporary file is removed if anything fails.
    """
    return atomic_write_many({Path(path): data})[0]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_many(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files so that they appear together or not at all, as far as POSIX allows.

    Every file is first written in full to a temporary file beside its destination; only when
    all of them are written are they renamed over their final names, in order. A failure while
    writing (disk full, permissions, an exception, ...) removes all the temporary files and
    changes none of the destinations. (Only a failure of a rename itself, which does not copy
    data, can leave the earlier files of the set renamed.)

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> [p.name for p in atomic_write_many({d / "a.txt": b"1", d / "b.txt": b"2"})]
        ['a.txt', 'b.txt']
        >>> sorted(p.name for p in d.iterdir())
        ['a.txt', 'b.txt']
    """
    staged: list[tuple[str, Path]] = []
    try:
        for dest, data in files.items():
            path = Path(dest)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
        done = []
        while staged:
            tmp, path = staged[0]
            os.replace(tmp, path)
            staged.pop(0)
            done.append(path)
        return done
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)


def npy_bytes(array: Any) -> bytes:
    """The ``.npy`` file of ``array`` (what :func:`numpy.save` would write), in memory."""
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """:func:`numpy.save` to ``path``, atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, npy_bytes(array))


def _image_format(path: str | os.PathLike) -> str:
    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise ValueError(f"cannot tell the image format of '{path}' from its extension {suffix!r}"
                         "; use .png, .jpg, .tif, .bmp or .webp")
    return fmt


def image_bytes(image: Any, format: str = "PNG", **params: Any) -> bytes:  # noqa: A002
    """A PIL image encoded as ``format`` (``PIL.Image.save`` parameters in ``params``)."""
    buf = io.BytesIO()
    image.save(buf, format=format, **params)
    return buf.getvalue()


def atomic_save_image(
    path: str | os.PathLike, image: Any, format: str | None = None, **params: Any  # noqa: A002
) -> Path:
    """Save a PIL image atomically; the format follows the extension unless ``format`` is given."""
    return atomic_write_bytes(path, image_bytes(image, format or _image_format(path), **params))


def figure_bytes(fig: Any, **savefig_kw: Any) -> bytes:
    """A matplotlib figure saved (``fig.savefig(**savefig_kw)``, PNG by default) in memory."""
    savefig_kw.setdefault("format", "png")
    buf = io.BytesIO()
    fig.savefig(buf, **savefig_kw)
    return buf.getvalue()


def atomic_save_figure(path: str | os.PathLike, fig: Any, **savefig_kw: Any) -> Path:
    """``fig.savefig(path, **savefig_kw)``, atomically (see :func:`atomic_write_bytes`)."""
    return atomic_write_bytes(path, figure_bytes(fig, **savefig_kw))


def _fmt(v: Any, digits: int) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.{digits}f}"
    return str(v).replace("|", "\\|")  # a cell's own "|" must not end the cell


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table; floats get ``digits`` decimals, NaN shows as n/a."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(v, digits) for v in r) + " |")
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV text with full float precision."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def jsonable(obj: Any) -> Any:
    """``obj`` ready for strict JSON: NaN/inf -> ``None``, tuples -> lists, keys -> str, recursively.

    Example:
        >>> jsonable({"di": float("nan"), 1: (2, 3.5)})
        {'di': None, '1': [2, 3.5]}
    """
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
