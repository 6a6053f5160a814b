"""HiResCAM, XGrad-CAM, LayerCAM, Score-CAM, Ablation-CAM and Eigen-CAM against their definitions.

Every expected value here is computed independently of lamcam's method code: gradients and
activations from plain forward hooks and torch.autograd, masked and ablated inputs run one at a
time, the SVD written out in numpy, small cases by hand.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lamcam
from lamcam.cam import (
    METHODS,
    AblationCAM,
    EigenCAM,
    GradCAM,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
    make_explainer,
)

NEW = ["hirescam", "xgradcam", "layercam", "scorecam", "ablationcam", "eigencam"]


def gap_net(seed: int = 0, classes: int = 3) -> nn.Module:
    """conv -> relu -> conv -> relu -> GAP -> linear: a CAM-compatible head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 6, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes)
                         ).double().eval()


def flat_net(seed: int = 0) -> nn.Module:
    """conv -> relu -> flatten -> linear: the gradient varies over positions."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).double().eval()


def acts_and_grads(model: nn.Module, layer: nn.Module, x: torch.Tensor, cls: int):
    """The layer's activation (1, C, H, W) and d score_cls / d activation, by plain hooks."""
    store = {}
    h = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        out = model(x)
    finally:
        h.remove()
    (g,) = torch.autograd.grad(out[0, cls], store["a"])
    return store["a"].detach(), g.detach(), out.detach()


def test_registered_and_reachable_by_common_spellings():
    assert set(NEW) <= set(METHODS)
    for spelling, cls in [("HiResCAM", HiResCAM), ("XGrad-CAM", XGradCAM), ("layer_cam", LayerCAM),
                          ("Score-CAM", ScoreCAM), ("ablation-cam", AblationCAM),
                          ("eigen cam", EigenCAM)]:
        assert type(make_explainer(spelling, gap_net())) is cls


# --------------------------------------------------------------------------------------------
# gradient rules
# --------------------------------------------------------------------------------------------


def test_hirescam_is_gradcam_under_gap_linear_and_differs_elsewhere():
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = gap_net()
    hi = HiResCAM(net, layer="3")(x, target=1).raw
    gc = GradCAM(net, layer="3")(x, target=1).raw
    # the layer feeding GAP then linear: the gradient is w_c / HW at every position, which is
    # Grad-CAM's weight exactly (the positive factor is 1)
    torch.testing.assert_close(hi, gc, rtol=1e-10, atol=1e-12)
    # one ReLU earlier the gradient is masked by where the ReLU is active: they differ
    hi2 = HiResCAM(net, layer="2")(x, target=1).raw
    gc2 = GradCAM(net, layer="2")(x, target=1).raw
    assert not torch.allclose(hi2 / hi2.amax(), gc2 / gc2.amax(), atol=1e-3)
    net = flat_net()
    hi = HiResCAM(net, layer="1")(x, target=1).raw
    gc = GradCAM(net, layer="1")(x, target=1).raw
    cos = F.cosine_similarity(hi.flatten(1), gc.flatten(1), dim=1)
    assert bool((cos < 0.99).all()), cos
    a, g, _ = acts_and_grads(net, net[1], x[:1], 1)
    torch.testing.assert_close(hi[0], (a[0] * g[0]).sum(0).clamp(min=0))


def test_xgradcam_weights_by_their_definition():
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    net = flat_net(3)
    a, g, out = acts_and_grads(net, net[1], x, 2)
    w = [(a[0, c] * g[0, c]).sum() / a[0, c].sum() if a[0, c].sum() != 0 else 0.0
         for c in range(a.shape[1])]
    expected = sum(wc * a[0, c] for c, wc in enumerate(w)).clamp(min=0)
    res = XGradCAM(net, layer="1")(x, target=2)
    torch.testing.assert_close(res.raw[0], expected)
    assert float(res.scores[0]) == pytest.approx(float(out[0, 2]))


def test_xgradcam_channel_without_activation_gets_weight_zero():
    a = torch.zeros(1, 2, 2, 2)
    a[0, 0] = 1.0
    g = torch.ones(1, 1, 2, 2, 2)
    w = lamcam.cam.xgradcam_weights(a, g)
    assert w.tolist() == [[[1.0, 0.0]]]


