"""Hostile-user robustness of the ``lamcam`` command line and of image loading.

* outputs are written atomically: faults injected into the write (disk full half-way, a failing
  rename, an exception inside ``np.save``, a SIGKILL mid-write) never leave a partial file under
  a final name, nor a temporary file after an exception;
* output names never collide within a run, and replacing existing outputs is announced;
* options that can fail (``--cmap``) are checked before anything is written;
* decompression bombs, NaN pixels and oversized images are refused with the file named, and a
  batch goes on past them.

The CLI runs in-process (``main([...])``) with the bundled ``shapes_resnet`` / ``sr_fsrcnn`` on
tiny images.
"""

from __future__ import annotations

import errno
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, PngImagePlugin

import lamcam._files
import lamcam.zoo
from lamcam.cli import _output_stems, main
from lamcam.io import ImageLoadError, ImageTooLargeError, load_image

ROOT = Path(__file__).resolve().parents[1]
CAM = "shapes_resnet"
SR = "sr_fsrcnn"


@pytest.fixture(scope="module", autouse=True)
def bundled_models() -> None:
    try:
        for name in (CAM, SR):
            lamcam.zoo.load(name)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"bundled models not available: {e}")


@pytest.fixture(autouse=True)
def _threads(one_thread) -> None:  # noqa: ANN001 - conftest fixture
    """Tiny models: one torch thread is fastest."""


