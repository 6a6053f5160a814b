"""Every SR / restoration architecture spandrel loads, explained as spandrel runs it.

For each ``ImageModelDescriptor`` family of ``spandrel.MAIN_REGISTRY`` (enumerated, so a new
family without a configuration here fails :func:`test_every_family_has_a_config`): a tiny
random-weight model of spandrel's own class, saved as ``.pth`` and ``.safetensors``, must

* be detected by spandrel as the intended architecture and load through ``lamcam.zoo.load``
  from both files;
* compute exactly (``torch.equal``) what spandrel's ``descriptor(x)`` computes, at an odd size
  and below the family's minimum size;
* be explained by LAM (2 steps, a tiny image, a 6-pixel window) with finite, non-zero maps.

Plus: ``call="module"``, the in-place PLKSR patch, the loader cross-check of checkpoints that
both lamcam's registry and spandrel read (RCAN with a non-DIV2K mean, rgb_range 1 vs 255), and
LAM against an independent plain-autograd reference on a window-padded SwinIR.
"""

from __future__ import annotations

import importlib
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import lamcam
import lamcam.zoo as zoo
from lamcam._safetensors import save_file
from lamcam.lam import GradientDetector
from lamcam.paths import BlurPath
from lamcam.zoo import sr
from lamcam.zoo.spandrel_compat import SpandrelModel, import_spandrel

spandrel = import_spandrel()

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # meshgrid indexing, etc. in spandrel
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@dataclass(frozen=True)
class Family:
    """A tiny configuration of one spandrel architecture class.

    ``module``/``cls``: ``spandrel.architectures.<module>.<cls>``; ``kwargs``: its constructor
    arguments (tiny, but such that spandrel's detection recovers them); ``arch``: the id spandrel
    must detect; ``scale``: the scale it must report.
    """

    module: str
    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    arch: str = ""
    scale: int = 4

    def build(self) -> torch.nn.Module:
        torch.manual_seed(0)
        mod = importlib.import_module(f"spandrel.architectures.{self.module}")
        return getattr(mod, self.cls)(**self.kwargs).eval()

    @property
    def arch_id(self) -> str:
        return self.arch or self.module


def _f(module: str, cls: str | None = None, arch: str = "", out: int = 4, **kwargs: Any) -> Family:
    """``Family(module, cls or module, kwargs, arch, out)``; ``out``: the expected scale."""
    return Family(module, cls or module, kwargs, arch, out)


_SWIN = {"img_size": 16, "embed_dim": 12, "mlp_ratio": 2.0}

