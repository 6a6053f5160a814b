"""Shared plumbing for the studies: a resumable run store and the docs/results.md publisher.

A study is a list of *units* (one trained model, one image, one seed...). Each finished unit is
stored at once, atomically, under ``<root>/<study>/`` together with the study's configuration.
Re-running the same command skips the finished units (resume). Running it with a different
configuration (other seeds, ``--quick``...) wipes the old units first and says so, so results of
two configurations are never mixed; ``--fresh`` wipes them unconditionally.

The published output is a section of ``docs/results.md`` delimited by HTML comments, plus figures
and CSV files in ``docs/results/<study>/``. Both are replaced atomically and only after every unit
is done, so an interrupted study never leaves half a table behind.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> run = StudyRun("demo", {"seeds": [0, 1]}, root=root)
    >>> run.cached("seed-0", lambda: {"acc": 0.5})
    {'acc': 0.5}
    >>> StudyRun("demo", {"seeds": [0, 1]}, root=root).has("seed-0")   # resumed
    True
    >>> StudyRun("demo", {"seeds": [0, 2]}, root=root, log=lambda m: None).has("seed-0")
    False
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lamcam._files import atomic_write_bytes, atomic_write_text, csv_text, md_table
from lamcam._safetensors import load_file, save_file

__all__ = [
    "DEFAULT_ROOT",
    "STUDY_ORDER",
    "StudyRun",
    "atomic_write_bytes",
    "atomic_write_text",
    "csv_text",
    "md_table",
    "publish",
    "study_parser",
    "setup_from_args",
    "command_line",
]

#: Where runs keep their finished units (relative to the working directory; git-ignored).
DEFAULT_ROOT = Path(".lamcam-studies")

#: Order of the sections in docs/results.md (unknown names go last, alphabetically).
STUDY_ORDER: tuple[str, ...] = ("cam_compare", "sanity", "lam_zoo", "distill", "video", "caption")

_RESULTS_HEADER = """# Results: our own reproduction of the papers' claims

Every section below is written by one study command (`python -m studies.NAME`), run on
this repository's own trained reference models on a 2-core CPU. The command, the configuration
and the time it took are given with each table. Nothing here is edited by hand: re-running a
command replaces its section. Findings that do not match the papers are reported as they came out.

"""


# --------------------------------------------------------------------------------------------
# unit keys
# --------------------------------------------------------------------------------------------
def _key_file(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key).strip("._") or "unit"
    if safe != key:  # keep distinct keys distinct after sanitising
        safe += "-" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return safe


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


# --------------------------------------------------------------------------------------------
# run store
# --------------------------------------------------------------------------------------------
class StudyRun:
    """The finished units of one study under one configuration (see the module docstring).

    Args:
        name: study name (directory under ``root``).
        config: everything that changes the results (JSON-serialisable). A stored run with a
            different configuration is wiped before this one starts.
        root: parent directory of all runs.
        fresh: wipe any stored units even if the configuration matches.
        log: where to report resuming/wiping (default: stderr).
    """

    def __init__(self, name: str, config: Mapping[str, Any], *, root: str | os.PathLike = DEFAULT_ROOT,
                 fresh: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.config = dict(config)
        self.dir = Path(root) / name
        self._log = log or (lambda m: print(m, file=sys.stderr))
        cfg_path = self.dir / "config.json"
        want = _canonical(self.config)
        if self.dir.exists():
            have = None
            if cfg_path.exists():
                try:
                    have = _canonical(json.loads(cfg_path.read_text()))
                except (json.JSONDecodeError, OSError):
                    have = None
            if fresh or have != want:
                why = "--fresh" if fresh else "the configuration changed" if have else "no valid config"
                n = len(list(self.dir.glob("units/*")))
                if n:
                    self._log(f"[{name}] starting clean ({why}): removing {n} stored unit(s) in {self.dir}")
                shutil.rmtree(self.dir)
            else:
                n = len(self.done_keys())
                if n:
                    self._log(f"[{name}] resuming: {n} unit(s) already done in {self.dir}")
        (self.dir / "units").mkdir(parents=True, exist_ok=True)
        if not cfg_path.exists():
            atomic_write_text(cfg_path, json.dumps(self.config, indent=2, sort_keys=True, default=str))

    # ---- JSON units ---------------------------------------------------------------------
    def _unit(self, key: str, suffix: str = ".json") -> Path:
        return self.dir / "units" / (_key_file(key) + suffix)

    def done_keys(self) -> list[str]:
        """Stored JSON unit keys (as sanitised file stems)."""
        return sorted(p.stem for p in (self.dir / "units").glob("*.json"))

    def has(self, key: str) -> bool:
        """Whether unit ``key`` is finished."""
        return self._unit(key).exists()

    def load(self, key: str) -> Any:
        """The stored value of unit ``key`` (KeyError if it is not finished)."""
        p = self._unit(key)
        if not p.exists():
            raise KeyError(f"unit {key!r} of study {self.name!r} is not finished")
        return json.loads(p.read_text())["value"]

    def save(self, key: str, value: Any, seconds: float | None = None) -> None:
        """Store unit ``key`` atomically (value must be JSON-serialisable)."""
        rec = {"key": key, "value": value, "seconds": seconds}
        atomic_write_text(self._unit(key), json.dumps(rec, default=_json_default))

    def seconds(self) -> float:
        """Total compute seconds recorded over all finished units."""
        total = 0.0
        for p in (self.dir / "units").glob("*.json"):
            total += float(json.loads(p.read_text()).get("seconds") or 0.0)
        return total

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Return the stored unit ``key``, or compute, store and return it."""
        if self.has(key):
            return self.load(key)
        t0 = time.perf_counter()
        value = compute()
        self.save(key, value, time.perf_counter() - t0)
        return json.loads(json.dumps(value, default=_json_default))

    # ---- tensors (trained weights, maps) ------------------------------------------------
    def has_tensors(self, key: str) -> bool:
        return self._unit(key, ".safetensors").exists()

    def save_tensors(self, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Store a dict of tensors atomically (e.g. a trained model's ``state_dict``)."""
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  self._unit(key, ".safetensors"))

    def load_tensors(self, key: str) -> dict[str, torch.Tensor]:
        return load_file(self._unit(key, ".safetensors"))

    def cached_tensors(self, key: str, compute: Callable[[], Mapping[str, torch.Tensor]]
                       ) -> dict[str, torch.Tensor]:
        """Return stored tensors ``key``, or compute, store and return them."""
        if not self.has_tensors(key):
            t0 = time.perf_counter()
            self.save_tensors(key, compute())
            self.save(key + ".time", None, time.perf_counter() - t0)
        return self.load_tensors(key)


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "tolist"):  # numpy
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------------------------
# publishing into docs/results.md
# --------------------------------------------------------------------------------------------
_SECTION_RE = re.compile(
    r"<!-- study:(?P<name>[\w-]+):begin -->\n(?P<body>.*?)<!-- study:(?P=name):end -->\n?", re.S)


