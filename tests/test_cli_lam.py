"""Tests for ``lamcam lam`` (in-process ``main([...])``) with tiny stand-in SR models.

The stand-ins are patched into ``lamcam.zoo.load``; the last test runs the real SR zoo when its
weights are bundled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lamcam.zoo
from lamcam.cli import main
from lamcam.io import save_image
from lamcam.lam import LAM


def _tiny_sr(seed: int, k: int = 3) -> nn.Module:
    """conv k×k -> relu -> conv 3×3 -> PixelShuffle(2): a ×2 RGB stand-in."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, k, padding=k // 2), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
        nn.PixelShuffle(2),
    ).eval()
    m.lamcam_meta = {"name": f"tiny{seed}", "arch": "tiny_sr", "task": "sr", "scale": 2}
    return m


class _Odd(nn.Module):
    """Output 2H+1 × 2W+1: not an integer multiple of the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(2 * x.shape[-2] + 1, 2 * x.shape[-1] + 1))


class _NaN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(self.conv(x), 2) * float("nan")


@pytest.fixture
def sr_zoo(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    models = {"srA": lambda: _tiny_sr(0), "srB": lambda: _tiny_sr(1, k=5), "odd": _Odd,
              "nan": _NaN}

    def load(name: str, arch: str | None = None) -> nn.Module:
        calls.append(name)
        if name not in models:
            raise ValueError(f"unknown model {name!r}")
        return models[name]()

    monkeypatch.setattr(lamcam.zoo, "load", load, raising=False)
    return calls


@pytest.fixture
def lr_image(tmp_path: Path) -> Path:
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), indexing="ij")
    x = torch.stack([0.5 + 0.4 * torch.sin(xx / 2), 0.5 + 0.4 * torch.cos(yy / 3),
                     0.5 + 0.3 * torch.sin((xx + yy) / 4)])
    return save_image(x, tmp_path / "in" / "lr.png")


FAST = ["--steps", "4", "--window", "8"]


def test_single_model_outputs_match_direct_lam(sr_zoo, lr_image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["lam", str(lr_image), "--model", "srA", "--row", "10", "--col", "12",
                 "--out", str(out), *FAST])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["lr_srA_lam.json", "lr_srA_lam.npy", "lr_srA_lam.png", "lr_srA_lam_map.npy"]
    record = json.loads((out / "lr_srA_lam.json").read_text())
    direct = LAM(_tiny_sr(0), steps=4, progress=False)(
        lamcam.io.load_image(lr_image), row=10, col=12, window=8)
    assert record["diffusion_index"] == pytest.approx(direct.diffusion_index, abs=1e-9)
    assert record["pixels95"] == direct.pixels95
    assert record["model"] == "srA" and record["image"] == str(lr_image)
    assert record["lr_size"] == [16, 20] and record["scale"] == 2 and record["steps"] == 4
    attr = np.load(out / "lr_srA_lam.npy")
    amap = np.load(out / "lr_srA_lam_map.npy")
    assert attr.shape == (3, 16, 20) and amap.shape == (16, 20)
    np.testing.assert_allclose(attr, direct.attribution.numpy(), rtol=1e-5, atol=1e-7)
    assert f"DI {direct.diffusion_index:.2f}" in cap.out and "pixels95" in cap.out
    assert cap.out.count("\n") == 1
    w, h = Image.open(out / "lr_srA_lam.png").size
    assert w > 4 * h and h > 150


def test_models_writes_comparison(sr_zoo, lr_image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["lam", str(lr_image), "--models", "srA,srB", "--row", "4", "--col", "4",
                 "--coords", "lr", "--out", str(out), *FAST])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    files = {p.name for p in out.iterdir()}
    assert {"lr_srA_lam.png", "lr_srB_lam.png", "lr_lam_comparison.png",
            "lr_lam_comparison.json"} <= files
    summary = json.loads((out / "lr_lam_comparison.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["srA", "srB"]
    assert all(m["row"] == 8 and m["col"] == 8 for m in summary["models"])  # lr coords × 2
    w, h = Image.open(out / "lr_lam_comparison.png").size
    assert w > 1.5 * h > 600
    assert cap.out.count("DI ") == 2 and "comparison of 2 models" in cap.out


def test_window_off_image(sr_zoo, lr_image, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["lam", str(lr_image), "--model", "srA", "--row", "30", "--col", "0",
                 "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert "rows 0..24" in err and "cols 0..32" in err and "Traceback" not in err
    assert not list(out.glob("*.png"))


def test_window_off_image_checked_for_all_models_first(sr_zoo, lr_image, tmp_path,
                                                        capsys) -> None:
    out = tmp_path / "out"
    code = main(["lam", str(lr_image), "--models", "srA,odd", "--row", "0", "--col", "0",
                 "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "odd:" in err and "integer multiple" in err
    assert not out.exists()  # nothing was computed for srA either, and --out was not created


def test_nan_output(sr_zoo, lr_image, tmp_path, capsys) -> None:
    code = main(["lam", str(lr_image), "--model", "nan", "--row", "0", "--col", "0",
                 "--out", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "NaN" in err and err.count("\n") == 1


def test_unwritable_out_fails_before_work(sr_zoo, lr_image, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["lam", str(lr_image), "--model", "srA", "--row", "0", "--col", "0",
                 "--out", str(blocker / "sub"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "output directory" in err
    assert sr_zoo == []  # no model was loaded


def test_bad_images(sr_zoo, lr_image, tmp_path, capsys) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(lr_image.read_bytes()[:80])
    text = tmp_path / "notes.png"
    text.write_text("hello")
    args = ["--model", "srA", "--row", "0", "--col", "0", "--out", str(tmp_path / "o"), *FAST]
    assert main(["lam", str(bad), *args]) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err
    assert main(["lam", str(text), *args]) == 1  # not an image: 1, as in cam and eval
    assert "not a recognised image format" in capsys.readouterr().err


def test_unknown_model_and_bad_options(sr_zoo, lr_image, tmp_path, capsys) -> None:
    base = ["lam", str(lr_image), "--row", "0", "--col", "0", "--out", str(tmp_path / "o")]
    assert main([*base, "--model", "nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main([*base, "--model", "srA", "--kernel-size", "4"]) == 2
    assert "odd" in capsys.readouterr().err
    assert main([*base, "--model", "srA", "--models", "srB"]) == 2  # mutually exclusive
    capsys.readouterr()


def test_grayscale_image_note(sr_zoo, tmp_path, capsys) -> None:
    gray = tmp_path / "g.png"
    Image.fromarray((np.random.default_rng(0).random((12, 12)) * 255).astype(np.uint8)).save(gray)
    code = main(["lam", str(gray), "--model", "srA", "--row", "4", "--col", "4",
                 "--out", str(tmp_path / "o"), *FAST])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "grayscale" in cap.err and "3 channels" in cap.err


# --------------------------------------------------------------------------------------------
# --dense, --no-crop, --call
# --------------------------------------------------------------------------------------------


def test_dense_writes_grid_figure_and_json(sr_zoo, lr_image, tmp_path, capsys, one_thread) -> None:
    out = tmp_path / "out"
    code = main(["lam", str(lr_image), "--model", "srA", "--dense", "--window", "8", "--stride",
                 "6", "--steps", "3", "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == [
        "lr_srA_dense.json", "lr_srA_dense.npy", "lr_srA_dense.png"]
    direct = LAM(_tiny_sr(0), steps=3, progress=False).dense(
        lamcam.io.load_image(lr_image), window=8, stride=6)
    grid = np.load(out / "lr_srA_dense.npy")
    assert grid.dtype == np.float64 and grid.shape == (5, 7)  # SR 32 x 40: rows 0..24, cols 0..32
    np.testing.assert_allclose(grid, direct.di.numpy(), rtol=0, atol=1e-9)
    record = json.loads((out / "lr_srA_dense.json").read_text())
    assert record["rows"] == [0, 6, 12, 18, 24] and record["cols"] == [0, 6, 12, 18, 24, 30, 32]
    assert np.array_equal(np.array(record["di"]), grid)
    assert record["pixels95"] == direct.pixels95.tolist()
    assert record["window"] == 8 and record["stride"] == 6 and record["steps"] == 3
    assert record["model"] == "srA" and record["lr_size"] == [16, 20] and record["scale"] == 2
    assert record["windows"] == 35 and record["crop"]["crop_sizes"]
    assert record["di_median"] == pytest.approx(float(np.median(grid)))
    i, j = np.unravel_index(grid.argmax(), grid.shape)
    (line,) = cap.out.splitlines()
    assert "dense DI 5x7 windows of 8 (stride 6)" in line
    assert f"median {np.median(grid):.2f}, max {grid.max():.2f} at (row {record['rows'][i]}, " \
           f"col {record['cols'][j]})" in line
    assert " of 16x20 (measured field)" in line and line.endswith("lr_srA_dense.png")
    w, h = Image.open(out / "lr_srA_dense.png").size
    assert w > 2 * h > 600


def test_dense_models_and_no_crop(sr_zoo, lr_image, tmp_path, capsys, one_thread) -> None:
    out = tmp_path / "out"
    code = main(["lam", str(lr_image), "--models", "srA,srB", "--dense", "--no-crop",
                 "--row", "3", "--out", str(out), "--steps", "2", "--window", "16"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == [
        f"lr_{m}_dense.{e}" for m in ("srA", "srB") for e in ("json", "npy", "png")]
    assert "--row ignored with --dense" in cap.err
    assert "each of the 6 windows costs one whole-image LAM" in cap.err  # crop=False
    lines = cap.out.splitlines()
    assert len(lines) == 2 and all("whole image (crop=False)" in t for t in lines)
    grid = np.load(out / "lr_srA_dense.npy")
    assert grid.shape == (2, 3) and f"median {np.median(grid):.2f}," in lines[0]  # even count
    record = json.loads((out / "lr_srB_dense.json").read_text())
    assert record["crop"] == {"box": None, "reason": "crop=False"}
    assert record["whole_image_lams"] == pytest.approx(6.0)


def test_no_crop_and_crop_statement(sr_zoo, lr_image, tmp_path, capsys, one_thread,
                                    monkeypatch) -> None:
    import lamcam.lam

    monkeypatch.setattr(lamcam.lam, "MEASURE_MIN_PIXELS", 0)  # measure even on this tiny image
    base = ["lam", str(lr_image), "--model", "srA", "--row", "10", "--col", "12", *FAST]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    cropped = capsys.readouterr().out
    rec = json.loads((tmp_path / "a" / "lr_srA_lam.json").read_text())
    h, w = rec["crop"]["box"][2:]
    assert f", crop {h}x{w} of 16x20 (measured field), " in cropped
    assert main([*base, "--no-crop", "--out", str(tmp_path / "b")]) == 0
    whole = capsys.readouterr().out
    rec2 = json.loads((tmp_path / "b" / "lr_srA_lam.json").read_text())
    assert rec2["crop"]["box"] is None and rec2["crop"]["reason"] == "crop=False"
    assert ", whole image (crop=False), " in whole
    assert rec2["diffusion_index"] == pytest.approx(rec["diffusion_index"], abs=1e-6)


def test_row_col_required_without_dense(sr_zoo, lr_image, tmp_path, capsys) -> None:
    base = ["lam", str(lr_image), "--model", "srA", "--out", str(tmp_path / "o")]
    assert main([*base, "--col", "3"]) == 2
    err = capsys.readouterr().err
    assert "--row required" in err and "--dense" in err and err.count("\n") == 1
    assert main(base) == 2
    assert "--row and --col required" in capsys.readouterr().err
    assert main([*base, "--row", "0", "--col", "0", "--stride", "4"]) == 2
    assert "--stride needs --dense" in capsys.readouterr().err
    assert main([*base, "--dense", "--stride", "0"]) == 2
    assert "--stride must be positive" in capsys.readouterr().err
    assert sr_zoo == []  # refused before any model was loaded
    assert main([*base, "--dense", "--window", "64"]) == 2  # SR image is 32 x 40
    assert "must fit in the 32x40 SR image" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_call_is_passed_to_zoo_load(monkeypatch, lr_image, tmp_path, capsys, one_thread) -> None:
    seen: list[dict] = []

    def load(name: str, **kw) -> nn.Module:
        seen.append(kw)
        return _tiny_sr(0)

    monkeypatch.setattr(lamcam.zoo, "load", load, raising=False)
    base = ["lam", str(lr_image), "--model", "x.pth", "--row", "0", "--col", "0",
            "--out", str(tmp_path / "o"), *FAST]
    assert main([*base, "--call", "module"]) == 0
    assert main(base) == 0
    assert seen == [{"arch": None, "call": "module"}, {"arch": None}]
    assert main([*base, "--call", "bare"]) == 2  # not a choice
    capsys.readouterr()


def _real_sr_models() -> list[str]:
    try:
        names = [m for m in lamcam.zoo.list_models()
                 if lamcam.zoo.info(m).get("task") in ("sr", "super_resolution")
                 and lamcam.zoo.info(m).get("available", True)]
        samples = lamcam.zoo.sr_samples()
    except Exception:  # noqa: BLE001
        return []
    return names if samples else []


@pytest.mark.skipif(not _real_sr_models(), reason="SR zoo not bundled yet")
def test_real_sr_model(tmp_path, capsys) -> None:
    sample = lamcam.zoo.sr_samples()[0]
    name = "sr_fsrcnn" if "sr_fsrcnn" in _real_sr_models() else _real_sr_models()[0]
    out = tmp_path / "out"
    code = main(["lam", str(sample["lr"]), "--model", name, "--row", "4", "--col", "4",
                 "--coords", "lr", "--steps", "8", "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    record = json.loads((out / f"{Path(sample['lr']).stem}_{name}_lam.json").read_text())
    assert record["scale"] == 4 and 0 < record["diffusion_index"] < 100


def test_memory_refusal_is_one_line_exit_1(tmp_path, capsys, monkeypatch) -> None:
    """A global network on an image whose path point does not fit: refused up front, exit 1."""
    import lamcam.lam

    monkeypatch.setattr(lamcam.lam, "available_bytes", lambda device=None: 10**6)
    sample = lamcam.zoo.sr_samples()[0]
    code = main(["lam", str(sample["lr"]), "--model", "sr_rcan", "--row", "4", "--col", "4",
                 "--steps", "2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "needs about" in err and "free" in err and "global" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------
# the demo's LAM section
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sr_sample(tmp_path: Path) -> dict:
    g = torch.Generator().manual_seed(3)
    hr = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 64, 80, generator=g), 3, 1, 1)[0]
    hr[:, 20:28, 30:60] = 1.0  # a bright bar: the most textured window is on its border
    lr = torch.nn.functional.interpolate(hr[None], scale_factor=0.5, mode="bicubic",
                                         align_corners=False, antialias=True)[0].clamp(0, 1)
    d = tmp_path / "srs"
    return {"name": "bar", "lr": save_image(lr, d / "bar_lr.png"),
            "hr": save_image(hr, d / "bar_hr.png")}


def test_demo_lam_section_with_stand_ins(sr_zoo, sr_sample, tmp_path) -> None:
    from lamcam.demo import lam_sections, pick_lam_window
    from lamcam.viz import write_index_html

    out = tmp_path / "demo"
    sections, lines = lam_sections(out, ["srA", "srB"], sr_sample, steps=4, progress=False)
    (sec,) = sections
    assert sec.title == "LAM across the SR zoo"
    assert [im.path.as_posix() for im in sec.images] == [
        "lam/bar_lam_comparison.png", "lam/bar_srA_lam.png", "lam/bar_srB_lam.png"]
    assert all((out / im.path).is_file() for im in sec.images)
    header, a, b, bic = sec.table
    assert header[:4] == ["model", "architecture", "parameters", "DI"]
    assert a[0] == "srA" and b[0] == "srB" and bic[0].startswith("bicubic")
    assert float(a[6]) > 0 and float(b[6]) > 0 and float(bic[6]) > 20  # PSNR-Y in dB
    r, c = pick_lam_window(lamcam.io.load_image(sr_sample["hr"]), 2, 16)
    assert 16 <= r <= 16 + 4 and 26 <= c <= 29  # on the bar's left end: top-left edge region
    assert "Diffusion Index" in sec.text and f"(row {r}, col {c})" in sec.text
    assert len(lines) == 2 and lines[0].startswith("LAM srA: DI ")
    html = write_index_html(out, sections).read_text()
    assert "lam/bar_lam_comparison.png" in html


def test_demo_lam_section_skips_without_sr_models(tmp_path) -> None:
    from lamcam.demo import lam_sections

    (sec,), lines = lam_sections(tmp_path, [], None)
    assert "Skipped" in sec.text and not sec.images and "skipped" in lines[0]


def test_demo_cli_routes_sr_models_to_lam(sr_zoo, sr_sample, monkeypatch, tmp_path,
                                          capsys) -> None:
    import lamcam.demo

    monkeypatch.setattr(lamcam.zoo, "info", lambda name: {"task": "sr"} if name.startswith("sr")
                        else {"task": "classification"}, raising=False)
    monkeypatch.setattr(lamcam.zoo, "sr_samples", lambda: [sr_sample], raising=False)
    monkeypatch.setattr(lamcam.demo, "LAM_STEPS", 4)
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--models", "srA,srB"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert "LAM srA: DI" in cap.out and "LAM srB: DI" in cap.out and "index.html" in cap.out
    html = (out / "index.html").read_text()
    assert "LAM across the SR zoo" in html and "lam/bar_lam_comparison.png" in html
    assert not (out / "srA").exists()  # not treated as a classifier
