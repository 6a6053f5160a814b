"""The LAM paper's model zoo (:mod:`lamcam.zoo.paper_zoo`) against its authors' code.

The fixtures in ``tests/data/paper_zoo/`` were produced by the authors' own classes (LAM_Demo
commit 6e75cc0, see the README there): tiny state dicts exactly as their classes name them, a
fixed input with their output and input gradient, and the key names and shapes of their
published (default) configurations.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import lamcam
import lamcam.zoo as zoo
from lamcam._safetensors import load_file, read_metadata
from lamcam.zoo import paper_zoo, registry, sr

DATA = Path(__file__).parent / "data" / "paper_zoo"
ARCHS = ["CARN", "CARN-M", "SAN", "RNAN", "DRLN", "FSRCNN-LAM"]
LOCAL = {"CARN", "CARN-M", "FSRCNN-LAM"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _io(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    path = DATA / f"{name}.io.safetensors"
    meta = read_metadata(path)
    return load_file(path), json.loads(meta["config"])


def _fixture_model(name: str) -> torch.nn.Module:
    return zoo.load(DATA / f"{name}.safetensors")


@pytest.fixture(scope="module")
def layouts() -> dict[str, dict[str, list[int]]]:
    return json.loads((DATA / "layouts.json").read_text())


def test_registered() -> None:
    assert set(ARCHS) <= set(zoo.list_archs())
    for name in ARCHS:
        spec = registry._ARCHS[name]
        assert spec.task == "sr" and spec.infer_config is not None
        assert spec.defaults["input_range"] == 1.0 and spec.defaults["scale"] == 4
    assert registry._ARCHS["CARN"].defaults["receptive_field"] == 43
    assert registry._ARCHS["FSRCNN-LAM"].defaults["receptive_field"] == 15
    for name in ("SAN", "RNAN", "DRLN"):
        assert registry._ARCHS[name].defaults["receptive_field"] == "global"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("name", ARCHS)
def test_authors_state_dict_loads_and_matches_their_output(name: str, suffix: str, tmp_path: Path) -> None:
    io, config = _io(name)
    path = DATA / f"{name}.safetensors"
    if suffix == ".pth":  # their checkpoint format: torch.save(model.state_dict())
        path = tmp_path / f"{name}.pth"
        torch.save(load_file(DATA / f"{name}.safetensors"), path)
    model = zoo.load(path)  # no arch=: recognised from the keys and shapes alone
    meta = model.lamcam_meta
    assert meta["arch"] == name and meta["config"] == config and not model.training
    assert meta["task"] == "sr" and meta["scale"] == 4 and meta["in_channels"] == 3
    assert meta["input_range"] == 1.0
    assert meta["receptive_field"] == ("global" if name not in LOCAL else model.receptive_field())
    x = io["input"].clone().requires_grad_(True)
    y = model(x)
    assert y.shape == io["output"].shape
    assert (y - io["output"]).abs().max() <= 1e-5
    y[..., 20:36, 24:40].sum().backward()  # the window the fixture's gradient was taken of
    grad = io["grad"]
    assert (x.grad - grad).abs().max() <= 1e-3 * grad.abs().max()


@pytest.mark.parametrize("name", ARCHS)
def test_default_config_is_the_published_layout(name: str, layouts) -> None:
    cls = paper_zoo.ARCHS[name][0]
    with torch.device("meta"):
        model = cls()
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == layouts[name]
    # a full-size checkpoint is recognised without arch= and gives the default config back
    state = {k: torch.empty(s, device="meta") for k, s in layouts[name].items()}
    assert registry._infer_arch(state) == name
    config = paper_zoo.ARCHS[name][1](state)
    with torch.device("meta"):
        assert cls(**config).state_dict().keys() == model.state_dict().keys()
    if name in LOCAL:
        assert model.receptive_field() == registry._ARCHS[name].defaults["receptive_field"]


def _alive(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose conv biases are raised, so that no ReLU on a receptive-field path is dead
    (a probe measures non-zero gradients; with random weights a dead ReLU can hide a pixel)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None and m.bias.requires_grad:
                m.bias.add_(0.5)
    return model


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_receptive_field_matches_probe(name: str) -> None:
    model = _alive(_fixture_model(name))
    rf = model.lamcam_meta["receptive_field"]
    assert isinstance(rf, int) and rf == model.receptive_field()
    # output rows/cols covering one period of the x4 grid, far from the border
    assert sr.probe_receptive_field(model, lr_size=48, positions=range(92, 100), trials=1) == rf


@pytest.mark.parametrize("name", ["SAN", "RNAN", "DRLN"])
def test_global_networks_depend_on_far_pixels(name: str) -> None:
    model = _fixture_model(name).double()
    assert model.lamcam_meta["receptive_field"] == "global"
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x.requires_grad_(True)
    model(x)[0, :, 32, 32].sum().backward()
    g = x.grad[0].abs().sum(0)
    for corner in (g[0, 0], g[0, -1], g[-1, 0], g[-1, -1]):  # 8 LR pixels from the output's source
        assert corner > 0


@pytest.mark.parametrize("name", ARCHS)
def test_lam_runs(name: str) -> None:
    model = _fixture_model(name)
    img = torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(6))
    r = lamcam.LAM(model, steps=4, progress=False)(img, 40, 40, window=8)
    assert r.attribution.shape == (3, 24, 24) and torch.isfinite(r.attribution).all()
    assert r.map.abs().sum() > 0 and r.map.max() == 1
    assert r.sr.shape == (3, 96, 96)
    assert torch.isfinite(torch.tensor(r.completeness_error))


@pytest.mark.parametrize("name", ["SAN", "RNAN", "DRLN", "CARN"])
def test_batch_consistency(name: str) -> None:
    """Pooling and attention are per image: an image alone or in a batch gives the same output."""
    model = _fixture_model(name)
    x = torch.rand(3, 3, 12, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert (model(x)[1:2] - model(x[1:2])).abs().max() <= 1e-6


def test_rnan_odd_sizes_are_padded_and_cropped() -> None:
    """The authors' RNAN raises on odd sizes; ours reflects one row/column and crops back."""
    model = _fixture_model("RNAN")
    x = torch.rand(1, 3, 13, 17, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        y = model(x)
        padded = model(sr.pad_bottom_right(x, 14, 18))
    assert y.shape == (1, 3, 52, 68)
    assert torch.equal(y, padded[..., :52, :68])


def test_san_needs_four_pixels() -> None:
    model = _fixture_model("SAN")
    with pytest.raises(ValueError, match="at least 4x4"):
        model(torch.rand(1, 3, 3, 8))


def test_covariance_pool_and_newton_schulz() -> None:
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64, generator=gen) * 10 + 3
    # MPN-COV's definition: X I_hat X^T with I_hat = I/M - 1/M^2
    m = 42
    feats = x.reshape(2, 5, m)
    i_hat = torch.eye(m, dtype=torch.float64) / m - 1.0 / m / m
    assert torch.allclose(paper_zoo.covariance_pool(x), feats @ i_hat @ feats.transpose(1, 2), atol=1e-10)
    # iterated long enough, the Newton-Schulz root is the matrix square root
    cov = paper_zoo.covariance_pool(x)
    root = paper_zoo.sqrtm_newton_schulz(cov, iterations=40)
    assert torch.allclose(root @ root, cov, rtol=1e-8, atol=1e-8)
    # SAN's 5 iterations: the trace-normalised iteration of MPN-COV, post-compensated
    a = cov / cov.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1)
    eye3 = 3 * torch.eye(5, dtype=torch.float64)
    t = 0.5 * (eye3 - a)
    y, z = a @ t, t
    for _ in range(3):
        t = 0.5 * (eye3 - z @ y)
        y, z = y @ t, t @ z
    expected = 0.5 * y @ (eye3 - z @ y) * cov.diagonal(dim1=1, dim2=2).sum(-1).sqrt().view(-1, 1, 1)
    assert torch.allclose(paper_zoo.sqrtm_newton_schulz(cov), expected, atol=1e-12)
    with pytest.raises(ValueError):
        paper_zoo.sqrtm_newton_schulz(cov, iterations=1)


def test_soca_region_follows_the_authors_cases() -> None:
    full = slice(None)
    assert paper_zoo._soca_region(999, 999) == (full, full)
    assert paper_zoo._soca_region(500, 1200) == (full, slice(100, 1100))
    assert paper_zoo._soca_region(1200, 500) == (slice(100, 1100), full)
    assert paper_zoo._soca_region(1100, 1300) == (slice(50, 1050), slice(150, 1150))
    # a side of exactly 1000 falls through to the last case, as in their code
    assert paper_zoo._soca_region(1000, 500) == (slice(0, 1000), slice(-250, 750))
