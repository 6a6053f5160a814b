"""The CAM family on the ecosystem's real model code: timm, torchvision and Hugging Face transformers.

Every model is built from its library's own classes, small configurations where the library
allows, random weights (nothing is downloaded). For each one:

* the layer lamcam picks when none is named is the one a vision researcher would pick (the table
  in docs/methods.md), read with the right layout;
* Grad-CAM and Grad-CAM++ equal a reference written here with one plain forward hook,
  ``torch.autograd.grad`` and eq. 19 in float64, with the layout (channels-first, channels-last,
  or tokens with a known number of prefix tokens) spelled out by hand from the model's
  definition, not from lamcam;
* the model is left exactly as it was.

torchvision is imported through tests/torchvision_ops.py (its compiled ops do not load beside the
CPU torch wheel; its model code is pure Python).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision_ops import import_torchvision

import lamcam

tv = import_torchvision()
import timm  # noqa: E402  (after torchvision, which timm imports)
import transformers as hf  # noqa: E402

CF, CL = ("cf",), ("cl",)


def tokens(prefix: int, h: int, w: int) -> tuple:
    return ("tokens", prefix, h, w)


def _hf_vit_config(cls, **extra):
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=64, patch_size=16, num_labels=5, **extra)


def _tv_vit():
    m = tv.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                    hidden_dim=32, mlp_dim=64, num_classes=5)
    nn.init.normal_(m.heads.head.weight, std=0.1)  # torchvision initialises the head to zeros
    return m


# name: (builder, input size, expected default layer, layout of that layer spelled out by hand)
MODELS = {
    # timm
    "timm-resnet18": (lambda: timm.create_model("resnet18", num_classes=7), 96, "layer4", CF),
    "timm-convnext": (lambda: timm.create_model("convnext_atto", num_classes=7), 96, "stages.3", CF),
    "timm-efficientnet": (lambda: timm.create_model("efficientnet_b0", num_classes=7), 96, "bn2", CF),
    "timm-vit": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=7, img_size=64,
                                           depth=3), 64, "blocks.2.norm1", tokens(1, 4, 4)),
    "timm-deit-distilled": (lambda: timm.create_model("deit_tiny_distilled_patch16_224", num_classes=7,
                                                      img_size=64, depth=3),
                            64, "blocks.2.norm1", tokens(2, 4, 4)),
    "timm-vit-reg4-dinov2": (lambda: timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=7,
                                                       img_size=56, depth=3),
                             56, "blocks.2.norm1", tokens(5, 4, 4)),
    "timm-swin": (lambda: timm.create_model("swin_tiny_patch4_window7_224", num_classes=7, img_size=128,
                                            window_size=4, depths=(1, 1, 1, 1)), 128, "layers.3", CL),
    "timm-maxvit": (lambda: timm.create_model("maxvit_rmlp_pico_rw_256", num_classes=7, img_size=128,
                                              depths=(1, 1, 1, 1)), 128, "stages.3", CF),
    "timm-levit": (lambda: timm.create_model("levit_128s", num_classes=7), 224, "stages.2",
                   tokens(0, 4, 4)),
    "timm-mobilevit": (lambda: timm.create_model("mobilevit_xxs", num_classes=7), 128, "final_conv", CF),
    # torchvision
    "tv-resnet18": (lambda: tv.models.resnet18(num_classes=5), 96, "layer4", CF),
    "tv-vit": (_tv_vit, 64, "encoder.layers.encoder_layer_1.ln_1", tokens(1, 4, 4)),
    "tv-swin": (lambda: tv.models.SwinTransformer(patch_size=[4, 4], embed_dim=24, depths=[1, 1, 1, 1],
                                                  num_heads=[1, 1, 2, 2], window_size=[4, 4],
                                                  num_classes=5), 128, "features.7", CL),
    # Hugging Face transformers
    "hf-vit": (lambda: hf.ViTForImageClassification(_hf_vit_config(hf.ViTConfig)), 64,
               "vit.layers.1.layernorm_before", tokens(1, 4, 4)),
    "hf-deit": (lambda: hf.DeiTForImageClassificationWithTeacher(_hf_vit_config(hf.DeiTConfig)), 64,
                "deit.layers.1.layernorm_before", tokens(2, 4, 4)),
    "hf-dinov2-registers": (lambda: hf.Dinov2WithRegistersForImageClassification(
        _hf_vit_config(hf.Dinov2WithRegistersConfig, num_register_tokens=4)), 64,
        "dinov2_with_registers.encoder.layer.1", tokens(5, 4, 4)),
    "hf-swin": (lambda: hf.SwinForImageClassification(hf.SwinConfig(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
        num_labels=5)), 64, "swin.layernorm", tokens(0, 8, 8)),
    "hf-convnext": (lambda: hf.ConvNextForImageClassification(hf.ConvNextConfig(
        hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=5)), 128,
        "convnext.encoder.stages.3", CF),
    "hf-resnet": (lambda: hf.ResNetForImageClassification(hf.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_labels=5)), 128,
        "resnet.encoder.stages.3", CF),
}


def to_map(t: torch.Tensor, layout: tuple) -> torch.Tensor:
    """The layout, by hand: (B, ...) → (B, C, h, w)."""
    if layout == CF:
        return t
    if layout == CL:
        return t.permute(0, 3, 1, 2)
    _, prefix, h, w = layout
    return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


def logits_of(out):
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out


def reference(model: nn.Module, x: torch.Tensor, layer: str, layout: tuple):
    """Grad-CAM and Grad-CAM++ (eq. 19) of the predicted class, plain hooks, float64."""
    store = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.append(o))
    try:
        logits = logits_of(model(x))
    finally:
        handle.remove()
    c = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, c[:, None]).sum(), store[0])
    a, g = to_map(store[0].detach(), layout).double(), to_map(g, layout).double()
    gradcam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    den = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
    alpha = torch.where(den != 0, g**2 / torch.where(den != 0, den, 1.0), 0.0)
    w = (alpha * g.clamp(min=0)).sum((2, 3), keepdim=True)
    return gradcam, torch.relu((w * a).sum(1)), c


def snapshot(model: nn.Module) -> dict:
    """Everything explaining must leave as it was."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "hooks": [len(d) for m in model.modules() for d in (
            m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)],
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("training", "requires_grad", "grads", "hooks"):
        assert after[key] == before[key], key
    for k, v in before["state"].items():
        assert torch.equal(after["state"][k], v), k


