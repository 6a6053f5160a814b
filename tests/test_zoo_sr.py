"""Tests of the super-resolution zoo: shipped models, bundled samples, metrics, spandrel loading.

Fast (no training) and without scikit-image: the held-out test pairs are bundled PNGs.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import lamcam.zoo as zoo
from lamcam._safetensors import read_metadata, save_file
from lamcam.zoo import spandrel_compat, sr
from lamcam.zoo.spandrel_compat import PadToRequirements, SpandrelModel
from training import sr_data

SR_MODELS = ["sr_edsr", "sr_fsrcnn", "sr_rcan", "sr_swinir"]
ARCH_OF = {"sr_fsrcnn": "FSRCNN", "sr_edsr": "EDSR", "sr_rcan": "RCAN", "sr_swinir": "SwinIRLite"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path: Path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(s["name"], _png(s["lr"]), _png(s["hr"])) for s in zoo.sr_samples()]


@pytest.fixture(scope="module", params=SR_MODELS)
def shipped(request) -> torch.nn.Module:
    return zoo.load(request.param)


# ------------------------------------------------------------------------------------------
# registry and shipped models
# ------------------------------------------------------------------------------------------
def test_registered() -> None:
    assert zoo.list_models(task="sr") == SR_MODELS
    assert set(SR_MODELS) <= set(zoo.list_models())
    assert not set(SR_MODELS) & set(zoo.list_models(task="classification"))
    assert set(ARCH_OF.values()) <= set(zoo.list_archs())
    total = sum(zoo.info(n)["weights_bytes"] for n in zoo.list_models())
    assert total <= 15 * 2**20


def test_shipped_meta(shipped: torch.nn.Module) -> None:
    meta = shipped.lamcam_meta
    name = meta["name"]
    assert not shipped.training and not any(m.training for m in shipped.modules())
    assert meta["arch"] == ARCH_OF[name] and meta["task"] == "sr"
    assert meta["scale"] == 4 and meta["in_channels"] == 3 and meta["input_range"] == 1.0
    n_params = sum(p.numel() for p in shipped.parameters() if p.requires_grad)
    assert 100_000 <= n_params <= 600_000 and meta["num_params"] >= n_params
    rf = sr.receptive_field(shipped)
    assert meta["receptive_field"] == ("global" if rf is None else rf)
    assert (name == "sr_rcan") == (rf is None)
    info = zoo.info(name)
    assert info["available"] and info["receptive_field"] == meta["receptive_field"]
    assert set(info["heldout"]) == set(sr_data.HELDOUT_IMAGES)
    assert info["psnr_y_gain"] >= 0.3
    assert not set(info["train_images"]) & set(info["heldout_images"])


@pytest.mark.parametrize("size", [(13, 17), (1, 1), (8, 9)])
def test_output_is_exactly_4x(shipped: torch.nn.Module, size: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = shipped(x)
    assert y.shape == (2, 3, 4 * size[0], 4 * size[1]) and torch.isfinite(y).all()


def test_beats_bicubic_on_bundled_held_out_samples(shipped: torch.nn.Module, pairs) -> None:
    with torch.no_grad():
        outs = shipped(torch.cat([lr for _, lr, _ in pairs]))  # all LR samples are 64x64
    gains = {}
    for (name, lr, hr), out in zip(pairs, outs, strict=True):
        gains[name] = sr_data.psnr_y(out[None], hr) - sr_data.psnr_y(sr_data.bicubic_upscale(lr), hr)
    assert np.mean(list(gains.values())) >= 0.3, gains
    assert min(gains.values()) > 0.0, gains


def test_batch_consistency(shipped: torch.nn.Module) -> None:
    """One image alone or in a batch gives the same output (no cross-sample leakage)."""
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(shipped(x)[1:2], shipped(x[1:2]), atol=1e-5)


# ------------------------------------------------------------------------------------------
# architectures
# ------------------------------------------------------------------------------------------
SMALL = {
    "FSRCNN": (sr.FSRCNN, {"d": 12, "s": 8, "mapping": 2}),
    "EDSR": (sr.EDSR, {"n_feats": 8, "n_resblocks": 2}),
    "RCAN": (sr.RCAN, {"n_feats": 8, "n_resgroups": 2, "n_resblocks": 1, "reduction": 4}),
    "SwinIRLite": (sr.SwinIRLite, {"dim": 8, "depths": [2, 1], "heads": 2, "window": 4}),
}


@pytest.mark.parametrize("arch", list(SMALL))
def test_receptive_field_matches_probe(arch: str) -> None:
    cls, cfg = SMALL[arch]
    torch.manual_seed(0)
    model = cls(**cfg)
    rf = sr.receptive_field(model)
    # output rows/cols covering one period of the scale (4) and window (4) grids
    positions = [64] if rf is None else range(56, 72 if arch == "SwinIRLite" else 60)
    probed = sr.probe_receptive_field(model, lr_size=32, positions=positions, trials=1)
    if rf is None:
        assert probed == 32  # global: reaches every border
    else:
        assert probed == rf, (probed, rf)


@pytest.mark.parametrize("arch", list(SMALL))
def test_init_bilinear(arch: str) -> None:
    cls, cfg = SMALL[arch]
    model = cls(**cfg).eval()
    model.init_bilinear()
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    ref = x
    for f in (2, 2) if arch in ("EDSR", "RCAN") else (4,):
        ref = F.interpolate(ref, scale_factor=f, mode="bilinear", align_corners=False)
    with torch.no_grad():
        y = model(x)
    assert (y - ref)[..., 12:-12, 12:-12].abs().max() < 1e-5


@pytest.mark.parametrize("arch", list(SMALL))
def test_raw_state_dict_round_trip(arch: str, tmp_path: Path) -> None:
    """A bare state dict of any configuration is recognised by key inference."""
    cls, cfg = SMALL[arch]
    torch.manual_seed(3)
    ref = cls(**cfg).eval()
    path = tmp_path / "raw.pth"
    torch.save(ref.state_dict(), path)
    model = zoo.load(path)
    assert model.lamcam_meta["arch"] == arch and model.lamcam_meta["task"] == "sr"
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-6)


def test_edsr_infers_official_range(tmp_path: Path) -> None:
    """MeanShift bias encodes rgb_range; the official EDSR convention (255) is recovered."""
    for rgb_range in (255.0, 1.0):
        path = tmp_path / f"e{int(rgb_range)}.pth"
        torch.save(sr.EDSR(n_feats=8, n_resblocks=1, rgb_range=rgb_range).state_dict(), path)
        assert zoo.load(path).lamcam_meta["config"]["rgb_range"] == rgb_range
    path = tmp_path / "nonorm.pth"
    torch.save(sr.EDSR(n_feats=8, n_resblocks=1, norm=False).state_dict(), path)
    assert zoo.load(path).lamcam_meta["config"]["norm"] is False


def test_docstring_examples() -> None:
    for module in (sr, spandrel_compat):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# ------------------------------------------------------------------------------------------
# data and metrics (no scikit-image)
# ------------------------------------------------------------------------------------------
def test_bundled_samples_follow_the_documented_degradation() -> None:
    samples = zoo.sr_samples()
    assert [s["name"] for s in samples] == sorted(sr_data.HELDOUT_IMAGES)
    for s in samples:
        lr, hr = _png(s["lr"]), _png(s["hr"])
        assert hr.shape[-2:] == (4 * lr.shape[-2], 4 * lr.shape[-1])
        assert 64 <= lr.shape[-1] <= 96
        assert torch.equal(sr_data.degrade(hr), lr)
        assert s["held_out"] and ("CC0" in s["license"] or "public domain" in s["license"])


def test_metrics() -> None:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 40, 40, generator=g)
    hr = torch.round(hr * 255) / 255
    assert sr_data.ssim_y(hr, hr) == pytest.approx(1.0)
    assert sr_data.psnr_y(hr, hr) == float("inf")
    off = (hr + 4 / 255).clamp(0, 1)
    inner = (off - hr)[..., 4:-4, 4:-4]
    expected = 10 * np.log10(1 / float((inner**2).mean()))
    assert sr_data.psnr_rgb(off, hr) == pytest.approx(expected, abs=1e-6)
    white = torch.ones(1, 3, 2, 2)
    assert torch.allclose(sr_data.rgb_to_y(white), torch.full((1, 1, 2, 2), 235.0))
    noisy = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    assert 0 < sr_data.ssim_y(noisy, hr) < sr_data.ssim_y((hr + noisy) / 2, hr) < 1


def test_patch_sampler_is_seeded() -> None:
    imgs = [torch.rand(3, 120, 130, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    a = sr_data.PatchSampler(imgs, lr_patch=8, seed=5).batch(4)
    b = sr_data.PatchSampler(imgs, lr_patch=8, seed=5).batch(4)
    c = sr_data.PatchSampler(imgs, lr_patch=8, seed=6).batch(4)
    assert a[0].shape == (4, 3, 8, 8) and a[1].shape == (4, 3, 32, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert torch.equal(sr_data.degrade(a[1]), a[0])


# ------------------------------------------------------------------------------------------
# users' checkpoints through spandrel
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_rcan_state_dict_loads_through_spandrel(tmp_path: Path, suffix: str) -> None:
    ours = zoo.load("sr_rcan")
    path = tmp_path / f"my_rcan{suffix}"
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    if suffix == ".pth":
        torch.save({"params_ema": state}, path)
    else:
        save_file(state, path)  # no metadata at all
    model = zoo.load(path, arch="spandrel")
    meta = model.lamcam_meta
    assert isinstance(model, SpandrelModel) and not model.training and meta["call"] == "spandrel"
    assert meta["arch"] == "RCAN" and meta["source"] == "spandrel" and meta["name"] == "my_rcan"
    assert meta["task"] == "sr" and meta["scale"] == 4 and meta["in_channels"] == 3
    assert meta["input_range"] == 1.0
    x = torch.rand(1, 3, 13, 17, generator=torch.Generator().manual_seed(4))
    x0 = x.clone()
    with torch.no_grad():
        ref = ours(x)
        out = model(x)
    assert torch.equal(x, x0)  # spandrel's RCAN scales its input in place: never the caller's
    # spandrel's call clamps to [0, 1]; ours computes the bare network
    assert out.shape == (1, 3, 52, 68) and torch.allclose(out, ref.clamp(0, 1), atol=1e-5)
    x.requires_grad_()
    model(x)[..., 20:30, 20:30].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # without arch=, our own RCAN recognises the same keys
    auto = zoo.load(path)
    assert auto.lamcam_meta["arch"] == "RCAN" and auto.lamcam_meta["source"] == str(path)
    assert "agree" in auto.lamcam_meta["loader_evidence"]


def test_edsr_state_dict(tmp_path: Path) -> None:
    """spandrel 0.4.2 has no EDSR; our registry loads official-layout EDSR state dicts."""
    ours = zoo.load("sr_edsr")
    path = tmp_path / "edsr.pth"
    torch.save({"state_dict": ours.state_dict()}, path)
    model = zoo.load(path)
    x = torch.rand(1, 3, 11, 7)
    with torch.no_grad():
        assert torch.allclose(model(x), ours(x), atol=1e-6)
    assert model.lamcam_meta["config"]["n_feats"] == ours.lamcam_meta["config"]["n_feats"]
    with pytest.raises(zoo.ZooError, match="spandrel.*recognises none"):
        zoo.load(path, arch="spandrel")


def _check_padding(model: SpandrelModel, x: torch.Tensor, padded: tuple[int, int]) -> None:
    h, w = x.shape[-2:]
    assert model.padded_size(h, w) == padded
    xp = F.pad(x, (0, padded[1] - w, 0, padded[0] - h), mode="reflect")
    with torch.no_grad():
        ref = model.model(xp).clamp(0, 1)[..., : 4 * h, : 4 * w]
        out = model(x)
    assert out.shape == (1, 3, 4 * h, 4 * w) and torch.allclose(out, ref, atol=1e-6)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside spandrel's SwinIR
def test_spandrel_size_requirements(tmp_path: Path) -> None:
    spandrel_compat.import_spandrel()
    from spandrel.architectures.SAFMN import SAFMN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    swin = SwinIR(img_size=16, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                  mlp_ratio=2.0, upscale=4, upsampler="pixelshuffledirect")
    torch.save(swin.state_dict(), tmp_path / "tiny_swinir.pth")
    model = zoo.load(tmp_path / "tiny_swinir.pth")  # no registered arch matches: spandrel
    assert model.lamcam_meta["arch"] == "SwinIR" and model.lamcam_meta["source"] == "spandrel"
    assert model.lamcam_meta["size_requirements"]["minimum"] == 16
    _check_padding(model, torch.rand(1, 3, 13, 17), (16, 17))
    x = torch.rand(1, 3, 13, 17, requires_grad=True)
    model(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    safmn = SAFMN(dim=8, n_blocks=1, ffn_scale=2.0, upscaling_factor=4)
    save_file(safmn.state_dict(), tmp_path / "tiny_safmn.safetensors")
    model = zoo.load(tmp_path / "tiny_safmn.safetensors")
    assert model.lamcam_meta["arch"] == "SAFMN"
    assert model.lamcam_meta["size_requirements"]["multiple_of"] == 8
    _check_padding(model, torch.rand(1, 3, 13, 17), (16, 24))


def test_pad_to_requirements() -> None:
    class InPlace(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 48, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] == x.shape[-2] and x.shape[-1] % 8 == 0 and x.shape[-1] >= 16
            x *= 2.0  # like spandrel's RCAN
            return F.pixel_shuffle(self.conv(x), 4)

    model = PadToRequirements(InPlace(), 4, multiple_of=8, minimum=16, square=True)
    for size, padded in (((5, 7), (16, 16)), ((16, 16), (16, 16)), ((17, 3), (24, 24))):
        assert model.padded_size(*size) == padded
        x = torch.rand(1, 3, *size, requires_grad=True)
        x0 = x.detach().clone()
        y = model(x)
        assert y.shape == (1, 3, 4 * size[0], 4 * size[1])
        y.sum().backward()
        assert torch.equal(x.detach(), x0) and x.grad is not None
    # a 1-pixel input cannot be reflected: replicate padding takes over
    assert model(torch.rand(1, 3, 1, 1)).shape == (1, 3, 4, 4)


def test_unloadable_checkpoints(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.safetensors"
    data = Path(zoo.info("sr_fsrcnn")["weights_file"]).read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    with pytest.raises(zoo.ZooError) as exc:
        zoo.load(corrupt)
    msg = str(exc.value)
    assert str(corrupt) in msg and "safetensors:" in msg and "torch.load(weights_only=True):" in msg

    unknown = tmp_path / "mystery.pth"
    torch.save({"encoder.w": torch.zeros(3, 3), "decoder.w": torch.zeros(3)}, unknown)
    with pytest.raises(zoo.ZooError) as exc:
        zoo.load(unknown)
    msg = str(exc.value)
    assert str(unknown) in msg and "lamcam registry:" in msg and "spandrel:" in msg
    assert "recognises none" in msg and "arch=" in msg

    meta_only = tmp_path / "named.safetensors"
    save_file({"w": torch.zeros(2)}, meta_only, metadata={"arch": "SomethingElse"})
    with pytest.raises(zoo.ZooError, match="'SomethingElse', which is not registered"):
        zoo.load(meta_only)


def _run(code: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=full_env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_stand_in_torchvision(tmp_path: Path) -> None:
    """spandrel imports without torchvision (absent here) and with a broken torchvision."""
    check = """
        import importlib, sys
        import lamcam.zoo.spandrel_compat as sc
        sp = sc.import_spandrel()
        assert not any(n == "torchvision" or n.startswith("torchvision.") for n in sys.modules)
        lama = importlib.import_module("spandrel.architectures.LaMa.__arch.LaMa")
        assert getattr(sys.modules[lama.rotate.__module__], "__name__") == sc.__name__
        try:
            lama.rotate(None, 0.0)
        except RuntimeError as e:
            assert "needs torchvision" in str(e)
        else:
            raise AssertionError("the stand-in rotate did not raise")
        assert lama.InterpolationMode.BILINEAR.value == "bilinear"
        print("ok", sp.__version__)
    """
    if importlib.util.find_spec("torchvision") is None:
        assert _run(check).startswith("ok")
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    path = os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])
    assert _run(check, {"PYTHONPATH": path}).startswith("ok")


def test_without_spandrel(tmp_path: Path) -> None:
    path = tmp_path / "mystery.pth"
    torch.save({"encoder.w": torch.zeros(3, 3)}, path)
    out = _run(f"""
        import sys
        sys.modules["spandrel"] = None  # as if it were not installed
        import lamcam.zoo as zoo
        from lamcam.zoo import spandrel_compat as sc
        try:
            sc.import_spandrel()
        except sc.SpandrelUnavailable as e:
            assert "pip install 'lamcam[sr]'" in str(e), e
        else:
            raise AssertionError("no error")
        try:
            zoo.load({str(path)!r})
        except zoo.ZooError as e:
            assert "lamcam[sr]" in str(e) and "spandrel: not available" in str(e), e
        assert zoo.load("sr_edsr").lamcam_meta["arch"] == "EDSR"  # own models need no spandrel
        print("ok")
    """)
    assert out.startswith("ok")


def test_weights_metadata_records_training() -> None:
    for name in SR_MODELS:
        meta = read_metadata(zoo.info(name)["weights_file"])
        for key in ("arch", "config", "receptive_field", "heldout", "train_time_s", "seed",
                    "command", "degradation", "steps"):
            assert key in meta, (name, key)
        scores = json.loads(meta["heldout"])
        for s in scores.values():
            assert s["psnr_y"] > s["bicubic_psnr_y"]