#: One entry (or more: scale / variant) per family; the key is the test id.
FAMILIES: dict[str, Family] = {
    "ESRGAN": _f("ESRGAN", in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4),
    "ESRGAN-x2-unshuffle": _f("ESRGAN", in_nc=3, out_nc=3, num_filters=8, num_blocks=1,
                              scale=2, shuffle_factor=2, out=2),
    "ESRGAN-x1-unshuffle": _f("ESRGAN", in_nc=3, out_nc=3, num_filters=8, num_blocks=1,
                              scale=1, shuffle_factor=4, out=1),
    "Compact": _f("Compact", num_feat=8, num_conv=2, upscale=4),
    "Compact-x3": _f("Compact", num_feat=8, num_conv=2, upscale=3, out=3),
    "SPAN": _f("SPAN", num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=4),
    "SwinIR": _f("SwinIR", depths=[2], num_heads=[2], window_size=4, upscale=4,
                 upsampler="pixelshuffledirect", **_SWIN),
    "Swin2SR-x2": _f("Swin2SR", depths=[2], num_heads=[2], window_size=4, upscale=2,
                     upsampler="pixelshuffledirect", out=2, **_SWIN),
    "HAT": _f("HAT", depths=[1], num_heads=[2], window_size=4, compress_ratio=3,
              squeeze_factor=2, upscale=4, num_feat=8, **_SWIN),
    "DAT": _f("DAT", img_size=16, embed_dim=16, split_size=[2, 4], depth=[1], num_heads=[2],
              expansion_factor=2.0, upscale=4),
    "RCAN": _f("RCAN", scale=4, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4),
    "OmniSR": _f("OmniSR", num_feat=8, block_num=1, window_size=8, res_num=1, up_scale=4),
    "SAFMN": _f("SAFMN", dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4),
    "SAFMNBCIE": _f("SAFMNBCIE", dim=8, n_blocks=1, num_layers=1, ffn_scale=2.0,
                    upscaling_factor=2, out=1),
    "SwiftSRGAN": _f("SwiftSRGAN", num_channels=8, num_blocks=1, upscale_factor=4),
    "DITN": _f("DITN", dim=12, ITL_blocks=1, SAL_blocks=1, UFONE_blocks=1, patch_size=8,
               upscale=4),
    "ATD": _f("ATD", depths=(2,), num_heads=(2,), window_size=4, category_size=16, num_tokens=8,
              reducted_dim=4, upscale=4, upsampler="pixelshuffle", **_SWIN),
    "CRAFT": _f("CRAFT", window_size=16, embed_dim=12, depths=[1], num_heads=[2],
                split_size_0=4, split_size_1=16, upscale=4),
    "PLKSR": _f("PLKSR", dim=8, n_blocks=1, kernel_size=9, upscaling_factor=4),
    "RealPLKSR": _f("PLKSR", "RealPLKSR", arch="PLKSR", dim=8, n_blocks=1, kernel_size=9,
                    upscaling_factor=4, norm_groups=4),
    "DRCT": _f("DRCT", depths=(1,), num_heads=(2,), window_size=4, gc=4, upscale=4,
               upsampler="pixelshuffle", **_SWIN),
    "GRL": _f("GRL", img_size=16, embed_dim=12, upscale=4, upsampler="pixelshuffle", depths=[1],
              num_heads_window=[1], num_heads_stripe=[1], window_size=8, stripe_size=[8, 8],
              mlp_ratio=2.0),
    "RGT": _f("RGT", img_size=16, embed_dim=12, depth=[1], num_heads=[2], split_size=[4, 4],
              mlp_ratio=2.0, upscale=4),
    "SeemoRe": _f("SeemoRe", scale=4, num_experts=3, num_layers=1, embedding_dim=16, recursive=2,
                  topk=1),
    "MoSR": _f("MoSR", upscale=4, n_block=1, dim=8),
    "MoESR": _f("MoESR", scale=4, dim=8, n_blocks=1, n_block=1, upsample_dim=8),
    "DCTLSA": _f("DCTLSA", nf=10, num_modules=6, upscale=4, num_head=5),
    "FDAT": _f("FDAT", scale=4, embed_dim=12, num_groups=1, depth_per_group=1, num_heads=2,
               window_size=4, mid_dim=8),
    "RealCUGAN-x2": _f("RealCUGAN", "UpCunet2x", out=2),
    "RealCUGAN-x3": _f("RealCUGAN", "UpCunet3x", out=3),
    "DnCNN": _f("DnCNN", in_nc=3, out_nc=3, nc=8, nb=4, out=1),
    "DRUNet": _f("DRUNet", in_nc=4, out_nc=3, nc=[8, 16, 32, 64], nb=2, out=1),
    "SCUNet": _f("SCUNet", in_nc=3, config=[2] * 7, dim=64, out=1),
    "NAFNet": _f("NAFNet", width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1],
                 out=1),
    "KBNet": _f("KBNet", "KBNet_s", width=16, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 1],
                dec_blk_nums=[1, 1, 1, 1], out=1),
    "FBCNN": _f("FBCNN", nc=[8, 16, 32, 512], nb=2, out=1),
    "Uformer": _f("Uformer", img_size=128, embed_dim=8, depths=[1] * 9, num_heads=[1] * 9,
                  win_size=4, out=1),
    "FFTformer": _f("FFTformer", dim=8, num_blocks=[1, 1, 1], num_refinement_blocks=1,
                    ffn_expansion_factor=1, out=1),
    "MixDehazeNet": _f("MixDehazeNet", embed_dims=[8, 16, 32, 16, 8], depths=[1] * 5, out=1),
    "RetinexFormer": _f("RetinexFormer", n_feat=8, stage=1, num_blocks=[1, 1, 1], out=1),
    "HVICIDNet": _f("HVICIDNet", channels=[8, 8, 16, 32], heads=[1, 2, 4, 8], out=1),
    "MMRealSR": _f("MMRealSR", num_in_ch=3, num_out_ch=3, num_feat=8, num_block=1,
                   num_grow_ch=4, num_feats=[8, 16, 32, 64], num_blocks=[1, 1, 1, 1]),
    "IPT": _f("IPT", patch_size=12, n_feats=8, num_heads=2, num_layers=1, scale=[4]),
    "AuraSR": _f("AuraSR", dim=8, image_size=None, input_image_size=None,
                 style_network={"dim_in": 4, "dim_out": 16, "depth": 1},
                 up_dim_mults=(1, 1, 1, 1, 1), down_dim_mults=(1, 1, 1),
                 full_attn=(False, False, False, False, False), self_attn_dim_head=4,
                 attn_depths=(1, 1, 1, 1, 1), mid_attn_depth=1, num_conv_kernels=2),
}