def test_layercam_single_layer_and_paper_fusion():
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    net = gap_net(5)
    a0, g0, _ = acts_and_grads(net, net[1], x, 0)
    a2, g2, _ = acts_and_grads(net, net[3], x, 0)
    single = LayerCAM(net, layer="1")(x, target=0)
    torch.testing.assert_close(single.raw[0], (g0[0].clamp(min=0) * a0[0]).sum(0).clamp(min=0))

    def norm(m):
        m = m - m.min()
        return m / m.max()

    fused = LayerCAM(net, layer=["1", "3"])(x, target=0).maps[0]
    m0 = norm((g0[0].clamp(min=0) * a0[0]).sum(0).clamp(min=0))
    m2 = norm((g2[0].clamp(min=0) * a2[0]).sum(0).clamp(min=0))
    expected = norm(torch.maximum(torch.tanh(2 * m0), torch.tanh(2 * m2)))  # eq. 9, then max
    torch.testing.assert_close(fused, expected)
    with pytest.raises(ValueError, match="gamma"):
        LayerCAM(net, gamma=0)


# --------------------------------------------------------------------------------------------
# perturbation rules: one pass at a time, written out
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_scorecam_weights_are_masked_scores_one_by_one(batch_size):
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    net = gap_net(7)
    res = ScoreCAM(net, layer="1", batch_size=batch_size)(x, target=lamcam.TopK(2))
    for b in range(2):
        a, _, out = acts_and_grads(net, net[1], x[b:b + 1], 0)
        for k in range(2):
            cls = int(res.targets[b, k])
            scores = []
            for c in range(a.shape[1]):
                up = F.interpolate(a[:, c:c + 1], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
                lo, hi = up.min(), up.max()
                mask = (up - lo) / (hi - lo) if hi > lo else torch.zeros_like(up)
                with torch.no_grad():
                    scores.append(float(net(x[b:b + 1] * mask)[0, cls]))
            w = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
            expected = (w[:, None, None] * a[0]).sum(0).clamp(min=0)
            torch.testing.assert_close(res.raw[b, k], expected)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ablationcam_weights_are_relative_drops_one_by_one(batch_size):
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    net = gap_net(9)
    res = AblationCAM(net, layer="3", batch_size=batch_size)(x, target=2)
    for b in range(2):
        a, _, out = acts_and_grads(net, net[3], x[b:b + 1], 2)
        y = float(out[0, 2])
        w = []
        for c in range(a.shape[1]):
            def zero(m, i, o, c=c):
                o = o.clone()
                o[:, c] = 0
                return o
            h = net[3].register_forward_hook(zero)
            with torch.no_grad():
                yc = float(net(x[b:b + 1])[0, 2])
            h.remove()
            w.append((y - yc) / y)
        expected = sum(wc * a[0, c] for c, wc in enumerate(w)).clamp(min=0)
        torch.testing.assert_close(res.raw[b], expected)
    assert not net[3]._forward_hooks


class TinyTokens(nn.Module):
    """Patch embedding -> class token + patch tokens (B, 1 + 9, 4) -> MLP block -> head on the mean."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(10)
        self.embed = nn.Conv2d(3, 4, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 4))
        self.block = nn.Sequential(nn.Linear(4, 4), nn.GELU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], dim=1)
        return self.head(self.block(t).mean(1))


def test_ablationcam_on_tokens_zeroes_a_feature_of_the_patch_tokens_only():
    net = TinyTokens().double().eval()
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    res = AblationCAM(net, layer="block")(x, target=0)
    a, _, out = acts_and_grads(net, net.block, x, 0)
    y = float(out[0, 0])
    w = []
    for c in range(4):
        def zero(m, i, o, c=c):
            o = o.clone()
            o[:, 1:, c] = 0
            return o
        h = net.block.register_forward_hook(zero)
        with torch.no_grad():
            w.append((y - float(net(x)[0, 0])) / y)
        h.remove()
    grid = a[0, 1:].T.reshape(4, 3, 3)
    expected = sum(wc * grid[c] for c, wc in enumerate(w)).clamp(min=0)
    torch.testing.assert_close(res.raw[0], expected)


def test_perturbation_methods_refuse_differentiable_and_bad_batch_size():
    for cls in (ScoreCAM, AblationCAM):
        with pytest.raises(ValueError, match="not a function autograd"):
            cls(gap_net(), differentiable=True)
        with pytest.raises(ValueError, match="batch_size"):
            cls(gap_net(), batch_size=0)


def test_perturbation_methods_show_progress_and_leave_the_model_as_it_was(capsys):
    net = gap_net(12)
    net[1].register_forward_hook(lambda m, i, o: None)  # the user's own hook stays
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    for cls in (ScoreCAM, AblationCAM):
        cls(net, layer="3", batch_size=2, progress=True)(x)
        assert "pass" in capsys.readouterr().err
    assert len(net[1]._forward_hooks) == 1 and not net[3]._forward_hooks
    assert not net.training and all(p.grad is None for p in net.parameters())


# --------------------------------------------------------------------------------------------
# Eigen-CAM: the SVD written out
# --------------------------------------------------------------------------------------------


def test_eigencam_equals_the_svd_written_out():
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
    net = gap_net(14)
    res = EigenCAM(net, layer="3")(x, target=lamcam.TopK(2))
    for b in range(3):
        a, _, _ = acts_and_grads(net, net[3], x[b:b + 1], 0)
        m = a[0].numpy().reshape(a.shape[1], -1).T                # (N, C)
        centred = m - m.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        proj = centred @ vt[0]
        total = m.sum(axis=1) - m.sum(axis=1).mean()
        if float(proj @ total) < 0:
            proj = -proj
        for k in range(2):  # class-agnostic: the same map for every target
            np.testing.assert_allclose(res.raw[b, k].numpy().ravel(), proj, rtol=1e-9, atol=1e-12)


def test_eigencam_by_hand_on_a_rank_one_layer():
    a = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    a[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    a[0, 1] = -a[0, 0]  # channel 2 anti-correlated: total activation is flat
    m = lamcam.cam.eigencam_map(a)
    # first PC ∝ (1, -1)/√2; centred positions (-1.5,-0.5,0.5,1.5) * (1, -1) -> ±√2 * (...)
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64) * 2**0.5
    assert torch.allclose(m.flatten().abs(), expected.abs())


# --------------------------------------------------------------------------------------------
# all six on the bundled model, and the engine's contracts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_each_method_on_the_bundled_resnet_is_finite_batched_and_untouching(name):
    model = lamcam.zoo.load("shapes_resnet")
    x = torch.stack([lamcam.io.load_image(p) for p in lamcam.zoo.samples()[:3]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = make_explainer(name, model, "layer3")(x, target=lamcam.TopK(2))
    assert res.maps.shape == (3, 2, 64, 64) and bool(torch.isfinite(res.maps).all())
    one = make_explainer(name, model, "layer3")(x[1:2], target=lamcam.TopK(2))
    torch.testing.assert_close(one.raw[0], res.raw[1], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())


def test_lamcam_eval_scores_the_new_methods(tmp_path, capsys):
    from lamcam.cli import main

    assert main(["eval", "--shapes", "8", "--model", "shapes_resnet", "--methods",
                 "gradcam,hirescam,xgradcam,layercam,scorecam,ablationcam,eigencam",
                 "--steps", "4", "--out", str(tmp_path), "-q"]) == 0
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    header = summary[0].split(",")
    rows = {r.split(",")[0]: dict(zip(header, r.split(","), strict=True)) for r in summary[1:]}
    assert set(rows) >= set(NEW)
    # at shapes_resnet's default layer (feeding GAP -> linear) HiResCAM is Grad-CAM exactly
    for key in ("average_drop", "energy", "deletion", "insertion"):
        if key in header:
            assert float(rows["hirescam"][key]) == pytest.approx(float(rows["gradcam"][key]), rel=1e-5)


def test_ablation_hook_touches_only_the_explaining_threads_passes():
    """Ablation-CAM replaces the layer's output with a hook; another thread running the same model
    meanwhile must get the true outputs."""
    import threading

    net = gap_net(15)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        want = net(x)
    alone = AblationCAM(net, layer="3", batch_size=1)(x[:1], target=0).raw
    stop = threading.Event()
    bad: list[float] = []

    def other():
        while not stop.is_set():
            with torch.no_grad():
                got = net(x)
            if not torch.equal(got, want):
                bad.append(float((got - want).abs().max()))

    t = threading.Thread(target=other)
    t.start()
    try:
        res = [AblationCAM(net, layer="3", batch_size=1)(x[:1], target=0).raw for _ in range(3)]
    finally:
        stop.set()
        t.join()
    assert not bad
    for r in res:
        torch.testing.assert_close(r, alone)
