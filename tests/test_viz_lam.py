"""Tests for :mod:`lamcam.viz.lam`: the KDE "area of contribution" and the LAM figures."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import lamcam.viz.lam as vlam
from lamcam.lam import LAM
from lamcam.viz.lam import kde_covariance, kde_map, lam_comparison_figure, lam_figure, lam_panels


def _direct_kde(m: np.ndarray) -> np.ndarray:
    """The weighted Gaussian KDE formula evaluated pairwise, O(n²), as scipy.stats.gaussian_kde
    would with ``weights=m`` (Scott's factor, ``np.cov`` with ``aweights``), divided by its max."""
    h, w = m.shape
    r, c = np.mgrid[0:h, 0:w]
    pts = np.stack([r.ravel(), c.ravel()]).astype(np.float64)  # (2, n)
    wt = m.ravel() / m.sum()
    n_eff = 1.0 / np.sum(wt**2)
    cov = np.cov(pts, aweights=wt, bias=False) * n_eff ** (-2.0 / 6.0)
    prec = np.linalg.inv(cov)
    d = pts[:, :, None] - pts[:, None, :]  # (2, n_eval, n_data)
    q = np.einsum("aij,ab,bij->ij", d, prec, d)
    dens = (np.exp(-0.5 * q) * wt[None, :]).sum(1) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
    dens = dens.reshape(h, w)
    return dens / dens.max()


def test_kde_matches_direct_evaluation() -> None:
    rng = np.random.default_rng(0)
    m = rng.random((12, 10)) ** 3
    m[:, :2] = 0.0  # some zero weights
    np.testing.assert_allclose(kde_map(m), _direct_kde(m), atol=1e-6, rtol=0)
    # correlated positions (mass along a diagonal): exercises the off-diagonal covariance
    d = np.zeros((12, 10))
    for i in range(10):
        d[i + 1, i] = 1.0 + 0.3 * i
        d[min(i + 2, 11), i] = 0.4
    cov = kde_covariance(d)
    assert cov[0, 1] > 0.5 * np.sqrt(cov[0, 0] * cov[1, 1])
    np.testing.assert_allclose(kde_map(d), _direct_kde(d), atol=1e-6, rtol=0)


def test_kde_covariance_is_scotts_rule() -> None:
    rng = np.random.default_rng(1)
    m = rng.random((7, 9))
    r, c = np.mgrid[0:7, 0:9]
    wt = m.ravel() / m.sum()
    ref = np.cov(np.stack([r.ravel(), c.ravel()]), aweights=wt) * (1 / np.sum(wt**2)) ** (-1 / 3)
    np.testing.assert_allclose(kde_covariance(m), ref, rtol=1e-12)


def test_kde_edge_cases() -> None:
    z = kde_map(torch.zeros(5, 6))
    assert isinstance(z, torch.Tensor) and z.shape == (5, 6) and float(z.abs().sum()) == 0.0
    one = np.zeros((7, 7))
    one[3, 4] = 0.8
    k = kde_map(one)  # singular covariance: a delta, no NaN
    assert np.isfinite(k).all() and k[3, 4] == 1.0 and k.sum() == pytest.approx(1.0)
    line = np.zeros((6, 8))
    line[2, 1:7] = 1.0
    k = kde_map(line)
    assert np.isfinite(k).all() and k[2].max() == 1.0 and k[[0, 1, 3, 4, 5]].max() < 1e-6
    t = kde_map(torch.rand(4, 5, dtype=torch.float64))
    assert t.dtype == torch.float64 and float(t.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        kde_map(-np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        kde_map(np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        kde_map(np.ones((2, 3, 3)))


def test_kde_fast_on_a_realistic_size() -> None:
    import time

    m = np.random.default_rng(2).random((96, 96))
    t0 = time.perf_counter()
    k = kde_map(m)
    assert time.perf_counter() - t0 < 2.0 and k.shape == (96, 96)


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _sr_net(k: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, k, padding=k // 2), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2)).eval()


@pytest.fixture(scope="module")
def results() -> dict:
    yy, xx = torch.meshgrid(torch.arange(18.0), torch.arange(24.0), indexing="ij")
    x = torch.stack([0.5 + 0.4 * torch.sin(xx / 2), 0.5 + 0.4 * torch.cos(yy / 3),
                     0.5 + 0.3 * torch.sin((xx + yy) / 4)])
    return {f"k{k}": LAM(_sr_net(k, k), steps=6, progress=False)(x, row=14, col=20, window=8)
            for k in (1, 5, 9)}


def test_panels(results) -> None:
    r = results["k5"]
    p = lam_panels(r)
    assert list(p) == ["lr", "map", "map_blend", "kde_blend", "sr", "kde"]
    for key in ("lr", "map", "map_blend", "kde_blend", "sr"):
        assert p[key].shape == (36, 48, 3) and p[key].min() >= 0 and p[key].max() <= 1
    lr = r.image.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(p["lr"][::2, ::2], lr, atol=1e-6)  # nearest ×2
    np.testing.assert_allclose(p["lr"][1::2, 1::2], lr, atol=1e-6)
    i, j = np.unravel_index(int(r.map.argmax()), r.map.shape)
    np.testing.assert_allclose(p["map"][2 * i, 2 * j], [0.5, 0.0, 0.0], atol=0.01)  # seismic(1)
    zero = np.argwhere(r.map.numpy() == 0)
    if len(zero):
        zi, zj = zero[0]
        assert p["map"][2 * zi, 2 * zj].min() > 0.98  # seismic(0.5): white
    np.testing.assert_allclose(p["sr"], r.sr.clamp(0, 1).permute(1, 2, 0).numpy(), atol=1e-6)
    assert p["kde"].shape == (18, 24) and p["kde"].max() == pytest.approx(1.0)


def test_lam_figure(results, tmp_path) -> None:
    r = results["k5"]
    path = tmp_path / "sub" / "fig.png"
    fig = lam_figure(r, path=path, title="toy model")
    assert len(fig.axes) == 5
    for ax_i in (0, 4):  # the window box on the LR and SR panels, at SR (row 14, col 20)
        (box,) = fig.axes[ax_i].patches
        assert box.get_xy() == (19.5, 13.5) and box.get_width() == 8 and box.get_height() == 8
        assert box.get_edgecolor()[:3] == (1.0, 0.0, 0.0)
    texts = [t.get_text() for t in fig.texts]
    assert f"{r.diffusion_index:.2f}" in texts and "toy model" in texts
    assert any("LR 18×24, ×2" in t and "window 8×8" in t and "σ 1.2" in t for t in texts)
    with Image.open(path) as im:
        w, h = im.size
        assert 1000 < w < 2500 and 200 < h < 500 and w > 4 * h
        # the box is drawn in red on the rendered first panel
        arr = np.asarray(im.convert("RGB")).astype(int)
    for ax_i, (x, y) in ((0, (19.5, 13.5)), (0, (27.5, 21.5)), (4, (19.5, 21.5))):
        px, py = fig.axes[ax_i].transData.transform((x, y))  # box corners, display pixels
        patch = arr[round(h - py) - 2 : round(h - py) + 3, round(px) - 2 : round(px) + 3]
        red = (patch[..., 0] > 200) & (patch[..., 1] < 60) & (patch[..., 2] < 60)
        assert red.sum() >= 3
    px, py = fig.axes[0].transData.transform((23.5, 17.5))  # inside the box: the image
    assert not (arr[round(h - py), round(px)] == [255, 0, 0]).all()
    assert r.figure() is not None  # LAMResult.figure delegates here


def test_lam_figure_is_closed_to_pyplot(results) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    lam_figure(results["k1"])
    assert plt.get_fignums() == before


def test_comparison_figure(results, tmp_path) -> None:
    path = tmp_path / "cmp.png"
    fig = lam_comparison_figure(results, path, notes={"k1": "PSNR 20.00 dB"})
    assert len(fig.axes) == 5 * 3 + 1
    bars = fig.axes[-1].patches
    np.testing.assert_allclose([b.get_height() for b in bars],
                               [r.diffusion_index for r in results.values()])
    labels = [t.get_text() for t in fig.axes[-1].texts]
    assert labels == [f"{r.diffusion_index:.2f}" for r in results.values()]
    assert [t.get_text() for t in fig.axes[-1].get_xticklabels()] == ["k1", "k5", "k9"]
    assert sum(bool(ax.get_title()) for ax in fig.axes[:15]) == 5  # titles on the first row only
    assert any("PSNR 20.00 dB" in t.get_text() for t in fig.texts)
    assert not any("not comparable" in t.get_text() for t in fig.texts)
    with Image.open(path) as im:
        w, h = im.size
    assert 1000 < w < 2500 and 700 < h < 1600


def test_comparison_warns_on_different_settings(results) -> None:
    other = LAM(_sr_net(3, 0), steps=6, progress=False)(results["k1"].image, 0, 0, 8)
    fig = lam_comparison_figure({"a": results["k1"], "b": other})
    assert any("not comparable" in t.get_text() for t in fig.texts)
    with pytest.raises(ValueError):
        lam_comparison_figure({})


def test_matplotlib_not_imported_by_lamcam() -> None:
    code = "import sys, lamcam, lamcam.viz, lamcam.viz.lam, lamcam.lam; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_docstring_examples() -> None:
    result = doctest.testmod(vlam, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 5 and result.failed == 0


def test_exports() -> None:
    import lamcam.viz

    assert lamcam.viz.lam_figure is lam_figure and lamcam.viz.kde_map is kde_map
    assert Path(vlam.__file__).name == "lam.py"
