"""Tests of lamcam.zoo: the shapes generator, the shipped classifiers and the registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lamcam.zoo as zoo
from lamcam._safetensors import save_file
from lamcam.zoo import registry, shapes
from lamcam.zoo.classifiers import ShapesResNet, ShapesVGG

# Seeds used to train / select the shipped models are 1000 (train), 2000 (held-out), 3000
# (bundled samples); the tests draw from yet another seed.
TEST_SEED = 4242


# ------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------
def test_same_seed_same_arrays() -> None:
    a = shapes.make_sample(np.random.default_rng(7))
    b = shapes.make_sample(np.random.default_rng(7))
    c = shapes.make_sample(np.random.default_rng(8))
    assert np.array_equal(a.image, b.image) and a.label == b.label
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.image, c.image)

    d1 = shapes.make_dataset(20, seed=5)
    d2 = shapes.make_dataset(20, seed=5)
    assert torch.equal(d1.images, d2.images) and torch.equal(d1.labels, d2.labels)
    assert all(np.array_equal(x, y) for x, y in zip(d1.masks, d2.masks, strict=True))
    # sample i does not depend on the data set size or on chunking
    d3 = shapes.make_dataset(8, seed=5, start=12)
    assert torch.equal(d3.images, d1.images[12:])
    assert not torch.equal(shapes.make_dataset(20, seed=6).images, d1.images)


def test_dataset_types_and_shapes() -> None:
    ds = shapes.make_dataset(10, seed=1, size=64)
    assert ds.images.shape == (10, 3, 64, 64) and ds.images.dtype == torch.float32
    assert ds.labels.shape == (10,) and ds.labels.dtype == torch.int64
    assert ds.n_instances.shape == (10,)
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert len(ds) == 10 and ds[3][0].shape == (3, 64, 64) and isinstance(ds[3][1], int)
    for m, b, n in zip(ds.masks, ds.boxes, ds.n_instances, strict=True):
        assert m.shape == (int(n), 64, 64) and m.dtype == bool and b.shape == (int(n), 4)
    assert shapes.make_dataset(3, seed=1, size=96).images.shape == (3, 3, 96, 96)
    assert shapes.make_dataset(3, seed=1, with_masks=False).masks == []


def test_ground_truth_is_exact() -> None:
    """Mask pixels carry exactly the instance colour, boxes are the masks' bounding boxes."""
    rng = np.random.default_rng(123)
    for _ in range(150):
        s = shapes.make_sample(rng)
        n = s.n_instances
        assert 1 <= n <= 4 and 0 <= s.label < len(shapes.CLASSES)
        assert s.masks.shape == (n, 64, 64) and s.boxes.shape == (n, 4)
        assert s.masks.sum(0).max() <= 1, "instance masks overlap"
        for i in range(n):
            m = s.masks[i]
            assert m.sum() >= 20, "instance (almost) invisible"
            assert np.array_equal(s.image[m], np.broadcast_to(s.colors[i], (m.sum(), 3)))
            ys, xs = np.nonzero(m)
            assert tuple(s.boxes[i]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            # inside the box, the colour is found exactly where the mask is
            x0, y0, x1, y1 = s.boxes[i]
            window = s.image[y0:y1, x0:x1]
            same = np.all(window == s.colors[i], axis=-1)
            assert np.array_equal(same, m[y0:y1, x0:x1])


def test_classes_and_counts_roughly_uniform() -> None:
    ds = shapes.make_dataset(600, seed=TEST_SEED, with_masks=False)
    per_class = np.bincount(ds.labels.numpy(), minlength=len(shapes.CLASSES))
    assert len(shapes.CLASSES) >= 5
    assert per_class.min() >= 60 and per_class.max() <= 140, per_class  # expected 100 each
    per_count = np.bincount(ds.n_instances.numpy(), minlength=5)[1:]
    assert per_count.min() >= 100 and per_count.max() <= 200, per_count  # expected 150 each


def test_colour_is_independent_of_class() -> None:
    ds = shapes.make_dataset(600, seed=TEST_SEED)
    mean_colour = np.array(
        [ds.images[i].permute(1, 2, 0).numpy()[ds.masks[i][0]].mean(0) for i in range(len(ds))]
    )
    labels = ds.labels.numpy()
    per_class = np.array([mean_colour[labels == k].mean(0) for k in range(len(shapes.CLASSES))])
    assert np.abs(per_class - 0.5).max() < 0.12, per_class


def test_make_sample_arguments() -> None:
    rng = np.random.default_rng(0)
    s = shapes.make_sample(rng, n_instances=4, label=2)
    assert s.n_instances == 4 and s.class_name == "triangle"
    with pytest.raises(ValueError, match="n_instances"):
        shapes.make_sample(rng, n_instances=5)
    with pytest.raises(ValueError, match="label"):
        shapes.make_sample(rng, label=len(shapes.CLASSES))


# ------------------------------------------------------------------------------------------
# shipped models
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def held_out() -> shapes.ShapesDataset:
    return shapes.make_dataset(300, seed=TEST_SEED)


@pytest.fixture(scope="module", params=["shapes_resnet", "shapes_vgg"])
def shipped(request) -> torch.nn.Module:
    return zoo.load(request.param)


def test_list_models() -> None:
    assert zoo.list_models(task="classification") == ["shapes_resnet", "shapes_vgg"]
    assert {"ShapesVGG", "ShapesResNet"} <= set(zoo.list_archs())


def test_shipped_model_meta_and_mode(shipped: torch.nn.Module) -> None:
    meta = shipped.lamcam_meta
    assert not shipped.training and not any(m.training for m in shipped.modules())
    assert meta["task"] == "classification"
    assert meta["classes"] == list(shapes.CLASSES)
    assert meta["input_size"] == 64
    assert meta["arch"] in ("ShapesVGG", "ShapesResNet")
    assert meta["name"] in zoo.list_models()
    layer = shipped.get_submodule(meta["default_layer"])
    feats = []
    handle = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    with torch.no_grad():
        out = shipped(torch.rand(2, 3, 64, 64))
    handle.remove()
    assert out.shape == (2, len(shapes.CLASSES))
    assert feats[0].shape[-2:] == (8, 8)  # stride 8: localises several instances
    # strictly conv -> global average pool -> linear
    assert isinstance(shipped.pool, torch.nn.AdaptiveAvgPool2d)
    assert isinstance(shipped.fc, torch.nn.Linear)
    n_params = sum(p.numel() for p in shipped.parameters())
    assert 100_000 <= n_params <= 1_000_000 and meta["num_params"] == n_params


def test_vgg_uses_inplace_relu() -> None:
    model = zoo.load("shapes_vgg")
    relus = [m for m in model.features if isinstance(m, torch.nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    assert isinstance(model.get_submodule(model.lamcam_meta["default_layer"]), torch.nn.ReLU)


def test_shipped_accuracy_on_fresh_held_out_set(
    shipped: torch.nn.Module, held_out: shapes.ShapesDataset
) -> None:
    with torch.no_grad():
        pred = shipped(held_out.images).argmax(1)
    acc = float((pred == held_out.labels).float().mean())
    assert acc >= 0.95, f"{shipped.lamcam_meta['name']}: {acc:.3f}"


def test_info() -> None:
    for name in zoo.list_models(task="classification"):
        meta = zoo.info(name)
        assert meta["available"] and meta["name"] == name
        assert meta["accuracy"] >= 0.95 and meta["eval_seed"] != meta["train_seed"]
        assert Path(meta["weights_file"]).is_file()
        assert meta["classes"] == list(shapes.CLASSES)
    total = sum(zoo.info(n)["weights_bytes"] for n in zoo.list_models(task="classification"))
    assert total <= 5 * 2**20
    with pytest.raises(zoo.UnknownModelError, match="shapes_vgg"):
        zoo.info("shapes_vg")


def test_samples_bundled_and_classified() -> None:
    paths = zoo.samples()
    ann = zoo.sample_annotations()
    assert 4 <= len(paths) <= 12
    assert {p.name for p in paths} == set(ann)
    assert len({a["label"] for a in ann.values()}) >= 5
    assert {a["n_instances"] for a in ann.values()} == {1, 2, 3, 4}
    images = []
    for p in paths:
        a = ann[p.name]
        img = np.asarray(Image.open(p).convert("RGB"))
        assert img.shape == (64, 64, 3)
        assert a["class_name"] == shapes.CLASSES[a["label"]]
        assert len(a["boxes"]) == a["n_instances"]
        mask = np.asarray(Image.open(p.with_name(a["mask_file"])))
        for i, (x0, y0, x1, y1) in enumerate(a["boxes"]):
            ys, xs = np.nonzero(mask == i + 1)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        images.append(torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255)
    labels = torch.tensor([ann[p.name]["label"] for p in paths])
    for name in zoo.list_models(task="classification"):
        with torch.no_grad():
            pred = zoo.load(name)(torch.stack(images)).argmax(1)
        assert torch.equal(pred, labels), name


# ------------------------------------------------------------------------------------------
# loading checkpoints by path
# ------------------------------------------------------------------------------------------
def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a(x), b(x))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 3},
        lambda sd: {"module." + k: v for k, v in sd.items()},
    ],
    ids=["raw", "state_dict", "model", "dataparallel"],
)
def test_load_pth_with_arch(tmp_path: Path, monkeypatch, wrap) -> None:
    ref = zoo.load("shapes_resnet")
    path = tmp_path / "resnet.pth"
    torch.save(wrap(ref.state_dict()), path)

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(registry.torch, "load", spy)
    model = zoo.load(path, arch="ShapesResNet")
    assert calls and all(c.get("weights_only") is True for c in calls)
    assert all(str(c.get("map_location")) == "cpu" for c in calls)
    assert not model.training and _same_outputs(model, ref)
    assert model.lamcam_meta["name"] == "resnet"
    assert model.lamcam_meta["arch"] == "ShapesResNet"
    assert model.lamcam_meta["default_layer"] == "layer3"
    assert model.lamcam_meta["classes"] == list(shapes.CLASSES)