def assert_same_map(got: torch.Tensor, ref: torch.Tensor) -> None:
    scale = float(ref.abs().max())
    assert scale > 0, "the reference map is all zeros: the case proves nothing"
    assert float((got.double() - ref).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("name", list(MODELS))
def test_default_layer_and_exact_maps_on_real_model_code(name, one_thread):
    build, size, layer, layout = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, size, size)  # as normalised images are
    before = snapshot(model)

    gradcam = lamcam.GradCAM(model)(x)
    assert gradcam.layer_names == [layer]
    kind = {CF: "channels_first", CL: "channels_last"}.get(layout, "tokens")
    assert gradcam.layouts[0].kind == kind
    if kind == "tokens":
        assert (gradcam.layouts[0].prefix, gradcam.layouts[0].grid) == (layout[1], layout[2:])
    gradcampp = lamcam.GradCAMPlusPlus(model, layer)(x)
    assert_unchanged(model, before)

    ref_gc, ref_gcpp, c = reference(model, x, layer, layout)
    assert torch.equal(gradcam.targets, c) and torch.equal(gradcampp.targets, c)
    assert_same_map(gradcam.raw, ref_gc)
    assert_same_map(gradcampp.raw, ref_gcpp)


def test_channels_last_layers_named_by_the_user_are_read_channels_last(one_thread):
    # the case: timm Swin's 'norm' and torchvision Swin's 'features' are (B, h, w, C)
    for key, layer in (("timm-swin", "norm"), ("tv-swin", "features")):
        build, size = MODELS[key][:2]
        torch.manual_seed(0)
        model = build().eval()
        x = torch.rand(2, 3, size, size)
        res = lamcam.GradCAMPlusPlus(model, layer)(x)
        assert res.layouts[0].kind == "channels_last" and res.raw.shape == (2, 4, 4)
        assert_same_map(res.raw, reference(model, x, layer, CL)[1])


def test_distilled_model_returning_a_tuple_in_training(one_thread):
    # timm's distilled DeiT returns (logits, distillation logits) in distilled training mode
    torch.manual_seed(0)
    model = MODELS["timm-deit-distilled"][0]()
    model.set_distilled_training(True)
    model.train()
    x = torch.rand(2, 3, 64, 64)
    assert isinstance(model(x), tuple)
    before = snapshot(model)
    res = lamcam.GradCAMPlusPlus(model, "blocks.2.norm1")(x)
    assert_unchanged(model, before)
    assert torch.equal(res.logits, model(x)[0].detach())
    assert_same_map(res.raw, reference(model, x, "blocks.2.norm1", tokens(2, 4, 4))[1])


