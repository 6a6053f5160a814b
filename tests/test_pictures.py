"""Pictures that read at a glance (issue 12, items 13-16 and the demo parts of 8-9): titled CLI
overlays with a colour bar, a perceptual default colormap and a gray background, the zoomed
inset of a local LAM, the demo page at wide and narrow widths, demo progress and refresh."""

from __future__ import annotations

import re
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
from lamcam.viz import overlay_cam, overlay_figure
from lamcam.viz.lam import inset_region, lam_figure
from lamcam.viz.overlay import DEFAULT_CMAP
from lamcam.viz.report import ReportImage, Section, write_index_html

# --------------------------------------------------------------------------------------------
# 13: titled overlays with a colour bar (API and ``lamcam cam``)
# --------------------------------------------------------------------------------------------


def test_overlay_figure_has_title_panels_and_colour_bar() -> None:
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    cam = torch.zeros(8, 8)
    cam[2:4, 5:7] = 1.0
    fig = overlay_figure(img, cam, title="cat.png", image_title="input\npred: cat (p=0.91)",
                         panel_title="Grad-CAM++ · layer4\ntarget: cat (p=0.91)\nscore 3.2")
    assert len(fig.axes) == 3  # input, overlay, colour bar
    texts = [t.get_text() for t in fig.texts]
    assert "cat.png" in texts
    assert "Grad-CAM++ · layer4" in fig.axes[1].get_title()
    cbar = fig.axes[2]
    assert [t.get_text() for t in cbar.get_yticklabels()] == ["0.0", "0.5", "1.0"]
    # the colour bar is the overlay's colormap: its top is turbo's dark red
    assert cbar.collections or cbar.images or cbar.patches
    g = overlay_figure(img, torch.randn(3, 32, 32), kind="gradient", panel_title="guided")
    assert len(g.axes) == 2  # a signed gradient has no [0, 1] colour bar


def _tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    m.lamcam_meta = {"name": "tiny", "classes": ["red", "green", "blue"], "default_layer": "3"}
    return m


@pytest.fixture
def tiny_cli_zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(name: str, arch: str | None = None) -> nn.Module:
        if name != "tiny":
            raise ValueError(f"unknown model {name!r}")
        return _tiny_classifier()

    monkeypatch.setattr(lamcam.zoo, "load", load, raising=False)


def test_cli_cam_writes_titled_figure_and_plain_overlay(tiny_cli_zoo, tmp_path, capsys) -> None:
    img = save_image(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)),
                     tmp_path / "in" / "pic.png")
    out = tmp_path / "out"
    assert main(["cam", str(img), "--model", "tiny", "--method", "gradcam", "--out", str(out)]) == 0
    with Image.open(out / "pic_gradcam.png") as im:
        w, h = im.size
        arr = np.asarray(im.convert("RGB"))
    assert w > 32 * 4 and h > 32 * 4  # a figure, not the 32x32 overlay
    assert (arr == 255).all(axis=-1).mean() > 0.2  # white figure background around the panels

    # the bare overlay stays available through the API
    assert overlay_cam(torch.rand(3, 32, 32), torch.rand(8, 8)).size == (32, 32)
    assert "pic.png" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# 14: perceptual default colormap, gray background
# --------------------------------------------------------------------------------------------


def test_default_colormap_is_perceptual_and_gray_background_removes_colour() -> None:
    assert DEFAULT_CMAP in ("turbo", "inferno")
    img = torch.zeros(3, 16, 16)
    img[0] = 1.0  # saturated red background
    cam = torch.zeros(16, 16)
    default = np.asarray(overlay_cam(img, cam, alpha=0.0)).astype(int)
    gray = np.asarray(overlay_cam(img, cam, alpha=0.0, background="gray")).astype(int)
    assert (default[..., 0] == 255).all()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert gray.max() <= round(255 * 0.6) + 1  # dimmed
    turbo = np.asarray(overlay_cam(torch.zeros(3, 4, 4), torch.ones(4, 4), alpha=1.0))
    jet = np.asarray(overlay_cam(torch.zeros(3, 4, 4), torch.ones(4, 4), alpha=1.0, cmap="jet"))
    assert tuple(turbo[0, 0]) != tuple(jet[0, 0])  # the default is no longer jet
    with pytest.raises(ValueError, match="background"):
        overlay_cam(img, cam, background="sepia")


# --------------------------------------------------------------------------------------------
# 15: the zoomed inset of a local LAM
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_lam():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2))
    img = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(3))
    return LAM(net, steps=4, progress=False)(img, row=40, col=56, window=8)