def test_load_pth_with_metadata_and_inferred_arch(tmp_path: Path) -> None:
    ref = zoo.load("shapes_vgg")
    path = tmp_path / "v.pt"
    torch.save({"state_dict": ref.state_dict(), "meta": {"arch": "ShapesVGG", "x": 1}}, path)
    model = zoo.load(str(path))
    assert model.lamcam_meta["arch"] == "ShapesVGG" and model.lamcam_meta["x"] == 1
    assert _same_outputs(model, ref)
    # no metadata at all: the architecture is recognised from the keys and shapes
    torch.save(ref.state_dict(), path)
    assert zoo.load(path).lamcam_meta["arch"] == "ShapesVGG"


def test_load_safetensors_path(tmp_path: Path) -> None:
    ref = zoo.load("shapes_vgg")
    path = tmp_path / "mine.safetensors"
    save_file(ref.state_dict(), path, metadata={"arch": "ShapesVGG", "classes": '["a","b"]'})
    model = zoo.load(path)
    assert _same_outputs(model, ref) and model.lamcam_meta["name"] == "mine"
    # classes inconsistent with the head are replaced by generic names
    assert model.lamcam_meta["classes"] == [f"class_{i}" for i in range(6)]
    save_file(ref.state_dict(), path)  # no metadata: arch= or key matching
    assert _same_outputs(zoo.load(path, arch="ShapesVGG"), ref)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": ShapesVGG().state_dict(), "obj": Path("x")}, path)
    with pytest.raises(zoo.ZooError, match=r"weights_only=True") as exc:
        zoo.load(path, arch="ShapesVGG")
    assert "safetensors" in str(exc.value)  # every loader tried is listed


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_unknown_name_lists_models() -> None:
    with pytest.raises(zoo.UnknownModelError) as exc:
        zoo.load("shapes_vggg")
    msg = str(exc.value)
    assert "shapes_resnet" in msg and "shapes_vgg" in msg and "Did you mean 'shapes_vgg'" in msg
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        zoo.load(tmp_path / "nope.pth")


