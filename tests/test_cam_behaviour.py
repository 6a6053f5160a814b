"""How the CAM family behaves on users' models: state left alone, batches, targets, ranks, tokens,
guided backprop, differentiability, and the errors bad input gets."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lamcam
from lamcam.hooks import tokens_to_grid

CAM_METHODS = ["gradcam", "gradcam++", "gradcam++softmax", "guided-gradcam", "guided-gradcam++"]


class SmallNet(nn.Module):
    def __init__(self, inplace: bool = True, bn: bool = True, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if bn else nn.Identity(),
            nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=inplace),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.features(x)).flatten(1)))


def snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
        "modules": [(n, type(m), id(m)) for n, m in model.named_modules()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    for key in ("training", "requires_grad", "hooks", "modules"):
        assert before[key] == after[key], key
    assert all(g is None for g in after["grads"])


@pytest.mark.parametrize("method", list(lamcam.METHODS))
@pytest.mark.parametrize("train_mode", [False, True])
def test_model_left_exactly_as_it_was(method, train_mode):
    model = SmallNet(bn=True)
    model.train(train_mode)
    before = snapshot(model)
    layer = None if method == "guided-backprop" else "features.5"
    x = torch.rand(4, 3, 16, 16)
    if method == "cam" and train_mode:  # active dropout: the logits are not fc(mean(A))
        with pytest.raises(ValueError, match="Use GradCAM"):
            lamcam.explain(model, x, method, layer=layer)
    else:
        lamcam.explain(model, x, method, layer=layer, target=lamcam.TopK(2))
    assert_same(before, snapshot(model))


class Exploding(SmallNet):
    def forward(self, x):
        self.features(x)  # the hooked layer has run
        raise RuntimeError("boom inside forward")


@pytest.mark.parametrize("method", ["gradcam++", "guided-gradcam", "guided-backprop"])
def test_model_left_as_it_was_after_an_exception(method):
    model = Exploding()
    model.train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom inside forward"):
        lamcam.explain(model, torch.rand(2, 3, 16, 16), method,
                       layer=None if method == "guided-backprop" else "features.5")
    assert_same(before, snapshot(model))
    # the global state too: a later plain forward is an ordinary one (no guided ReLU left active)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    out = SmallNet(bn=False).eval()(x)
    assert out.grad_fn is not None


def test_inplace_relu_after_layer_uses_true_output():
    x = torch.rand(3, 3, 16, 16)
    a = lamcam.GradCAMPlusPlus(SmallNet(inplace=True).eval(), "features.4")(x)
    b = lamcam.GradCAMPlusPlus(SmallNet(inplace=False).eval(), "features.4")(x)
    torch.testing.assert_close(a.raw, b.raw)
    # and the raw map is built from the conv's signed output, not the ReLU'd one
    model = SmallNet(inplace=False).eval()
    acts = model.features[:5](x)
    assert (acts < 0).any()
    out = model.fc(model.pool(F.relu(acts)).flatten(1))
    idx = out.argmax(1)
    w = model.fc.weight[idx] / 64  # (B, C): Grad-CAM weight = mean of relu-masked W/N
    mask = (acts > 0).float()
    weights = (w[:, :, None, None] * mask).mean((2, 3))
    ref = torch.relu((weights[:, :, None, None] * acts).sum(1))
    ga = lamcam.GradCAM(SmallNet(inplace=True).eval(), "features.4")(x)
    torch.testing.assert_close(ga.raw, ref, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_and_outer_no_grad():
    model = SmallNet().eval()
    ref = lamcam.GradCAMPlusPlus(model, "features.5")(torch.rand(2, 3, 16, 16))
    for p in model.parameters():
        p.requires_grad_(False)
    x = ref.images
    with torch.no_grad():
        res = lamcam.GradCAMPlusPlus(model, "features.5")(x)
    torch.testing.assert_close(res.maps, ref.maps)
    assert not any(p.requires_grad for p in model.parameters())


def test_inference_mode_gets_a_clear_error():
    model = SmallNet().eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        lamcam.GradCAM(model, "features.5")(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("method", CAM_METHODS + ["cam", "guided-backprop"])
def test_batch_equals_one_by_one(method):
    model = SmallNet().eval()
    x = torch.rand(4, 3, 16, 16)
    targets = [0, 3, 1, 4]
    layer = "features.5"
    whole = lamcam.explain(model, x, method, layer=layer, target=targets)
    for i in range(4):
        one = lamcam.explain(model, x[i:i + 1], method, layer=layer, target=targets[i])
        torch.testing.assert_close(whole.maps[i], one.maps[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(whole.raw[i], one.raw[0], rtol=1e-5, atol=1e-6)
    assert whole.targets.tolist() == targets


def test_targets_none_int_tensor_topk_callable():
    model = SmallNet().eval()
    x = torch.rand(3, 3, 16, 16)
    cam = lamcam.GradCAMPlusPlus(model, "features.5")
    logits = model(x)
    pred = cam(x)
    assert pred.targets.tolist() == logits.argmax(1).tolist()
    top = cam(x, target=lamcam.TopK(3))
    assert top.maps.shape == (3, 3, 16, 16) and top.targets.shape == (3, 3)
    order = logits.topk(3, 1).indices
    assert top.targets.tolist() == order.tolist()
    for k in range(3):
        single = cam(x, target=order[:, k])
        torch.testing.assert_close(top.maps[:, k], single.maps)
    torch.testing.assert_close(top.maps[:, 0], pred.maps)
    fixed = cam(x, target=2)
    called = cam(x, target=lambda out: out[:, 2])
    torch.testing.assert_close(fixed.maps, called.maps)
    assert called.targets is None
    two_d = cam(x, target=torch.tensor([[0, 1], [2, 3], [4, 0]]))
    assert two_d.maps.shape == (3, 2, 16, 16)


def test_topk_costs_one_forward():
    model = SmallNet().eval()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    lamcam.GradCAMPlusPlus(model, "features.5")(torch.rand(2, 3, 16, 16), target=lamcam.TopK(4))
    assert len(calls) == 1
    model._forward_hooks.clear()


def test_callable_target_on_dict_outputs():
    class Seg(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return {"out": self.head(self.body(x))}

    region = torch.zeros(16, 16)
    region[4:8, 4:8] = 1
    res = lamcam.GradCAM(Seg(), "body.1")(torch.rand(2, 3, 16, 16),
                                           target=lambda o: (o["out"][:, 1] * region).sum((1, 2)))
    assert res.maps.shape == (2, 16, 16) and torch.isfinite(res.maps).all()


def test_one_dimensional_signals():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(2, 2, 20)
    cam = lamcam.CAM(model, "1")(x)
    grad = lamcam.GradCAMPlusPlus(model, "1")(x)
    assert cam.maps.shape == grad.maps.shape == (2, 20)


def test_video_conv3d_auto_layer_and_topk():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
                          nn.Conv3d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    res = lamcam.GradCAMPlusPlus(model)(torch.rand(2, 3, 5, 12, 12), target=lamcam.TopK(2))
    assert res.layer_names == ["4"]
    assert res.maps.shape == (2, 2, 5, 12, 12) and res.raw.shape == (2, 2, 5, 6, 6)


class TinyViT(nn.Module):
    """Patch embedding, class + register tokens, one attention block, head on the class token."""

    def __init__(self, prefix: int = 1, dim: int = 16, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.prefix = prefix
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.tokens = nn.Parameter(torch.randn(1, prefix, dim) * 0.1)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(len(t), -1, -1), t], 1)
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        return self.head(self.norm2(t)[:, 0])


@pytest.mark.parametrize("prefix", [1, 5])
def test_vit_tokens_on_an_inferred_grid(prefix):
    model = TinyViT(prefix).eval()
    x = torch.rand(2, 3, 16, 24)  # a 4 x 6 grid of patches
    res = lamcam.GradCAMPlusPlus(model, "norm1")(x, target=lamcam.TopK(2))
    assert res.raw.shape == (2, 2, 4, 6) and res.maps.shape == (2, 2, 16, 24)
    assert res.raw.amax() > 0


def test_token_grad_cam_equals_manual_computation():
    # tokens → mean over patch tokens → linear: Grad-CAM weight = W[c] / N on every patch token
    class TokenGAP(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.embed = nn.Conv2d(3, 8, 2, stride=2)
            self.norm = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            cls = t.mean(1, keepdim=True)
            t = self.norm(torch.cat([cls, t], 1))
            return self.fc(t[:, 1:].mean(1))

    model = TokenGAP().eval()
    x = torch.rand(2, 3, 8, 8)
    res = lamcam.GradCAM(model, "norm")(x, target=1)
    t = model.norm(torch.cat([model.embed(x).flatten(2).transpose(1, 2).mean(1, keepdim=True),
                              model.embed(x).flatten(2).transpose(1, 2)], 1))[:, 1:]
    grid = t.transpose(1, 2).reshape(2, 8, 4, 4)
    ref = torch.relu((model.fc.weight[1][None, :, None, None] / 16 * grid).sum(1))
    torch.testing.assert_close(res.raw, ref, rtol=1e-5, atol=1e-6)


def test_tokens_to_grid_prefix_and_errors():
    g, p = tokens_to_grid(torch.arange(2 * 17 * 3.0).reshape(2, 17, 3), (32, 32))
    assert p == 1 and g.shape == (2, 3, 4, 4)
    assert torch.equal(g[0, :, 0, 0], torch.tensor([3.0, 4.0, 5.0]))
    with pytest.raises(ValueError, match="reshape"):
        tokens_to_grid(torch.zeros(1, 7, 3), (32, 32), max_prefix=2)  # 7, 6, 5: no square grid


def test_multi_layer_fusion_is_mean_of_normalised_maps():
    model = SmallNet().eval()
    x = torch.rand(2, 3, 16, 16)
    both = lamcam.GradCAM(model, ["features.2", "features.5"])(x, target=1)
    a = lamcam.GradCAM(model, "features.2")(x, target=1).maps
    b = lamcam.GradCAM(model, "features.5")(x, target=1).maps
    ref = lamcam.maps.normalize_minmax((a + b) / 2, 2)
    torch.testing.assert_close(both.maps, ref)
    assert isinstance(both.raw, tuple) and both.raw[0].shape == (2, 16, 16)
    assert both.layer_names == ["features.2", "features.5"]


def test_auto_layer_picks_last_feature_map_and_reports_it():
    res = lamcam.GradCAM(SmallNet().eval())(torch.rand(1, 3, 16, 16))
    assert res.layer_names == ["features"]
    explicit = lamcam.GradCAM(SmallNet().eval(), "features.5")(res.images)
    torch.testing.assert_close(res.maps, explicit.maps)


def test_constant_map_is_zero_not_nan():
    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(2, 2)
            with torch.no_grad():
                self.layer.weight.zero_()
                self.layer.bias.fill_(1.0)

        def forward(self, x):
            return self.fc(self.layer(x).mean((2, 3)))

    res = lamcam.GradCAM(Const(), "layer")(torch.rand(2, 3, 8, 8))
    assert torch.isfinite(res.maps).all() and (res.maps == 0).all()


def test_differentiable_maps_have_correct_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)).double()
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64)
    weight = model[2].weight

    def loss_of(w):
        with torch.no_grad():
            weight.copy_(w)
        res = lamcam.GradCAMPlusPlus(model, "1", differentiable=True)(x, target=0)
        return (res.maps ** 2).sum()

    w0 = weight.detach().clone()
    loss = loss_of(w0)
    (analytic,) = torch.autograd.grad(loss, weight)
    direction = torch.randn_like(w0)
    eps = 1e-6
    numeric = (loss_of(w0 + eps * direction) - loss_of(w0 - eps * direction)) / (2 * eps)
    torch.testing.assert_close((analytic * direction).sum(), numeric.detach(), rtol=1e-4,
                               atol=1e-8)
    assert weight.grad is None


def test_distillation_step_trains_student_parameters():
    teacher, student = SmallNet(bn=False).eval(), SmallNet(bn=False, inplace=False).eval()
    torch.manual_seed(3)
    for p in student.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.rand(2, 3, 16, 16)
    t_maps = lamcam.GradCAMPlusPlus(teacher, "features.5")(x, target=1).maps
    s_maps = lamcam.GradCAMPlusPlus(student, "features.5", differentiable=True)(x, target=1).maps
    assert s_maps.requires_grad
    ((s_maps - t_maps) ** 2).mean().backward()
    assert student.features[0].weight.grad is not None
    assert student.features[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- guided


def _guided_reference(model, x, c):
    """Guided backprop by its definition, written out for 1x1 convs and a linear head."""
    c1, c2, lin = model[0], model[2], model[5]
    z1 = F.conv2d(x, c1.weight, c1.bias)
    a1 = z1.clamp(min=0)
    z2 = F.conv2d(a1, c2.weight, c2.bias)
    g_a2 = lin.weight[c].reshape(z2.shape[1:])[None].expand_as(z2)
    r2 = g_a2 * (z2 > 0) * (g_a2 > 0)
    g_a1 = torch.einsum("bohw,oi->bihw", r2, c2.weight[:, :, 0, 0])
    r1 = g_a1 * (z1 > 0) * (g_a1 > 0)
    return torch.einsum("bohw,oi->bihw", r1, c1.weight[:, :, 0, 0])


@pytest.mark.parametrize("inplace", [False, True])
def test_guided_backprop_equals_definition(inplace):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 3, 1),
                          nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)).double()
    x = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    modules_before = [(n, id(m), type(m)) for n, m in model.named_modules()]
    res = lamcam.GuidedBackprop(model)(x, target=[0, 1, 1])
    for b, c in enumerate([0, 1, 1]):
        ref = _guided_reference(model, x[b:b + 1], c)
        torch.testing.assert_close(res.maps[b], ref[0], rtol=1e-10, atol=1e-12)
    assert [(n, id(m), type(m)) for n, m in model.named_modules()] == modules_before
    # guided differs from the plain gradient here, or the test would prove nothing
    xr = x.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(model(xr)[:, 0].sum(), xr)
    assert not torch.allclose(plain[0], res.maps[0])


def test_guided_sees_functional_relu_and_warns_about_other_activations():
    class Functional(nn.Module):
        def __init__(self, act):
            super().__init__()
            torch.manual_seed(0)
            self.c1, self.c2 = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 3, 1)
            self.act = act
            self.fc = nn.Linear(27, 2)

        def forward(self, x):
            return self.fc(F.relu(self.c2(self.act(self.c1(x)))).flatten(1))

    x = torch.randn(2, 2, 3, 3)
    as_modules = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.ReLU(),
                               nn.Flatten(), nn.Linear(27, 2))
    functional = Functional(nn.ReLU())
    as_modules.load_state_dict({"0.weight": functional.c1.weight, "0.bias": functional.c1.bias,
                                "2.weight": functional.c2.weight, "2.bias": functional.c2.bias,
                                "5.weight": functional.fc.weight, "5.bias": functional.fc.bias})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = lamcam.GuidedBackprop(functional)(x, target=1).maps
    b = lamcam.GuidedBackprop(as_modules)(x, target=1).maps
    torch.testing.assert_close(a, b)
    with pytest.warns(UserWarning, match="GELU"):
        lamcam.GuidedBackprop(Functional(nn.GELU()))(x, target=1)


def test_guided_gradcam_is_cam_times_guided_gradient():
    model = SmallNet().eval()
    x = torch.rand(2, 3, 16, 16)
    gg = lamcam.GuidedGradCAMPlusPlus(model, "features.5")(x, target=[1, 2])
    cam = lamcam.GradCAMPlusPlus(model, "features.5")(x, target=[1, 2]).maps
    guided = lamcam.GuidedBackprop(model)(x, target=[1, 2]).maps
    torch.testing.assert_close(gg.maps, cam[:, None] * guided)
    assert gg.maps.shape == (2, 3, 16, 16) and gg.kind == "gradient"


# ---------------------------------------------------------------------------------- errors


def test_unknown_layer_lists_closest_names():
    with pytest.raises(ValueError, match=r"features\.5"):
        lamcam.GradCAM(SmallNet(), "feature.5")


def test_target_out_of_range():
    with pytest.raises(ValueError, match=r"out of range.*5 classes"):
        lamcam.GradCAM(SmallNet().eval(), "features.5")(torch.rand(1, 3, 16, 16), target=7)
    with pytest.raises(ValueError, match="2 targets given for 3 images"):
        lamcam.GradCAM(SmallNet().eval(), "features.5")(torch.rand(3, 3, 16, 16), target=[1, 2])


def test_cam_without_gap_linear_head_suggests_gradcam():
    model = SmallNet().eval()  # the dropout is the identity in eval mode → CAM applies
    lamcam.CAM(model, "features.5")(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="Use GradCAM"):
        lamcam.CAM(model, "features.4")(torch.rand(1, 3, 16, 16))  # before the ReLU
    mlp_head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="Use GradCAM"):
        lamcam.CAM(mlp_head, "1")(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("images,match", [
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), r"float\(\) / 255"),
    (torch.zeros(3, 16, 16), r"images\[None\]"),
    (torch.zeros(1, 1, 16, 16), "grayscale to RGB"),
])
def test_bad_images(images, match):
    with pytest.raises((TypeError, ValueError), match=match):
        lamcam.GradCAM(SmallNet().eval(), "features.5")(images)


def test_nan_outputs():
    model = SmallNet().eval()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        lamcam.GradCAM(model, "features.5")(torch.rand(2, 3, 16, 16))


def test_layer_the_target_does_not_depend_on():
    model = TinyViT().eval()
    with pytest.raises(ValueError, match="does not depend"):
        # the head reads the class token only: the patch tokens of norm2 never reach it
        lamcam.GradCAM(model, "norm2")(torch.rand(1, 3, 16, 16))


def test_unknown_method_in_explain():
    with pytest.raises(ValueError, match="did you mean 'gradcam'"):
        lamcam.explain(SmallNet(), torch.rand(1, 3, 16, 16), "gradcan")