def test_lam_figure_inset_contains_window_and_attribution(local_lam) -> None:
    r = local_lam
    fig = lam_figure(r, title="local")
    insets = [ax for ax in fig.axes if ax.get_label() == "lam-inset"]
    assert len(insets) == 1 and fig.axes[5] is insets[0]  # after the paper's 5 panels
    ax = insets[0]
    (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()  # SR pixels; y axis inverted
    row, col, win = 40, 56, 8
    assert x0 <= col - 0.5 and x1 >= col + win - 0.5 and y0 <= row - 0.5 and y1 >= row + win - 0.5
    assert (x1 - x0) < 96 / 2 and (y1 - y0) < 96 / 2  # a zoom, not the whole image
    # 99 % of the map's mass lies inside the inset's LR region
    r0, r1, c0, c1 = inset_region(r)
    m = r.map.abs()
    assert float(m[r0:r1, c0:c1].sum()) >= 0.99 * float(m.sum()) - 1e-6
    # the window box is drawn on the inset, and the region is marked on the full map panel
    assert any(p.get_xy() == (col - 0.5, row - 0.5) for p in ax.patches)
    assert len(fig.axes[1].patches) == 1
    assert lam_figure(r, inset=False).axes[-1].get_label() != "lam-inset"


def test_no_inset_when_attribution_is_global(local_lam) -> None:
    import dataclasses

    flat = dataclasses.replace(local_lam, map=torch.ones_like(local_lam.map))
    assert all(ax.get_label() != "lam-inset" for ax in lam_figure(flat).axes)
    assert len(lam_figure(flat).axes) == 5  # the paper's panel, unchanged


# --------------------------------------------------------------------------------------------
# 16: the report page at wide and narrow widths
# --------------------------------------------------------------------------------------------


def test_report_page_narrow_layout_and_no_repeated_captions(tmp_path) -> None:
    Image.new("RGB", (2000, 260), "white").save(tmp_path / "wide.png")
    Image.new("RGB", (300, 300), "white").save(tmp_path / "square.png")
    rows = [["model", "a very long column header"], ["x" * 80, "1"]]
    sec = Section("s", "text", [ReportImage("wide.png", "", "ok", alt="figure title"),
                                ReportImage("square.png", "a caption")], rows)
    html = write_index_html(tmp_path, [sec], thumb_width=1400).read_text()
    assert 'name="viewport" content="width=device-width' in html
    assert re.search(r"@media \(max-width: \d+px\)", html)
    assert '<div class="table-wrap"><table>' in html  # a wide table scrolls inside its box
    assert 'class="ok wide"' in html and 'alt="figure title"' in html
    assert html.count("<figcaption>") == 1  # the titled figure has no caption repeating it
    assert "overflow-x: auto" in html
    assert not re.search(r"min-width:\s*\d{3,}px", html)  # nothing forces the page wider
    # a fixed width only on figures that scroll inside their own frame
    narrow = html[html.index("@media"):]
    for m in re.finditer(r"figure\.(\w+) img \{[^}]*?(?<![-\w])width:\s*\d{3,}px", narrow):
        assert f"figure.{m.group(1)} {{ overflow-x: auto; }}" in narrow


# --------------------------------------------------------------------------------------------
# 8/9: demo progress and refresh
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_demo(monkeypatch: pytest.MonkeyPatch, tiny_cli_zoo, tmp_path) -> list[Path]:
    sdir = tmp_path / "samples"
    paths = []
    for i in range(3):
        x = torch.zeros(3, 32, 32)
        x[i] = 1.0
        paths.append(save_image(x, sdir / f"s{i}.png"))
    (sdir / "samples.json").write_text(
        '{"s0.png": {"label": 0, "class": "red"}, "s1.png": {"label": 1, "class": "green"},'
        ' "s2.png": {"label": 2, "class": "blue"}}'
    )
    monkeypatch.setattr(lamcam.zoo, "samples", lambda: paths, raising=False)
    return paths


def test_demo_prints_progress_and_refreshes_its_outputs(tiny_demo, tmp_path, capsys) -> None:
    from lamcam.demo import MANIFEST, run_demo

    out = tmp_path / "demo"
    run_demo(out, models=["tiny"], max_images=3, lam=False)
    err = capsys.readouterr().err
    assert "lamcam demo: [CAM 1/1] tiny" in err and "writing index.html" in err
    assert "\r" not in err  # stderr is not a terminal: lines, no bar
    assert (out / "tiny" / "s2.png").is_file() and (out / MANIFEST).is_file()
    (out / "tiny" / "my_notes.txt").write_text("mine")  # user files, never touched
    (out / "README.txt").write_text("mine too")

    run_demo(out, models=["tiny"], max_images=2, lam=False)  # s2 is no longer shown
    err = capsys.readouterr().err
    assert not (out / "tiny" / "s2.png").exists()
    assert "removed 2 stale file(s)" in err and "tiny/s2.png" in err  # the figure, its thumb
    assert not list((out / "thumbs").glob("s2-*.png"))
    assert (out / "tiny" / "s0.png").is_file() and (out / "tiny" / "s1.png").is_file()
    assert (out / "tiny" / "my_notes.txt").read_text() == "mine"
    assert (out / "README.txt").read_text() == "mine too"
    assert (out / "index.html").is_file()

    run_demo(out, models=["tiny"], max_images=2, lam=False, progress=False)
    assert capsys.readouterr().err == ""  # quiet


def test_lam_comparison_rows_share_one_zoom(local_lam) -> None:
    from lamcam.viz.lam import lam_comparison_figure

    fig = lam_comparison_figure({"a": local_lam, "b": local_lam}, inset=True)
    insets = [ax for ax in fig.axes if ax.get_label() == "lam-inset"]
    assert len(insets) == 2 and insets[0].get_xlim() == insets[1].get_xlim()
    assert fig.axes[-1].get_xticklabels()[0].get_text() == "a"  # the bar chart stays last
    assert len(lam_comparison_figure({"a": local_lam}, inset=False).axes) == 6
