"""Tests for lamcam.io: exact round trips, announced conversions, clear load errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lamcam.io import (
    ImageLoadError,
    OutputDirError,
    ensure_writable_dir,
    load_image,
    save_image,
)


def _load_recording(path: Path, **kw) -> tuple[torch.Tensor, list[str]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        x = load_image(path, **kw)
    return x, [str(w.message) for w in rec]


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(3, 13, 17), dtype=np.uint8)
    x = torch.from_numpy(u8).float() / 255
    p = save_image(x, tmp_path / "sub" / "x.png")
    y, msgs = _load_recording(p)
    assert msgs == []
    assert y.dtype == torch.float32 and y.shape == (3, 13, 17)
    assert torch.equal(y, x)
    # and again through PIL with the same bytes
    assert np.array_equal(np.asarray(Image.open(p)), u8.transpose(1, 2, 0))


def test_grayscale_mode_round_trip(tmp_path: Path) -> None:
    x = torch.arange(20, dtype=torch.float32).reshape(1, 4, 5) / 255
    p = save_image(x, tmp_path / "g.png")
    y, msgs = _load_recording(p, mode="L")
    assert msgs == [] and torch.equal(y, x)


def test_grayscale_replicated_for_rgb(tmp_path: Path) -> None:
    Image.new("L", (6, 4), 51).save(tmp_path / "g.png")
    x, msgs = _load_recording(tmp_path / "g.png")
    assert x.shape == (3, 4, 6)
    assert torch.allclose(x, torch.full_like(x, 0.2))
    assert any("replicated to 3 channels" in m and "g.png" in m for m in msgs)


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (0, 0, 0, 0)  # fully transparent -> white
    arr[1, 0] = (0, 0, 0, 51)  # 20 % black over white -> 0.8
    arr[1, 1] = (0, 255, 0, 255)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    x, msgs = _load_recording(tmp_path / "a.png")
    assert x.shape == (3, 2, 2)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(x[:, 0, 1], torch.ones(3))
    assert torch.allclose(x[:, 1, 0], torch.full((3,), 0.8), atol=1e-6)
    assert torch.allclose(x[:, 1, 1], torch.tensor([0.0, 1.0, 0.0]))
    assert any("alpha composited on a white background" in m for m in msgs)


def test_palette_expanded(tmp_path: Path) -> None:
    im = Image.new("P", (3, 2))
    im.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    x, msgs = _load_recording(tmp_path / "p.png")
    expect0 = torch.tensor([10, 20, 30]) / 255
    expect1 = torch.tensor([200, 100, 0]) / 255
    assert torch.allclose(x[:, 0, 0], expect0) and torch.allclose(x[:, 0, 1], expect1)
    assert any("palette image converted to RGB" in m for m in msgs)


def test_sixteen_bit_grayscale_rescaled(tmp_path: Path) -> None:
    a = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    x, msgs = _load_recording(tmp_path / "g16.png", mode="L")
    assert torch.allclose(x[0], torch.from_numpy(a.astype(np.float32) / 65535))
    assert any("16-bit" in m for m in msgs)


def test_cmyk_and_rgb_to_gray(tmp_path: Path) -> None:
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    x, msgs = _load_recording(tmp_path / "c.jpg")
    assert x[0].mean() > 0.8 and x[1].mean() < 0.2  # red
    assert any("CMYK" in m for m in msgs)
    Image.new("RGB", (2, 2), (255, 255, 255)).save(tmp_path / "w.png")
    y, msgs = _load_recording(tmp_path / "w.png", mode="L")
    assert y.shape == (1, 2, 2) and torch.allclose(y, torch.ones_like(y))
    assert any("grayscale" in m for m in msgs)


def test_resize_warns(tmp_path: Path) -> None:
    save_image(torch.rand(3, 40, 30), tmp_path / "r.png")
    x, msgs = _load_recording(tmp_path / "r.png", size=16)
    assert x.shape == (3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert any("resized from 40x30 to 16x16" in m for m in msgs)
    x, msgs = _load_recording(tmp_path / "r.png", size=(40, 30))
    assert x.shape == (3, 40, 30) and msgs == []


def test_truncated_png(tmp_path: Path) -> None:
    good = save_image(torch.rand(3, 64, 64), tmp_path / "good.png")
    data = good.read_bytes()
    bad = tmp_path / "truncated.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.png.*(truncated|corrupt)") as info:
        load_image(bad)
    assert info.value.path == bad


def test_text_file_named_png(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match=r"notes\.png.*not a recognised image format"):
        load_image(p)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.png.*empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match=r"nope\.png.*does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_image_load_error_is_value_error() -> None:
    assert issubclass(ImageLoadError, ValueError)


def test_bad_arguments(tmp_path: Path) -> None:
    p = save_image(torch.rand(3, 4, 4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="mode"):
        load_image(p, mode="RGBA")
    with pytest.raises(ValueError, match="positive"):
        load_image(p, size=0)


def test_ensure_writable_dir(tmp_path: Path) -> None:
    d = ensure_writable_dir(tmp_path / "a" / "b")
    assert d.is_dir() and list(d.iterdir()) == []  # the probe file is removed
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        ensure_writable_dir(blocker)
    with pytest.raises(OutputDirError, match="cannot create"):
        ensure_writable_dir(blocker / "sub")


def test_load_instance_masks(tmp_path) -> None:
    from lamcam.io import ImageLoadError, load_instance_masks

    ids = np.zeros((6, 8), dtype=np.uint8)
    ids[1:3, 1:3] = 1
    ids[4:6, 5:8] = 7  # ids need not be consecutive
    Image.fromarray(ids).save(tmp_path / "m.png")
    m = load_instance_masks(tmp_path / "m.png", (6, 8))
    assert m.shape == (2, 6, 8) and m.dtype == torch.bool
    assert int(m[0].sum()) == 4 and int(m[1].sum()) == 6 and not bool((m[0] & m[1]).any())
    with pytest.raises(ImageLoadError, match="8x6 but the image is used at 10x6"):
        load_instance_masks(tmp_path / "m.png", (6, 10))
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="empty"):
        load_instance_masks(tmp_path / "empty.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageLoadError, match="unreadable"):
        load_instance_masks(tmp_path / "bad.png")
