"""Tests of the distillation study (studies.distill): the explanation loss, its gradient,
and the resumable command."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from lamcam.cam import GradCAMPlusPlus
from studies import distill

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(n: int = 4, size: int = 32, seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g, dtype=dtype), torch.arange(n) % 6


def _loss(student: distill.StudentCNN, x: torch.Tensor, y: torch.Tensor, tmaps: torch.Tensor):
    cam = GradCAMPlusPlus(student, student.cam_layer, differentiable=True)
    return distill.explanation_loss(cam, x, y, tmaps)


def test_student_shapes_and_cam_layer():
    s = distill.build_student((8, 8, 8, 16), seed=0)
    x, y = _batch()
    assert s(x).shape == (4, 6)
    assert s.cam_layer == "features.10"
    res = GradCAMPlusPlus(s, s.cam_layer)(x, target=y)
    assert res.raw.shape == (4, 4, 4)  # 32 / 8
    assert res.maps.shape == (4, 32, 32)
    # same seed, same weights; other seed, other weights; the global RNG is not consumed
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = distill.build_student((8, 8, 8, 16), seed=3)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = distill.build_student((8, 8, 8, 16), seed=3)
    c = distill.build_student((8, 8, 8, 16), seed=4)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_explanation_loss_zero_for_identical_networks_positive_otherwise():
    x, y = _batch()
    teacher = distill.build_student((8, 8, 8, 16), seed=1)
    tmaps = distill.cam_maps(teacher, teacher.cam_layer, x, y)
    same = copy.deepcopy(teacher)
    loss, logits = _loss(same, x, y, tmaps)
    assert float(loss.detach()) < 1e-12
    assert torch.allclose(logits, teacher(x))
    other = distill.build_student((8, 8, 8, 16), seed=2)
    loss2, _ = _loss(other, x, y, tmaps)
    # by hand: mean over images of the per-pixel mean squared difference
    by_hand = (distill.cam_maps(other, other.cam_layer, x, y) - tmaps).square().mean()
    assert float(loss2.detach()) > 1e-3
    assert float(loss2.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    with pytest.raises(ValueError, match="differentiable=True"):
        distill.explanation_loss(GradCAMPlusPlus(other, other.cam_layer), x, y, tmaps)


def test_explanation_loss_gradient_reaches_parameters_and_matches_finite_difference():
    x, y = _batch(3, 32, seed=3, dtype=torch.float64)
    teacher = distill.build_student((6, 8, 8, 12), seed=7).double()
    tmaps = distill.cam_maps(teacher, teacher.cam_layer, x, y).double()
    student = distill.build_student((6, 8, 8, 12), seed=8).double()
    loss, _ = _loss(student, x, y, tmaps)
    loss.backward()
    grads = {n: p.grad for n, p in student.named_parameters()}
    # every conv weight (through the activations) and the head's weight (through ∂S/∂A) get a gradient;
    # the head's bias cannot: Grad-CAM++ of a GAP-linear head does not depend on it
    for name in ("features.0.weight", "features.3.weight", "features.6.weight", "features.9.weight",
                 "fc.weight"):
        assert grads[name] is not None and float(grads[name].abs().sum()) > 0, name
    assert grads["fc.bias"] is None or float(grads["fc.bias"].abs().max()) == 0.0

    def loss_at(name: str, index: tuple[int, ...], value: float) -> float:
        s = copy.deepcopy(student)
        with torch.no_grad():
            dict(s.named_parameters())[name][index] = value
        out, _ = _loss(s, x, y, tmaps)
        return float(out.detach())

    for name in ("features.9.weight", "fc.weight"):
        g = grads[name]
        index = tuple(int(i) for i in torch.unravel_index(g.abs().argmax(), g.shape))
        p0 = float(dict(student.named_parameters())[name].detach()[index])
        h = 1e-6
        fd = (loss_at(name, index, p0 + h) - loss_at(name, index, p0 - h)) / (2 * h)
        assert fd == pytest.approx(float(g[index]), rel=1e-4, abs=1e-9), name


def test_train_student_is_deterministic_and_lambda_zero_skips_maps():
    cfg = distill.Config(n_train=8, epochs=2, batch=4, widths=(4, 4, 4, 8), quick=True)
    x, y = _batch(8, 32, seed=1)
    tmaps = torch.rand(8, 32, 32, generator=torch.Generator().manual_seed(0))
    s1, st1 = distill.train_student(cfg, 5.0, 0, x, y, tmaps, progress=False)
    s2, st2 = distill.train_student(cfg, 5.0, 0, x, y, tmaps, progress=False)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert st1["ce_curve"] == st2["ce_curve"] and st1["steps"] == 4
    assert all(m == m and m > 0 for m in st1["mse_curve"])  # map MSE computed when λ > 0
    s0, st0 = distill.train_student(cfg, 0.0, 0, x, y, tmaps, progress=False)
    assert all(m != m for m in st0["mse_curve"])  # NaN: not computed for λ = 0
    assert not torch.equal(s0["fc.weight"], s1["fc.weight"])
    # the first 2 epochs of a 4-epoch run are exactly the 2-epoch run (snapshots of the control)
    snaps = {}
    s4, st4 = distill.train_student(cfg, 0.0, 0, x, y, tmaps, epochs=4, progress=False,
                                    on_epoch=lambda k, state, st: snaps.__setitem__(k, (state, st)))
    assert sorted(snaps) == [1, 2, 3, 4] and st4["steps"] == 8
    assert all(torch.equal(snaps[2][0][k], s0[k]) for k in s0)
    assert snaps[2][1]["ce_curve"] == st0["ce_curve"] == st4["ce_curve"][:2]
    assert not torch.equal(s4["fc.weight"], s0["fc.weight"])


def test_conditions_and_docstring_examples():
    import doctest

    conds = distill.Config(epochs=10, lambdas=(0.0, 2.0, 20.0), long_factor=2).conditions
    assert [(c.lam, c.epochs) for c in conds] == [(0.0, 10), (0.0, 20), (2.0, 10), (20.0, 10)]
    assert [c.label(10) for c in conds] == ["CE only", "CE only, 2× epochs", "CE + map, λ = 2",
                                            "CE + map, λ = 20"]
    assert len({c.key(0) for c in conds}) == 4
    assert [c.lam for c in distill.Config(long_factor=0).conditions] == [0.0, 2.0, 20.0]
    assert distill._epochs_below([1.8, 1.6, 1.79], 1.5) is None
    result = doctest.testmod(distill)
    assert result.attempted > 0 and result.failed == 0


def test_main_quick_end_to_end_resume_and_config_change(tmp_path, monkeypatch):
    root, docs = tmp_path / "root", tmp_path / "docs"
    t0 = time.perf_counter()
    assert distill.main(["--quick", "--root", str(root), "--docs", str(docs), "--threads", "1"]) == 0
    first = time.perf_counter() - t0
    text = (docs / "results.md").read_text()
    assert "## (d) Distillation from explanations" in text
    assert "results/distill/accuracy.png" in text and "Quick configuration" in text
    for f in ("accuracy.png", "examples.png", "curves.png", "per_seed.csv"):
        assert (docs / "results" / "distill" / f).stat().st_size > 0
    rows = (docs / "results" / "distill" / "per_seed.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3  # header + (CE, CE 2x epochs, λ = 20) x 1 seed
    assert [r.split(",")[:2] for r in rows[1:]] == [["0", "2"], ["0", "4"], ["20", "2"]]
    assert all(0.0 <= float(r.split(",")[3]) <= 1.0 for r in rows[1:])
    assert (root / distill.NAME / "units" / "lam=20-ep=2-seed=0.safetensors").exists()

    # resume: nothing is trained or evaluated again
    calls = {"train": 0, "eval": 0}
    real_train, real_eval = distill.train_student, distill.evaluate_student

    def counting_train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    def counting_eval(*a, **k):
        calls["eval"] += 1
        return real_eval(*a, **k)

    monkeypatch.setattr(distill, "train_student", counting_train)
    monkeypatch.setattr(distill, "evaluate_student", counting_eval)
    t0 = time.perf_counter()
    assert distill.main(["--quick", "--root", str(root), "--docs", str(docs), "--threads", "1"]) == 0
    second = time.perf_counter() - t0
    assert calls == {"train": 0, "eval": 0}
    assert second < first
    assert (docs / "results.md").read_text().count("## (d) Distillation from explanations") == 1

    # a changed configuration starts clean: the stored λ = 20 unit is gone, both λ are trained
    assert distill.main(["--quick", "--root", str(root), "--docs", str(docs), "--threads", "1",
                         "--lambdas", "0", "3"]) == 0
    # 3 students x (test + train set); the CE-only one is a snapshot of the 2x-epochs run
    assert calls == {"train": 2, "eval": 6}
    units = root / distill.NAME / "units"
    assert not (units / "lam=20-ep=2-seed=0.safetensors").exists()
    assert (units / "lam=3-ep=2-seed=0.safetensors").exists()
    assert "λ = 3" in (docs / "results.md").read_text()