def test_corrupt_file_lists_loaders(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    data = (Path(zoo.info("shapes_vgg")["weights_file"])).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(zoo.ZooError) as exc:
        zoo.load(path)
    msg = str(exc.value)
    assert "corrupt" in msg and "safetensors:" in msg and "torch.load(weights_only=True):" in msg
    assert "truncated" in msg


def test_unknown_architecture(tmp_path: Path) -> None:
    path = tmp_path / "lin.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(zoo.ZooError, match="cannot tell the architecture.*arch="):
        zoo.load(path)
    with pytest.raises(zoo.ZooError, match="unknown architecture 'Nope'.*ShapesVGG"):
        zoo.load(path, arch="Nope")


def test_state_dict_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "r.pth"
    sd = ShapesResNet(blocks=1).state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(zoo.ZooError) as exc:
        zoo.load(path, arch="ShapesResNet")
    msg = str(exc.value)
    assert "1 missing keys [fc.bias]" in msg and "1 unexpected keys [extra.weight]" in msg
    torch.save(ShapesResNet(blocks=1).state_dict(), path)
    with pytest.raises(zoo.ZooError, match="missing keys"):
        zoo.load(path, arch="ShapesVGG")


def test_register_new_model_family(tmp_path: Path) -> None:
    """Later families (e.g. super-resolution) plug in with register_arch + register."""

    class TinySR(torch.nn.Module):
        def __init__(self, scale: int = 2) -> None:
            super().__init__()
            self.body = torch.nn.Conv2d(3, 3 * scale * scale, 3, padding=1)
            self.up = torch.nn.PixelShuffle(scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(self.body(x))

    path = tmp_path / "tiny_sr.safetensors"
    save_file(TinySR(2).state_dict(), path, metadata={"config": json.dumps({"scale": 2})})
    zoo.register_arch("TinySR_test", TinySR, task="super_resolution", default_layer="body")
    zoo.register("tiny_sr_test", arch="TinySR_test", weights_file=str(path), meta={"scale": 2})
    try:
        model = zoo.load("tiny_sr_test")
        assert model.lamcam_meta["task"] == "super_resolution"
        assert model.lamcam_meta["scale"] == 2 and model.lamcam_meta["default_layer"] == "body"
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 16, 16)
        assert "tiny_sr_test" in zoo.list_models()
        with pytest.raises(ValueError, match="already registered"):
            zoo.register("tiny_sr_test", arch="TinySR_test", weights_file=str(path))
    finally:
        registry._MODELS.pop("tiny_sr_test", None)
        registry._ARCHS.pop("TinySR_test", None)


def test_whole_zoo_within_size_budget() -> None:
    total = sum(zoo.info(n)["weights_bytes"] for n in zoo.list_models())
    assert total <= 15 * 2**20
