"""A job's results on disk: resumable, and never half-written.

Layout of an output folder::

    OUT/job.json              the configuration and its hash (a rerun compares them)
    OUT/parts/part-000001.parquet ...
                              rows as they were computed, each part written atomically
    OUT/results.parquet       every item's latest rows, one table (written atomically at the end
                              of every run, also an interrupted or failed one)
    OUT/report.html           the report (tables and plots)

A rerun with the same configuration skips every item whose latest rows are all ``ok``; failed
items are tried again. A rerun with another configuration moves the earlier results to
``OUT/previous/`` and starts clean, and says what changed.

Parquet goes through pyarrow (``pip install 'lamcam[ray]'`` brings it; the local engine needs
nothing else from Ray).

Example:
    >>> import tempfile
    >>> store = RunStore(tempfile.mkdtemp(), "cam", {"kind": "cam", "methods": ["gradcam"]})
    >>> store.open()
    >>> _ = store.write_part([{"item_id": "a", "status": "ok", "method": "gradcam"}])
    >>> sorted(store.done()), len(store.consolidate())
    (['a'], 1)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lamcam.batch.jobs import SCHEMAS

__all__ = ["RunStore", "import_pyarrow", "config_hash", "read_table"]


def import_pyarrow():  # noqa: ANN201
    """``(pyarrow, pyarrow.parquet)``, or an ImportError naming the install command."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("lamcam batch writes Parquet tables with pyarrow: pip install "
                          "'lamcam[ray]' (or pip install pyarrow for the local engine alone)") from e
    return pa, pq


def config_hash(config: dict[str, Any]) -> str:
    """A stable hash of a job configuration."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _schema(kind: str) -> Any:
    pa, _ = import_pyarrow()
    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
    return pa.schema([(n, types[t]) for n, t in SCHEMAS[kind]])


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a Parquet file as dicts."""
    _, pq = import_pyarrow()
    return pq.read_table(path).to_pylist()


def _atomic_parquet(rows: list[dict[str, Any]], kind: str, path: Path) -> Path:
    pa, pq = import_pyarrow()
    table = pa.Table.from_pylist(rows, schema=_schema(kind))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class RunStore:
    """The results folder of one job (see the module docstring for its layout)."""

    def __init__(self, out: str | os.PathLike, kind: str, config: dict[str, Any]) -> None:
        self.out = Path(out)
        self.kind = kind
        self.config = config
        self.hash = config_hash(config)
        self.parts = self.out / "parts"
        self.message: str | None = None

    def open(self) -> None:
        """Create the folder, or check that it belongs to this configuration.

        With another configuration the earlier results move to ``previous/`` and
        :attr:`message` says what changed (the caller shows it).
        """
        import_pyarrow()
        self.out.mkdir(parents=True, exist_ok=True)
        job = self.out / "job.json"
        if job.is_file():
            try:
                old = json.loads(job.read_text())
            except (OSError, ValueError):
                old = {}
            if old.get("hash") != self.hash:
                before = old.get("config", {})
                changed = sorted(k for k in set(before) | set(self.config)
                                 if before.get(k) != self.config.get(k))
                prev = self.out / "previous"
                shutil.rmtree(prev, ignore_errors=True)
                prev.mkdir()
                for name in ("job.json", "parts", "results.parquet", "report.html", "report",
                             "maps", "overlays"):
                    if (self.out / name).exists():
                        os.replace(self.out / name, prev / name)
                self.message = (f"the configuration changed ({', '.join(changed) or 'format'}): "
                                f"starting clean; the earlier results are in {prev}")
        from lamcam._files import atomic_write_text

        atomic_write_text(job, json.dumps({"kind": self.kind, "hash": self.hash,
                                           "config": self.config}, indent=2, default=str) + "\n")

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def latest(self) -> dict[str, list[dict[str, Any]]]:
        """Every item's rows from the last part that holds it."""
        by_item: dict[str, list[dict[str, Any]]] = {}
        for part in self._part_files():
            fresh: dict[str, list[dict[str, Any]]] = {}
            for row in read_table(part):
                fresh.setdefault(row["item_id"], []).append(row)
            by_item.update(fresh)
        return by_item

    def done(self) -> set[str]:
        """Items whose latest rows are all ``ok`` (a rerun skips them)."""
        return {k for k, rows in self.latest().items() if all(r["status"] == "ok" for r in rows)}

    def write_part(self, rows: list[dict[str, Any]]) -> Path:
        """Append rows as a new part (atomically: a part is whole or absent)."""
        files = self._part_files()
        n = int(files[-1].stem.split("-")[1]) + 1 if files else 1
        return _atomic_parquet(rows, self.kind, self.parts / f"part-{n:06d}.parquet")

    def consolidate(self, order: list[str] | None = None) -> list[dict[str, Any]]:
        """Write ``results.parquet`` atomically and return its rows: the latest rows of the items
        in ``order`` (the job's current items, in that order), or of every item stored when
        ``order`` is ``None``. Rows of items no longer in the inputs stay in the parts only."""
        latest = self.latest()
        if order is None:
            keys = sorted(latest)
        else:
            keys = [k for k in dict.fromkeys(order) if k in latest]
        rows = [r for k in keys for r in latest[k]]
        _atomic_parquet(rows, self.kind, self.out / "results.parquet")
        return rows
