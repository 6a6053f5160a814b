"""Installing an extra keeps the user's torch (issue 12).

For each extra of pyproject.toml, pip resolves lamcam's core dependencies plus the extra (the
requirement strings, read from pyproject.toml, so no build of lamcam is needed) with
``pip install --dry-run --report`` into a fresh, empty venv in which only a stand-in
``torch 2.13.0+cpu`` distribution is "installed" (its dist-info metadata, no code): exactly what
a user with a CPU torch has. The test asserts that pip would install neither torch, torchvision,
triton nor any ``nvidia-*`` / ``cuda-*`` package. Nothing is installed anywhere; the fresh venv
lives in pytest's tmp dir.

It needs the package index (PyPI): when pip cannot reach it, the test is skipped with the reason.
The extras resolve in parallel, about 15 s in all with a warm pip cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CORE = PYPROJECT["project"]["dependencies"]
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
#: What must never come in beside the user's torch.
FORBIDDEN = ("torch", "torchvision", "triton")
FORBIDDEN_PREFIXES = ("nvidia-", "cuda-")
#: Words in pip's stderr that mean the index could not be reached (not a resolution failure).
UNREACHABLE = ("Could not fetch URL", "NewConnectionError", "Max retries exceeded",
               "Temporary failure in name resolution", "Network is unreachable",
               "Failed to establish a new connection", "ProxyError")


def _fake_torch_env(root: Path) -> Path:
    """A fresh venv without pip whose site-packages holds only torch 2.13.0+cpu's metadata."""
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    info = Path(purelib) / "torch-2.13.0+cpu.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    return python


def _resolve(python: Path, extra: str, report: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
        "--only-binary", ":all:", "--disable-pip-version-check", "--report", str(report),
        *CORE, *EXTRAS[extra],
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict[str, list[tuple[str, str]]]:
    tmp = tmp_path_factory.mktemp("install")
    python = _fake_torch_env(tmp / "venv")
    with ThreadPoolExecutor(len(EXTRAS)) as pool:
        runs = {e: pool.submit(_resolve, python, e, tmp / f"{e}.json") for e in EXTRAS}
        procs = {e: f.result() for e, f in runs.items()}
    out: dict[str, list[tuple[str, str]]] = {}
    for extra, proc in procs.items():
        if proc.returncode != 0:
            if any(word in proc.stderr for word in UNREACHABLE):
                pytest.skip(f"the package index is unreachable: {proc.stderr.strip()[-300:]}")
            raise AssertionError(f"pip could not resolve lamcam[{extra}]:\n{proc.stderr[-3000:]}")
        report = json.loads((tmp / f"{extra}.json").read_text())
        out[extra] = [(i["metadata"]["name"].lower(), i["metadata"]["version"])
                      for i in report["install"]]
    return out


def test_extras_are_the_documented_ones():
    assert set(EXTRAS) == {"sr", "app", "ray", "bench", "dev"}
    assert not any(r.split(">")[0].split("=")[0].strip() == "spandrel" for r in EXTRAS["sr"]), (
        "spandrel in an extra drags its declared torchvision (and a newer torch) in: "
        "install it with --no-deps"
    )


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_extra_keeps_the_users_torch(resolved, extra):
    names = dict(resolved[extra])
    bad = sorted(n for n in names if n in FORBIDDEN or n.startswith(FORBIDDEN_PREFIXES))
    assert not bad, f"lamcam[{extra}] would install {[(n, names[n]) for n in bad]} beside torch 2.13"


def test_sr_extra_brings_spandrels_dependencies(resolved):
    """What spandrel 0.4.2 imports at run time, besides torch and torchvision."""
    names = dict(resolved["sr"])
    for dep in ("safetensors", "einops", "typing_extensions", "numpy"):
        assert dep in names or dep.replace("_", "-") in names, (dep, sorted(names))


def test_licence_file():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the lamcam authors" in text
    assert PYPROJECT["project"]["license"] == "MIT"
