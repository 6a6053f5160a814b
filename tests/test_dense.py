"""Tests for :meth:`lamcam.lam.LAM.dense` (checked window by window against :class:`LAM`) and its
figure :func:`lamcam.viz.lam.dense_figure`."""

from __future__ import annotations

import math
import os
import warnings
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lamcam.zoo
from lamcam.io import load_image
from lamcam.lam import LAM, DenseLAMResult
from lamcam.viz.lam import DENSE_ALPHA, DENSE_CMAP, crop_statement, dense_figure, dense_heatmap

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()


class _Gated(nn.Module):
    """conv 3×3, then a channel gate from the global average pool (squeeze-excitation style),
    then PixelShuffle(2): every output pixel depends on every input pixel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.gate = nn.Conv2d(12, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        g = torch.sigmoid(4.0 * self.gate(y.mean(dim=(2, 3), keepdim=True)))
        return nn.functional.pixel_shuffle(torch.tanh(y) * g, 2)


@pytest.fixture(scope="module")
def tiny_dense() -> DenseLAMResult:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        return LAM(_tiny(), steps=3, progress=False).dense(torch.rand(3, 20, 20, generator=g),
                                                           window=8)
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fsrcnn() -> tuple[nn.Module, torch.Tensor]:
    try:
        model = lamcam.zoo.load("sr_fsrcnn")
        lr = load_image(lamcam.zoo.sr_samples()[0]["lr"])
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"sr_fsrcnn or the SR samples are not bundled: {e}")
    return model, lr[:, 10:34, 20:48].contiguous()  # 24 x 28 LR, 96 x 112 SR


def _check_windows(d: DenseLAMResult, model: nn.Module, x: torch.Tensor, steps: int,
                   cells: list[tuple[int, int]]) -> None:
    """Every listed grid cell of ``d`` equals LAM of that window on the whole image."""
    ref = LAM(model, steps=steps, crop=False, progress=False)
    for i, j in cells:
        r = ref(x, d.rows[i], d.cols[j], d.window)
        where = f"window {(i, j)} at SR ({d.rows[i]}, {d.cols[j]})"
        assert float(d.di[i, j]) == pytest.approx(r.diffusion_index, abs=1e-4), where
        assert int(d.pixels95[i, j]) == r.pixels95, where
        ce = float(d.completeness[i, j])
        if math.isnan(r.completeness_error):
            assert math.isnan(ce), where
        else:
            # ce = |sum(attr) - delta| / |delta|, delta = D(F(x)) - D(F(x')): float32 round-off
            # of D (~1e-7 relative; a crop's output differs from the whole image's by that much)
            # is amplified by (1 + ce) (|D(F(x))| + |D(F(x'))|) / |delta|, which is large for a
            # flat window with a coarse path (e.g. delta 0.007, ce 67 at 4 steps)
            delta = r.objective_input - r.objective_baseline
            cond = (1 + r.completeness_error) * (abs(r.objective_input)
                                                 + abs(r.objective_baseline)) / abs(delta)
            assert ce == pytest.approx(r.completeness_error, abs=1e-4 + 1e-6 * cond), where


def _grid_ok(d: DenseLAMResult, size: tuple[int, int]) -> None:
    for starts, n in ((d.rows, size[0]), (d.cols, size[1])):
        assert starts[0] == 0 and starts[-1] == n - d.window
        steps = np.diff(starts)
        assert (steps[:-1] == d.stride).all() and 0 < steps[-1] <= d.stride
    assert d.di.shape == d.pixels95.shape == d.completeness.shape == (len(d.rows), len(d.cols))
    assert d.di.dtype == torch.float64


def _corners_and_some(d: DenseLAMResult) -> list[tuple[int, int]]:
    nr, nc = len(d.rows), len(d.cols)
    return sorted({(0, 0), (0, nc - 1), (nr - 1, 0), (nr - 1, nc - 1), (nr // 2, nc // 2),
                   (1, nc - 2), (nr - 2, 1)})


# --------------------------------------------------------------------------------------------
# LAM.dense: exactness
# --------------------------------------------------------------------------------------------


def test_dense_stride_below_window_matches_lam(fsrcnn, one_thread) -> None:
    model, x = fsrcnn
    d = LAM(model, steps=4, progress=False).dense(x, window=18, stride=14)  # not scale-aligned
    _grid_ok(d, (96, 112))
    assert (len(d.rows), len(d.cols)) == (7, 8) and d.rows[-1] == 78 and d.cols[-1] == 94
    crop = d.params["crop"]
    assert crop["field"]["source"] == "declared" and crop["check"] <= 1e-5
    assert all(h < 24 or w < 28 for h, w, _ in crop["crop_sizes"])  # really cropped
    assert d.params["windows"] == 56 and d.params["stride"] == 14
    with torch.no_grad():
        torch.testing.assert_close(d.sr, model(x[None])[0])
    _check_windows(d, model, x, 4, _corners_and_some(d))


def test_dense_stride_above_window_matches_lam(fsrcnn, one_thread) -> None:
    model, x = fsrcnn
    d = LAM(model, steps=4, progress=False).dense(x, window=10, stride=30)
    _grid_ok(d, (96, 112))
    assert d.rows == [0, 30, 60, 86] and d.cols == [0, 30, 60, 90, 102]
    _check_windows(d, model, x, 4, [(i, j) for i in range(4) for j in range(5)])  # all 20
    heat = dense_heatmap(d)
    assert np.isnan(heat[10:30, :]).all()  # between the windows' rows: nothing painted
    assert heat[86, 102] == float(d.di[3, 4]) and heat[95, 111] == float(d.di[3, 4])


def test_dense_global_model_warns_and_matches(one_thread) -> None:
    model = _Gated().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 10, 12, generator=g)
    with pytest.warns(UserWarning, match=r"each of the 9 windows costs one whole-image LAM"):
        d = LAM(model, steps=3, progress=False).dense(x, window=8)
    assert d.rows == [0, 8, 12] and d.cols == [0, 8, 16]
    assert d.params["crop"]["box"] is None
    assert d.params["whole_image_lams"] == pytest.approx(9.0)
    _check_windows(d, model, x, 3, [(i, j) for i in range(3) for j in range(3)])


@pytest.mark.parametrize("kw", [
    {"window": 0}, {"window": -4}, {"window": 2.5}, {"window": True}, {"window": 8, "stride": 0},
    {"window": 8, "stride": -1}, {"window": 8, "stride": 1.5}, {"window": 41},
])
def test_dense_bad_window_or_stride(kw) -> None:
    with pytest.raises(ValueError, match="window|stride"):
        LAM(_tiny(), steps=2, progress=False).dense(torch.rand(3, 20, 20), **kw)


# --------------------------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------------------------


def test_dense_heatmap_cells() -> None:
    di = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    # stride 4 < window 8: 4-px cells centred in the windows, border cells reach the border;
    # the last column of windows (at 10, snapped to the edge) gets the pixels nearer its centre
    r = SimpleNamespace(di=di, rows=[0, 4], cols=[0, 4, 10], window=8, stride=4,
                        sr=torch.zeros(3, 12, 18))
    h = dense_heatmap(r)
    assert h.shape == (12, 18) and not np.isnan(h).any()
    assert (h[:6, 0] == 1).all() and (h[6:, 0] == 4).all()  # window centres 4 and 8: split at 6
    np.testing.assert_array_equal(h[0], [1] * 6 + [2] * 5 + [3] * 7)  # centres 4, 8, 14
    # stride 6 > window 4: the windows themselves, nothing in between
    r = SimpleNamespace(di=di, rows=[0, 6], cols=[0, 6, 12], window=4, stride=6,
                        sr=torch.zeros(3, 10, 16))
    h = dense_heatmap(r)
    np.testing.assert_array_equal(np.isnan(h[0]), [False] * 4 + [True] * 2 + [False] * 4
                                  + [True] * 2 + [False] * 4)
    assert np.isnan(h[4:6]).all() and (h[6:10, 12:16] == 6).all()
    with pytest.raises(ValueError, match="grid"):
        dense_heatmap(SimpleNamespace(di=di, rows=[0], cols=[0], window=4, stride=4,
                                      sr=torch.zeros(3, 8, 8)))


def test_dense_figure_renders_and_colours_follow_di(tiny_dense) -> None:
    d = tiny_dense
    fig = dense_figure(d, title="tiny model")
    ax_sr, ax_h, cax, ax_d = fig.axes
    assert cax.get_ylabel() == "Diffusion Index" and ax_d.get_xlabel() == "Diffusion Index"
    texts = [t.get_text() for t in fig.texts]
    assert texts[-3] == "tiny model" and "window 8×8, stride 8" in texts[-2]
    assert "σ 1.2" in texts[-2] and "3 steps" in texts[-2] and "9×9 LR crop of 20×20" in texts[-1]
    # the highest-DI windows are outlined, highest first
    di = d.di.numpy()
    order = np.argsort(-di.ravel(), kind="stable")
    boxes = [p.get_xy() for p in ax_h.patches]
    assert len(boxes) == 5
    expect = [(d.cols[o % di.shape[1]] - 0.5, d.rows[o // di.shape[1]] - 0.5) for o in order[:5]]
    assert boxes == expect
    # the median line of the histogram
    med = ax_d.lines[0].get_xdata()[0]
    assert med == pytest.approx(float(np.median(di)))

    # rendered colours: un-blending the grey SR gives the colormap's colour of each window's DI
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float64) / 255.0
    grey_im, overlay = ax_h.images
    assert overlay.get_alpha() == DENSE_ALPHA
    grey = np.asarray(grey_im.get_array())
    cmap = matplotlib.colormaps[DENSE_CMAP]
    lo, hi = di.min(), di.max()
    height = buf.shape[0]
    seen = []
    for i, r0 in enumerate(d.rows):
        for j, c0 in enumerate(d.cols):
            y, x = r0 + d.window // 2, c0 + d.window // 2  # the SR pixel at the window's centre
            px, py = ax_h.transData.transform((x, y))  # its centre, in display pixels
            got = buf[int(height - py), int(px)]
            g = grey[y, x]
            want = np.asarray(cmap((di[i, j] - lo) / (hi - lo))[:3])
            np.testing.assert_allclose((got - (1 - DENSE_ALPHA) * g) / DENSE_ALPHA, want, atol=0.03,
                                       err_msg=f"window {(i, j)}")
            seen.append(got)
    i_max, j_max = np.unravel_index(di.argmax(), di.shape)
    i_min, j_min = np.unravel_index(di.argmin(), di.shape)
    assert i_max * len(d.cols) + j_max != i_min * len(d.cols) + j_min
    assert len({tuple(np.round(c, 2)) for c in seen}) > 5  # the cells really differ


def test_dense_figure_saves_atomically(tiny_dense, tmp_path, monkeypatch) -> None:
    path = tmp_path / "figs" / "dense.png"
    fig = dense_figure(tiny_dense, path=path)
    w, h = Image.open(path).size
    assert (w, h) == (round(fig.get_figwidth() * 100), round(fig.get_figheight() * 100))
    assert w > 2 * h > 700
    assert sorted(p.name for p in path.parent.iterdir()) == ["dense.png"]
    old = path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        tiny_dense.figure(path=str(path), title="again")
    assert path.read_bytes() == old  # the old figure is intact, no temporary file is left
    assert sorted(p.name for p in path.parent.iterdir()) == ["dense.png"]


def test_dense_figure_edge_cases(tmp_path) -> None:
    # one window, all DIs equal, NaN DI, no params: still a figure, nothing outlined
    base = {"rows": [0], "cols": [0], "window": 8, "stride": 8, "sr": torch.rand(3, 8, 8),
            "params": {}}
    for di in ([[3.0]], [[float("nan")]]):
        fig = dense_figure(SimpleNamespace(di=torch.tensor(di, dtype=torch.float64), **base))
        assert len(fig.axes) == 4 and not fig.axes[1].patches
    flat = SimpleNamespace(di=torch.full((2, 3), 5.0, dtype=torch.float64), rows=[0, 8],
                           cols=[0, 8, 16], window=8, stride=8, sr=torch.rand(1, 16, 24),
                           params={"model_call": "spandrel: pad, run, clamp, crop " * 20})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = dense_figure(flat, title="flat")
    small = fig.texts[-1].get_text()
    assert small.startswith("model: spandrel") and small.endswith("…") and "\n" not in small


def test_dense_figure_outlines_do_not_overlap() -> None:
    g = torch.Generator().manual_seed(0)
    di = torch.rand(5, 5, generator=g, dtype=torch.float64)
    di[2, 2], di[2, 3], di[0, 0] = 9.0, 8.5, 8.0  # (2, 3) overlaps the best window, (0, 0) not
    r = SimpleNamespace(di=di, rows=[0, 4, 8, 12, 16], cols=[0, 4, 8, 12, 16], window=8, stride=4,
                        sr=torch.rand(3, 24, 24), params={})
    boxes = [p.get_xy() for p in dense_figure(r).axes[1].patches]
    assert len(boxes) >= 2 and boxes[0] == (7.5, 7.5) and boxes[1] == (-0.5, -0.5)
    assert (11.5, 7.5) not in boxes
    for a, (x0, y0) in enumerate(boxes):
        for x1, y1 in boxes[a + 1:]:
            assert abs(x0 - x1) >= 8 or abs(y0 - y1) >= 8


def test_crop_statement() -> None:
    dense = {"lr_size": [64, 64], "crop": {"crop_sizes": [[23, 23, 42]], "check": 0.0,
             "field": {"radius": 9, "source": "declared", "detail": "FSRCNN declares 9"}}}
    assert crop_statement(dense, short=True) == "crop 23x23 of 64x64 (declared field)"
    assert "23×23 LR crop of 64×64" in crop_statement(dense) and "FSRCNN" in crop_statement(dense)
    glob = {"lr_size": [8, 8], "crop": {"box": None, "reason": "global pooling",
                                        "field": {"radius": None}}}
    assert crop_statement(glob, short=True) == "whole image (global receptive field)"
    assert crop_statement(glob) == "explained on the whole 8×8 LR image: global pooling"
    assert crop_statement({}) == ""
