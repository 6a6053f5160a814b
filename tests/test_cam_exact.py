"""The CAM family against answers known independently: autograd's higher derivatives, analytic
identities, and examples computed by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lamcam
from lamcam.cam import (
    gradcampp_alpha,
    gradcampp_softmax_alpha,
    gradcampp_softmax_weights,
    gradcampp_weights,
)

torch.set_default_dtype(torch.float32)


def _elementwise_derivatives(y_fn, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """∂Y/∂A_e, ∂²Y/∂A_e², ∂³Y/∂A_e³ for every element e, by nested autograd."""
    a = a.detach().clone().requires_grad_(True)
    y = y_fn(a)
    (d1,) = torch.autograd.grad(y, a, create_graph=True)
    d2 = torch.zeros_like(a)
    d3 = torch.zeros_like(a)
    for e in range(a.numel()):
        (h,) = torch.autograd.grad(d1.flatten()[e], a, create_graph=True)
        he = h.flatten()[e]
        d2.view(-1)[e] = he.detach()
        if he.requires_grad:
            (t,) = torch.autograd.grad(he, a, retain_graph=True, allow_unused=True)
            d3.view(-1)[e] = 0.0 if t is None else t.flatten()[e]
    return d1.detach(), d2, d3


def _piecewise_linear_head(channels: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.ReLU(), nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Flatten(), nn.Linear(4 * 2 * 2, classes),
    ).double()


def _alpha_ref(a, d1, d2, d3):
    sum_a = a.sum(dim=(-2, -1), keepdim=True)
    den = 2 * d2 + sum_a * d3
    alpha = torch.where(den != 0, d2 / torch.where(den != 0, den, 1.0), 0.0)
    return alpha, (alpha * d1.clamp(min=0)).sum(dim=(-2, -1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eq19_matches_autograd_third_derivatives(seed):
    head = _piecewise_linear_head(3, 4, seed)
    a = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    for c in range(4):
        d1, d2, d3 = _elementwise_derivatives(lambda t, c=c: torch.exp(head(t)[0, c]), a)
        assert d3.abs().max() > 0, "the test must exercise the third derivative"
        alpha_ref, w_ref = _alpha_ref(a, d1, d2, d3)
        # lamcam's closed form from the first derivative of S alone
        a_req = a.clone().requires_grad_(True)
        s = head(a_req)[0, c]
        (g,) = torch.autograd.grad(s, a_req)
        alpha = gradcampp_alpha(a, g[:, None])[:, 0]
        torch.testing.assert_close(alpha, alpha_ref, atol=1e-6, rtol=1e-6)
        w = gradcampp_weights(a, g[:, None])[:, 0] * torch.exp(s.detach())
        torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_variant_matches_autograd_third_derivatives(seed):
    classes = 4
    head = _piecewise_linear_head(3, classes, seed)
    a = torch.randn(1, 3, 3, 3, dtype=torch.float64)
    a_req = a.clone().requires_grad_(True)
    logits = head(a_req)[0]
    jac = torch.stack([torch.autograd.grad(logits[k], a_req, retain_graph=True)[0][0]
                       for k in range(classes)])  # (K, C, H, W)
    probs = torch.softmax(logits.detach(), 0).reshape(-1, 1, 1, 1)
    m1, m2, m3 = ((probs * jac**p).sum(0, keepdim=True) for p in (1, 2, 3))
    for c in range(classes):
        d1, d2, d3 = _elementwise_derivatives(lambda t, c=c: torch.softmax(head(t)[0], 0)[c], a)
        alpha_ref, w_ref = _alpha_ref(a, d1, d2, d3)
        alpha, u = gradcampp_softmax_alpha(a, jac[c][None, None], m1, m2, m3)
        torch.testing.assert_close(alpha[:, 0], alpha_ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(u[:, 0] * probs[c], d1, atol=1e-9, rtol=1e-6)
        w = gradcampp_softmax_weights(a, jac[c][None, None], m1, m2, m3)[:, 0] * probs[c, 0, 0, 0]
        torch.testing.assert_close(w, w_ref, atol=1e-6, rtol=1e-6)


def _layer_then_head(head: nn.Module, channels: int) -> nn.Module:
    """A model whose layer "0" is a conv we can read, followed by the piecewise-linear head."""
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(2, channels, 3, padding=1), *head).double()


@pytest.mark.parametrize("cls,softmax", [(lamcam.GradCAMPlusPlus, False),
                                         (lamcam.GradCAMPlusPlusSoftmax, True)])
def test_end_to_end_raw_map_matches_autograd_reference(cls, softmax):
    head = _piecewise_linear_head(3, 4, 3)
    model = _layer_then_head(head, 3).eval()
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    res = cls(model, layer="0")(x, target=[1, 3])
    for b, c in enumerate([1, 3]):
        a = model[0](x[b:b + 1]).detach()

        def y_fn(t, c=c):
            s = model[1:](t)[0]
            return torch.softmax(s, 0)[c] if softmax else torch.exp(s[c])

        d1, d2, d3 = _elementwise_derivatives(y_fn, a)
        _, w_ref = _alpha_ref(a, d1, d2, d3)
        s = model[1:](a)[0]
        factor = torch.softmax(s, 0)[c] if softmax else torch.exp(s[c])
        ref = torch.relu((w_ref[0, :, None, None] / factor * a[0]).sum(0))
        torch.testing.assert_close(res.raw[b], ref, atol=1e-8, rtol=1e-6)


def _gap_linear_model(seed: int = 0, inplace: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4),
    ).eval()


def test_gradcam_is_proportional_to_cam_for_gap_linear():
    model = _gap_linear_model()
    x = torch.rand(3, 3, 8, 8)
    cam = lamcam.CAM(model, "3")(x, target=[0, 1, 3])
    grad = lamcam.GradCAM(model, "3")(x, target=[0, 1, 3])
    # g = W[c, k] / N at every position, N = 8 * 8
    torch.testing.assert_close(cam.raw, grad.raw * 64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cam.maps, grad.maps, rtol=1e-5, atol=1e-6)
    assert cam.raw.amax() > 0


def test_gradcam_is_proportional_to_cam_in_3d():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 2, 4, 6, 6)
    cam = lamcam.CAM(model, "1")(x, target=2)
    grad = lamcam.GradCAM(model, "1")(x, target=2)
    assert cam.maps.shape == (2, 4, 6, 6)
    torch.testing.assert_close(cam.raw, grad.raw * (4 * 6 * 6), rtol=1e-5, atol=1e-6)


class _Identity2x2(nn.Module):
    """x (1, 2, 2, 2) is the layer activation A itself; head = GAP → linear with known W."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(self.layer(x)).flatten(1))