#: Families not tested, and why.
SKIPPED: dict[str, str] = {
    "LaMa": "inpainting: a MaskedImageModelDescriptor (image + mask), not image -> image",
    "GFPGAN": "face restoration (512 px minimum, StyleGAN2 decoder); not an SR/restoration "
              "net for LAM, and its tiny configs are not detectable",
    "RestoreFormer": "face restoration; its forward needs torchvision.normalize (stand-in here)",
}

#: Families too slow for the 60-second budget even tiny: run with ``-m slow``.
SLOW: dict[str, str] = {}

#: The test ids of the families: keys of FAMILIES, slow ones marked.
FAMILY_PARAMS = [
    pytest.param(k, marks=pytest.mark.slow(reason=SLOW[k])) if k in SLOW else k
    for k in FAMILIES
]


def _descriptor_families() -> set[str]:
    return {s.architecture.id for s in spandrel.MAIN_REGISTRY.architectures()}


def test_every_family_has_a_config() -> None:
    """A family added to spandrel's registry without a config here (or a skip reason) fails."""
    covered = {f.arch_id for f in FAMILIES.values()} | set(SKIPPED)
    missing = _descriptor_families() - covered
    assert not missing, f"spandrel families without a test configuration: {sorted(missing)}"
    assert not set(SKIPPED) & {f.arch_id for f in FAMILIES.values()}


# ------------------------------------------------------------------------------------------
# per-family checks (also used by the survey script that writes /tmp/spandrel_families.json)
# ------------------------------------------------------------------------------------------
def sizes(req: Any) -> dict[str, tuple[int, int]]:
    """Test sizes for size requirements ``req``: ``odd``, and ``below`` (under the minimum)."""
    m = int(req.minimum)
    out = {"odd": (11, 13) if m <= 11 else (m + 1, m + 3)}
    if m >= 6:  # at least 5 px: LAM's 9 x 9 blur needs them
        out["below"] = (max(5, m - 3), max(5, m - 1))
    return out


