"""Tests of lamcam.app.engine: the web explorer's computations, without Gradio or a browser.

Expected answers are computed here independently: windows and coordinates by hand, pictures
pixel by pixel, attributions with the library's own LAM and CAM classes called directly.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lamcam
import lamcam.zoo as zoo
from lamcam._safetensors import save_file
from lamcam.app import engine as E
from lamcam.app.engine import AppError, LAMOptions, Limits, ModelCache, SessionFiles
from lamcam.io import load_image

RED = (255, 0, 0)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random colours, never pure red (so the window's box is told apart from the picture)."""
    a = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    a[..., 1] = np.maximum(a[..., 1], 1)
    return a


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def _snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "modules": [type(m) for m in model.modules()],
    }


def _assert_untouched(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert _hooks(model) == 0
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["modules"] == before["modules"]
    assert all(p.grad is None for p in model.parameters())
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k


# ------------------------------------------------------------------------------------------
# the LAM window
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("x", "y", "window", "sr_hw", "expected"),
    [
        (130, 7, 16, (256, 256), (0, 122)),  # top edge
        (100, 100, 16, (256, 256), (92, 92)),  # inside: click is the centre
        (0, 0, 16, (256, 256), (0, 0)),  # top-left corner
        (255, 255, 16, (256, 256), (240, 240)),  # bottom-right corner
        (250, 3, 16, (256, 256), (0, 240)),  # right edge (and top)
        (3, 250, 16, (256, 256), (240, 0)),  # left edge (and bottom)
        (195, 50, 16, (100, 200), (42, 184)),  # not square: right edge of a wide image
        (10, 97, 8, (100, 200), (92, 6)),  # not square: bottom edge
        (10, 10, 5, (64, 64), (8, 8)),  # odd window: 5 // 2 == 2
        (7, 9, 16, (16, 16), (0, 0)),  # the window is the whole image
    ],
)
def test_place_window(x: int, y: int, window: int, sr_hw: tuple, expected: tuple) -> None:
    assert E.place_window(x, y, window, sr_hw) == expected


@pytest.mark.parametrize(("window", "sr_hw"), [(17, (16, 100)), (17, (100, 16)), (0, (64, 64))])
def test_place_window_refuses_a_window_that_does_not_fit(window: int, sr_hw: tuple) -> None:
    with pytest.raises(AppError) as exc:
        E.place_window(5, 5, window, sr_hw)
    assert isinstance(exc.value, ValueError)


def test_window_text_exact() -> None:
    assert E.window_text(0, 122, 16, scale=4) == (
        "SR window: row 0, col 122, 16x16 px  ·  LR: row 0, col 30.5, 4x4 px  (x4)")


@pytest.mark.parametrize(
    ("row", "col", "window", "scale", "sr", "lr"),
    [
        (100, 84, 16, 4, "row 100, col 84, 16x16 px", "LR: row 25, col 21, 4x4 px"),
        (6, 10, 5, 2, "row 6, col 10, 5x5 px", "LR: row 3, col 5, 2.5x2.5 px"),
        (3, 7, 3, 3, "row 3, col 7, 3x3 px", "LR: row 1, col 2.33333, 1x1 px"),
        (1, 2, 8, 8, "row 1, col 2, 8x8 px", "LR: row 0.125, col 0.25, 1x1 px"),
    ],
)
def test_window_text_gives_both_coordinate_systems(row: int, col: int, window: int, scale: int,
                                                   sr: str, lr: str) -> None:
    text = E.window_text(row, col, window, scale)
    assert f"SR window: {sr}" in text
    assert lr in text
    assert text.endswith(f"(x{scale})")


@pytest.mark.parametrize(
    ("sr_hw", "zoom"),
    [((256, 256), 2), ((64, 128), 4), ((100, 100), 5), ((600, 100), 1), ((1000, 1000), 1),
     ((512, 512), 1), ((24, 32), 16)],
)
def test_view_zoom(sr_hw: tuple, zoom: int) -> None:
    assert E.view_zoom(sr_hw) == zoom