def _image(path: Path, seed: int, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _temps(d: Path) -> list[str]:
    return [n for n in _names(d) if n.endswith(".tmp")]


def _cam(*args: str) -> list[str]:
    return ["cam", *args, "--model", CAM]


def _lam(image: Path, out: Path, *extra: str) -> list[str]:
    return ["lam", str(image), "--model", SR, "--row", "0", "--col", "0", "--steps", "4",
            "--window", "8", "--out", str(out), *extra]


# --------------------------------------------------------------------------------------------
# fault injection into the writes
# --------------------------------------------------------------------------------------------


class _DiskFull:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, fh) -> None:  # noqa: ANN001
        self.fh = fh

    def __enter__(self) -> _DiskFull:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()

    def write(self, data: bytes) -> int:
        self.fh.write(data[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device (injected)")


class _FaultyOS:
    """``os`` for :mod:`lamcam._files`, failing the ``fail_at``-th ``fdopen`` (a write) or
    ``replace`` (a rename); counts from 1."""

    def __init__(self, fail_at: int, what: str = "fdopen") -> None:
        self.fail_at, self.what, self.calls = fail_at, what, 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(os, name)

    def fdopen(self, fd: int, mode: str):  # noqa: ANN201
        fh = os.fdopen(fd, mode)
        if self.what == "fdopen":
            self.calls += 1
            if self.calls == self.fail_at:
                return _DiskFull(fh)
        return fh

    def replace(self, src: str, dst: str) -> None:
        if self.what == "replace":
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(errno.EIO, "Input/output error (injected)")
        os.replace(src, dst)


def _contents(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("fail_at", [1, 2], ids=["npy", "png"])
def test_cam_disk_full_mid_write(fail_at, tmp_path, monkeypatch, capsys) -> None:
    """The first input's .npy (write 1) or PNG (write 2) fails half-way: the previous outputs
    stay byte-identical, nothing partial appears, no temp file is left, the second input is
    still written and the exit status says that something failed."""
    a, b = _image(tmp_path / "in" / "a.png", 1), _image(tmp_path / "in" / "b.png", 2)
    out = tmp_path / "out"
    assert main(_cam(str(a), "--out", str(out))) == 0
    before = _contents(out)
    assert set(before) == {"a_gradcam++.npy", "a_gradcam++.png"}
    capsys.readouterr()

    faulty = _FaultyOS(fail_at)
    monkeypatch.setattr(lamcam._files, "os", faulty)
    code = main(_cam(str(a), str(b), "--out", str(out)))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert faulty.calls >= fail_at  # the fault was really injected
    assert code == 1
    assert "a.png: cannot write its outputs" in err and "No space left" in err
    after = _contents(out)
    assert {k: after[k] for k in before} == before  # old outputs intact, not half-new
    assert {"b_gradcam++.npy", "b_gradcam++.png"} <= set(after)
    assert np.load(out / "b_gradcam++.npy").ndim == 2
    Image.open(out / "b_gradcam++.png").verify()
    assert _temps(out) == []


def test_cam_failing_rename_leaves_no_temp(tmp_path, monkeypatch, capsys) -> None:
    a = _image(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    monkeypatch.setattr(lamcam._files, "os", _FaultyOS(1, "replace"))
    code = main(_cam(str(a), "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 1 and "Input/output error" in err and "a.png" in err
    assert _names(out) == []  # neither the .npy nor the PNG, and no temporary file


def test_exception_inside_np_save(tmp_path, monkeypatch, capsys) -> None:
    a = _image(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    real = np.save

    def broken(file, arr, *args, **kw) -> None:  # noqa: ANN001
        real(file, arr, *args, **kw)
        file.write(b"garbage")
        raise RuntimeError("injected failure inside np.save")

    monkeypatch.setattr(np, "save", broken)
    code = main(_cam(str(a), "--out", str(out)))
    err = capsys.readouterr().err
    assert code != 0 and "injected failure" in err
    assert _names(out) == []


@pytest.mark.parametrize("fail_at", [1, 4], ids=["png", "json"])
def test_lam_fault_in_png_or_json(fail_at, tmp_path, monkeypatch, capsys) -> None:
    """LAM writes png, npy, map npy, json as one set: a fault in the PNG (first) or the JSON
    (last) leaves none of them, and no temp file."""
    lr = _image(tmp_path / "lr.png", 3, size=16)
    out = tmp_path / "out"
    faulty = _FaultyOS(fail_at)
    monkeypatch.setattr(lamcam._files, "os", faulty)
    code = main(_lam(lr, out))
    err = capsys.readouterr().err
    assert faulty.calls == fail_at
    assert code != 0 and "No space left" in err and "Traceback" not in err
    assert _names(out) == []


def test_lam_comparison_json_fault(tmp_path, monkeypatch, capsys) -> None:
    """With --models, the comparison PNG + JSON are the last set (writes 9 and 10)."""
    lr = _image(tmp_path / "lr.png", 3, size=16)
    out = tmp_path / "out"
    monkeypatch.setattr(lamcam._files, "os", _FaultyOS(10))
    args = _lam(lr, out)
    args[args.index("--model"): args.index("--model") + 2] = ["--models", f"{SR},{SR}"]
    code = main(args)
    assert code != 0 and "No space left" in capsys.readouterr().err
    names = _names(out)
    assert "lr_lam_comparison.json" not in names and "lr_lam_comparison.png" not in names
    assert {"lr_sr_fsrcnn_lam.json", "lr_sr_fsrcnn_2_lam.json"} <= set(names)
    assert _temps(out) == []


def test_figure_and_image_writers_are_atomic(tmp_path, monkeypatch) -> None:
    from lamcam.io import save_image
    from lamcam.viz import methods_figure

    fig_path, img_path = tmp_path / "fig.png", tmp_path / "img.png"
    img_path.write_bytes(b"old")
    monkeypatch.setattr(lamcam._files, "os", _FaultyOS(1))
    with pytest.raises(OSError, match="No space left"):
        methods_figure(torch.rand(3, 8, 8), {"m": ("cam", torch.rand(4, 4))}, path=fig_path)
    monkeypatch.setattr(lamcam._files, "os", _FaultyOS(1))
    with pytest.raises(OSError, match="No space left"):
        save_image(torch.rand(3, 8, 8), img_path)
    assert _names(tmp_path) == ["img.png"] and img_path.read_bytes() == b"old"


_KILL_SCRIPT = r"""
import os, signal, sys
import lamcam._files

class Killer:
    def __init__(self, fh): self.fh = fh
    def __enter__(self): return self
    def __exit__(self, *a): self.fh.close()
    def write(self, data):
        self.fh.write(data[: len(data) // 2]); self.fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

class OS:
    def __getattr__(self, name): return getattr(os, name)
    def fdopen(self, fd, mode): return Killer(os.fdopen(fd, mode))

lamcam._files.os = OS()
from lamcam.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_mid_write_leaves_no_partial_file(tmp_path) -> None:
    a = _image(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, *_cam(str(a), "--out", str(out))],
                       capture_output=True, env=env, timeout=120)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    names = _names(out)
    assert not [n for n in names if not n.startswith(".")], names  # no file under a final name
    assert len(names) == 1 and names[0].startswith(".a_gradcam++.npy.")  # the half-written temp


# --------------------------------------------------------------------------------------------
# output names
# --------------------------------------------------------------------------------------------


def test_same_stems_in_a_batch(tmp_path, capsys) -> None:
    ins = [_image(tmp_path / "a" / "x.png", 1), _image(tmp_path / "b" / "x.png", 2),
           _image(tmp_path / "c" / "x_2.png", 3)]
    out = tmp_path / "out"
    code = main(_cam(*map(str, ins), "--out", str(out)))
    cap = capsys.readouterr()
    assert code == 0, cap.err
    assert _names(out) == sorted(f"{s}_gradcam++.{e}" for s in ("x", "x_2", "x_3")
                                 for e in ("npy", "png"))
    assert "writing outputs as x_3_*" in cap.err and "replaced" not in cap.err
    lines = cap.out.splitlines()
    assert lines[0].endswith("x_gradcam++.png") and lines[1].endswith("x_3_gradcam++.png")
    assert lines[2].endswith("x_2_gradcam++.png")
    # each set belongs to its own input: the same as running that input alone
    for src, stem in zip(ins, ("x", "x_3", "x_2"), strict=True):
        alone = tmp_path / f"alone_{stem}"
        assert main(_cam(str(src), "--out", str(alone))) == 0
        assert (alone / f"{src.stem}_gradcam++.png").read_bytes() == \
            (out / f"{stem}_gradcam++.png").read_bytes()
    capsys.readouterr()
    first = _contents(out)

    assert main(_cam(*map(str, ins), "--out", str(out))) == 0  # rerun
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if "replaced" in ln]
    assert len(notes) == 1 and "replaced 6 existing output file(s)" in notes[0]
    assert _contents(out) == first


def test_output_stems_unit() -> None:
    assert _output_stems([Path("a/x.png"), Path("b/x.png"), Path("c/x_2.png")]) == \
        ["x", "x_3", "x_2"]
    stems = _output_stems([Path("X.png"), Path("x.jpg"), Path("x_2.png"), Path("d/x.png")])
    assert len({s.casefold() for s in stems}) == 4 and stems[0] == "X"


def test_never_overwrites_an_input(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    victim = _image(out / "x_gradcam++.png", 5)  # an input that is also x's output name
    original = victim.read_bytes()
    x = _image(tmp_path / "x.png", 6)
    code = main(_cam(str(x), str(victim), "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 1 and "is one of the input files" in err and "x.png" in err
    assert victim.read_bytes() == original
    assert "x_gradcam++_gradcam++.png" in _names(out)  # the other input was processed


def test_lam_rerun_notes_replaced_outputs(tmp_path, capsys) -> None:
    lr = _image(tmp_path / "lr.png", 3, size=16)
    out = tmp_path / "out"
    assert main(_lam(lr, out)) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(_lam(lr, out)) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "replaced" in ln]
    assert len(notes) == 1 and "replaced 4 existing output file(s)" in notes[0]


def test_demo_rerun_notes_replaced_outputs(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--models", CAM, "--max-images", "1", "--no-lam"]
    assert main(args) == 0
    assert "replaced" not in capsys.readouterr().err
    monkeypatch.setattr(lamcam._files, "os", _FaultyOS(1))  # the demo's writers are atomic too
    assert main(args) != 0
    assert _temps(out) == [] and _temps(out / CAM) == []
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "replaced" in ln]
    assert len(notes) == 1 and "index.html" in notes[0] and f"{CAM}/" in notes[0]


# --------------------------------------------------------------------------------------------
# options checked before any output
# --------------------------------------------------------------------------------------------


def test_bogus_cmap_is_a_usage_error_and_writes_nothing(tmp_path, capsys) -> None:
    a = _image(tmp_path / "a.png", 1)
    out = tmp_path / "out"
    code = main(_cam(str(a), "--out", str(out), "--cmap", "bogus"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--cmap 'bogus'" in err and "viridis" in err and "jet" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(_cam(str(a), "--out", str(out), "--cmap", "Viridis")) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(_cam(str(a), "--out", str(out), "--cmap", "magma_r")) == 0


# --------------------------------------------------------------------------------------------
# hostile images
# --------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _gray_png(path: Path, width: int, height: int, extra: bytes = b"", rows: bool = True,
              tail: bytes = b"") -> Path:
    """A valid 8-bit grayscale PNG (all black) built without holding its pixels in memory;
    ``extra`` chunks go before the pixel data, ``tail`` after it; ``rows=False`` stores no pixel
    data at all."""
    comp = zlib.compressobj(1)
    row = b"\x00" * (width + 1)
    idat = b"".join(comp.compress(row) for _ in range(height if rows else 0)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat)
                     + tail + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def ztxt_bomb(tmp_path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "A" * (8 * PngImagePlugin.MAX_TEXT_CHUNK), zip=True)
    p = tmp_path / "ztxt_bomb.png"
    Image.new("RGB", (16, 16), "red").save(p, pnginfo=info)
    assert p.stat().st_size < 100_000
    return p


def test_ztxt_bomb_names_the_file(ztxt_bomb) -> None:
    with pytest.raises(ImageLoadError) as ei:
        load_image(ztxt_bomb)
    msg = str(ei.value)
    assert "ztxt_bomb.png" in msg and "decompression bomb" in msg and "MAX_TEXT_CHUNK" in msg
    assert isinstance(ei.value, ValueError) and isinstance(ei.value.__cause__, ValueError)
    assert type(ei.value.__cause__) is not ImageLoadError


def test_iccp_and_trailing_ztxt_bombs_name_the_file(tmp_path) -> None:
    packed = zlib.compress(b"\x00" * (8 * PngImagePlugin.MAX_TEXT_CHUNK), 9)
    p = _gray_png(tmp_path / "iccp_bomb.png", 8, 8, _chunk(b"iCCP", b"icc\x00\x00" + packed))
    with pytest.raises(ImageLoadError, match="iccp_bomb.png.*ICC profile") as ei:
        load_image(p)
    assert isinstance(ei.value.__cause__, ValueError)
    # a zTXt chunk after the pixel data is only read while decoding
    p = _gray_png(tmp_path / "late_bomb.png", 8, 8, tail=_chunk(b"zTXt", b"k\x00\x00" + packed))
    with pytest.raises(ImageLoadError, match="late_bomb.png.*decompression bomb") as ei:
        load_image(p)
    assert isinstance(ei.value.__cause__, ValueError)


def test_pixel_bomb_without_limit_names_the_file(tmp_path) -> None:
    side = int((2 * Image.MAX_IMAGE_PIXELS) ** 0.5) + 100  # beyond Pillow's error threshold
    p = _gray_png(tmp_path / "pixel_bomb.png", side, side, rows=False)
    with pytest.raises(ImageLoadError, match="pixel_bomb.png.*implausibly large") as ei:
        load_image(p)
    assert isinstance(ei.value.__cause__, Image.DecompressionBombError)


def test_max_pixels_checked_before_decoding(tmp_path, monkeypatch) -> None:
    p = _gray_png(tmp_path / "wide.png", 300, 200)
    decoded: list[str] = []
    real = ImageFile.ImageFile.load

    def spy(self):  # noqa: ANN001, ANN202
        decoded.append(str(getattr(self, "filename", "")))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    with pytest.raises(ImageTooLargeError) as ei:
        load_image(p, max_pixels=300 * 200 - 1)
    e = ei.value
    assert (e.width, e.height, e.pixels, e.limit) == (300, 200, 60000, 59999)
    assert "wide.png" in str(e) and "300x200" in str(e) and "max_pixels" in str(e)
    assert decoded == []
    with pytest.warns(UserWarning, match="grayscale"):
        assert load_image(p, max_pixels=300 * 200).shape == (3, 200, 300)
    assert decoded  # the spy does see decoding
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(p, max_pixels=0)


def _peak_rss_reset() -> int | None:
    """Reset the peak resident set size (Linux ``/proc/self/clear_refs``); current RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_kb("VmRSS")


def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_huge_image_refused_by_lam_up_front(tmp_path, monkeypatch, capsys) -> None:
    huge = _gray_png(tmp_path / "huge.png", 9500, 9500)
    assert huge.stat().st_size < 1_000_000
    import lamcam.lam

    decoded: list[str] = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: decoded.append(self.filename) or real(self))

    def no_probe(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("LAM must not run on a refused image")

    monkeypatch.setattr(lamcam.lam.LAM, "_probe", no_probe)
    out = tmp_path / "out"
    rss0 = _peak_rss_reset()  # None where /proc cannot reset the peak: ru_maxrss then
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    code = main(_lam(huge, out))
    seconds = time.perf_counter() - t0
    if rss0 is not None:
        grown_mb = (_proc_status_kb("VmHWM") - rss0) / 1024
    else:  # growth of the lifetime peak: can only under-estimate
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for part in ("huge.png", "9500x9500", "90,250,000", "--max-pixels 16,777,216",
                 "per LR pixel per path point", "sr_fsrcnn", "batch 1", "TB",
                 "--max-pixels 90250000"):
        assert part in err, part
    assert not [f for f in decoded if str(f).endswith("huge.png")]
    assert seconds < 5.0
    assert grown_mb < 300, grown_mb  # decoding alone would take 2.7 GB, LAM 1.25 TB
    assert _names(out) == []


def test_nan_pixels_in_float_tiff(tmp_path) -> None:
    a = np.full((8, 8), 0.5, np.float32)
    a[2, 3] = np.nan
    a[5, 5] = np.inf
    p = tmp_path / "nan.tif"
    Image.fromarray(a, mode="F").save(p)
    with pytest.raises(ImageLoadError, match="nan.tif.*1 NaN and 1 infinite"):
        load_image(p)
    a[2, 3] = a[5, 5] = 0.25
    Image.fromarray(a, mode="F").save(p)
    with pytest.warns(UserWarning):
        assert load_image(p, mode="L").shape == (1, 8, 8)


def test_batch_goes_on_past_bad_images(ztxt_bomb, tmp_path, capsys) -> None:
    a = np.full((8, 8), 0.5, np.float32)
    a[0, 0] = np.nan
    nan_tif = tmp_path / "nan.tif"
    Image.fromarray(a, mode="F").save(nan_tif)
    big = _gray_png(tmp_path / "big.png", 200, 100)
    good = _image(tmp_path / "good.png", 7)
    out = tmp_path / "out"
    code = main(_cam(str(ztxt_bomb), str(nan_tif), str(good), str(big), "--out", str(out),
                     "--max-pixels", "10000", "--batch-size", "1"))
    cap = capsys.readouterr()
    assert code == 1
    assert _names(out) == ["good_gradcam++.npy", "good_gradcam++.png"]
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("lamcam: error:")]
    assert any("ztxt_bomb.png" in ln and "decompression bomb" in ln for ln in errors)
    assert any("nan.tif" in ln and "NaN" in ln for ln in errors)
    assert any("big.png" in ln and "200x100" in ln and "--max-pixels 10,000" in ln
               for ln in errors)
    assert "3 of 4 image(s) could not be read" in errors[-1]
    assert cap.out.count("\n") == 1 and "good.png" in cap.out