def check_family(name: str, tmp_path: Path) -> dict[str, Any]:
    """All checks of one family; returns a record (times, figures). Raises AssertionError."""
    fam = FAMILIES[name]
    rec: dict[str, Any] = {"family": name, "arch": fam.arch_id}
    t0 = time.perf_counter()
    state = {k: v.detach().clone().contiguous() for k, v in fam.build().state_dict().items()}
    desc = spandrel.ModelLoader().load_from_state_dict(dict(state))  # the reference, unpatched
    assert isinstance(desc, spandrel.ImageModelDescriptor)
    assert desc.architecture.id == fam.arch_id, (desc.architecture.id, fam.arch_id)
    assert desc.scale == fam.scale
    rec["detected"] = True
    torch.save(state, tmp_path / f"{name}.pth")
    save_file(state, tmp_path / f"{name}.safetensors")
    models = [zoo.load(tmp_path / f"{name}{sfx}", call="spandrel") for sfx in (".pth", ".safetensors")]
    for model in models:
        meta = model.lamcam_meta
        assert isinstance(model, SpandrelModel) and meta["arch"] == fam.arch_id
        assert meta["call"] == "spandrel" and meta["scale"] == fam.scale
        assert meta["size_requirements"]["minimum"] == desc.size_requirements.minimum
    rec["loads"] = True
    rec["size_requirements"] = models[0].lamcam_meta["size_requirements"]
    model = models[1]
    cin = desc.input_channels
    g = torch.Generator().manual_seed(1)
    for label, (h, w) in sizes(desc.size_requirements).items():
        x = torch.rand(1, cin, h, w, generator=g)
        torch.manual_seed(2)  # AuraSR draws noise on every call
        ref = desc(x.clone())
        torch.manual_seed(2)
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, desc.output_channels, h * fam.scale, w * fam.scale)
        assert torch.equal(out, ref), f"{label} {h}x{w}: max diff {(out - ref).abs().max()}"
        rec[f"equal_{label}"] = [h, w]
    rec["reference_equal"] = True
    if fam.arch_id != "AuraSR":  # batches: the same per image (LAM batches)
        xb = torch.rand(2, cin, h, w, generator=g)
        with torch.no_grad():
            both, one = model(xb), model(xb[1:])
        assert torch.allclose(both[1:], one, atol=1e-5, rtol=1e-4), (both[1:] - one).abs().max()
    rec["load_check_s"] = round(time.perf_counter() - t0, 3)

    t1 = time.perf_counter()
    h, w = sizes(desc.size_requirements).get("below", sizes(desc.size_requirements)["odd"])
    img = torch.rand(cin, h, w, generator=g)
    s, win = fam.scale, 6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(3)
        lam = lamcam.LAM(model, steps=2, progress=False, crop=False)
        res = lam(img, s * h - win - 1, s * w - win - 2, win)
    assert res.params["scale"] == fam.scale
    assert torch.isfinite(res.attribution).all() and torch.isfinite(res.map).all()
    assert res.map.abs().sum() > 0 and math.isfinite(res.diffusion_index)
    rec["lam_ok"] = True
    rec["lam_s"] = round(time.perf_counter() - t1, 3)
    rec["lam_size"] = [h, w]
    rec["di"] = round(float(res.diffusion_index), 3)
    return rec


@pytest.mark.parametrize("name", FAMILY_PARAMS)
def test_family(name: str, tmp_path: Path) -> None:
    check_family(name, tmp_path)


# ------------------------------------------------------------------------------------------
# call modes
# ------------------------------------------------------------------------------------------
def _saved(name: str, tmp_path: Path, suffix: str = ".safetensors") -> tuple[Path, Any]:
    """``FAMILIES[name]`` saved to ``tmp_path``, and spandrel's own descriptor of it."""
    state = {k: v.detach().clone().contiguous() for k, v in FAMILIES[name].build().state_dict().items()}
    path = tmp_path / f"{name}{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    desc = spandrel.ModelLoader().load_from_state_dict(dict(state))
    desc.model.eval()  # spandrel builds it in train mode; its __call__ switches to eval
    return path, desc


