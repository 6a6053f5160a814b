"""Tests for the ``lamcam`` command line (in-process ``main([...])`` plus a few subprocesses).

Most tests use a tiny stand-in classifier patched into ``lamcam.zoo.load`` so they do not depend
on the bundled weights; the last tests run the real bundled models when they are available.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lamcam
import lamcam.zoo
from lamcam.cli import main
from lamcam.io import save_image

ROOT = Path(__file__).resolve().parents[1]


class _Tiny(nn.Module):
    """conv -> relu -> conv -> relu -> GAP -> linear; CAM layer ``features.3``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = _Tiny().eval()
    m.lamcam_meta = {
        "name": "tiny",
        "arch": "tiny",
        "task": "classification",
        "classes": ["red", "green", "blue"],
        "input_size": 32,
        "default_layer": "features.4",
    }
    return m


@pytest.fixture
def tiny_zoo(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    calls: list[tuple[str, str | None]] = []

    def load(name: str, arch: str | None = None) -> nn.Module:
        calls.append((name, arch))
        if name != "tiny":
            raise ValueError(f"unknown model {name!r}")
        return _tiny_model()

    monkeypatch.setattr(lamcam.zoo, "load", load, raising=False)
    return calls


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    good = save_image(
        torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)), d / "good.png"
    )
    big = save_image(
        torch.rand(3, 48, 40, generator=torch.Generator().manual_seed(2)), d / "big.png"
    )
    bad = d / "corrupt.png"
    bad.write_bytes(good.read_bytes()[:100])
    text = d / "notes.png"
    text.write_text("hello")
    return {"good": good, "big": big, "bad": bad, "text": text}


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# --------------------------------------------------------------------------------------------
# help / version
# --------------------------------------------------------------------------------------------