@pytest.mark.parametrize(
    ("window", "zoom"),
    [((4, 8, 8), None), ((4, 8, 8), 1), ((0, 0, 16), None), ((8, 16, 16), None), ((12, 1, 3), 2)],
)
def test_window_view(window: tuple, zoom: int | None) -> None:
    h, w, scale = 6, 8, 4
    lr = _rgb(h, w, seed=3)
    image = torch.from_numpy(lr).permute(2, 0, 1).float() / 255
    if zoom is None:
        zoom = E.view_zoom((h * scale, w * scale))
        assert zoom == 16
    pic = E.window_view(image, scale, window, zoom=zoom)
    f = scale * zoom
    assert pic.size == (w * f, h * f)
    got = np.asarray(pic.convert("RGB"))
    assert got.shape == (h * f, w * f, 3)
    # nearest neighbour: display pixel (Y, X) shows LR pixel (Y // f, X // f)
    expected = lr[np.arange(h * f)[:, None] // f, np.arange(w * f)[None, :] // f]
    red = np.all(got == np.array(RED, np.uint8), axis=-1)
    assert np.array_equal(got[~red], expected[~red])
    # the window's own display pixels are untouched
    r0, c0, r1, c1 = (window[0] * zoom, window[1] * zoom, (window[0] + window[2]) * zoom,
                      (window[1] + window[2]) * zoom)
    assert np.array_equal(got[r0:r1, c0:c1], expected[r0:r1, c0:c1])
    # red only in a thin ring (at most 3 px) just outside the window
    rows, cols = np.nonzero(red)
    assert red.any()
    inside = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
    near = (rows >= r0 - 3) & (rows < r1 + 3) & (cols >= c0 - 3) & (cols < c1 + 3)
    assert not inside.any() and near.all()
    # the display pixels touching the window from outside are red, on every side in the image
    H, W = h * f, w * f
    if r0 - 1 >= 0:
        assert red[r0 - 1, c0:c1].all()
    if r1 < H:
        assert red[r1, c0:c1].all()
    if c0 - 1 >= 0:
        assert red[r0:r1, c0 - 1].all()
    if c1 < W:
        assert red[r0:r1, c1].all()


def test_window_view_without_window_is_the_plain_upscale() -> None:
    lr = _rgb(3, 5, seed=4)
    image = torch.from_numpy(lr).permute(2, 0, 1).float() / 255
    got = np.asarray(E.window_view(image, 2, None, zoom=3).convert("RGB"))
    assert np.array_equal(got, np.repeat(np.repeat(lr, 6, axis=0), 6, axis=1))


# ------------------------------------------------------------------------------------------
# uploads and images
# ------------------------------------------------------------------------------------------
def test_check_upload(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(2_500_000)
    with pytest.raises(AppError) as exc:
        E.check_upload(big, 1_200_000, "image")
    msg = str(exc.value)
    assert "2.5 MB" in msg and "1.2 MB" in msg and "big.png" in msg
    assert E.check_upload(big, 2_500_000, "image") == big  # at the limit is fine
    with pytest.raises(AppError):
        E.check_upload(tmp_path / "gone.png", 10**9, "image")


def _corrupt(tmp_path: Path) -> Path:
    p = tmp_path / "broken_upload.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a png at all" * 4)
    return p


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return zoo.load("shapes_resnet")


def test_corrupt_png_is_refused(tmp_path: Path, resnet: nn.Module) -> None:
    p = _corrupt(tmp_path)
    for load in (lambda: E.load_lr_image(p, "RGB", Limits()),
                 lambda: E.load_lr_image(p, "RGB", Limits(), uploaded=True),
                 lambda: E.load_cam_image(p, resnet, Limits()),
                 lambda: E.load_cam_image(p, resnet, Limits(), uploaded=True)):
        with pytest.raises(AppError) as exc:
            load()
        assert "broken_upload.png" in str(exc.value) and "cannot be read" in str(exc.value)


def test_pixel_limits(tmp_path: Path, resnet: nn.Module) -> None:
    p = _png(tmp_path / "wide.png", _rgb(40, 50))  # 2,000 pixels
    with pytest.raises(AppError) as exc:
        E.load_lr_image(p, "RGB", Limits(lam_pixels=1999))
    assert "2,000" in str(exc.value) and "wide.png" in str(exc.value)
    with pytest.raises(AppError) as exc:
        E.load_cam_image(p, resnet, Limits(image_pixels=1000))
    assert "2,000" in str(exc.value)
    assert E.load_lr_image(p, "RGB", Limits(lam_pixels=2000)).shape == (3, 40, 50)


def test_upload_byte_limits_apply_only_to_uploads(tmp_path: Path, resnet: nn.Module) -> None:
    p = _png(tmp_path / "small.png", _rgb(64, 64))
    tight = Limits(upload_bytes=100)
    assert E.load_lr_image(p, "RGB", tight).shape == (3, 64, 64)
    for load in (lambda: E.load_lr_image(p, "RGB", tight, uploaded=True),
                 lambda: E.load_cam_image(p, resnet, tight, uploaded=True)):
        with pytest.raises(AppError, match="small.png"):
            load()


def test_load_lr_image_values(tmp_path: Path) -> None:
    a = _rgb(12, 10, seed=5)
    x = E.load_lr_image(_png(tmp_path / "lr.png", a), "RGB", Limits())
    assert x.shape == (3, 12, 10) and x.dtype == torch.float32
    assert torch.allclose(x, torch.from_numpy(a).permute(2, 0, 1).float() / 255, atol=1e-6)


def test_load_cam_image_fits_the_input_size(tmp_path: Path) -> None:
    cache = ModelCache()
    model, _ = cache.get("shapes_resnet")
    x, text = E.load_cam_image(_png(tmp_path / "wide.png", _rgb(20, 40)), model, Limits())
    assert x.shape == (3, 64, 64) and text
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    # an image of the right size is taken as it is
    a = _rgb(64, 64, seed=6)
    x, text = E.load_cam_image(_png(tmp_path / "exact.png", a), model, Limits())
    assert text == ""
    assert torch.allclose(x, torch.from_numpy(a).permute(2, 0, 1).float() / 255, atol=1e-6)


def test_grayscale_png_for_an_rgb_model(tmp_path: Path, resnet: nn.Module) -> None:
    g = np.random.default_rng(7).integers(0, 256, size=(64, 64), dtype=np.uint8)
    p = _png(tmp_path / "grey.png", g)
    assert Image.open(p).mode == "L"
    with pytest.warns(UserWarning, match="grayscale"):
        x, _ = E.load_cam_image(p, resnet, Limits())
    assert x.shape == (3, 64, 64)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert torch.allclose(x[0], torch.from_numpy(g).float() / 255, atol=1e-6)


# ------------------------------------------------------------------------------------------
# ModelCache
# ------------------------------------------------------------------------------------------
def test_cache_same_bundled_name_loads_once() -> None:
    cache = ModelCache()
    m1, new1 = cache.get("sr_fsrcnn")
    m2, new2 = cache.get("sr_fsrcnn")
    assert m1 is m2 and (new1, new2) == (True, False) and cache.loads == 1
    assert not m1.training


def _fsrcnn_checkpoint(path: Path) -> Path:
    ref = zoo.load("sr_fsrcnn")
    meta = ref.lamcam_meta
    save_file(ref.state_dict(), path, metadata={
        "arch": meta["arch"], "task": "sr", "scale": str(meta["scale"]),
        "in_channels": str(meta["in_channels"]), "config": json.dumps(meta["config"])})
    return path


def test_cache_same_bytes_under_two_names_load_once(tmp_path: Path) -> None:
    a = _fsrcnn_checkpoint(tmp_path / "mine.safetensors")
    b = tmp_path / "copy of mine.safetensors"
    shutil.copyfile(a, b)
    cache = ModelCache()
    m1, new1 = cache.get(a, max_bytes=10**9)
    m2, new2 = cache.get(str(b), max_bytes=10**9)
    assert m1 is m2 and (new1, new2) == (True, False) and cache.loads == 1
    # and it is the bundled model's function
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(m1(x), zoo.load("sr_fsrcnn")(x), atol=1e-6)
    # a different checkpoint is a different model
    other = tmp_path / "other.safetensors"
    state = {k: v + 1e-3 for k, v in m1.state_dict().items()}
    save_file(state, other, metadata={"arch": "FSRCNN", "config": json.dumps(m1.lamcam_meta["config"])})
    m3, new3 = cache.get(other)
    assert m3 is not m1 and new3 and cache.loads == 2


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch '{self.marker}'",))


def test_cache_refuses_a_pickle_that_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    assert b"system" in evil.read_bytes()
    cache = ModelCache()
    with pytest.raises(AppError) as exc:
        cache.get(evil, max_bytes=10**9)
    assert "evil.pth" in str(exc.value)
    assert not marker.exists() and cache.loads == 0


def test_cache_refuses_a_checkpoint_over_max_bytes(tmp_path: Path) -> None:
    p = _fsrcnn_checkpoint(tmp_path / "big.safetensors")
    size = p.stat().st_size
    cache = ModelCache()
    with pytest.raises(AppError, match="big.safetensors"):
        cache.get(p, max_bytes=size - 1)
    assert cache.loads == 0
    model, new = cache.get(p, max_bytes=size)
    assert new and cache.loads == 1


def test_cache_concurrent_gets_load_once() -> None:
    cache = ModelCache()
    barrier = threading.Barrier(4)
    got: list = [None] * 4
    errors: list = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            got[i] = cache.get("sr_fsrcnn")[0]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert cache.loads == 1 and all(m is got[0] for m in got) and got[0] is not None


def test_cache_evicts_least_recently_used() -> None:
    cache = ModelCache(max_models=1)
    a1, _ = cache.get("sr_fsrcnn")
    b1, _ = cache.get("shapes_resnet")
    a2, new = cache.get("sr_fsrcnn")
    assert new and a2 is not a1 and cache.loads == 3
    cache = ModelCache(max_models=2)
    a, _ = cache.get("sr_fsrcnn")
    b, _ = cache.get("shapes_resnet")
    assert cache.get("sr_fsrcnn") == (a, False)  # a is now the most recently used
    cache.get("shapes_vgg")  # evicts b, not a
    assert cache.get("sr_fsrcnn") == (a, False)
    b2, new = cache.get("shapes_resnet")
    assert new and b2 is not b and cache.loads == 4


# ------------------------------------------------------------------------------------------
# SessionFiles
# ------------------------------------------------------------------------------------------
def test_session_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = SessionFiles(root)
    sessions = (root / "sessions").resolve()
    r1 = files.new_run("abc123", "lam")
    r2 = files.new_run("abc123", "lam")
    c1 = files.new_run("abc123", "cam")
    o1 = files.new_run("xyz", "lam")
    assert (r1.name, r2.name, o1.name) == ("lam-0001", "lam-0002", "lam-0001")
    assert c1.name.startswith("cam-") and c1.is_dir()
    assert r1.parent == r2.parent == c1.parent == sessions / "abc123" and r1.is_dir()
    assert o1.parent == sessions / "xyz"
    # hostile session strings stay inside root/sessions
    outside = tmp_path / "etc"
    outside.mkdir()
    for hostile in ("../../etc", "..", "/etc", "a/../../b", "", None, "..\\..\\x"):
        d = files.new_run(hostile, "lam").resolve()
        assert d.parent.parent == sessions, hostile
    assert not any(outside.iterdir())
    files.drop("../../etc")
    files.drop("..")
    assert outside.is_dir() and (root / "sessions").is_dir()
    # drop removes that session only
    files.drop("abc123")
    assert not (sessions / "abc123").exists() and o1.is_dir()
    files.close()
    assert not root.exists() and tmp_path.is_dir() and outside.is_dir()


def test_session_files_numbers_each_kind_from_one(tmp_path: Path) -> None:
    files = SessionFiles(tmp_path)
    names = [files.new_run("s", kind).name for kind in ("lam", "lam", "cam", "cam", "lam")]
    assert names == ["lam-0001", "lam-0002", "cam-0001", "cam-0002", "lam-0003"]


def test_session_files_default_root() -> None:
    files = SessionFiles()
    try:
        run = files.new_run("s", "cam")
        assert run.is_dir() and run.resolve().is_relative_to(files.root.resolve())
    finally:
        files.close()
    assert not files.root.exists()


# ------------------------------------------------------------------------------------------
# run_lam
# ------------------------------------------------------------------------------------------
ROW, COL, WINDOW = 100, 84, 16


@pytest.fixture(scope="module")
def lam_case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    models = [("sr_fsrcnn", zoo.load("sr_fsrcnn")), ("sr_edsr", zoo.load("sr_edsr"))]
    image = load_image(E.bundled_lr_images()["chelsea"])
    before = {name: _snapshot(m) for name, m in models}
    out = tmp_path_factory.mktemp("lam")
    calls: list = []
    run = E.run_lam(models, {"RGB": image}, "chelsea", ROW, COL, LAMOptions(steps=10), out,
                    progress=lambda *a: calls.append(a))
    untouched = {name: (m, before[name]) for name, m in models}
    refs = {name: lamcam.LAM(m, steps=10, progress=False)(image, ROW, COL, WINDOW)
            for name, m in models}
    return {"run": run, "out": out, "calls": calls, "refs": refs, "untouched": untouched}


def test_run_lam_matches_the_library(lam_case: dict) -> None:
    run, ref = lam_case["run"], lam_case["refs"]["sr_fsrcnn"]
    assert run.results["sr_fsrcnn"].diffusion_index == ref.diffusion_index
    out: Path = lam_case["out"]
    attribution = np.load(out / "chelsea_sr_fsrcnn_lam.npy")
    assert attribution.shape == tuple(ref.attribution.shape)
    np.testing.assert_allclose(attribution, ref.attribution.detach().float().numpy(), atol=1e-6, rtol=0)
    lam_map = np.load(out / "chelsea_sr_fsrcnn_lam_map.npy")
    np.testing.assert_allclose(lam_map, ref.map.detach().float().numpy(), atol=1e-6, rtol=0)
    assert str(out / "chelsea_sr_fsrcnn_lam.npy") in run.files


def test_run_lam_summary_json(lam_case: dict) -> None:
    summary = json.loads((lam_case["out"] / "chelsea_lam.json").read_text())
    assert summary["window"]["row"] == ROW and summary["window"]["col"] == COL
    assert summary["window"]["size"] == WINDOW
    assert summary["options"] == {"sigma": 1.2, "steps": 10, "quadrature": "riemann", "kernel_size": 9}
    assert [r["model"] for r in summary["models"]] == ["sr_fsrcnn", "sr_edsr"]
    for record in summary["models"]:
        ref = lam_case["refs"][record["model"]]
        assert record["diffusion_index"] == ref.diffusion_index
        assert record["steps"] == 10 and record["window"] == WINDOW
        assert record["row"] == ROW and record["col"] == COL
    per_model = json.loads((lam_case["out"] / "chelsea_sr_edsr_lam.json").read_text())
    assert per_model["model"] == "sr_edsr"
    assert per_model["diffusion_index"] == lam_case["refs"]["sr_edsr"].diffusion_index


def test_run_lam_two_models(lam_case: dict) -> None:
    run, out = lam_case["run"], lam_case["out"]
    assert Path(run.comparison).name == "chelsea_lam_comparison.png"  # panels + DI bar chart
    for png in (run.comparison, *(p for p, _ in run.figures)):
        assert Path(png).is_file()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 50 and im.height > 50
    assert len(run.figures) == 2
    assert len(run.rows) == 2 and len(run.records) == 2
    for row, name in zip(run.rows, ("sr_fsrcnn", "sr_edsr"), strict=True):
        assert len(row) == len(E.LAMRun.HEADER)
        assert row[0] == name
        assert row[1] == f"{lam_case['refs'][name].diffusion_index:.6f}"
    assert lam_case["calls"][:2] == [
        (0, 2, lam_case["calls"][0][2]), (1, 2, lam_case["calls"][1][2])]
    assert "sr_fsrcnn" in lam_case["calls"][0][2] and "sr_edsr" in lam_case["calls"][1][2]
    assert all(isinstance(t, str) and 0 <= i <= n == 2 for i, n, t in lam_case["calls"])
    # every file listed exists inside out_dir, every file in out_dir is listed, no temporaries
    root = out.resolve()
    listed = {Path(f).resolve() for f in run.files}
    assert len(listed) == len(run.files)
    for f in listed:
        assert f.is_file() and f.is_relative_to(root)
    present = {p.resolve() for p in out.rglob("*") if p.is_file()}
    assert present == listed
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_run_lam_leaves_models_untouched(lam_case: dict) -> None:
    for model, before in lam_case["untouched"].values():
        _assert_untouched(model, before)


def test_run_lam_one_model_train_mode_frozen_params(tmp_path: Path) -> None:
    model = zoo.load("sr_fsrcnn")
    model.train()
    first = next(model.parameters())
    first.requires_grad_(False)
    before = _snapshot(model)
    image = load_image(E.bundled_lr_images()["chelsea"])
    run = E.run_lam([("fs", model)], {"RGB": image}, "dir/chelsea lr.png", 0, 0,
                    LAMOptions(steps=2, window=8), tmp_path)
    assert len(run.rows) == 1 and len(run.figures) == 1
    assert Path(run.comparison).is_file()  # the page's figure, also for one model
    assert (tmp_path / "chelsea_lr_lam.json").is_file()
    _assert_untouched(model, before)
    assert model.training and not first.requires_grad


def test_run_lam_refusals(tmp_path: Path) -> None:
    model = zoo.load("sr_fsrcnn")
    image = load_image(E.bundled_lr_images()["chelsea"])
    with pytest.raises(AppError):
        E.run_lam([("fs", model)], {"RGB": image}, "chelsea", 250, 84, LAMOptions(steps=2), tmp_path)
    with pytest.raises(AppError):
        E.run_lam([("fs", model)], {"RGB": image}, "chelsea", 0, 0, LAMOptions(steps=0), tmp_path)
    assert not any(tmp_path.iterdir())
    for bad in (LAMOptions(steps=0), LAMOptions(steps=1001), LAMOptions(quadrature="simpsons-ish"),
                LAMOptions(sigma=0.0), LAMOptions(sigma=float("nan")), LAMOptions(window=0)):
        with pytest.raises(AppError):
            bad.check()
    LAMOptions(steps=1).check()
    LAMOptions().check()


@pytest.mark.parametrize("kernel_size", [4, 0])
def test_lam_options_check_refuses_what_lam_refuses(kernel_size: int) -> None:
    # LAMOptions.check promises AppError for every value lamcam.LAM would refuse
    with pytest.raises(ValueError):
        lamcam.LAM(zoo.load("sr_fsrcnn"), kernel_size=kernel_size)
    with pytest.raises(AppError):
        LAMOptions(kernel_size=kernel_size).check()


# ------------------------------------------------------------------------------------------
# run_cam
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cam_image(resnet: nn.Module) -> torch.Tensor:
    x, _ = E.load_cam_image(E.bundled_cam_images()["3_cross"], resnet, Limits())
    return x


def test_run_cam_matches_the_library(tmp_path: Path, resnet: nn.Module, cam_image: torch.Tensor) -> None:
    x = cam_image
    before = _snapshot(resnet)
    run = E.run_cam(resnet, x, "3_cross.png", ["gradcam", "gradcam++"], "layer3", None, tmp_path)
    _assert_untouched(resnet, before)
    with torch.no_grad():
        predicted = int(resnet(x[None]).argmax(1))
    cname = resnet.lamcam_meta["classes"][predicted]
    assert cname == "cross"
    refs = {"gradcam": lamcam.GradCAM(resnet, layer="layer3")(x[None]).maps[0],
            "gradcam++": lamcam.GradCAMPlusPlus(resnet, layer="layer3")(x[None]).maps[0]}
    names = {p.name for p in tmp_path.iterdir()}
    assert not [n for n in names if "+" in n]
    for method, file in (("gradcam", "3_cross_gradcam.npy"), ("gradcam++", "3_cross_gradcampp.npy")):
        assert file in names
        got = np.load(tmp_path / file)
        ref = refs[method].detach().float().numpy()
        assert got.shape == ref.shape == (64, 64)
        np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    assert [r[0] for r in run.rows] == ["gradcam", "gradcam++"]
    assert all(r[2] == cname for r in run.rows)
    assert run.targets == {"gradcam": [predicted], "gradcam++": [predicted]}
    assert len(run.overlays) == 2
    assert [Path(p).name for p, _ in run.overlays] == ["3_cross_gradcam.png", "3_cross_gradcampp.png"]
    for f in run.files:
        assert Path(f).is_file() and Path(f).resolve().is_relative_to(tmp_path.resolve())
    assert {Path(f).name for f in run.files} == names
    assert not [n for n in names if ".tmp" in n]
    record = json.loads((tmp_path / "3_cross_cam.json").read_text())
    assert [r["class"] for r in record["results"]] == [cname, cname]


def test_run_cam_topk_and_guided_backprop(tmp_path: Path, resnet: nn.Module,
                                          cam_image: torch.Tensor) -> None:
    x = cam_image
    before = _snapshot(resnet)
    run = E.run_cam(resnet, x, "3_cross", ["gradcam", "guided-backprop"], "layer3", lamcam.TopK(2),
                    tmp_path)
    _assert_untouched(resnet, before)
    with torch.no_grad():
        top2 = resnet(x[None])[0].topk(2).indices.tolist()
    assert run.targets == {"gradcam": top2, "guided-backprop": top2}
    assert len(run.overlays) == 4
    assert [(r[0], r[1]) for r in run.rows] == [("gradcam", 1), ("gradcam", 2),
                                                 ("guided-backprop", 1), ("guided-backprop", 2)]
    classes = resnet.lamcam_meta["classes"]
    assert [r[2] for r in run.rows] == [classes[t] for t in top2] * 2
    for k in (1, 2):
        cam = np.load(tmp_path / f"3_cross_gradcam_top{k}.npy")
        ref = lamcam.GradCAM(resnet, layer="layer3")(x[None], target=top2[k - 1]).maps[0]
        np.testing.assert_allclose(cam, ref.detach().float().numpy(), atol=1e-6, rtol=0)
        gb = np.load(tmp_path / f"3_cross_guided-backprop_top{k}.npy")
        assert gb.shape == (3, 64, 64)
        ref = lamcam.GuidedBackprop(resnet)(x[None], target=top2[k - 1]).maps[0]
        np.testing.assert_allclose(gb, ref.detach().float().numpy().reshape(gb.shape), atol=1e-6, rtol=0)
    for p, _ in run.overlays:
        assert Path(p).is_file()


def test_run_cam_train_mode_model_left_as_it_was(tmp_path: Path, cam_image: torch.Tensor) -> None:
    model = zoo.load("shapes_resnet")
    model.train()  # BatchNorm statistics would change in a train-mode forward pass
    model.fc.weight.requires_grad_(False)
    before = _snapshot(model)
    run = E.run_cam(model, cam_image, "3_cross", ["gradcam++", "guided-backprop"], "layer2", None,
                    tmp_path)
    _assert_untouched(model, before)
    assert model.training and not model.fc.weight.requires_grad and len(run.overlays) == 2


def test_run_cam_refusals(tmp_path: Path, resnet: nn.Module, cam_image: torch.Tensor) -> None:
    with pytest.raises(AppError):
        E.run_cam(resnet, cam_image, "x", [], "layer3", None, tmp_path)
    with pytest.raises(AppError, match="nosuchcam"):
        E.run_cam(resnet, cam_image, "x", ["gradcam", "nosuchcam"], "layer3", None, tmp_path)
    with pytest.raises(AppError):
        E.run_cam(resnet, cam_image, "x", ["gradcam"], "no.such.layer", None, tmp_path)
    assert not any(tmp_path.iterdir())
    assert _hooks(resnet) == 0


# ------------------------------------------------------------------------------------------
# layer_choices
# ------------------------------------------------------------------------------------------
def _output_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    handles = []
    for name, module in model.named_modules():
        if name:
            def hook(_m, _i, out, name=name):  # noqa: ANN001, ANN202
                if isinstance(out, torch.Tensor):
                    shapes.setdefault(name, tuple(out.shape))
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return shapes


def test_layer_choices_shapes_resnet(resnet: nn.Module) -> None:
    before = _snapshot(resnet)
    choices, default = E.layer_choices(resnet)
    _assert_untouched(resnet, before)
    assert default == "layer3"
    labels = dict((n, label) for label, n in choices)
    assert labels["layer3"] == "layer3 (default)"
    assert sum(label.endswith("(default)") for label, _ in choices) == 1
    names = [n for _, n in choices]
    assert len(names) == len(set(names))
    shapes = _output_shapes(resnet, torch.zeros(1, 3, 64, 64))
    single = [n for n in names if math.prod(shapes[n][2:]) < 2]
    assert single == [], f"layers whose output is one position are offered: {single}"
    assert "pool" not in names and "fc" not in names
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for name in (names[0], "layer3", names[len(names) // 2]):
        maps = lamcam.GradCAM(resnet, layer=name)(x).maps
        assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all()


def test_layer_choices_tiny_sequential() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    choices, default = E.layer_choices(net)
    assert [n for _, n in choices] == ["0", "1"]
    assert default in ("0", "1")
    assert sum(label == f"{default} (default)" for label, _ in choices) == 1
    assert _hooks(net) == 0


# --------------------------------------------------------------------------------------------
# lamcam serve: refusals before anything starts
# --------------------------------------------------------------------------------------------


def test_serve_refuses_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from lamcam.cli import main

    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


@pytest.mark.parametrize("argv,needle", [
    (["--port", "0"], "--port must be positive"),
    (["--port", "70000"], "at most 65535"),
    (["--lam-workers", "0"], "--lam-workers must be positive"),
    (["--max-upload-mb", "-1"], "--max-upload-mb must be positive"),
])
def test_serve_checks_its_options(argv: list[str], needle: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from lamcam.cli import main

    assert main(["serve", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_serve_without_gradio_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from lamcam.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["serve", "--port", "7999"]) == 2
    assert "pip install 'lamcam[app]'" in capsys.readouterr().err


def test_two_sessions_explain_one_cached_model_at_once(tmp_path: Path) -> None:
    """Two visitors' LAM runs on the shared model, in two threads at once, give exactly what each
    gives alone (the explorer relies on this to share its model cache)."""
    from concurrent.futures import ThreadPoolExecutor

    cache = ModelCache()
    model, _ = cache.get("sr_fsrcnn")
    image = load_image(E.bundled_lr_images()["brick"])
    files = SessionFiles(tmp_path / "root")
    windows = [(20, 36), (180, 100), (64, 200), (0, 0)]
    opts = LAMOptions(steps=6)

    def one(i: int) -> float:
        row, col = windows[i]
        out = files.new_run(f"visitor{i}", "lam")
        return E.run_lam([("sr_fsrcnn", model)], {"RGB": image}, "brick", row, col, opts,
                         out).records[0]["diffusion_index"]

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, range(len(windows))))
    alone = [lamcam.LAM(zoo.load("sr_fsrcnn"), steps=6, progress=False)(image, r, c, 16)
             .diffusion_index for r, c in windows]
    assert together == alone
    assert _hooks(model) == 0 and cache.loads == 1
    files.close()