def test_call_modes(tmp_path: Path) -> None:
    path, desc = _saved("SwinIR", tmp_path)
    default = zoo.load(path)
    assert default.lamcam_meta["call"] == "spandrel"
    doc = default.lamcam_meta["call_doc"]
    assert doc.startswith("spandrel's ImageModelDescriptor.__call__: pad") and "at least 16" in doc
    assert "run SwinIR" in doc and "clamp to [0, 1]" in doc and "crop" in doc
    module = zoo.load(path, call="module")
    meta = module.lamcam_meta
    assert meta["call"] == "module" and "no padding, no clamp" in meta["call_doc"]
    assert meta["size_requirements"] == {"minimum": 16, "multiple_of": 1, "square": False}
    x = torch.rand(1, 3, 16, 18, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = module(x)
        assert torch.equal(raw, desc.model(x.clone()))  # no clamp
        assert torch.equal(default(x), raw.clamp(0, 1))
    with pytest.raises(ValueError, match=r"at least 16 px.*got 13x17.*call='spandrel'"):
        module(torch.rand(1, 3, 13, 17))
    # custom call functions are described
    dn, _ = _saved("MixDehazeNet", tmp_path)
    assert "[-1, 1] output to [0, 1]" in zoo.load(dn).lamcam_meta["call_doc"]


def test_call_argument_errors(tmp_path: Path) -> None:
    path, _ = _saved("SwinIR", tmp_path)
    with pytest.raises(ValueError, match="call must be"):
        zoo.load(path, call="raw")
    with pytest.raises(zoo.ZooError, match="call= applies to models loaded through spandrel"):
        zoo.load("sr_edsr", call="module")
    edsr = tmp_path / "edsr.pth"
    torch.save(sr.EDSR(n_feats=8, n_resblocks=1).state_dict(), edsr)
    with pytest.raises(zoo.ZooError, match="lamcam's 'EDSR'"):
        zoo.load(edsr, call="spandrel")  # spandrel has no EDSR: only lamcam's reads it


# ------------------------------------------------------------------------------------------
# in-place modules (PLKSR, RealPLKSR)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kwargs", "patched"), [
    ("PLKSR", {}, ["PLKConv2d x 1"]),
    ("PLKSR", {"with_idt": True}, ["PLKConv2d x 1"]),
    ("PLKSR", {"lk_type": "RectSparsePLK"}, ["RectSparsePLKConv2d x 1"]),
    ("RealPLKSR", {}, ["PLKConv2d x 1"]),
])
def test_inplace_partial_convolutions(
    name: str, kwargs: dict[str, Any], patched: list[str], tmp_path: Path
) -> None:
    fam = FAMILIES[name]
    fam = Family(fam.module, fam.cls, {**fam.kwargs, **kwargs}, fam.arch, fam.scale)
    state = fam.build().state_dict()
    path = tmp_path / "plk.safetensors"
    save_file(dict(state), path)
    desc = spandrel.ModelLoader().load_from_state_dict(dict(state))  # unpatched
    desc.model.eval()  # the in-place branch is the eval branch
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        torch.autograd.grad(desc.model(x.clone()).sum(), x)
    model = zoo.load(path)
    assert model.lamcam_meta["patched_modules"] == patched
    assert torch.equal(model(x.detach()), desc(x.detach()))
    (grad,) = torch.autograd.grad(model(x)[..., 10:20, 10:20].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# checkpoints both loaders read: no guess changes the function
# ------------------------------------------------------------------------------------------
FLICKR_MEAN = (0.4690, 0.4490, 0.4036)  # DIV2K + Flickr2K (the LAM authors' RCAN)


def _with_mean(state: dict[str, torch.Tensor], mean: tuple[float, ...], rgb_range: float) -> dict:
    out = {k: v.clone() for k, v in state.items()}
    out["sub_mean.bias"] = -rgb_range * torch.tensor(mean)
    out["add_mean.bias"] = rgb_range * torch.tensor(mean)
    return out


def test_rcan_with_another_mean_is_read_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = {"n_feats": 8, "n_resgroups": 1, "n_resblocks": 1, "reduction": 4}
    state = _with_mean(sr.RCAN(**cfg).state_dict(), FLICKR_MEAN, 255.0)
    path = tmp_path / "rcan_flickr.pth"
    torch.save(state, path)
    model = zoo.load(path)  # lamcam's RCAN and spandrel's RCAN both read it, and agree
    meta = model.lamcam_meta
    assert meta["arch"] == "RCAN" and meta["source"] == str(path)
    assert meta["config"]["rgb_range"] == 255.0  # not 261.06 (the DIV2K-mean guess)
    assert "agree" in meta["loader_evidence"] and "lamcam's used" in meta["loader_evidence"]
    desc = spandrel.ModelLoader().load_from_state_dict(dict(state))
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), desc.model(x.clone()), atol=1e-6)
    theirs = zoo.load(path, call="spandrel")  # call= asks for spandrel's
    assert theirs.lamcam_meta["source"] == "spandrel" and "spandrel's used" in \
        theirs.lamcam_meta["loader_evidence"]
    assert torch.equal(theirs(x), desc(x))


