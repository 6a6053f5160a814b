"""LAM and the path engine against independent answers: the official discretisation re-implemented
in numpy, completeness, linear networks, hand-computed Gini, and the errors bad input gets."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import lamcam
from lamcam.integrate import integrate_path
from lamcam.lam import GradientDetector, WindowMean
from lamcam.metrics import diffusion_index, gini, mass_pixels
from lamcam.paths import BlurPath, StraightPath, blur, gaussian_kernel, gaussian_kernel_dsigma


def small_sr(scale: int = 2, seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale),
    ).to(dtype).eval()


def linear_sr(scale: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
                         nn.PixelShuffle(scale)).double().eval()


# ------------------------------------------------------------------ the official algorithm, in numpy


def _official_kernel(l: int, sigma: float) -> np.ndarray:
    ax = np.arange(-l // 2 + 1.0, l // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    k = np.exp(-(xx**2 + yy**2) / (2.0 * (sigma + 1e-5) ** 2))
    return k / k.sum()


def _filter2d_reflect101(img_hwc: np.ndarray, k: np.ndarray) -> np.ndarray:
    p = k.shape[0] // 2
    h, w = img_hwc.shape[:2]
    padded = np.pad(img_hwc, ((p, p), (p, p), (0, 0)), mode="reflect")  # numpy reflect = 101
    out = np.zeros_like(img_hwc)
    for i in range(k.shape[0]):
        for j in range(k.shape[1]):
            out += k[i, j] * padded[i:i + h, j:j + w]
    return out


def _official_attr_grad(t: torch.Tensor, h: int, w: int, window: int) -> torch.Tensor:
    hx, wx = t.shape[2], t.shape[3]
    h_grad = (t[:, :, :hx - 1, :] - t[:, :, 1:, :]) ** 2
    w_grad = (t[:, :, :, :wx - 1] - t[:, :, :, 1:]) ** 2
    g = (h_grad[:, :, :, :-1] + w_grad[:, :, :-1, :]) ** 0.5
    return g[:, :, h:h + window, w:w + window].sum()


def official_lam(model, img_chw: np.ndarray, h: int, w: int, window=16, sigma=1.2, fold=50, l=9):
    img = np.moveaxis(img_chw, 0, 2).astype(np.float64)
    sigmas = np.linspace(sigma, 0, fold + 1)
    kernels = [_official_kernel(l, s) for s in sigmas]
    total = np.zeros_like(img_chw, dtype=np.float64)
    for i in range(fold):
        point = _filter2d_reflect101(img, kernels[i + 1]).astype(np.float32)
        deriv = _filter2d_reflect101(img, (kernels[i + 1] - kernels[i]) * fold).astype(np.float32)
        x = torch.from_numpy(np.moveaxis(point, 2, 0).copy()).requires_grad_(True)
        _official_attr_grad(model(x[None]), h, w, window).backward()
        grad = x.grad.numpy().copy()
        grad[np.isnan(grad)] = 0.0
        total += grad * np.moveaxis(deriv, 2, 0)
    attribution = total / fold
    amap = np.abs(attribution.sum(0))
    amap = amap / amap.max()
    a = np.sort(amap.flatten() + 1e-7)
    n = a.size
    g = np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * a.sum())
    return attribution, (1 - g) * 100


@pytest.mark.parametrize("row,col", [(10, 12), (0, 0), (32, 32)])
def test_defaults_reproduce_the_official_discretisation(row, col):
    model = small_sr(2)
    torch.manual_seed(1)
    lr = torch.rand(3, 24, 24)
    ref_attr, ref_di = official_lam(model, lr.numpy(), row, col)
    r = lamcam.LAM(model, progress=False)(lr, row=row, col=col)
    scale = np.abs(ref_attr).max()
    assert np.abs(r.attribution.numpy() - ref_attr).max() <= 1e-4 * scale
    assert r.diffusion_index == pytest.approx(ref_di, rel=1e-4)
    assert r.params["scale"] == 2 and r.params["steps"] == 50 and r.params["sigma"] == 1.2


def test_completeness_error_shrinks_with_steps():
    model = small_sr(2, seed=3)
    torch.manual_seed(2)
    lr = torch.rand(3, 20, 20)
    errors = [lamcam.LAM(model, steps=m, progress=False)(lr, 8, 8, 12).completeness_error
              for m in (5, 25, 125)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


@pytest.mark.parametrize("quadrature", ["riemann", "trapezoid", "gauss-legendre"])
def test_linear_network_every_quadrature_gives_grad_times_difference(quadrature):
    model = linear_sr(2)
    torch.manual_seed(4)
    lr = torch.rand(3, 16, 16, dtype=torch.float64)
    obj = WindowMean(6, 10, 8)
    x = lr.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(obj(model(x[None]))[0], x)
    baseline = blur(lr, gaussian_kernel(1.2))[0]
    expected = grad * (lr - baseline)
    r = lamcam.LAM(model, objective="mean", quadrature=quadrature, steps=50, progress=False)(
        lr, 6, 10, 8)
    torch.testing.assert_close(r.attribution, expected, rtol=1e-7, atol=1e-9 * expected.abs().max())
    assert r.completeness_error < 1e-7


def test_gauss_legendre_reaches_riemann_accuracy_with_fewer_steps():
    model = small_sr(2, seed=5, dtype=torch.float64)
    torch.manual_seed(5)
    lr = torch.rand(3, 20, 20, dtype=torch.float64)
    riemann = lamcam.LAM(model, progress=False)(lr, 8, 8, 12).completeness_error
    gl = lamcam.LAM(model, quadrature="gauss-legendre", steps=16, progress=False)(
        lr, 8, 8, 12).completeness_error
    assert gl < riemann


def test_chunking_never_changes_the_result():
    model = small_sr(2, seed=6, dtype=torch.float64)
    torch.manual_seed(6)
    lr = torch.rand(3, 20, 20, dtype=torch.float64)
    for quadrature in ("riemann", "trapezoid", "gauss-legendre"):
        one = lamcam.LAM(model, batch_size=1, quadrature=quadrature, progress=False)(lr, 4, 6)
        many = lamcam.LAM(model, batch_size=50, quadrature=quadrature, progress=False)(lr, 4, 6)
        odd = lamcam.LAM(model, batch_size=7, quadrature=quadrature, progress=False)(lr, 4, 6)
        scale = one.attribution.abs().max()
        assert (one.attribution - many.attribution).abs().max() <= 1e-6 * scale
        assert (one.attribution - odd.attribution).abs().max() <= 1e-6 * scale


def test_kernel_and_its_sigma_derivative():
    k = gaussian_kernel(1.2)
    assert torch.allclose(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    ref = _official_kernel(9, 1.2)
    assert np.abs(k.numpy() - ref).max() < 1e-15
    for s in (0.05, 0.6, 1.2):
        h = 1e-6
        fd = (gaussian_kernel(s + h) - gaussian_kernel(s - h)) / (2 * h)
        torch.testing.assert_close(gaussian_kernel_dsigma(s), fd, rtol=1e-5, atol=1e-8)


def test_blur_path_endpoints_and_derivative():
    torch.manual_seed(0)
    x = torch.rand(3, 12, 12, dtype=torch.float64)
    p = BlurPath(x, 1.2)
    pts = p.points(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(pts[1], x)
    torch.testing.assert_close(pts[0], p.start())
    a = torch.tensor([0.3], dtype=torch.float64)
    h = 1e-6
    fd = (p.points(a + h) - p.points(a - h)) / (2 * h)
    torch.testing.assert_close(p.derivative(a), fd, rtol=1e-5, atol=1e-9)


def test_gradient_detector_hand_computed():
    y = torch.tensor([[[[0.0, 0.0, 3.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]]]])
    # grid (2x2): G[0,0] = sqrt(0 + 0) = 0; G[0,1] = sqrt((0-4)^2 + (0-3)^2) = 5
    # G[1,0] = sqrt(0 + (0-4)^2) = 4;     G[1,1] = sqrt((4-0)^2 + (4-0)^2) = sqrt(32)
    assert float(GradientDetector(0, 0, 2)(y)) == pytest.approx(9 + math.sqrt(32))
    assert float(GradientDetector(0, 1, 1)(y)) == pytest.approx(5.0)


def test_gini_and_diffusion_index_hand_computed():
    # [0, 0, 0, 1] + 1e-7: Σ(2i − n − 1) a_i = 3, n Σ a = 4 (1 + 4e-7)
    assert gini(torch.tensor([0.0, 0.0, 0.0, 1.0])) == pytest.approx(3 / (4 * (1 + 4e-7)), rel=1e-12)
    # negative values are shifted: [-1, 1] -> [0, 2]
    assert gini(torch.tensor([-1.0, 1.0])) == pytest.approx(2 / (2 * (2 + 2e-7)), rel=1e-9)
    m = torch.zeros(10, 10)
    m[2, 3] = 1.0
    assert diffusion_index(m) == pytest.approx((1 - 99 / (100 * (1 + 100e-7))) * 100, rel=1e-9)
    assert mass_pixels(torch.tensor([[4.0, 3.0], [2.0, 1.0]]), 0.69) == 2


def test_flat_image_gives_zero_map_and_defined_di():
    # constants in → constants out (replicate padding, nearest upsampling): the window is flat
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate"), nn.ReLU(),
                          nn.Upsample(scale_factor=2, mode="nearest")).eval()
    lr = torch.full((3, 20, 20), 0.5)
    with pytest.warns(UserWarning, match="all zeros"):
        r = lamcam.LAM(model, progress=False)(lr, 12, 12, 8)
    assert (r.map == 0).all() and torch.isfinite(r.attribution).all()
    assert math.isfinite(r.diffusion_index)


def test_model_untouched_no_parameter_gradients():
    model = small_sr(2)
    flags = [p.requires_grad for p in model.parameters()]
    lamcam.LAM(model, steps=4, progress=False)(torch.rand(3, 16, 16), 4, 4, 8)
    assert all(p.grad is None for p in model.parameters())
    assert flags == [p.requires_grad for p in model.parameters()]
    assert all(not m._forward_hooks for m in model.modules())


def test_window_coordinates():
    model = small_sr(2)
    lr = torch.rand(3, 16, 16)
    lam = lamcam.LAM(model, steps=2, progress=False)
    a = lam(lr, 8, 6, 8)
    b = lam(lr, 12, 10, 8, coords="sr-center")
    c = lam(lr, 4, 3, 8, coords="lr")
    for r in (b, c):
        assert (r.params["row"], r.params["col"]) == (8, 6)
        torch.testing.assert_close(r.attribution, a.attribution)


@pytest.mark.parametrize("row,col,window,match", [
    (30, 0, 8, r"rows 0\.\.24"),
    (-1, 0, 8, "leaves"),
    (0, 0, 40, "smaller side"),
])
def test_window_off_the_image(row, col, window, match):
    with pytest.raises(ValueError, match=match):
        lamcam.LAM(small_sr(2), progress=False)(torch.rand(3, 16, 16), row, col, window)


def test_non_integer_scale_and_nan_outputs():
    class Odd(nn.Module):
        def forward(self, x):
            return nn.functional.interpolate(x, size=(x.shape[2] * 2 + 1, x.shape[3] * 2 + 1))

    with pytest.raises(ValueError, match="not an integer multiple"):
        lamcam.LAM(Odd(), progress=False)(torch.rand(3, 8, 8), 0, 0, 4)

    model = small_sr(2)
    with torch.no_grad():
        model[4].bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lamcam.LAM(model, progress=False)(torch.rand(3, 8, 8), 0, 0, 4)


def test_grayscale_image_for_rgb_model_is_converted():
    model = small_sr(2)
    gray = torch.rand(1, 16, 16)
    with pytest.warns(UserWarning, match="grayscale"):
        r = lamcam.LAM(model, steps=3, progress=False)(gray, 4, 4, 8)
    ref = lamcam.LAM(model, steps=3, progress=False)(gray.expand(3, -1, -1), 4, 4, 8)
    torch.testing.assert_close(r.attribution, ref.attribution)


def test_input_range_255():
    model = small_sr(2)

    class Times255(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):  # takes [0, 255], returns [0, 255]
            return self.inner(x / 255) * 255

    lr = torch.rand(3, 16, 16)
    a = lamcam.LAM(model, steps=5, progress=False)(lr, 4, 4, 8)
    b = lamcam.LAM(Times255(), steps=5, input_range=255.0, progress=False)(lr, 4, 4, 8)
    torch.testing.assert_close(a.attribution, b.attribution, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ classifier path attributions


def _classifier(dtype=torch.float64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 4)).to(dtype).eval()


def test_integrated_gradients_completeness_and_limits():
    model = _classifier()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ig = lamcam.IntegratedGradients(model, steps=200, quadrature="trapezoid", progress=False)(
        x, target=[1, 2])
    with torch.no_grad():
        at_x = model(x).gather(1, torch.tensor([[1], [2]]))[:, 0]
        gain = at_x - model(torch.zeros_like(x))[:, 1:3].diagonal()
    total = ig.maps.sum((1, 2, 3))
    torch.testing.assert_close(total, gain, rtol=1e-2, atol=1e-8)  # ReLU kinks: O(h) per kink
    torch.testing.assert_close(ig.completeness[:, 0].double(), (total - gain).abs() / gain.abs(),
                               rtol=1e-4, atol=1e-9)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()
    exact = lamcam.IntegratedGradients(linear, steps=3, progress=False)(x, target=0)
    assert (exact.completeness < 1e-10).all()  # a linear model: exact at any step count
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xr)[:, 1].sum(), xr)
    sal = lamcam.Saliency(model)(x, target=1)
    torch.testing.assert_close(sal.maps, grad)
    ixg = lamcam.InputXGradient(model)(x, target=1)
    torch.testing.assert_close(ixg.maps, grad * x)
    assert lamcam.Saliency.to_map(sal.maps).shape == (2, 8, 8)


def test_integrate_path_rejects_bad_objective_shape():
    with pytest.raises(ValueError, match="one value per path point"):
        integrate_path(small_sr(2), StraightPath(torch.rand(3, 8, 8)), lambda y: y.sum(), steps=2)


def test_no_warning_for_ordinary_images():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lamcam.LAM(small_sr(2), steps=3, progress=False)(torch.rand(3, 16, 16), 4, 4, 8)


def test_completeness_below_two_percent_on_a_zoo_model():
    model = lamcam.zoo.load("sr_fsrcnn")
    lr = lamcam.io.load_image(lamcam.zoo.sr_samples()[0]["lr"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run far slower with 2 threads on a busy machine
    try:
        r = lamcam.LAM(model, progress=False)(lr, 96, 80)
    finally:
        torch.set_num_threads(threads)
    assert 0 < r.completeness_error < 0.02
    assert r.params["scale"] == 4 and r.sr.shape[-2:] == (lr.shape[-2] * 4, lr.shape[-1] * 4)
    assert 0 < r.diffusion_index < 100 and r.pixels95 > 0


def test_grayscale_model_and_rgb_image():
    torch.manual_seed(0)
    gray_model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                               nn.PixelShuffle(2)).eval()
    rgb = torch.rand(3, 12, 12)
    with pytest.warns(UserWarning, match="luma"):
        r = lamcam.LAM(gray_model, steps=4, progress=False)(rgb, 4, 4, 8)
    assert r.attribution.shape == (1, 12, 12) and r.sr.shape == (1, 24, 24)
