"""CLI conventions (issue 12, items 8-12): progress bars only on terminals, --quiet/--verbose,
nothing created in --out before every check, folders and ground-truth masks, one exit code per
failure, aspect-preserving resize, clean checkpoint errors, ``lamcam layers``, the flat-window
LAM warning, and short result reprs."""

from __future__ import annotations

import io
import pathlib
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lamcam
import lamcam.zoo
from lamcam._progress import show
from lamcam.cli import _load_fitted, main
from lamcam.io import save_image
from lamcam.lam import LAM


class _Cls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _cls() -> nn.Module:
    torch.manual_seed(0)
    m = _Cls().eval()
    m.lamcam_meta = {"name": "tiny", "arch": "tiny", "task": "classification",
                     "classes": ["red", "green", "blue"], "input_size": 32,
                     "default_layer": "features.4"}
    return m


def _sr() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.PixelShuffle(2)).eval()
    m.lamcam_meta = {"name": "sr", "arch": "tiny_sr", "task": "sr", "scale": 2}
    return m


@pytest.fixture
def zoo(monkeypatch: pytest.MonkeyPatch) -> None:
    models = {"tiny": _cls, "sr": _sr}

    def load(name: str, arch: str | None = None) -> nn.Module:
        if name not in models:
            raise ValueError(f"unknown model {name!r}")
        return models[name]()

    monkeypatch.setattr(lamcam.zoo, "load", load, raising=False)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "in"
    g = torch.Generator().manual_seed(1)
    good = save_image(torch.rand(3, 32, 32, generator=g), d / "good.png")
    wide = save_image(torch.rand(3, 32, 64, generator=g), d / "wide.png")
    mask = torch.zeros(32, 32)
    mask[8:20, 8:20] = 1 / 255
    save_image(mask[None], d / "good_mask.png")
    bad = tmp_path / "bad" / "trunc.png"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:100])
    text = tmp_path / "bad" / "notes.png"
    text.write_text("hello")
    return {"dir": d, "good": good, "wide": wide, "trunc": bad, "text": text}


