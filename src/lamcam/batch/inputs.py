"""What a batch job reads: image files from folders, globs or a manifest (CSV or JSONL).

A manifest names one image per line, with optional companions:

* CSV with a header: an ``image`` column (required), and optionally ``hr`` (the HR image of an LR
  input, LAM survey), ``mask`` (a ``*_mask.png`` label image, CAM job) and ``id``.
* JSONL: one object per line with the same keys.

Relative paths in a manifest are relative to the manifest's folder. Without a manifest, a mask is
``<stem>_mask.png`` beside the image, and an HR image is the same file name with ``_lr`` replaced
by ``_hr`` (the bundled samples' convention), when such files exist.

Example:
    >>> import lamcam.zoo
    >>> folder = lamcam.zoo.samples()[0].parent
    >>> entries = find_inputs([str(folder)])
    >>> len(entries), entries[0].mask is not None
    (6, True)
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["InputEntry", "InputError", "find_inputs", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class InputError(ValueError):
    """The inputs of a job cannot be listed (missing folder, bad manifest...)."""


@dataclass(frozen=True)
class InputEntry:
    """One input image and its optional companions (absolute paths as strings)."""

    image: str
    hr: str | None = None
    mask: str | None = None
    id: str | None = None

    @property
    def key(self) -> str:
        """The entry's identity in result tables: its ``id``, else the image path."""
        return self.id or self.image


def _is_mask(p: Path) -> bool:
    return p.stem.endswith("_mask")


def _companions(p: Path) -> tuple[str | None, str | None]:
    mask = p.with_name(p.stem + "_mask.png")
    hr = p.with_name(p.name.replace("_lr", "_hr")) if "_lr" in p.stem else None
    return ((str(hr.resolve()) if hr is not None and hr.is_file() else None),
            (str(mask.resolve()) if mask.is_file() else None))


def _manifest(path: Path) -> list[InputEntry]:
    base = path.parent

    def resolve(v: object) -> str | None:
        if v is None or str(v).strip() == "":
            return None
        q = Path(str(v).strip())
        return str((q if q.is_absolute() else base / q).resolve())

    rows: list[dict] = []
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or "image" not in reader.fieldnames:
                    raise InputError(f"{path}: a CSV manifest needs a header with an 'image' column "
                                     f"(found {reader.fieldnames})")
                rows = list(reader)
        else:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise InputError(f"{path}:{n}: not JSON ({e.msg})") from e
                        if not isinstance(obj, dict) or "image" not in obj:
                            raise InputError(f"{path}:{n}: each line needs an 'image' key")
                        rows.append(obj)
    except OSError as e:
        raise InputError(f"cannot read manifest {path}: {e.strerror}") from e
    out = []
    for r in rows:
        image = resolve(r.get("image"))
        if image is None:
            raise InputError(f"{path}: a row has an empty 'image'")
        out.append(InputEntry(image, resolve(r.get("hr")), resolve(r.get("mask")),
                              (str(r["id"]).strip() or None) if r.get("id") is not None else None))
    return out


def find_inputs(specs: Sequence[str | os.PathLike]) -> list[InputEntry]:
    """The images named by ``specs``: files, folders (their image files, not recursive), globs
    (``'data/**/*.png'``, quoted so the shell leaves them) and manifests (``.csv``, ``.jsonl``).

    ``*_mask.png`` files are ground truth, never inputs. The list is sorted by path for folders and
    globs and kept in the manifest's order; a path listed twice is kept once.

    Raises:
        InputError: nothing matches a spec, or a manifest is malformed.
    """
    entries: list[InputEntry] = []
    for spec in specs:
        s = str(spec)
        p = Path(s)
        if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"):
            entries += _manifest(p)
            continue
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file()
                           and q.suffix.lower() in IMAGE_SUFFIXES and not _is_mask(q))
        elif any(ch in s for ch in "*?["):
            found = sorted(Path(q) for q in glob.glob(s, recursive=True)
                           if Path(q).is_file() and Path(q).suffix.lower() in IMAGE_SUFFIXES
                           and not _is_mask(Path(q)))
        elif p.is_file():
            found = [p]
        else:
            raise InputError(f"{s}: no such file, folder or glob match")
        if not found:
            raise InputError(f"{s}: no image files there")
        # an HR image beside its LR one (x_hr.png, x_lr.png) is that input's reference, not an input
        listed = set(found)
        found = [q for q in found
                 if not ("_hr" in q.stem and q.with_name(q.name.replace("_hr", "_lr")) in listed)]
        for q in found:
            hr, mask = _companions(q)
            entries.append(InputEntry(str(q.resolve()), hr, mask))
    seen: set[str] = set()
    unique = []
    for e in entries:
        if e.key not in seen:
            seen.add(e.key)
            unique.append(e)
    return unique
