"""lamcam.evaluation and `lamcam eval`: records equal the metrics computed directly, exact
identities (CAM ≡ Grad-CAM on a GAP → linear head gives 0 % wins either way), and bad input."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import nn

import lamcam
from lamcam import metrics as M
from lamcam.cli import main
from lamcam.evaluation import MetricUnavailableError, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(head: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()]
    if head:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)]
    else:  # a head CAM cannot read weights from
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)]
    return nn.Sequential(*layers).eval()


def _data(n: int = 5, size: int = 12):
    torch.manual_seed(1)
    x = torch.rand(n, 3, size, size)
    masks = []
    for i in range(n):
        k = 1 + i % 3
        m = torch.zeros(k, size, size, dtype=torch.bool)
        for j in range(k):
            m[j, 1 + 3 * j:3 + 3 * j, 2 + j:6 + j] = True
        masks.append(m)
    return x, masks


def test_records_equal_direct_metrics():
    net, (x, masks) = _net(), _data()
    ev = evaluate(net, x, ["gradcam++"], layer="2", instance_masks=masks, steps=6, batch_size=2,
                  progress=False)
    maps = lamcam.GradCAMPlusPlus(net, "2")(x).maps
    cs = M.confidence_scores(net, x, maps)
    d, ins = M.deletion_insertion(net, x, maps, steps=6)
    recs = sorted(ev.records, key=lambda r: r["image"])
    for i, r in enumerate(recs):
        assert r["y"] == pytest.approx(float(cs.y[i]), rel=1e-6)
        assert r["o"] == pytest.approx(float(cs.o[i]), rel=1e-6)
        assert r["deletion"] == pytest.approx(float(d[i]), rel=1e-6)
        assert r["insertion"] == pytest.approx(float(ins[i]), rel=1e-6)
        assert r["energy"] == pytest.approx(M.energy_pointing_game(maps[i], masks[i]), rel=1e-6)
        assert r["coverage"] == M.instance_coverage(maps[i], masks[i])
        assert r["n_instances"] == masks[i].shape[0]
    row = ev.summary()[0]
    assert row["average_drop"] == pytest.approx(cs.average_drop, rel=1e-4)  # batch 2 vs 5: float32
    assert row["increase"] == pytest.approx(cs.increase_in_confidence, abs=1e-9)
    by_n = ev.by_instances("coverage")
    assert sorted(by_n) == [1, 2, 3]
    expect = [r["coverage"] for r in recs if r["n_instances"] == 2]
    assert by_n[2]["gradcam++"] == pytest.approx(sum(expect) / len(expect))


def test_cam_and_gradcam_tie_exactly():
    """Grad-CAM ∝ CAM on conv → GAP → linear, so their relative drops agree and neither wins."""
    net, (x, _) = _net(), _data()
    ev = evaluate(net, x, ["cam", "gradcam", "gradcam++"], layer="3", groups=["faithfulness"],
                  progress=False)
    w = ev.win_matrix()
    assert w[0][1] == 0.0 and w[1][0] == 0.0
    assert math.isnan(w[0][0])
    s = {r["method"]: r for r in ev.summary()}
    assert s["cam"]["average_drop"] == pytest.approx(s["gradcam"]["average_drop"], rel=1e-5)
    assert math.isnan(s["cam"]["deletion"])  # not evaluated
    assert "Deletion" not in ev.markdown()


def test_guided_methods_scored_through_saliency():
    net, (x, masks) = _net(), _data(3)
    ev = evaluate(net, x, ["guided-backprop"], instance_masks=masks, groups=["localisation"],
                  progress=False)
    g = lamcam.GuidedBackprop(net)(x).maps.abs().amax(1)
    for i, r in enumerate(sorted(ev.records, key=lambda r: r["image"])):
        sal = (g[i] - g[i].min()) / (g[i].max() - g[i].min())
        assert r["energy"] == pytest.approx(M.energy_pointing_game(sal, masks[i]), rel=1e-5)


def test_bad_input():
    net, (x, masks) = _net(), _data(3)
    with pytest.raises(MetricUnavailableError, match="instance masks"):
        evaluate(net, x, ["gradcam"], groups=["localisation"], progress=False)
    with pytest.raises(MetricUnavailableError, match="'cam' cannot explain"):
        evaluate(_net(head=False), x, ["cam"], groups=["faithfulness"], progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(net, x, ["gradcan"], progress=False)
    empty = [m.clone() for m in masks]
    empty[1][:] = False
    with pytest.raises(ValueError, match="empty"):
        evaluate(net, x, ["gradcam"], instance_masks=empty, progress=False)
    with pytest.raises(ValueError, match="labels"):
        evaluate(net, x, ["gradcam"], target="label", progress=False)
    with pytest.raises(ValueError, match="unknown metric group"):
        evaluate(net, x, ["gradcam"], groups=["speed"], progress=False)
    # masks at another resolution than the maps: compared after resizing, with a warning
    big = [m.repeat_interleave(2, 1).repeat_interleave(2, 2) for m in masks]
    with pytest.warns(UserWarning, match="resized bilinearly to the mask"):
        evaluate(net, x, ["gradcam"], instance_masks=big, groups=["localisation"], progress=False)


def test_cli_eval_on_generated_shapes(tmp_path, capsys):
    out = tmp_path / "ev"
    code = main(["eval", "--shapes", "6", "--model", "shapes_resnet", "--methods", "gradcam,gradcam++",
                 "--steps", "4", "--target", "label", "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    names = {p.name for p in out.iterdir()}
    assert {"summary.md", "summary.csv", "per_image.csv", "metrics.png", "deletion_insertion.png",
            "coverage_by_instances.png"} <= names
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 12 and {r["method"] for r in rows} == {"gradcam", "gradcam++"}
    summary = list(csv.DictReader((out / "summary.csv").open()))
    energy = [float(r["energy"]) for r in rows if r["method"] == "gradcam"]
    assert float(summary[0]["energy"]) == pytest.approx(sum(energy) / 6)
    assert "Inst. coverage" in (out / "summary.md").read_text()


def test_cli_eval_files_and_errors(tmp_path, capsys):
    from lamcam import zoo

    samples = zoo.samples()[:3]
    code = main(["eval", *map(str, samples), "--model", "shapes_vgg", "--methods", "gradcam",
                 "--metrics", "faithfulness,localisation", "--out", str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "a" / "per_image.csv").open()))
    assert [int(r["n_instances"]) for r in rows] == [
        zoo.sample_annotations()[p.name]["n_instances"] for p in samples]
    # no masks beside these images: asking for localisation is refused, naming the fix
    noisy = tmp_path / "imgs"
    noisy.mkdir()
    from lamcam.io import save_image

    save_image(torch.rand(3, 64, 64), noisy / "a.png")
    assert main(["eval", str(noisy), "--metrics", "localisation", "--out", str(tmp_path / "b")]) == 2
    assert "_mask.png" in capsys.readouterr().err
    (noisy / "bad.png").write_bytes(b"not a png")
    assert main(["eval", str(noisy), "--metrics", "faithfulness", "--out", str(tmp_path / "c")]) == 1
    assert "bad.png" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path / "d")]) == 2
    assert "--shapes" in capsys.readouterr().err
    assert main(["eval", "--shapes", "2", "--metrics", "speed", "--out", str(tmp_path / "e")]) == 2
    assert "unknown metric group" in capsys.readouterr().err
