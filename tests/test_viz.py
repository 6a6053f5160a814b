"""Tests for lamcam.viz: overlays, gradient rendering, figures and the HTML report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lamcam.viz import (
    ReportImage,
    Section,
    gradient_image,
    heatmap,
    methods_figure,
    overlay_cam,
    to_pil,
    write_index_html,
)


def test_import_lamcam_does_not_import_matplotlib() -> None:
    code = "import sys, lamcam, lamcam.viz, lamcam.io; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_to_pil_shapes_and_values() -> None:
    im = to_pil(torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]], [[1.0, 0.0]]]))  # (3, 1, 2)
    assert im.mode == "RGB" and im.size == (2, 1)
    assert im.getpixel((0, 0)) == (0, 128, 255) and im.getpixel((1, 0)) == (255, 128, 0)
    g = to_pil(torch.full((1, 3, 4), 2.0))  # clipped
    assert g.mode == "L" and g.getpixel((0, 0)) == 255
    arr = np.zeros((3, 4, 3), dtype=np.uint8)
    arr[..., 1] = 200
    assert to_pil(arr).getpixel((2, 1)) == (0, 200, 0)


def test_overlay_puts_colour_in_the_hot_quadrant() -> None:
    img = torch.full((3, 32, 32), 0.5)
    cam = torch.zeros(32, 32)
    cam[:16, 16:] = 1.0  # top-right quadrant
    out = np.asarray(overlay_cam(img, cam, alpha=0.5, cmap="jet")).astype(int)
    hot, cold = out[2:14, 18:30], out[18:30, 2:14]
    # jet(1) = dark red, jet(0) = dark blue; blended 50/50 with grey 0.5
    assert (hot[..., 0] > hot[..., 2] + 50).all()
    assert (cold[..., 2] > cold[..., 0] + 50).all()
    assert abs(int(hot[..., 0].mean()) - round(255 * (0.25 + 0.5 * 0.5))) <= 2


def test_overlay_resizes_a_small_map_and_alpha_limits() -> None:
    img = torch.zeros(3, 40, 40)
    cam = torch.zeros(4, 4)
    cam[3, 3] = 1.0
    out = overlay_cam(img, cam, alpha=1.0)
    assert out.size == (40, 40)
    # the default colormap (turbo): dark red at 1, dark blue-violet at 0
    cold = out.getpixel((0, 0))
    assert out.getpixel((39, 39))[0] > 100 and cold[2] > cold[0] > cold[1]
    # alpha 0 reproduces the image exactly
    im = torch.rand(3, 8, 8)
    assert np.array_equal(
        np.asarray(overlay_cam(im, torch.rand(8, 8), alpha=0.0)), np.asarray(to_pil(im))
    )
    with pytest.raises(ValueError, match="alpha"):
        overlay_cam(im, torch.rand(8, 8), alpha=1.5)
    with pytest.raises(ValueError, match="colormap"):
        overlay_cam(im, torch.rand(8, 8), cmap="no-such-map")


def test_gradient_image_constant_is_mid_grey() -> None:
    for value in (0.0, 3.5, -1e6):
        out = np.asarray(gradient_image(torch.full((3, 5, 7), value)))
        assert out.shape == (5, 7, 3)
        assert (out == 128).all()


def test_gradient_image_sign_and_scale() -> None:
    g = torch.zeros(3, 10, 10)
    g[:, :5] = 1.0
    g[:, 5:] = -1.0  # mean 0, std 1 -> 0.5 +- 0.1
    out = np.asarray(gradient_image(g)).astype(int)
    assert (out[:5] == round(0.6 * 255)).all() and (out[5:] == round(0.4 * 255)).all()
    assert gradient_image(torch.randn(1, 6, 6)).mode == "RGB"


def test_heatmap_endpoints() -> None:
    h = heatmap(torch.tensor([[0.0, 1.0]]), cmap="gray")
    assert h.getpixel((0, 0)) == (0, 0, 0) and h.getpixel((1, 0)) == (255, 255, 255)
    assert heatmap(torch.rand(4, 4), size=(12, 9)).size == (9, 12)


def test_methods_figure_saves_png_of_expected_size(tmp_path: Path) -> None:
    img = torch.rand(3, 64, 64)
    panels = {
        "CAM": ("cam", torch.rand(64, 64)),
        "Grad-CAM": ("cam", torch.rand(8, 8)),
        "Guided Backprop": ("gradient", torch.randn(3, 64, 64)),
    }
    path = tmp_path / "fig" / "f.png"
    fig = methods_figure(img, panels, "model · image · pred", path, dpi=100, panel_size=2.0)
    assert path.exists()
    w, h = Image.open(path).size
    # 4 panels of 2 in + colour bar 0.45 in + 0.1 in margins; one-line labels and a title
    assert w == round((4 * 2.0 + 0.45 + 0.1) * 100)
    assert h == round((2.0 + 0.14 + 0.17 + 0.32 + 0.05) * 100)
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles == ["input", "CAM", "Grad-CAM", "Guided Backprop"]
    # no axes overlap
    boxes = [ax.get_position() for ax in fig.axes]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a.x1 <= b.x0 + 1e-9 or b.x1 <= a.x0 + 1e-9 or a.y1 <= b.y0 or b.y1 <= a.y0


def test_methods_figure_grid_and_errors(tmp_path: Path) -> None:
    img = torch.rand(3, 16, 16)
    panels = {f"m{i}": ("gradient", torch.randn(3, 16, 16)) for i in range(5)}
    fig = methods_figure(img, panels, ncols=3, colorbar=True)
    assert len(fig.axes) == 6  # gradient-only: no colour bar
    with pytest.raises(ValueError, match="kind"):
        methods_figure(img, {"x": ("bogus", torch.rand(16, 16))})


def test_write_index_html(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    Image.new("RGB", (2000, 300), "white").save(tmp_path / "m" / "a b.png")
    Image.new("RGB", (100, 50), "white").save(tmp_path / "m" / "small.png")
    sections = [
        Section(
            "Overview", "Two <models>.\n\nSecond paragraph.", table=[["model", "acc"], ["v", "1/2"]]
        ),
        Section(
            "shapes_vgg",
            images=[
                ReportImage(tmp_path / "m" / "a b.png", "true: circle\npred: <star> (0.51)", "bad"),
                ReportImage("m/small.png", "ok one", "ok"),
            ],
        ),
        {"title": "LAM (later)", "text": "appended as a dict", "images": ["m/small.png"]},
    ]
    page = write_index_html(tmp_path, sections, title="demo & co")
    text = page.read_text()
    assert page == tmp_path / "index.html"
    assert "<title>demo &amp; co</title>" in text
    assert "Two &lt;models&gt;." in text and "pred: &lt;star&gt; (0.51)" in text
    assert 'href="m/a%20b.png"' in text  # relative, quoted
    assert 'href="m/small.png"' in text and 'src="m/small.png"' in text  # small: no thumbnail
    thumbs = re.findall(r'src="(thumbs/[^"]+)"', text)
    assert len(thumbs) == 1 and Image.open(tmp_path / thumbs[0]).width == 960
    assert str(tmp_path) not in text  # no absolute paths
    assert "http" not in text and "<script" not in text  # self-contained
    assert text.count("<section") == 3 and 'class="bad' in text and 'class="ok' in text
    assert "<th>model</th>" in text and "<td>1/2</td>" in text


def test_methods_figure_draws_boxes_on_the_input_only() -> None:
    img = torch.rand(3, 16, 16)
    fig = methods_figure(img, {"CAM": ("cam", torch.rand(16, 16))}, boxes=[[2, 3, 8, 9]])
    rects = fig.axes[0].patches
    assert len(rects) == 2  # dark outline + light outline
    assert rects[0].get_xy() == (1.5, 2.5) and rects[0].get_width() == 6
    assert len(fig.axes[1].patches) == 0