def test_layer_inside_attention_is_refused_with_the_block_norm_named():
    model = MODELS["timm-vit"][0]()
    for inside in ("blocks.2.attn.qkv", "blocks.2.attn.k_norm"):
        with pytest.raises(ValueError, match=r"inside the attention module 'blocks.2.attn'.*"
                                             r"'blocks.2.norm1'"):
            lamcam.GradCAM(model, inside)
    hf_model = MODELS["hf-vit"][0]()
    with pytest.raises(ValueError, match="layernorm_before"):
        lamcam.GradCAM(hf_model, "vit.layers.1.attention.q_proj")


def test_attention_internals_are_never_read_as_maps():
    # a (B, heads, N, d) output given as a layer (not inside an attention module) is refused too
    class Heads(nn.Module):
        def forward(self, t):
            return t.reshape(t.shape[0], t.shape[1], 2, -1).transpose(1, 2)  # (B, 2, N, d)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 16, 8, stride=8)
            self.heads = Heads()
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            h = self.heads(t)
            return self.fc(h.transpose(1, 2).flatten(2).mean(1))

    with pytest.raises(lamcam.LayoutError, match=r"attention internals.*reshape="):
        lamcam.GradCAM(Net(), "heads")(torch.rand(1, 3, 64, 64))


def test_ambiguous_layout_is_an_error_naming_reshape_and_reshape_fixes_it():
    class Scale(nn.Module):  # no conv, norm or linear anywhere: nothing tells the channel axis
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(0.5, 1.5, 8))

        def forward(self, x):
            return x * self.w

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = Scale()

        def forward(self, x):  # x: (B, 8, 8, 8), both axes 8
            return self.scale(x).mean((1, 2))

    x = torch.rand(2, 8, 8, 8)
    with pytest.raises(lamcam.LayoutError, match=r"channels-first \(C=8\) and channels-last.*reshape="):
        lamcam.GradCAM(Net(), "scale")(x)
    res = lamcam.GradCAM(Net(), "scale", reshape=lambda t: t.permute(0, 3, 1, 2))(x, target=0)
    assert res.layouts[0].kind == "reshape" and res.layouts[0].decided_by == "user"
    assert res.raw.shape == (2, 8, 8)


def test_model_output_without_logits_needs_a_callable_target():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return {"embedding": self.fc(self.conv(x).mean((2, 3)))}

    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"no 'logits' field.*target=callable"):
        lamcam.GradCAM(DictNet(), "conv")(x)
    with pytest.raises(ValueError, match=r"no 'logits' field.*target=callable"):
        lamcam.GradCAM(DictNet())(x)  # the automatic layer choice needs a score too
    res = lamcam.GradCAM(DictNet())(x, target=lambda out: out["embedding"][:, 1])
    assert res.layer_names == ["conv"] and res.targets is None


def test_objects_and_dicts_carrying_logits():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    x = torch.rand(2, 3, 12, 12)
    plain = lamcam.GradCAMPlusPlus(net, "1")(x)
    for wrap in (lambda t: Out(t), lambda t: {"logits": t, "aux": t * 0}, lambda t: (t, t * 2)):
        class Wrapped(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = net

            def forward(self, x, wrap=wrap):
                return wrap(self.net(x))

        res = lamcam.GradCAMPlusPlus(Wrapped(), "net.1")(x)
        torch.testing.assert_close(res.raw, plain.raw)
        torch.testing.assert_close(res.logits, plain.logits)


def test_torchvision_vit_with_its_zero_initialised_head_is_explained_as_such():
    model = tv.models.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=2,
                                       hidden_dim=32, mlp_dim=64, num_classes=5).eval()
    assert not model.heads.head.weight.any()
    x = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"'heads.head' has all-zero weights.*init"):
        lamcam.GradCAM(model)(x)
    with pytest.raises(ValueError, match=r"'heads.head' has all-zero weights"):
        lamcam.GradCAM(model, "encoder.layers.encoder_layer_1.ln_1")(x)


def test_readme_timm_snippet_runs_as_written(one_thread):
    # the README's block for timm / torchvision / transformers models, executed verbatim
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "timm.create_model" in b]
    assert len(blocks) == 1
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["res"].layer_names == ["blocks.11.norm1"]
    assert str(scope["res"].layouts[0]).startswith("tokens (B, 197, 384): 1 prefix token dropped, 14×14")
