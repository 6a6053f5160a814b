"""Every Python block of README.md and docs/*.md runs; every documented `lamcam ...` line parses.

Rules for the documentation (issue 12):

* A fenced block whose info string is ``python`` is run by this test, **on its own**: a fresh
  namespace, the current directory a new temporary directory (files a block writes go there),
  matplotlib's Agg backend, torch on one thread. A block never relies on an earlier block: a
  snippet that needs setup shows that setup. Failures are named ``FILE:LINE`` (the fence's line).
* A block that cannot run as written (it needs a file only the reader has, or code the reader
  writes) is fenced ``python no-run`` (GitHub still highlights it as Python) and its first line
  is a comment ``# no-run: <why>``; the test checks that every such block says why, and that no
  other info string starting with ``python`` is used. Use it sparingly.
* Every line of a ``bash`` / ``sh`` / ``console`` / unlabelled block that starts with ``lamcam ``
  (after an optional ``$ ``) is split like a shell would (comments dropped, ``\\`` joined) and
  handed to the CLI's own parser (:func:`lamcam.cli.build_parser`), which must accept it. Nothing
  is executed.

Blocks are kept small (few LAM steps, small crops) so that this file runs in well under a
minute on two cores.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^`\n]*)$")
NO_RUN = "python no-run"


def _blocks(path: Path) -> list[tuple[int, str, str]]:
    """(line of the opening fence, info string, dedented code) of every fenced block."""
    out = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, info, body = i + 1, m["info"].strip(), []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        out.append((start, info, textwrap.dedent("\n".join(body))))
        i += 1
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


ALL_BLOCKS = [(_rel(p), line, info, code) for p in DOC_FILES for line, info, code in _blocks(p)]
PY_BLOCKS = [b for b in ALL_BLOCKS if b[2] == "python"]
SHELL_INFOS = {"", "bash", "sh", "shell", "console"}


def _cli_lines() -> list[tuple[str, int, str]]:
    out = []
    for rel, line, info, code in ALL_BLOCKS:
        if info not in SHELL_INFOS:
            continue
        joined, first = "", None
        for k, raw in enumerate(code.splitlines()):
            text = raw.strip()
            if text.startswith("$ "):
                text = text[2:]
            if not joined and not text.startswith("lamcam "):
                continue
            first = line + 1 + k if not joined else first
            if text.endswith("\\"):
                joined += text[:-1] + " "
                continue
            out.append((rel, first, joined + text))
            joined = ""
    return out


CLI_LINES = _cli_lines()


def test_blocks_found():
    assert len(PY_BLOCKS) >= 8, [b[:2] for b in PY_BLOCKS]
    assert len(CLI_LINES) >= 8, CLI_LINES


def test_python_fences_are_run_or_say_why_not():
    for rel, line, info, code in ALL_BLOCKS:
        if not info.startswith("python"):
            continue
        assert info in ("python", NO_RUN), f"{rel}:{line}: use ```python or ```{NO_RUN}, not {info!r}"
        if info == NO_RUN:
            first = code.lstrip().splitlines()[0] if code.strip() else ""
            assert re.match(r"# no-run: \S", first), (
                f"{rel}:{line}: a ```{NO_RUN} block starts with '# no-run: <why it cannot run>'"
            )
    skipped = [b for b in ALL_BLOCKS if b[2] == NO_RUN]
    assert len(skipped) <= len(PY_BLOCKS) // 3, "no-run is for the rare illustrative block"


@pytest.fixture
def doc_env(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    try:
        yield tmp_path
    finally:
        plt.close("all")
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "rel,line,code", [(b[0], b[1], b[3]) for b in PY_BLOCKS], ids=[f"{b[0]}:{b[1]}" for b in PY_BLOCKS]
)
def test_python_block_runs(rel, line, code, doc_env):
    if re.search(r"\b(timm|torchvision|transformers)\b", code):
        # our CPU torch cannot load PyPI torchvision's compiled ops: import it as the tests do
        # (tests/torchvision_ops.py); the block itself runs unchanged
        for mod in ("timm", "torchvision", "transformers"):
            if re.search(rf"\b{mod}\b", code) and importlib.util.find_spec(mod) is None:
                pytest.skip(f"{mod} is not installed (make install adds it)")
        from torchvision_ops import import_torchvision

        import_torchvision()
    compiled = compile(code, f"{rel}:{line}", "exec")
    namespace: dict = {"__name__": "__doc_block__"}
    exec(compiled, namespace)  # noqa: S102 - our own documentation


@pytest.mark.parametrize(
    "rel,line,command", CLI_LINES, ids=[f"{r}:{n}" for r, n, _ in CLI_LINES]
)
def test_cli_line_parses(rel, line, command):
    from lamcam.cli import build_parser

    argv = shlex.split(command, comments=True)[1:]
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # argparse's way to refuse
        if e.code not in (0, None):
            pytest.fail(f"{rel}:{line}: `{command}` does not parse (exit {e.code})")


def test_arch_accepts_registered_model_names(tmp_path):
    """`--arch shapes_vgg` (the name users see) stands for its architecture ShapesVGG."""
    import torch

    import lamcam.zoo as zoo
    from lamcam import cli

    path = tmp_path / "ckpt.pth"
    torch.save(zoo.load("shapes_vgg").state_dict(), path)
    model = zoo.load(path, arch="shapes_vgg")
    assert model.lamcam_meta["arch"] == "ShapesVGG"
    assert zoo.load("shapes_resnet", arch="shapes_resnet").lamcam_meta["arch"] == "ShapesResNet"
    with pytest.raises(zoo.ZooError, match="unknown architecture"):
        zoo.load(path, arch="no_such_thing")
    assert cli._load_model(str(path), "shapes_vgg").lamcam_meta["arch"] == "ShapesVGG"
