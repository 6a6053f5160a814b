"""Receptive-field cropping: crops give the whole-image LAM exactly, global networks are detected,
and large images are refused up front instead of dying in the allocator."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lamcam
import lamcam.zoo as zoo
from lamcam import LAMMemoryError
from lamcam.io import load_image
from lamcam.metrics.diffusion import diffusion_index, diffusion_index_padded
from lamcam.paths import BlurPath, blur, gaussian_kernel
from lamcam.receptive import Field, crop_box, crop_side, declared_field, measure_field


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    return load_image(zoo.sr_samples()[0]["lr"])  # (3, 64, 64)


def _conv_sr(depth: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)]
    layers += [nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*layers).eval()


class _Gated(nn.Module):
    """A conv net whose features are scaled by a gate of the global average (RCAN-like)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 12, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.a(x))
        f = f * torch.sigmoid(f.mean(dim=(2, 3), keepdim=True))
        return F.pixel_shuffle(self.b(f), 2)


class _Unshuffle(nn.Module):
    """Pixel-unshuffle x2, convs at half resolution, shuffle x4: equivariant to even shifts only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(16, 48, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.b(torch.relu(F.pixel_unshuffle(self.a(x), 2))), 4)


# ---------------------------------------------------------------------------------- the path
def test_blur_path_on_boxes_is_the_whole_images_path() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 30, 26, dtype=torch.float64)
    alphas = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    whole = BlurPath(x, 1.2)
    boxes = [(0, 0, 10, 12), (20, 14, 10, 12), (5, 3, 10, 12)]  # corners use the image's border
    crops = BlurPath(x, 1.2, boxes=boxes)
    pts, der = crops.points(alphas), crops.derivative(alphas)
    assert pts.shape == (3, 3, 3, 10, 12)
    for b, (t, l_, h, w) in enumerate(boxes):
        torch.testing.assert_close(pts[:, b], whole.points(alphas)[..., t:t + h, l_:l_ + w])
        torch.testing.assert_close(der[:, b], whole.derivative(alphas)[..., t:t + h, l_:l_ + w])
        torch.testing.assert_close(crops.start()[b], whole.start()[:, t:t + h, l_:l_ + w])
    # and against the plain blur with the kernel at σ(1 - α)
    k = gaussian_kernel(1.2 * 0.7, 9, dtype=torch.float64)
    torch.testing.assert_close(pts[1, 1], blur(x, k)[0, :, 20:30, 14:26])
    with pytest.raises(ValueError, match="leaves"):
        BlurPath(x, boxes=[(25, 0, 10, 10)])


def test_diffusion_index_padded() -> None:
    torch.manual_seed(0)
    m = torch.zeros(20, 30)
    m[4:9, 10:17] = torch.rand(5, 7)
    assert abs(diffusion_index_padded(m[4:9, 10:17], 600) - diffusion_index(m)) < 1e-9
    with pytest.raises(ValueError):
        diffusion_index_padded(torch.ones(5), 4)


# -------------------------------------------------------------------------- the field itself
def test_measured_field_of_plain_convs() -> None:
    f = measure_field(_conv_sr(4), channels=3)
    assert f.local and f.period == 1 and f.source == "measured"
    assert f.radius == 4 + 1  # four 3x3 convs reach 4 LR pixels; one pixel of margin


def test_measured_period_of_pixel_unshuffle() -> None:
    f = measure_field(_Unshuffle(), channels=3)
    assert f.local and f.period == 2


def test_global_networks_are_detected() -> None:
    assert not measure_field(_Gated(), channels=3).local
    assert declared_field(zoo.load("sr_rcan")).radius is None


@pytest.mark.parametrize("name", ["sr_fsrcnn", "sr_edsr"])
def test_declared_reach_covers_the_measured_support(name: str) -> None:
    """The zoo's reach (from the layer structure) bounds the measured gradient support (for
    SwinIRLite, tests/test_zoo_sr.py checks the structure against probe_receptive_field)."""
    model = zoo.load(name)
    declared = declared_field(model)
    assert declared is not None and declared.local and declared.source == "declared"
    measured = measure_field(model, channels=3)
    assert measured.radius is not None
    assert measured.radius - 1 <= declared.radius  # measured carries one pixel of margin


def test_crop_box_geometry() -> None:
    f = Field(5, 4, "user")
    t, l_, h, w = crop_box(f, (20, 22), (0, 3), (64, 40))
    assert t % 4 == 0 and t <= 20 - 5 and t + h >= 22 + 5 + 1  # grid-aligned, holds the field
    assert l_ == 0 and w == 3 + 5 + 1
    # at the bottom-right the box reaches the border
    t, l_, h, w = crop_box(f, (60, 63), (36, 39), (64, 40))
    assert t + h == 64 and l_ + w == 40
    # a fixed size is kept where the image allows, shifted inwards at the borders
    side = crop_side(f, 16, 4)
    for rows in ((0, 4), (30, 34), (59, 63)):
        t, _, h, _ = crop_box(f, rows, (0, 4), (64, 40), size=(side, side))
        assert t <= max(0, rows[0] - 5) and t + h >= min(64, rows[1] + 6) and h >= side
    with pytest.raises(ValueError):
        crop_box(Field(None), (0, 1), (0, 1), (8, 8))


# ------------------------------------------------------------------- cropped LAM == whole LAM
def _same(a: lamcam.LAMResult, b: lamcam.LAMResult) -> None:
    scale = float(b.attribution.abs().max())
    assert float((a.attribution - b.attribution).abs().max()) <= 1e-5 * scale
    assert abs(a.diffusion_index - b.diffusion_index) <= 1e-4
    assert a.pixels95 == b.pixels95
    assert abs(a.completeness_error - b.completeness_error) <= 1e-5
    torch.testing.assert_close(a.sr, b.sr, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,where", [
    ("sr_fsrcnn", (40, 60)), ("sr_edsr", (120, 8)), ("sr_edsr", (236, 236)),
])
def test_cropped_lam_equals_whole_image_lam(name: str, where: tuple[int, int],
                                            lr: torch.Tensor) -> None:
    model = zoo.load(name)
    a = lamcam.LAM(model, steps=6, progress=False)(lr, *where)
    b = lamcam.LAM(model, steps=6, progress=False, crop=False)(lr, *where)
    box = a.params["crop"]["box"]
    assert box is not None and box[2] * box[3] < lr.shape[1] * lr.shape[2]
    assert a.params["crop"]["field"]["source"] == "declared"
    assert b.params["crop"] == {"box": None, "reason": "crop=False"}
    _same(a, b)


def test_window_attention_crop_stays_on_the_window_grid() -> None:
    """SwinIRLite (8-pixel windows, padded inside forward) on an image whose size is not a
    multiple of the window: crops near the bottom-right edge start on the window grid and give
    the whole-image LAM."""
    torch.manual_seed(3)
    img = torch.rand(3, 70, 83)
    model = zoo.load("sr_swinir")
    assert declared_field(model).period == 8  # its window
    for where in ((70 * 4 - 20, 83 * 4 - 17), (36, 150)):
        a = lamcam.LAM(model, steps=2, progress=False)(img, *where)
        b = lamcam.LAM(model, steps=2, progress=False, crop=False)(img, *where)
        box = a.params["crop"]["box"]
        assert box is not None and box[0] % 8 == 0 and box[1] % 8 == 0
        _same(a, b)


def test_measured_field_crop_for_a_model_without_metadata(lr: torch.Tensor) -> None:
    model = _Unshuffle()
    small = lamcam.LAM(model, steps=4, progress=False)(lr, 101, 37)  # 64x64: not worth measuring
    assert small.params["crop"]["box"] is None and "small" in small.params["crop"]["reason"]
    lam = lamcam.LAM(model, steps=4, progress=False, crop=True)
    a = lam(lr, 101, 37)
    b = lamcam.LAM(model, steps=4, progress=False, crop=False)(lr, 101, 37)
    crop = a.params["crop"]
    assert crop["box"] is not None and crop["field"]["source"] == "measured"
    assert crop["field"]["period"] == 2 and crop["box"][0] % 2 == 0 and crop["box"][1] % 2 == 0
    _same(a, b)


def test_global_network_gets_the_whole_image(lr: torch.Tensor) -> None:
    model = zoo.load("sr_rcan")
    a = lamcam.LAM(model, steps=2, progress=False)(lr, 100, 100)
    assert a.params["crop"]["box"] is None and "global" in a.params["crop"]["reason"]
    with pytest.raises(ValueError, match="global"):
        lamcam.LAM(model, steps=2, progress=False, crop=True)(lr, 100, 100)
    gated = lamcam.LAM(_Gated(), steps=2, progress=False)
    assert not gated.field(lr).local and gated.field(lr).source == "measured"
    b = gated(lr[:, :32, :32], 20, 20)
    assert b.params["crop"]["box"] is None and b.params["crop"]["field"]["source"] == "measured"


def test_a_too_small_field_is_caught_and_the_whole_image_used(lr: torch.Tensor) -> None:
    model = zoo.load("sr_edsr")  # reaches 20 LR pixels
    with pytest.warns(UserWarning, match="too small"):
        a = lamcam.LAM(model, steps=3, progress=False, receptive_field=5)(lr, 120, 120)
    assert a.params["crop"]["box"] is None
    with pytest.raises(ValueError, match="changes the window's output"):
        lamcam.LAM(model, steps=3, progress=False, receptive_field=5, crop=True)(lr, 120, 120)
    b = lamcam.LAM(model, steps=3, progress=False, crop=False)(lr, 120, 120)
    _same(a, b)


def test_callable_objectives_are_not_cropped_unless_asked(lr: torch.Tensor) -> None:
    def far(out: torch.Tensor, row: int, col: int, window: int) -> torch.Tensor:
        return out[:, :, row:row + window, col:col + window].mean(dim=(1, 2, 3))

    model = zoo.load("sr_fsrcnn")
    a = lamcam.LAM(model, steps=3, progress=False, objective=far)(lr, 100, 100)
    assert a.params["crop"]["box"] is None and "callable" in a.params["crop"]["reason"]
    b = lamcam.LAM(model, steps=3, progress=False, objective=far, crop=True)(lr, 100, 100)
    assert b.params["crop"]["box"] is not None
    _same(b, a)


def test_whole_output_is_tiled_exactly_for_large_images() -> None:
    torch.manual_seed(4)
    img = torch.rand(3, 300, 260)
    model = zoo.load("sr_fsrcnn")
    lam = lamcam.LAM(model, steps=2, progress=False)
    res = lam(img, 500, 600)
    assert res.params["crop"]["box"] is not None
    with torch.no_grad():
        torch.testing.assert_close(res.sr, model(img[None])[0], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------- memory
def test_memory_refused_up_front_with_the_numbers(lr: torch.Tensor) -> None:
    with pytest.raises(LAMMemoryError, match=r"needs about .* memory_limit") as e:
        lamcam.LAM(zoo.load("sr_rcan"), steps=2, progress=False, memory_limit=1e6)(lr, 10, 10)
    assert isinstance(e.value, MemoryError) and "global" in str(e.value)
    # a huge image of a global network: refused from small probes, without a whole-image pass
    big = torch.rand(3, 1024, 1024)
    with pytest.raises(LAMMemoryError, match="1024x1024"):
        lamcam.LAM(_Gated(), steps=2, progress=False, memory_limit=2e8)(big, 2000, 2000)


def test_a_large_image_of_a_local_network_runs_on_its_crop() -> None:
    """1024² LR with a 100 MB limit: the whole image would need far more, the crop does not."""
    big = torch.rand(3, 1024, 1024)
    model = _conv_sr(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = lamcam.LAM(model, steps=2, progress=False, memory_limit=1e8)(big, 1000, 1500)
    box = res.params["crop"]["box"]
    assert box is not None and box[2] < 40 and box[3] < 40
    assert res.attribution.shape == big.shape and res.sr.shape == (3, 2048, 2048)
    assert bool((res.attribution[:, :box[0]] == 0).all())
