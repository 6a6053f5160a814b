"""Tests of studies.clips (moving-shape clips, ClipsC3D) and the video study's smoke run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lamcam
from lamcam.zoo.shapes import _SHAPES, CLASSES
from studies import clips

SEEDS = range(40)


def _sample(i: int, **kw) -> clips.ClipSample:
    return clips.make_clip(clips.sample_rng(77, i), **kw)


# ------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------
def test_same_seed_same_clip_and_chunking() -> None:
    a, b, c = _sample(3), _sample(3), _sample(4)
    assert np.array_equal(a.clip, b.clip) and a.label == b.label
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.distractor_masks, b.distractor_masks)
    assert not np.array_equal(a.clip, c.clip)
    d1 = clips.make_clips(10, seed=9)
    d2 = clips.make_clips(4, seed=9, start=6)
    assert d1.clips.shape == (10, 3, clips.CLIP_FRAMES, clips.CLIP_SIZE, clips.CLIP_SIZE)
    assert torch.equal(d1.clips[6:], d2.clips) and torch.equal(d1.masks[6:], d2.masks)
    assert torch.equal(d1.labels, clips.make_clips(10, seed=9, with_masks=False).labels)
    # the data set is clip i of sample_rng(seed, i), in (N, 3, T, H, W) layout
    s = clips.make_clip(clips.sample_rng(9, 7))
    assert torch.equal(d1.clips[7], torch.from_numpy(s.clip).permute(3, 0, 1, 2))
    assert torch.equal(d1.masks[7], torch.from_numpy(s.masks))
    assert torch.equal(d1.distractor_masks[7], torch.from_numpy(s.distractor_masks.any(0)))
    assert int(d1.labels[7]) == s.label and int(d1.n_distractors[7]) == s.n_distractors


def test_masks_are_exactly_the_moving_objects_pixels() -> None:
    size = clips.CLIP_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for i in SEEDS:
        s = _sample(i)
        T = s.clip.shape[0]
        assert s.masks.shape == (T, size, size) and s.masks.dtype == bool
        for t in range(T):
            painted = (s.clip[t] == s.colors[0]).all(-1)
            assert np.array_equal(painted, s.masks[t]), (i, t)
            # an independent rendering of the shape at this frame's centre gives the same pixels
            dx, dy = (xx - s.centres[t, 0]) / s.radius, (yy - s.centres[t, 1]) / s.radius
            c, si = np.cos(s.angle), np.sin(s.angle)
            ref = _SHAPES[CLASSES[s.label]](c * dx + si * dy, -si * dx + c * dy)
            assert (ref != s.masks[t]).sum() <= 1, (i, t)  # float rounding on a boundary at most
        # never clipped by the border: every frame shows the same number of pixels
        assert len(set(s.masks.sum((1, 2)).tolist())) == 1 and s.masks[0].sum() > 20


def test_object_moves_by_its_velocity() -> None:
    speeds = set()
    for i in SEEDS:
        s = _sample(i)
        v = s.velocity
        assert v.dtype == np.int64 and 1 <= np.abs(v).max() <= 2
        speeds.add(tuple(v))
        T = s.masks.shape[0]
        np.testing.assert_allclose(s.centres, s.centres[0] + np.arange(T)[:, None] * v, atol=1e-9)
        assert not (s.masks[:, 0].any() or s.masks[:, -1].any() or s.masks[:, :, 0].any()
                    or s.masks[:, :, -1].any())  # so np.roll cannot wrap around
        for t in range(T - 1):
            shifted = np.roll(s.masks[t], (int(v[1]), int(v[0])), axis=(0, 1))
            assert np.array_equal(shifted, s.masks[t + 1]), (i, t)
        # the mask's centroid moves by v per frame
        ys, xs = np.nonzero(s.masks[0])
        ye, xe = np.nonzero(s.masks[-1])
        np.testing.assert_allclose([xe.mean() - xs.mean(), ye.mean() - ys.mean()], (T - 1) * v, atol=1e-9)
    assert len(speeds) > 10  # many directions and speeds are drawn


def test_distractors_are_other_classes_and_static() -> None:
    counts = np.zeros(clips.MAX_DISTRACTORS + 1, int)
    for i in SEEDS:
        s = _sample(i)
        counts[s.n_distractors] += 1
        assert s.label not in s.distractor_labels.tolist()
        assert len(set(s.distractor_labels.tolist())) == s.n_distractors
        for k in range(s.n_distractors):
            dm = s.distractor_masks[k]
            assert dm[0].sum() > 20
            assert all(np.array_equal(dm[0], dm[t]) for t in range(len(dm)))
            assert not (dm & s.masks).any()  # never touched by the moving object
            pix = s.clip[:, dm[0]]  # (T, n, 3): flat colour, the same in every frame
            assert np.array_equal(pix, np.broadcast_to(s.colors[1 + k], pix.shape))
        # away from all objects only the sensor noise changes
        free = ~(s.masks.any(0) | s.distractor_masks.any((0, 1)))
        assert np.abs(s.clip[1:, free] - s.clip[:-1, free]).max() < 0.25
    assert (counts > 0).all()
    with pytest.raises(ValueError):
        clips.make_clip(np.random.default_rng(0), n_distractors=3)
    s = clips.make_clip(np.random.default_rng(1), n_distractors=2, label=4)
    assert s.label == 4 and s.n_distractors == 2 and 4 not in s.distractor_labels


def test_docstring_examples() -> None:
    import doctest

    torch.set_num_threads(1)
    result = doctest.testmod(clips, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 4 and result.failed == 0


# ------------------------------------------------------------------------------------------
# model
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_model_shapes_and_cam(head: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = clips.ClipsC3D(width=4, head=head).eval()
    x = clips.make_clips(2, seed=1).clips
    assert net(x).shape == (2, len(CLASSES))
    assert net.features(x).shape == (2, 16, 4, 8, 8)  # T/2 time steps at the CAM layer
    res = lamcam.GradCAMPlusPlus(net, layer=net.default_layer)(x, target=torch.tensor([0, 1]))
    assert res.maps.shape == (2, 8, 32, 32) and res.raw.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError):
        clips.ClipsC3D(head="attention")


def test_linear_head_gradcam_weights_are_the_fc_row() -> None:
    """With GAP → linear, ∂S/∂A is constant, so Grad-CAM's map is relu(Σ_k w_ck A_k) / N."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = clips.ClipsC3D(width=4).eval()
    x = clips.make_clips(1, seed=2).clips
    raw = lamcam.GradCAM(net, layer="block4")(x, target=3).raw[0]
    a = net.features(x)[0].detach()
    n = a[0].numel()
    expect = torch.einsum("c,cthw->thw", net.fc.weight[3].detach(), a).clamp(min=0) / n
    torch.testing.assert_close(raw, expect, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------
# the study
# ------------------------------------------------------------------------------------------
def test_study_quick_end_to_end(tmp_path) -> None:
    from studies import video

    torch.set_num_threads(1)
    docs = tmp_path / "docs"
    argv = ["--quick", "--root", str(tmp_path / "runs"), "--docs", str(docs), "--threads", "1"]
    assert video.main(argv) == 0
    text = (docs / "results.md").read_text()
    assert "## (e) Grad-CAM vs Grad-CAM++ on video" in text and "### What it shows" in text
    for f in ("filmstrip.png", "per_frame.png", "summary.csv", "per_frame.csv", "per_clip.csv"):
        assert (docs / "results" / "video" / f).stat().st_size > 100
    rows = (docs / "results" / "video" / "per_clip.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4 * video.QUICK["n_eval"]  # heads × (2 methods + 2 references) × clips
    # the frame-difference reference never puts energy on static distractors
    summary = [r.split(",") for r in (docs / "results" / "video" / "summary.csv").read_text().splitlines()]
    ref = [r for r in summary if r[1] == "motion"]
    assert ref and all(float(r[5]) == 0.0 for r in ref)
