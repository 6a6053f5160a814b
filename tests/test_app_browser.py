"""``lamcam serve`` in a real browser: Playwright drives headless Chromium against a server
started as a user starts it (``python -m lamcam serve --port P``), and the page's numbers are
checked against the library computed here.

`make test` installs Gradio, Playwright and Debian's Chromium and sets LAMCAM_REQUIRE_BROWSER=1,
so there these tests cannot skip. Set LAMCAM_APP_SCREENSHOTS=DIR to keep the screenshots that
docs/app.md shows.
"""

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import lamcam
from lamcam.app import engine as E

CHROMIUM = os.environ.get("LAMCAM_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("LAMCAM_REQUIRE_BROWSER") == "1"


def _missing() -> str | None:
    try:
        import gradio  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install 'lamcam[app]' playwright)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


if (why := _missing()) is not None:
    if REQUIRED:
        raise RuntimeError(f"browser tests required but cannot run: {why}")
    pytest.skip(why, allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - localhost
        return r.status


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``lamcam serve`` process; Ctrl-C (SIGINT) at the end must stop it cleanly."""
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "lamcam", "serve", "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while True:
        try:
            if _get(url) == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    root = re.search(r"session files in (\S+);", log.read_text())
    assert root, log.read_text()
    info = {"url": url, "proc": proc, "log": log, "root": Path(root.group(1))}
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the server did not stop within 30 s of Ctrl-C")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server["url"])
    yield pg
    ctx.close()


def _shot(page, name: str) -> None:
    out = os.environ.get("LAMCAM_APP_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / name), full_page=True)


def _choose(page, elem_id: str, option: str) -> None:
    """Pick ``option`` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def _click_sr_pixel(page, x: int, y: int, zoom: int) -> None:
    """Click the LAM view so that Gradio reports a display pixel inside SR pixel ``(x, y)``.

    Gradio maps a click to ``round((clientX - left - offset) / r)`` with ``r = min(box / natural,
    1)`` and the image centred; aiming a quarter pixel before the middle of the SR pixel's display
    block keeps any sub-pixel rounding inside that block.
    """
    img = page.locator("#lam-view img")
    page.wait_for_function("(() => { const e = document.querySelector('#lam-view img');"
                           " return e && e.complete && e.naturalWidth > 0; })()")
    geo = img.evaluate("e => { const b = e.getBoundingClientRect();"
                       " return [b.left, b.top, b.width, b.height, e.naturalWidth, e.naturalHeight]; }")
    left, top, bw, bh, nw, nh = geo
    r = min(bw / nw, bh / nh, 1.0)
    ox, oy = (bw - nw * r) / 2, (bh - nh * r) / 2
    aim = zoom / 2 - 0.25
    page.mouse.click(left + ox + (x * zoom + aim) * r, top + oy + (y * zoom + aim) * r)


def _table(page, elem_id: str) -> list[list[str]]:
    rows = page.locator(f"#{elem_id} table tbody tr")
    return [[c.inner_text().strip() for c in rows.nth(i).locator("td").all()]
            for i in range(rows.count())]


def _download(page, name: str) -> bytes:
    """The bytes behind the page's download link of file ``name``."""
    href = page.locator(f'#lam-files a[download="{name}"]').get_attribute("href")
    with urllib.request.urlopen(href if href.startswith("http") else  # noqa: S310
                                page.url.rstrip("/") + href, timeout=30) as r:
        return r.read()


def test_lam_click_matches_library(page, server):
    """Pick a bundled image, click a known pixel: the window and every DI equal lamcam.LAM's."""
    view = page.locator("#lam-view img")
    expect(page.locator("#lam-status")).to_contain_text("SR 256x256", timeout=TIMEOUT_MS)
    _choose(page, "lam-image", "rocket")
    expect(page.locator("#lam-status")).to_contain_text("rocket:", timeout=TIMEOUT_MS)
    view.wait_for(state="visible")
    page.wait_for_function("document.querySelector('#lam-view img').naturalWidth > 0")
    zoom = view.evaluate("e => e.naturalWidth") // 256
    assert zoom == E.view_zoom((256, 256))
    x, y = 150, 77
    _click_sr_pixel(page, x, y, zoom)
    row, col = E.place_window(x, y, 16, (256, 256))
    expect(page.locator("#lam-window")).to_contain_text(f"SR window: row {row}, col {col}, 16x16")
    expect(page.locator("#lam-window")).to_contain_text(f"LR: row {row / 4:g}, col {col / 4:g}")
    expect(page.locator("#lam-table table")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#lam-table")).to_contain_text(f"row {row}, col {col}")
    rows = {r[0]: r for r in _table(page, "lam-table")}
    assert set(rows) == {"sr_fsrcnn", "sr_edsr"}

    lr = lamcam.io.load_image(E.bundled_lr_images()["rocket"])
    summary = json.loads(_download(page, "rocket_lam.json"))
    assert summary["window"] == {"row": row, "col": col, "size": 16, "coords": "sr"}
    for name in ("sr_fsrcnn", "sr_edsr"):
        ref = lamcam.LAM(lamcam.zoo.load(name), progress=False)(lr, row, col, 16)
        shown = float(rows[name][1])
        assert abs(shown - ref.diffusion_index) <= 1e-6, (name, shown, ref.diffusion_index)
        rec = next(m for m in summary["models"] if m["model"] == name)
        assert abs(rec["diffusion_index"] - ref.diffusion_index) <= 1e-6
        assert (rec["row"], rec["col"], rec["window"]) == (row, col, 16)
        attr = np.load(io.BytesIO(_download(page, f"rocket_{name}_lam.npy")))
        np.testing.assert_allclose(attr, ref.attribution.numpy(), rtol=0, atol=1e-6 * float(
            ref.attribution.abs().max()))
    expect(page.locator("#lam-figure img")).to_be_visible()
    _shot(page, "app_lam.png")

    # a new window size keeps the clicked centre: the box and coordinates follow at once
    size = page.locator("#lam-window-size input[type=number]")
    size.fill("32")
    size.press("Enter")
    r32, c32 = E.place_window(x, y, 32, (256, 256))
    expect(page.locator("#lam-window")).to_contain_text(f"SR window: row {r32}, col {c32}, 32x32")
    size.fill("16")
    size.press("Enter")
    expect(page.locator("#lam-window")).to_contain_text(f"SR window: row {row}, col {col}, 16x16")

    # a second click reuses the loaded models
    _click_sr_pixel(page, 40, 200, zoom)
    row2, col2 = E.place_window(40, 200, 16, (256, 256))
    expect(page.locator("#lam-table")).to_contain_text(f"row {row2}, col {col2}",
                                                       timeout=TIMEOUT_MS)
    log = server["log"].read_text()
    assert "Traceback" not in log, log[-3000:]


def test_corrupt_upload_shows_error_and_server_goes_on(page, server, tmp_path):
    expect(page.locator("#lam-status")).to_contain_text("SR 256x256", timeout=TIMEOUT_MS)
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50)
    page.locator("#lam-upload input[type=file]").set_input_files(str(bad))
    err = page.locator(".toast-body", has_text="holiday.png")
    expect(err).to_be_visible(timeout=TIMEOUT_MS)
    expect(err).to_contain_text("cannot be read")
    assert "lamcam-serve" not in err.inner_text()  # no server paths shown to visitors
    # the refused file leaves its box, and the page is back on the bundled image
    expect(page.locator("#lam-upload")).not_to_contain_text("holiday.png")
    expect(page.locator("#lam-status")).to_contain_text("chelsea: LR 64x64")
    # a pickle posing as a checkpoint: refused by the safe loader, shown, nothing run
    evil = tmp_path / "model.pth"
    evil.write_bytes(b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system"
                     b"\x94\x93\x94\x8c\x05touch\x94\x85\x94R\x94.")
    page.locator("#lam-checkpoints input[type=file]").set_input_files(str(evil))
    refused = page.locator(".toast-body", has_text="model.pth")
    expect(refused).to_be_visible(timeout=TIMEOUT_MS)
    expect(refused).to_contain_text("weights_only=True")
    assert "lamcam-serve" not in refused.inner_text()
    assert _get(server["url"]) == 200
    _shot(page, "app_error.png")
    # the same server still explains for another visitor
    other = page.context.browser.new_page()
    other.goto(server["url"])
    expect(other.locator("#lam-status")).to_contain_text("SR 256x256", timeout=TIMEOUT_MS)
    other.close()


def test_cam_page_two_methods(page, server):
    page.get_by_role("tab", name="CAM (classifiers)").click()
    layer = page.locator("#cam-layer input")
    expect(layer).to_have_value("layer3 (default)", timeout=TIMEOUT_MS)
    page.locator("#cam-run").click()
    overlays = page.locator("#cam-overlays img")
    expect(overlays).to_have_count(2, timeout=TIMEOUT_MS)
    rows = _table(page, "cam-table")
    assert [r[0] for r in rows] == ["gradcam", "gradcam++"]

    model = lamcam.zoo.load("shapes_resnet")
    x = lamcam.io.load_image(E.bundled_cam_images()["3_cross"])
    for r, cls in zip(rows, (lamcam.GradCAM, lamcam.GradCAMPlusPlus), strict=True):
        res = cls(model, layer="layer3")(x[None])
        classes = model.lamcam_meta["classes"]
        assert r[2] == classes[int(res.targets[0])]
        assert abs(float(r[3]) - float(res.scores[0])) <= 1e-4
    _shot(page, "app_cam.png")

    # the session's files are in its own directory, removed when its tab closes
    mine = [d for d in (server["root"] / "sessions").iterdir() if any(d.glob("cam-*/*.npy"))]
    assert len(mine) == 1
    page.close()
    deadline = time.monotonic() + 20
    while mine[0].exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not mine[0].exists()


def test_ctrl_c_stops_cleanly(server):
    """Last: SIGINT ends the process with status 0 and removes every file the server wrote."""
    proc, root = server["proc"], server["root"]
    assert root.exists() and any(root.rglob("*.npy"))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0, server["log"].read_text()[-2000:]
    assert not root.exists()