def _order(name: str) -> tuple[int, str]:
    return (STUDY_ORDER.index(name) if name in STUDY_ORDER else len(STUDY_ORDER), name)


def publish(name: str, markdown: str, *, docs: str | os.PathLike = "docs",
            figures: Mapping[str, Any] | None = None, files: Mapping[str, str | bytes] | None = None
            ) -> Path:
    """Replace study ``name``'s section of ``<docs>/results.md`` and its asset folder.

    Args:
        name: study name; assets go to ``<docs>/results/<name>/``.
        markdown: the section body (starts with its own ``##`` heading). Refer to assets as
            ``results/<name>/<file>``.
        docs: the docs directory.
        figures: file name -> matplotlib Figure (saved as PNG at 110 dpi, then closed).
        files: file name -> text or bytes (CSV tables, JSON).

    The asset folder is built next to the old one and swapped in, then results.md is rewritten
    atomically; other studies' sections are kept and sections are ordered by :data:`STUDY_ORDER`.
    """
    docs = Path(docs)
    docs.mkdir(parents=True, exist_ok=True)
    assets = docs / "results" / name
    assets.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=assets.parent))
    try:
        for fname, fig in (figures or {}).items():
            fig.savefig(staging / fname, dpi=110, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig)
        for fname, data in (files or {}).items():
            (staging / fname).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        for p in staging.iterdir():
            os.chmod(p, 0o644)
        os.chmod(staging, 0o755)
        old = None
        if assets.exists():
            old = assets.with_name(f".{name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(assets, old)
        os.replace(staging, assets)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    results = docs / "results.md"
    with open(docs / ".results.lock", "a") as lock:  # two studies may finish at the same time
        fcntl.flock(lock, fcntl.LOCK_EX)
        sections: dict[str, str] = {}
        if results.exists():
            for m in _SECTION_RE.finditer(results.read_text(encoding="utf-8")):
                sections[m["name"]] = m["body"]
        sections[name] = re.sub(r"\n{3,}", "\n\n", markdown).rstrip("\n") + "\n"
        parts = [_RESULTS_HEADER]
        for n in sorted(sections, key=_order):
            parts.append(f"<!-- study:{n}:begin -->\n{sections[n]}<!-- study:{n}:end -->\n\n")
        atomic_write_text(results, "".join(parts).rstrip("\n") + "\n")
    return results


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def study_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The arguments every study takes: --root, --docs, --fresh, --quick, --threads."""
    p = argparse.ArgumentParser(prog=f"python -m studies.{name}", description=description)
    p.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                   help="where finished units are kept for resuming (default: %(default)s)")
    p.add_argument("--docs", type=Path, default=None,
                   help="docs directory to publish into (default: docs; with --quick: <root>/quick-docs)")
    p.add_argument("--fresh", action="store_true", help="discard stored units and start clean")
    p.add_argument("--quick", action="store_true",
                   help="a tiny configuration to check that everything runs (not for publishing)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice)")
    return p


def setup_from_args(args: argparse.Namespace) -> Path:
    """Apply --threads and return the docs directory to publish into."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.docs is not None:
        return args.docs
    return (args.root / "quick-docs") if args.quick else Path("docs")


def command_line(name: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, for the published section."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return " ".join([f"python -m studies.{name}", *argv]).strip()