HAND_A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("method,expected", [
    # class 0: W = (1, -1) → CAM = relu(A1 − A2)
    ("cam", [[0.0, 2.0], [3.0, 4.0]]),
    # g = W / 4 → Grad-CAM = CAM / 4
    ("gradcam", [[0.0, 0.5], [0.75, 1.0]]),
    # channel 1: g = .25, ΣA = 10: α = 1/(2 + 2.5), w = 4 α .25 = 2/9; channel 2: g < 0 → w = 0
    ("gradcam++", [[2 / 9, 4 / 9], [6 / 9, 8 / 9]]),
])
def test_hand_computed_example(method, expected):
    res = lamcam.explain(_Identity2x2(), HAND_A, method, layer="layer", target=0)
    torch.testing.assert_close(res.raw[0], torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_hand_computed_softmax_variant():
    # Two classes, GAP → linear: s'_k = W[k] / 4 everywhere. With p = softmax(S):
    # u = s'_0 − m1 = p1 (s'_0 − s'_1), v = p0 p1 (s'_0 − s'_1)², skew = p0 p1 (p1 − p0)(s'_0 − s'_1)³
    model = _Identity2x2()
    s = model(HAND_A)[0].detach().double()
    p0, p1 = torch.softmax(s, 0).tolist()
    expected = []
    for k in range(2):
        delta = (model.fc.weight[0, k] - model.fc.weight[1, k]).item() / 4
        u = p1 * delta
        v = p0 * p1 * delta**2
        skew = p0 * p1 * (p1 - p0) * delta**3
        d2 = u * u - v
        d3 = u**3 - 3 * u * v - skew
        total = HAND_A[0, k].sum().item()
        alpha = d2 / (2 * d2 + total * d3)
        expected.append(4 * alpha * max(u, 0.0))
    ref = torch.relu(expected[0] * HAND_A[0, 0] + expected[1] * HAND_A[0, 1])
    res = lamcam.GradCAMPlusPlusSoftmax(model, "layer")(HAND_A, target=0)
    torch.testing.assert_close(res.raw[0], ref.float(), rtol=1e-5, atol=1e-6)


def test_no_epsilon_leaks_into_alpha():
    """Rescale the network without changing its function: the layer ×1e3, the head ×1e-3.

    S is unchanged, A grows 1e3-fold and g shrinks 1e3-fold (|g| ~ 1e-6), so ΣA·g and hence α and
    the map are unchanged exactly — unless an epsilon sits in α's denominator.
    """
    model = _gap_linear_model(inplace=False)
    scaled = _gap_linear_model(inplace=False)
    with torch.no_grad():
        scaled[2].weight.mul_(1e3)
        scaled[2].bias.mul_(1e3)
        scaled[6].weight.mul_(1e-3)
    x = torch.rand(4, 3, 8, 8)
    torch.testing.assert_close(model(x), scaled(x), rtol=1e-4, atol=1e-5)
    a = lamcam.GradCAMPlusPlus(model, "3")(x)
    b = lamcam.GradCAMPlusPlus(scaled, "3")(x)
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-4, atol=1e-4)

    # The same comparison with a peer's 1e-6 epsilon would fail: this test can fail.
    def eps_weights(model):
        acts = model[:4](x).detach()
        out = model[4:](acts.requires_grad_(True))
        (g,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), acts)
        g2 = g**2
        alpha = g2 / (2 * g2 + acts.sum((2, 3), keepdim=True) * g**3 + 1e-6)
        w = (alpha * g.clamp(min=0)).sum((2, 3))
        m = torch.relu((w[:, :, None, None] * acts).sum(1))
        return lamcam.maps.normalize_minmax(m, 2)

    assert (eps_weights(model) - eps_weights(scaled)).abs().max() > 1e-2


def test_weights_stay_finite_for_huge_scores():
    model = _gap_linear_model(inplace=False)
    with torch.no_grad():
        model[6].bias.fill_(500.0)  # exp(S) would overflow float32
    res = lamcam.GradCAMPlusPlus(model, "3")(torch.rand(2, 3, 8, 8))
    assert torch.isfinite(res.raw).all() and res.raw.amax() > 0


def test_half_precision_layer_gradients_are_widened():
    a = torch.rand(1, 2, 4, 4).half()
    g = (torch.rand(1, 1, 2, 4, 4) * 1e-4).half()  # g² underflows in float16
    w = gradcampp_weights(a, g)
    assert w.dtype == torch.float32 and (w > 0).all()