def test_help_subprocess() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "lamcam", "--help"], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0
    assert "usage: lamcam" in r.stdout and "cam" in r.stdout and "demo" in r.stdout
    script = Path(sys.executable).with_name("lamcam")
    if script.exists():
        r = subprocess.run([str(script), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: lamcam" in r.stdout


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lamcam {lamcam.__version__}"


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["cam"]) == 2  # missing IMAGE and --model
    assert "required" in capsys.readouterr().err
    assert main(["cam", "--help"]) == 0
    assert "--target" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# lamcam cam
# --------------------------------------------------------------------------------------------


def test_cam_writes_outputs(tiny_zoo, images, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        ["cam", str(images["good"]), str(images["big"]), "--model", "tiny", "--out", str(out)]
    )
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert _files(out) == [
        "big_gradcam++.npy",
        "big_gradcam++.png",
        "good_gradcam++.npy",
        "good_gradcam++.png",
    ]
    # the overlay PNG is a titled figure (issue 12, item 13); it is at least the input's size
    for name in ("good_gradcam++.png", "big_gradcam++.png"):
        w, h = Image.open(out / name).size
        assert w >= 32 and h >= 32
    raw = np.load(out / "good_gradcam++.npy")
    assert raw.shape == (16, 16)  # layer resolution
    lines = cap.out.strip().splitlines()
    assert len(lines) == 2 and "good.png: pred " in lines[0] and "(p=0." in lines[0]
    # aspect kept: the short side is resized to the input size, then centre-cropped (W x H)
    assert "resized from 40x48 to 32x39, aspect kept, centre-cropped to 32x32" in lines[1]


def test_cam_plain_and_gray_background(tiny_zoo, images, tmp_path, capsys) -> None:
    """--plain writes the bare overlay at the image's size; the titled figure is larger; the
    gray background changes the picture."""
    runs = {"fig": [], "plain": ["--plain"], "gray": ["--plain", "--background", "gray"]}
    pics = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(["cam", str(images["good"]), "--model", "tiny", "--out", str(out), *extra]) == 0
        pics[name] = np.asarray(Image.open(out / "good_gradcam++.png").convert("RGB"))
    capsys.readouterr()
    assert pics["plain"].shape[:2] == (32, 32)
    assert pics["fig"].shape[0] > 100 and pics["fig"].shape[1] > 100
    assert pics["gray"].shape == pics["plain"].shape and not np.array_equal(pics["gray"], pics["plain"])


def test_cam_topk_and_gradient_method(tiny_zoo, images, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        ["cam", str(images["good"]), "--model", "tiny", "--out", str(out), "--target", "top2"]
    )
    assert code == 0, capsys.readouterr().err
    pngs = [f for f in _files(out) if f.endswith(".png")]
    assert len(pngs) == 2 and all(f.startswith("good_gradcam++_top") for f in pngs)
    assert {f.split("_")[-1][:-4] for f in pngs} <= {"red", "green", "blue"}
    assert np.load(out / "good_gradcam++.npy").shape == (2, 16, 16)
    assert "targets " in capsys.readouterr().out

    code = main(
        [
            "cam",
            str(images["good"]),
            "--model",
            "tiny",
            "--out",
            str(out),
            "--method",
            "guided-backprop",
            "--target",
            "blue",
        ]
    )
    assert code == 0
    assert (out / "good_guided-backprop.png").exists()
    assert "target blue" in capsys.readouterr().out


def test_cam_unwritable_out_fails_before_any_work(tiny_zoo, images, tmp_path, capsys) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    before = sorted(p for p in tmp_path.rglob("*"))
    code = main(["cam", str(images["good"]), "--model", "tiny", "--out", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert tiny_zoo == []  # the model was never loaded
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
    assert len(err.strip().splitlines()) == 1 and "afile" in err and "Traceback" not in err


def test_cam_good_and_corrupt_images(tiny_zoo, images, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "cam",
            str(images["bad"]),
            str(images["good"]),
            str(images["text"]),
            "--model",
            "tiny",
            "--out",
            str(out),
        ]
    )
    cap = capsys.readouterr()
    assert code == 1
    assert (out / "good_gradcam++.png").exists() and (out / "good_gradcam++.npy").exists()
    assert not any(f.startswith(("corrupt", "notes")) for f in _files(out))
    assert "corrupt.png" in cap.err and "notes.png" in cap.err and "Traceback" not in cap.err
    assert cap.out.count("\n") == 1 and "good.png" in cap.out


def test_cam_library_errors_exit_2(tiny_zoo, images, tmp_path, capsys) -> None:
    base = ["cam", str(images["good"]), "--out", str(tmp_path / "o")]
    assert main([*base, "--model", "tiny", "--layer", "features.44"]) == 2
    err = capsys.readouterr().err
    assert "no layer named 'features.44'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    assert main([*base, "--model", "tiny", "--target", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main([*base, "--model", "tiny", "--target", "purple"]) == 2
    assert "red, green, blue" in capsys.readouterr().err
    assert main([*base, "--model", "tiny", "--method", "gradcam+++"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([*base, "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err

    assert main([*base, "--model", "tiny", "--layer", "features.44", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cam_duplicate_stems(tiny_zoo, images, tmp_path, capsys) -> None:
    other = save_image(torch.rand(3, 32, 32), tmp_path / "other" / "good.png")
    out = tmp_path / "out"
    assert main(["cam", str(images["good"]), str(other), "--model", "tiny", "--out", str(out)]) == 0
    assert {"good_gradcam++.png", "good_2_gradcam++.png"} <= set(_files(out))


# --------------------------------------------------------------------------------------------
# lamcam demo
# --------------------------------------------------------------------------------------------


def test_demo_with_stand_in(monkeypatch, tiny_zoo, tmp_path, capsys) -> None:
    sdir = tmp_path / "samples"
    paths = []
    for i, c in enumerate(["red", "blue", "green"]):
        x = torch.zeros(3, 32, 32)
        x[["red", "green", "blue"].index(c)] = 1.0
        paths.append(save_image(x, sdir / f"s{i}.png"))
    (sdir / "samples.json").write_text(
        '{"s0.png": {"label": 0, "class": "red", "instances": 1},'
        ' "s1.png": {"label": 2, "class": "blue", "instances": 2}}'
    )
    monkeypatch.setattr(lamcam.zoo, "samples", lambda: paths, raising=False)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--models", "tiny", "--max-images", "2"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert _files(out / "tiny") == ["s0.png", "s1.png"]
    html = (out / "index.html").read_text()
    assert 'href="tiny/s0.png"' in html and "blue (2 instances)" in html
    assert "tiny: accuracy" in cap.out and "index.html" in cap.out
    w, h = Image.open(out / "tiny" / "s0.png").size
    assert w > 6 * h  # one row: input + 7 methods


@pytest.fixture
def real_zoo() -> None:
    try:
        ok = bool(lamcam.zoo.samples()) and all(
            lamcam.zoo.info(m)["available"] for m in ("shapes_vgg",)
        )
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bundled zoo not available: {e}")
    if not ok:
        pytest.skip("bundled weights or samples not available yet")


def test_demo_real_models(real_zoo, tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--models", "shapes_vgg", "--max-images", "2"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    figs = _files(out / "shapes_vgg")
    assert len(figs) == 2 and all(f.endswith(".png") for f in figs)
    html = (out / "index.html").read_text()
    assert all(f"shapes_vgg/{f}" in html for f in figs)
    assert "shapes_vgg: accuracy" in cap.out


def test_cam_real_model(real_zoo, tmp_path, capsys) -> None:
    sample = lamcam.zoo.samples()[0]
    out = tmp_path / "out"
    code = main(
        ["cam", str(sample), "--model", "shapes_vgg", "--out", str(out), "--target", "top3"]
    )
    assert code == 0, capsys.readouterr().err
    assert len([f for f in _files(out) if f.endswith(".png")]) == 3