# -- 8. progress -------------------------------------------------------------------------------
class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_default_follows_stderr(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert show(None) is False and show(True) is True and show("LAM") is True
    monkeypatch.setattr("sys.stderr", _TTY())
    assert show(None) is True and show(False) is False
    assert LAM(_sr()).progress is None  # the API default is "iff stderr is a terminal"


def test_no_bar_text_in_logs_and_quiet(zoo, files, tmp_path, capsys) -> None:
    base = ["lam", str(files["good"]), "--model", "sr", "--row", "8", "--col", "8", "--steps", "4",
            "--window", "8"]
    assert main([*base, "--out", str(tmp_path / "o1")]) == 0
    cap = capsys.readouterr()
    assert "\r" not in cap.err and "step/s" not in cap.err and "DI " in cap.out
    assert main([*base, "--out", str(tmp_path / "o2"), "-q"]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err == ""
    # errors are still printed under --quiet
    assert main(["cam", str(files["good"]), "--model", "nope", "-q", "--out", str(tmp_path / "o3")]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_quiet_and_verbose_on_every_subcommand(zoo, files, tmp_path, capsys) -> None:
    for cmd in (["cam", "x.png", "--model", "m"], ["lam", "x.png", "--model", "m", "--row", "0",
                "--col", "0"], ["eval", "--shapes", "2"], ["demo"], ["layers", "m"]):
        from lamcam.cli import build_parser

        ns = build_parser().parse_args([*cmd, "--quiet"])
        assert ns.quiet is True
        assert build_parser().parse_args([*cmd, "-v"]).verbose is True
    assert main(["cam", str(files["good"]), "--model", "tiny", "-v", "--out",
                 str(tmp_path / "o")]) == 0
    assert "layer(s) ['features.4']" in capsys.readouterr().err


def test_demo_passes_quiet_through(monkeypatch, tmp_path, capsys) -> None:
    seen = {}

    class _Summary:
        def format(self) -> str:
            return "summary"

    def fake(out_dir, **kw):
        seen.update(kw)
        return _Summary()

    monkeypatch.setattr("lamcam.demo.run_demo", fake)
    assert main(["demo", "--out", str(tmp_path / "d"), "-q", "--no-lam"]) == 0
    assert seen["progress"] is False and capsys.readouterr().out == ""
    assert main(["demo", "--out", str(tmp_path / "d"), "--no-lam"]) == 0
    assert seen["progress"] is None


# -- 9. outputs ----------------------------------------------------------------------------------
def test_failed_runs_leave_no_output_directory(zoo, files, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    good = str(files["good"])
    runs = [
        ["cam", good, "--model", "tiny", "--layer", "features.99"],
        ["cam", good, "--model", "tiny", "--target", "7"],
        ["cam", good, "--model", "nope"],
        ["cam", str(files["trunc"]), "--model", "tiny"],
        ["lam", good, "--model", "sr", "--row", "500", "--col", "0"],
        ["lam", str(files["trunc"]), "--model", "sr", "--row", "0", "--col", "0"],
        ["eval", good, "--model", "tiny", "--layer", "nope"],
        ["eval", str(files["text"]), "--model", "tiny"],
    ]
    for argv in runs:
        assert main([*argv, "--out", str(out)]) != 0, argv
        assert not out.exists(), argv
    capsys.readouterr()


# -- 10. images and folders ----------------------------------------------------------------------
def test_cam_accepts_folders_and_skips_masks(zoo, files, tmp_path, capsys) -> None:
    out = tmp_path / "o"
    assert main(["cam", str(files["dir"]), "--model", "tiny", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert sorted(p.name for p in out.glob("*.npy")) == ["good_gradcam++.npy", "wide_gradcam++.npy"]
    assert "skipped 1 ground-truth mask" in cap.err
    # a mask named explicitly (a shell glob) is skipped too, with the note
    assert main(["cam", str(files["good"]), str(files["dir"] / "good_mask.png"), "--model", "tiny",
                 "--out", str(tmp_path / "o2")]) == 0
    cap = capsys.readouterr()
    assert "skipped 1 ground-truth mask" in cap.err and len(cap.out.strip().splitlines()) == 1


def test_same_failure_same_exit_code(zoo, files, tmp_path, capsys) -> None:
    for bad in ("trunc", "text"):
        p = str(files[bad])
        codes = [main(["cam", p, "--model", "tiny", "--out", str(tmp_path / "a")]),
                 main(["lam", p, "--model", "sr", "--row", "0", "--col", "0", "--out",
                       str(tmp_path / "b")]),
                 main(["eval", p, "--model", "tiny", "--out", str(tmp_path / "c")])]
        assert codes == [1, 1, 1], (bad, codes)
    capsys.readouterr()
    for cmd in ("cam", "lam", "eval"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "not an image file" in text, cmd


def test_aspect_is_kept_by_centre_crop(files, zoo, tmp_path, capsys) -> None:
    x, text = _load_fitted(files["wide"], "RGB", (32, 32), None)
    from lamcam.io import load_image

    full = load_image(files["wide"])
    assert tuple(x.shape) == (3, 32, 32) and "centre-cropped to 32x32" in text
    assert torch.allclose(x, full[:, :, 16:48])  # no squashing: the middle of the photo
    assert main(["cam", str(files["wide"]), "--model", "tiny", "--out", str(tmp_path / "o")]) == 0
    assert "aspect kept, centre-cropped to 32x32" in capsys.readouterr().out


# -- 11. messages --------------------------------------------------------------------------------
def test_checkpoint_errors_are_short_and_safe(tmp_path) -> None:
    from lamcam.zoo.registry import _first_line

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "obj": pathlib.Path("x")}, path)
    with pytest.raises(lamcam.zoo.ZooError) as exc:
        lamcam.zoo.load(path, arch="ShapesVGG")
    msg = str(exc.value)
    assert "\x1b" not in msg and "weights_only=False" not in msg and "will likely succeed" not in msg
    assert "\n" not in msg and len(msg) < 520 and "Fix:" in msg
    e = RuntimeError("\x1b[1mbad\x1b[0m thing. Re-running `torch.load` with `weights_only` set to "
                     "`False` will likely succeed. " + "x" * 500)
    assert _first_line(e) == "bad thing."
    assert len(_first_line(RuntimeError("y" * 1000))) <= 120


def test_layers_command_and_wrong_layer_message(zoo, files, tmp_path, capsys) -> None:
    assert main(["layers", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "* features.4" in out and "1x8x16x16" in out and "1x3" in out
    assert main(["cam", str(files["good"]), "--model", "tiny", "--layer", "features.9",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "lamcam layers tiny" in err and "named_modules" not in err


def test_eval_help_has_no_doubled_percent(capsys) -> None:
    assert main(["eval", "--help"]) == 0
    text = capsys.readouterr().out
    assert "%%" not in text and "Win %" in text


def test_flat_window_warns() -> None:
    x = torch.full((3, 24, 24), 0.5)
    x[:, :, 20:] = 0.9
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        LAM(_sr(), steps=4, progress=False)(x, row=4, col=4, window=8)
    assert any("not meaningful" in str(m.message) and "flat window" in str(m.message) for m in w)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        LAM(_sr(), steps=4, progress=False)(torch.rand(3, 24, 24), row=4, col=4, window=8)
    assert not any("flat window" in str(m.message) for m in w)


# -- 12. reprs -----------------------------------------------------------------------------------
def test_result_reprs_are_short() -> None:
    from lamcam import make_explainer

    res = make_explainer("gradcam++", _cls(), "features.4")(torch.rand(4, 3, 32, 32))
    text = repr(res)
    assert len(text) < 300 and "gradcam++" in text and "features.4" in text and "4x32x32" in text
    big = make_explainer("gradcam", _cls(), "features.4")(torch.rand(64, 3, 32, 32))
    assert len(repr(big)) < 300
    lam = LAM(_sr(), steps=3, progress=False)
    r = lam(torch.rand(3, 16, 16), row=4, col=4, window=8)
    assert len(repr(r)) < 300 and "DI=" in repr(r) and "row 4" in repr(r)
    d = lam.dense(torch.rand(3, 16, 16), window=8)
    assert len(repr(d)) < 300 and "grid=" in repr(d)


def test_cam_bar_only_on_a_terminal(zoo, files, tmp_path, monkeypatch, capsys) -> None:
    from lamcam import cli

    assert cli._image_bar(5, "cam") is None  # stderr captured: not a terminal
    tty = _TTY()
    monkeypatch.setattr("sys.stderr", tty)
    assert main(["cam", str(files["dir"]), "--model", "tiny", "--out", str(tmp_path / "o")]) == 0
    assert "image" in tty.getvalue() and "\r" in tty.getvalue()  # the bar went to the terminal
    assert len(capsys.readouterr().out.strip().splitlines()) == 2  # result lines intact
    tty2 = _TTY()
    monkeypatch.setattr("sys.stderr", tty2)
    assert main(["cam", str(files["dir"]), "--model", "tiny", "-q", "--out", str(tmp_path / "o")]) == 0
    assert tty2.getvalue() == ""
