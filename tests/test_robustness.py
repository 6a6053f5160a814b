"""Safe in the field: explainers shared across threads, and each bad input answered clearly.

(Files and checkpoints: test_robustness_files.py; CLI outputs and images: test_robustness_cli.py.)
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch
from torch import nn

import lamcam
from lamcam.hooks import model_lock


def conv_net(bn: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if bn else nn.Identity(), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4))


def sr_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 12, 3, padding=1), nn.PixelShuffle(2))


def run_threads(fn, n: int = 4) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def work(k: int) -> None:
        try:
            barrier.wait()
            fn(k)
        except BaseException as e:  # noqa: BLE001 - collected and reported by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# --------------------------------------------------------------------------------------------
# threads
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("method", ["gradcam++", "guided-gradcam++"])
def test_threads_sharing_one_model_get_single_threaded_maps(mode, method, one_thread):
    model = conv_net()
    model.train(mode == "train")
    xs = [torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    ref = [lamcam.explain(model, x, method, layer=None).maps for x in xs]
    buffers = [b.clone() for b in model.buffers()]
    shared = lamcam.make_explainer(method, model)  # one explainer object, shared as well
    got: dict[tuple[int, int], torch.Tensor] = {}

    def fn(k: int) -> None:
        own = lamcam.make_explainer(method, model)
        for it in range(12):
            i = (it + k) % len(xs)
            got[(k, it)] = (shared if it % 2 else own)(xs[i]).maps

    errors = run_threads(fn)
    assert not errors, errors[:3]
    for (k, it), maps in got.items():
        torch.testing.assert_close(maps, ref[(it + k) % len(xs)], rtol=0, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_threads_running_lam_on_one_train_mode_model(one_thread):
    model = sr_net().train()
    lr = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(0))
    lam = lamcam.LAM(model, steps=8, progress=False)
    ref = lam(lr, row=4, col=4, window=8).attribution
    buffers = [b.clone() for b in model.buffers()]
    got = []
    errors = run_threads(lambda k: got.append(lam(lr, row=4, col=4, window=8).attribution), n=3)
    assert not errors, errors[:3]
    assert len(got) == 3 and all(torch.equal(g, ref) for g in got)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))


def test_another_threads_plain_forward_is_left_alone(one_thread):
    # lamcam's hooks act on their own thread only: a user's forward pass elsewhere is untouched
    model = conv_net().eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    outs, stop = [], threading.Event()

    def user_forward() -> None:
        while not stop.is_set():
            with torch.no_grad():
                outs.append(model(x))

    t = threading.Thread(target=user_forward)
    t.start()
    try:
        for _ in range(20):
            lamcam.GradCAMPlusPlus(model, "3")(x)
    finally:
        stop.set()
        t.join()
    assert outs and all(torch.equal(o, expected) for o in outs)


def test_train_mode_calls_hold_the_model_lock():
    model = conv_net().train()
    lock = model_lock(model)
    assert model_lock(model) is lock
    acquired = threading.Event()

    def other() -> None:
        lamcam.GradCAM(model, "3")(torch.rand(2, 3, 16, 16))
        acquired.set()

    with lock:  # while the user holds the lock, lamcam's train-mode call waits
        t = threading.Thread(target=other)
        t.start()
        assert not acquired.wait(0.3)
    t.join(timeout=30)
    assert acquired.is_set()


# --------------------------------------------------------------------------------------------
# model state after LAM and Integrated Gradients
# --------------------------------------------------------------------------------------------


def test_lam_and_integrated_gradients_restore_batchnorm_statistics():
    sr = sr_net().train()
    before = [b.clone() for b in sr.buffers()]
    lamcam.LAM(sr, steps=4, progress=False)(torch.rand(3, 10, 10), row=2, col=2, window=8)
    assert all(torch.equal(a, b) for a, b in zip(before, sr.buffers(), strict=True))
    clf = conv_net().train()
    before = [b.clone() for b in clf.buffers()]
    lamcam.IntegratedGradients(clf, steps=4)(torch.rand(2, 3, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(before, clf.buffers(), strict=True))


# --------------------------------------------------------------------------------------------
# bad inputs: one clear error each, exception types kept
# --------------------------------------------------------------------------------------------


def test_forward_errors_keep_their_type_and_say_where():
    class Raises(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            json.loads("{not json")

    with pytest.raises(json.JSONDecodeError) as info:
        lamcam.GradCAM(Raises(), "conv")(torch.rand(1, 3, 8, 8))
    assert any("forward pass failed" in n for n in info.value.__notes__)


def test_constant_map_is_all_zeros():
    # a 1 × 1 layer: upsampling leaves 1-ulp noise, which must not be stretched to [0, 1]
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 37), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    res = lamcam.GradCAM(net, "0")(torch.rand(2, 3, 37, 37))
    assert res.raw.shape == (2, 1, 1)
    assert bool((res.maps == 0).all())
    noisy = lamcam.maps.upsample_maps(torch.full((1, 1, 1), 0.3), (37, 53)) + \
        torch.tensor([0.0, 2.9802322e-08]).repeat(37 * 53 // 2 + 1)[: 37 * 53].reshape(1, 37, 53)
    assert bool((lamcam.maps.normalize_minmax(noisy, 2) == 0).all())


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(layer=3), TypeError, r"pass the name '3'"),
    (dict(target="2"), TypeError, r"is a string.*class index 2"),
    (dict(target=[]), ValueError, "target is empty"),
    (dict(target=object()), TypeError, "not a class index"),
    (dict(target=lambda out: out[:, 0] * math.nan), ValueError, "NaN or inf for images"),
    (dict(images=torch.rand(0, 3, 8, 8)), ValueError, "batch is empty"),
    (dict(images=torch.rand(2, 3, 8, 8, dtype=torch.complex64)), TypeError, "complex"),
    (dict(images=torch.ones(2, 3, 8, 8, dtype=torch.bool)), TypeError, "boolean dtype"),
])
def test_bad_cam_inputs(kwargs, exc, match):
    images = kwargs.pop("images", torch.rand(2, 3, 8, 8))
    with pytest.raises(exc, match=match):
        lamcam.explain(_net(), images, "gradcam++", **kwargs)


def test_meta_device_model():
    with torch.device("meta"):
        model = _net()
    with pytest.raises(ValueError, match=r"meta device.*to_empty"):
        lamcam.GradCAM(model, "0")(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(sigma=math.inf), "sigma must be a finite positive"),
    (dict(sigma=0), "sigma must be a finite positive"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(kernel_size=4), "kernel_size must be a positive odd int"),
])
def test_bad_lam_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lamcam.LAM(sr_net(), **kwargs)


def test_bad_lam_calls():
    lam = lamcam.LAM(sr_net().eval(), steps=2, progress=False)
    lr = torch.rand(3, 10, 10)
    with pytest.raises(ValueError, match="row must be a whole number"):
        lam(lr, row=math.nan, col=0, window=8)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        lam(lr, row=0, col=0, window=8)
    no_grad = lamcam.LAM(sr_net().eval(), steps=2, progress=False,
                         objective=lambda out, top, left, w: torch.zeros(out.shape[0]))
    with pytest.raises(ValueError, match="do not depend on the model's output"):
        no_grad(lr, row=0, col=0, window=8)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        lamcam.IntegratedGradients(_net(), batch_size=0)(torch.rand(1, 3, 8, 8))


def test_lam_takes_numpy_scalars():
    import numpy as np

    lam = lamcam.LAM(sr_net().eval(), steps=np.int64(2), sigma=np.float32(1.2), progress=False)
    ref = lamcam.LAM(sr_net().eval(), steps=2, sigma=1.2, progress=False)
    lr = torch.rand(3, 10, 10)
    a = lam(lr, row=np.int64(2), col=np.float64(2.0), window=np.int32(8)).attribution
    torch.testing.assert_close(a, ref(lr, row=2, col=2, window=8).attribution)