def test_rcan_rgb_range_1_is_not_guessed(tmp_path: Path) -> None:
    """rgb_range 1: lamcam's RCAN reads it (from the MeanShift), spandrel assumes 255."""
    torch.manual_seed(0)
    cfg = {"n_feats": 8, "n_resgroups": 1, "n_resblocks": 1, "reduction": 4}
    ref = sr.RCAN(rgb_range=1.0, **cfg).eval()
    path = tmp_path / "rcan1.safetensors"
    save_file(ref.state_dict(), path)
    with pytest.raises(zoo.ZooError, match=r"both loaders read .*differ by .*arch='RCAN'"):
        zoo.load(path)
    ours = zoo.load(path, arch="RCAN")
    assert ours.lamcam_meta["config"]["rgb_range"] == 1.0
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    assert zoo.load(path, arch="spandrel").lamcam_meta["source"] == "spandrel"


@pytest.mark.parametrize("rgb_range", [1.0, 255.0])
def test_edsr_range_from_weights_not_dataset_mean(rgb_range: float, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = sr.EDSR(n_feats=8, n_resblocks=1, rgb_range=rgb_range).eval()
    ref.load_state_dict(_with_mean(ref.state_dict(), FLICKR_MEAN, rgb_range))
    path = tmp_path / "edsr.pth"
    torch.save(ref.state_dict(), path)
    model = zoo.load(path)
    assert model.lamcam_meta["arch"] == "EDSR" and model.lamcam_meta["config"]["rgb_range"] == rgb_range
    assert "spandrel detects no architecture" in model.lamcam_meta["loader_evidence"]
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_implausible_mean_is_not_claimed(tmp_path: Path) -> None:
    """A MeanShift whose mean is implausible under both conventions: lamcam's RCAN declines,
    spandrel (which reads the bias as it is) loads it."""
    torch.manual_seed(0)
    cfg = {"n_feats": 8, "n_resgroups": 1, "n_resblocks": 1, "reduction": 4}
    state = _with_mean(sr.RCAN(**cfg).state_dict(), (0.001, 0.001, 0.001), 1.0)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    model = zoo.load(path)
    assert model.lamcam_meta["source"] == "spandrel" and model.lamcam_meta["arch"] == "RCAN"
    with pytest.raises(zoo.ZooError, match="do not fit|cannot infer"):
        zoo.load(path, arch="RCAN")


# ------------------------------------------------------------------------------------------
# LAM against an independent plain-autograd reference (window padding)
# ------------------------------------------------------------------------------------------
def test_lam_matches_plain_autograd_on_padded_swinir(tmp_path: Path) -> None:
    """SwinIR (minimum 16, window 4) on a 13 x 11 image: spandrel pads it to 16 x 16. LAM's
    attribution for a window at the bottom-right edge equals a reference written here with
    plain autograd: reflect-pad as spandrel does, the raw module, clamp, crop, the gradient
    detector, the same blur path, a right Riemann sum."""
    path, desc = _saved("SwinIR", tmp_path)
    model = zoo.load(path)
    h, w, s, win, steps = 13, 11, 4, 8, 3
    row, col = s * h - win - 1, s * w - win - 1
    img = torch.rand(3, h, w, generator=torch.Generator().manual_seed(5))
    res = lamcam.LAM(model, steps=steps, progress=False, crop=False)(img, row, col, win)

    pts = BlurPath(img, 1.2, 9).points(torch.arange(steps + 1) / steps)
    detector = GradientDetector(row, col, win)
    ref = torch.zeros_like(img)
    for k in range(1, steps + 1):
        p = pts[k].detach()[None].requires_grad_()
        xp = F.pad(p, (0, 16 - w, 0, 16 - h), mode="reflect")
        y = desc.model(xp).clamp(0, 1)[..., : s * h, : s * w]
        (g,) = torch.autograd.grad(detector(y).sum(), p)
        ref += g[0] * (pts[k] - pts[k - 1])
    assert ref.abs().max() > 0
    assert (res.attribution - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max()))
