"""Metrics against known answers: hand-computed cases, and an oracle map from the ground truth that
must beat a random map on every metric with a real trained model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lamcam
from lamcam import metrics
from lamcam.maps import upsample_maps
from lamcam.zoo import shapes


@pytest.fixture(scope="module")
def shapes_batch():
    data = shapes.make_dataset(24, seed=777)
    model = lamcam.zoo.load("shapes_resnet")
    oracle = torch.stack([torch.as_tensor(m).any(0).float() for m in data.masks])
    g = torch.Generator().manual_seed(0)
    random = upsample_maps(torch.rand(24, 8, 8, generator=g), (64, 64))
    random = lamcam.maps.normalize_minmax(random, 2)
    return model, data, oracle, random


def test_average_drop_increase_and_win_hand_computed():
    y = torch.tensor([0.8, 0.5, 0.4, 0.9])
    o = torch.tensor([0.4, 0.6, 0.4, 0.0])
    assert metrics.average_drop(y, o) == pytest.approx(100 * (0.5 + 0 + 0 + 1) / 4)
    assert metrics.increase_in_confidence(y, o) == 25.0
    assert metrics.win_percent(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.1])) == (50.0, 50.0, 0.0)
    # differences below the tolerance are ties, not wins on floating-point noise
    assert metrics.win_percent(torch.tensor([0.1, 0.2]), torch.tensor([0.1 + 1e-9, 0.2 - 1e-9])) == (
        0.0, 0.0, 100.0)
    a, b = torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.1 + 1e-9], dtype=torch.float64)
    assert metrics.win_percent(a, b, tol=0.0)[0] == 100.0


def test_confidence_scores_identity_and_zero_maps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    x = torch.rand(5, 3, 16, 16)
    ones = metrics.confidence_scores(model, x, torch.ones(5, 16, 16))
    torch.testing.assert_close(ones.y, ones.o)
    assert ones.average_drop == pytest.approx(0.0) and ones.increase_in_confidence == 0.0
    with pytest.warns(UserWarning, match=r"\(4, 4\) resized bilinearly to the images' \(16, 16\)"):
        small = metrics.confidence_scores(model, x, torch.ones(5, 4, 4))
    torch.testing.assert_close(small.o, ones.o)
    zeros = metrics.confidence_scores(model, x, torch.zeros(5, 16, 16))
    with torch.no_grad():
        p0 = torch.softmax(model(torch.zeros_like(x)).double(), 1).gather(1, zeros.targets[:, None])
    torch.testing.assert_close(zeros.o, p0[:, 0])
    with pytest.raises(ValueError, match="raw"):
        metrics.confidence_scores(model, x, torch.ones(5, 16, 16), input="scaled")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.confidence_scores(model, x, 2 * torch.ones(5, 16, 16))


def test_localisation_hand_computed():
    m = torch.tensor([[0.0, 0.2, 0.9], [0.1, 1.0, 0.3], [0.0, 0.0, 0.5]])
    mask = torch.tensor([[0, 0, 1], [0, 1, 1], [0, 0, 0]], dtype=torch.bool)
    assert metrics.pointing_game(m, mask)
    with pytest.warns(UserWarning, match=r"\(3, 3\) resized bilinearly to the mask's \(6, 6\)"):
        big = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)
        assert metrics.energy_pointing_game(m, big) > 0.5
    assert metrics.energy_pointing_game(m, mask) == pytest.approx((0.9 + 1.0 + 0.3) / 3.0)
    # m >= 0.5: {(0,2), (1,1), (2,2)}; mask {(0,2), (1,1), (1,2)}: inter 2, union 4
    assert metrics.iou_at(m, mask, 0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty"):
        metrics.pointing_game(m, torch.zeros(3, 3, dtype=torch.bool))


def test_spearman_ties_and_constant():
    rho = metrics.spearman(torch.tensor([[1.0, 1.0, 2.0, 3.0]]), torch.tensor([[5.0, 6.0, 7.0, 8.0]]))
    # ranks (1.5, 1.5, 3, 4) vs (1, 2, 3, 4): Pearson of the ranks
    a = torch.tensor([1.5, 1.5, 3, 4], dtype=torch.float64) - 2.5
    b = torch.tensor([1, 2, 3, 4], dtype=torch.float64) - 2.5
    assert float(rho) == pytest.approx(float((a * b).sum() / (a.norm() * b.norm())))
    assert torch.isnan(metrics.spearman(torch.ones(1, 4), torch.rand(1, 4))).all()


def test_oracle_beats_random_on_every_localisation_metric(shapes_batch):
    _, data, oracle, random = shapes_batch
    scores = {"oracle": [], "random": []}
    for name, maps in (("oracle", oracle), ("random", random)):
        for i in range(len(maps)):
            inst = torch.as_tensor(data.masks[i])
            scores[name].append([
                metrics.pointing_game(maps[i], inst),
                metrics.energy_pointing_game(maps[i], inst),
                metrics.iou_at(maps[i], inst, 0.5),
                metrics.instance_coverage(maps[i], inst),
            ])
    o = torch.tensor(scores["oracle"], dtype=torch.float64).mean(0)
    r = torch.tensor(scores["random"], dtype=torch.float64).mean(0)
    assert (o > r).all(), (o, r)
    assert o.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_oracle_beats_random_on_faithfulness(shapes_batch):
    model, data, oracle, random = shapes_batch
    x = data.images
    so = metrics.confidence_scores(model, x, oracle)
    sr = metrics.confidence_scores(model, x, random)
    assert so.average_drop < sr.average_drop
    assert so.increase_in_confidence >= sr.increase_in_confidence
    win_o, win_r, _ = metrics.win_percent(so.drop, sr.drop)
    assert win_o > win_r
    # insertion ranks the oracle first; deletion does not on silhouette-defined classes (the
    # outline survives pixel replacement; see deletion_insertion's docstring)
    _, ins_o = metrics.deletion_insertion(model, x[:12], oracle[:12], steps=16)
    _, ins_r = metrics.deletion_insertion(model, x[:12], random[:12], steps=16)
    assert ins_o.mean() > ins_r.mean()


def test_deletion_insertion_hand_checked_extremes():
    # a "model" whose class-1 probability is the mean of channel 0: deletion of everything at once
    class MeanModel(nn.Module):
        def forward(self, x):
            s = x[:, 0].mean((1, 2))
            return torch.stack([torch.zeros_like(s), 20 * s], 1)

    x = torch.ones(1, 3, 8, 8)
    d, i = metrics.deletion_insertion(MeanModel(), x, torch.rand(1, 8, 8), targets=torch.tensor([1]),
                                      steps=8, blur_sigma=1.0)
    # deletion: p(k) = sigmoid(20 (1 - k/8)); the trapezoid of that curve
    k = torch.arange(9, dtype=torch.float64)
    expected = torch.trapezoid(torch.sigmoid(20 * (1 - k / 8)), dx=1 / 8)
    assert float(d[0]) == pytest.approx(float(expected), rel=1e-9)
    assert float(i[0]) == pytest.approx(float(torch.sigmoid(torch.tensor(20.0, dtype=torch.float64))),
                                        rel=1e-9)  # blur of a constant image is the image


def test_cascading_randomization_falls_and_leaves_model_alone(shapes_batch):
    model, data, _, _ = shapes_batch
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = data.images[:6]
    t = model(x).argmax(1)

    def gradcam(m, images):
        return lamcam.GradCAM(m, "layer3")(images, target=t).maps

    curve = metrics.cascading_randomization(model, gradcam, x)
    assert curve[0] == ("trained", 1.0)
    names = [n for n, _ in curve]
    assert names[1] == "fc" and names[-1] == "stem.0"  # top first, every parametrised module
    assert curve[1][1] < 1.0 and curve[-1][1] < 0.2  # Grad-CAM passes: the maps decorrelate
    assert [n for n, _ in metrics.cascading_randomization(model, gradcam, x, ["fc"])] == [
        "trained", "fc"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
