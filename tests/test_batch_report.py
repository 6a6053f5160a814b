"""The batch job's HTML report (lamcam.batch.report): sections, numbers, plots, failures."""

from __future__ import annotations

import html
import math
import re
import statistics
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from PIL import Image

pytest.importorskip("pyarrow")
pytest.importorskip("matplotlib")

from lamcam.batch.engines import BatchSummary  # noqa: E402
from lamcam.batch.jobs import CAMJob, LAMSurvey, _complete  # noqa: E402
from lamcam.batch.report import write_report  # noqa: E402


def g3(v: float) -> str:
    """A number as the report shows it (3 significant digits)."""
    return f"{v:.3g}"


def summary_of(out: Path, rows: list[dict[str, Any]], *, failed: int = 0, items: int | None = None,
               message: str | None = None) -> BatchSummary:
    errors = {r["item_id"]: r["error"] for r in rows if r["status"] != "ok"}
    n = items if items is not None else len({r["item_id"] for r in rows})
    return BatchSummary(out, out / "results.parquet", rows, n, 1, n - 1, failed or len(errors), 2.5,
                        "local", errors, message)


def table_rows(page: str) -> dict[str, list[str]]:
    """Every table body row of the page, keyed by its first cell (unescaped)."""
    out = {}
    for tr in re.findall(r"<tr>(.*?)</tr>", page, flags=re.S):
        cells = [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr, flags=re.S)]
        if cells:
            out[cells[0]] = cells
    return out


def headers(page: str) -> list[list[str]]:
    return [[html.unescape(c) for c in re.findall(r"<th>(.*?)</th>", tr)]
            for tr in re.findall(r"<tr>(<th>.*?)</tr>", page, flags=re.S)]


def section_titles(page: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<h2>(.*?)</h2>", page)]


def check_images(out: Path, page: str) -> list[str]:
    """Every image the page shows or links exists and opens; returns their paths."""
    refs = sorted({unquote(html.unescape(r)) for r in re.findall(r'(?:src|href)="([^"#]+)"', page)})
    for ref in refs:
        p = out / ref
        assert p.is_file(), ref
        with Image.open(p) as im:
            im.verify()
    return refs


# --------------------------------------------------------------------------------------------
# CAM
# --------------------------------------------------------------------------------------------


def cam_rows() -> list[dict[str, Any]]:
    rows = []
    spec = {  # item: (mask?, n_instances, {method: (score, prob, area, pg, ep, iou, cov)})
        "a": (True, 1, {"gradcam": (5.0, 0.9, 0.2, 1.0, 0.7, 0.5, 1.0),
                        "gradcam++": (4.0, 0.9, 0.3, 1.0, 0.6, 0.4, 1.0)}),
        "b": (True, 2, {"gradcam": (3.0, 0.6, 0.25, 0.0, 0.3, 0.1, 0.5),
                        "gradcam++": (3.5, 0.6, 0.35, 1.0, 0.5, 0.3, 0.0)}),
        "c": (False, None, {"gradcam": (2.0, 0.5, 0.4, None, None, None, None),
                            "gradcam++": (1.0, 0.5, 0.45, None, None, None, None)}),
    }
    for item, (mask, n, per) in spec.items():
        for m, (s, p, a, pg, ep, iou, cov) in per.items():
            rows.append(_complete("cam", {
                "item_id": item, "image": f"/x/{item}.png", "status": "ok", "method": m, "rank": 1,
                "model": "shapes_resnet", "score": s, "probability": p, "map_area50": a,
                "mask": f"/x/{item}_mask.png" if mask else None, "n_instances": n,
                "pointing_game": pg, "energy_pointing": ep, "iou50": iou, "instance_coverage": cov}))
    rows.append(_complete("cam", {"item_id": "d", "image": "/x/d.png", "status": "failed",
                                  "error": "ImageLoadError: cannot read d.png <truncated>"}))
    return rows


def cam_job() -> CAMJob:
    return CAMJob([], "shapes_resnet", ["gradcam++", "gradcam"], layer="layer4", target="pred")


def test_cam_report_sections_numbers_and_plots(tmp_path: Path) -> None:
    rows = cam_rows()
    s = summary_of(tmp_path, rows, message="the configuration changed (methods): starting clean")
    path = write_report(s, cam_job())
    assert path == tmp_path / "report.html" and path.is_file()
    page = path.read_text()
    assert section_titles(page) == ["Overview", "Failures", "Methods", "Plots", "Full table"]
    assert "the configuration changed (methods): starting clean" in page
    assert "results.parquet" in page
    cells = table_rows(page)
    # overview: counts and parameters
    assert cells["items"][1] == "4" and cells["done earlier"][1] == "1"
    assert cells["processed now"][1] == "3" and cells["failed"][1] == "1"
    assert cells["engine"][1] == "local" and cells["layer"][1] == "layer4"
    assert cells["methods"][1] == "gradcam++, gradcam" and cells["model"][1] == "shapes_resnet"
    assert cells["items per second (this run)"][1] == g3(3 / 2.5)
    # failures: item -> error (escaped in the page, intact when read back)
    assert cells["d"][1] == "ImageLoadError: cannot read d.png <truncated>"
    # per method: the job's order, means computed here independently
    assert headers(page)[2][:5] == ["method", "images", "mean score", "mean probability",
                                    "mean map_area50"]
    assert page.index("<td>gradcam++</td>") < page.index("<td>gradcam</td>")
    for m in ("gradcam", "gradcam++"):
        ok = [r for r in rows if r["method"] == m]

        def mean(col: str, ok: list[dict[str, Any]] = ok) -> str:
            return g3(statistics.fmean(r[col] for r in ok if r[col] is not None))

        expect = [m, "3", mean("score"), mean("probability"), mean("map_area50"), "2",
                  mean("pointing_game"), mean("energy_pointing"), mean("iou50"),
                  mean("instance_coverage")]
        assert cells[m] == expect
    refs = check_images(tmp_path, page)
    assert refs == ["report/cam_instances.png", "report/cam_localisation.png"]


def test_cam_report_without_masks_and_stale_plots(tmp_path: Path) -> None:
    write_report(summary_of(tmp_path, cam_rows()), cam_job())
    assert (tmp_path / "report" / "cam_localisation.png").is_file()
    rows = [r for r in cam_rows() if r["item_id"] == "c"]  # no mask, no failure
    page = write_report(summary_of(tmp_path, rows), cam_job()).read_text()
    assert section_titles(page) == ["Overview", "Methods", "Plots", "Full table"]
    assert "pointing game" not in page and "<td>–</td>" not in page
    cells = table_rows(page)
    assert cells["gradcam"] == ["gradcam", "1", g3(2.0), g3(0.5), g3(0.4)]
    assert check_images(tmp_path, page) == ["report/cam_area50.png"]
    assert not (tmp_path / "report" / "cam_localisation.png").exists()  # the earlier run's plot


def test_cam_report_missing_metric_shows_dash(tmp_path: Path) -> None:
    rows = cam_rows()
    for r in rows:
        r["iou50"] = None
    page = write_report(summary_of(tmp_path, rows), cam_job()).read_text()
    assert table_rows(page)["gradcam"][8] == "–"


def test_report_is_deterministic(tmp_path: Path) -> None:
    a = write_report(summary_of(tmp_path / "a", cam_rows()), cam_job()).read_text()
    b = write_report(summary_of(tmp_path / "b", cam_rows()), cam_job()).read_text()
    assert a.replace("in a:", "in b:") == b
    pa, pb = (tmp_path / d / "report" / "cam_localisation.png" for d in "ab")
    assert pa.read_bytes() == pb.read_bytes()


# --------------------------------------------------------------------------------------------
# LAM
# --------------------------------------------------------------------------------------------


def lam_rows(psnr: bool = True) -> list[dict[str, Any]]:
    spec = {  # model: [(di, pixels95, completeness error, psnr)]
        "m_a": [(10.0, 40, 0.01, 25.0), (14.0, 60, 0.02, 27.5), (18.5, 90, None, math.inf)],
        "m_b": [(2.0, 8, 0.05, 30.0), (3.5, 12, 0.03, None)],
    }
    rows = []
    for m, wins in spec.items():
        for k, (di, p95, ce, ps) in enumerate(wins):
            rows.append(_complete("lam", {
                "item_id": f"img|{m}|{k * 16},0|16", "image": "/x/img.png", "model": m,
                "status": "ok", "row": k * 16, "col": 0, "window": 16, "diffusion_index": di,
                "pixels95": p95, "completeness_error": ce, "local_psnr": ps if psnr else None}))
    rows.append(_complete("lam", {"item_id": "bad|m_a", "image": "/x/bad.png", "model": "m_a",
                                  "status": "failed", "error": "OSError: bad.png is truncated"}))
    return rows


def lam_job() -> LAMSurvey:
    return LAMSurvey([], ["m_b", "m_a"], windows="edges:3", window=16, steps=20)


def test_lam_report_sections_numbers_and_plots(tmp_path: Path) -> None:
    rows = lam_rows()
    page = write_report(summary_of(tmp_path, rows), lam_job()).read_text()
    assert section_titles(page) == ["Overview", "Failures", "Models", "Plots", "Full table"]
    cells = table_rows(page)
    assert cells["windows"][1] == "edges:3" and cells["steps"][1] == "20"
    assert cells["models"][1] == "m_b, m_a" and cells["quadrature"][1] == "riemann"
    assert cells["bad|m_a"][1] == "OSError: bad.png is truncated"
    assert page.index("<td>m_b</td>") < page.index("<td>m_a</td>")  # the job's order
    assert headers(page)[2] == ["model", "windows", "failed", "mean DI", "median DI",
                                "mean pixels95", "mean completeness error", "mean local PSNR (dB)"]
    for m, failed in (("m_a", "1"), ("m_b", "0")):
        ok = [r for r in rows if r["model"] == m and r["status"] == "ok"]
        di = [r["diffusion_index"] for r in ok]
        ce = [r["completeness_error"] for r in ok if r["completeness_error"] is not None]
        ps = [r["local_psnr"] for r in ok if r["local_psnr"] is not None and math.isfinite(r["local_psnr"])]
        assert cells[m] == [m, str(len(ok)), failed, g3(statistics.fmean(di)),
                            g3(statistics.median(di)), g3(statistics.fmean(r["pixels95"] for r in ok)),
                            g3(statistics.fmean(ce)), g3(statistics.fmean(ps))]
    assert "1 window(s) identical to the HR image" in page
    assert check_images(tmp_path, page) == ["report/lam_di.png", "report/lam_di_psnr.png"]


def test_lam_report_without_psnr(tmp_path: Path) -> None:
    page = write_report(summary_of(tmp_path, lam_rows(psnr=False)), lam_job()).read_text()
    assert "local PSNR" not in page.split("Full table")[0]
    assert check_images(tmp_path, page) == ["report/lam_di.png"]


# --------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cam", "lam"])
def test_all_failed(tmp_path: Path, kind: str) -> None:
    rows = [_complete(kind, {"item_id": f"i{k}", "image": f"/x/i{k}.png", "status": "failed",
                             "error": f"ValueError: broken {k}"}) for k in range(3)]
    job = cam_job() if kind == "cam" else lam_job()
    page = write_report(summary_of(tmp_path, rows), job).read_text()
    assert section_titles(page) == ["Overview", "Failures"]
    cells = table_rows(page)
    assert [cells[f"i{k}"][1] for k in range(3)] == [f"ValueError: broken {k}" for k in range(3)]
    assert "No row succeeded" in page
    assert "<img" not in page and not list(tmp_path.glob("report/*.png"))


def test_no_rows_at_all(tmp_path: Path) -> None:
    s = BatchSummary(tmp_path, tmp_path / "results.parquet", [], 0, 0, 0, 0, 0.0, "ray")
    page = write_report(s, cam_job()).read_text()
    assert section_titles(page) == ["Overview"]
    cells = table_rows(page)
    assert cells["items per second (this run)"][1] == "–" and cells["engine"][1] == "ray"


def test_failures_are_capped(tmp_path: Path) -> None:
    rows = [_complete("cam", {"item_id": f"i{k:03d}", "status": "failed", "error": "boom"})
            for k in range(205)]
    page = write_report(summary_of(tmp_path, rows), cam_job()).read_text()
    cells = table_rows(page)
    assert "i199" in cells and "i200" not in cells
    assert "5 more are in results.parquet" in page


def test_failures_of_earlier_items_are_listed_last(tmp_path: Path) -> None:
    rows = cam_rows()
    rows.insert(0, _complete("cam", {"item_id": "old", "status": "failed", "error": "gone"}))
    s = summary_of(tmp_path, rows)
    s.errors = {"d": s.errors["d"]}
    page = write_report(s, cam_job()).read_text()
    assert page.index("<td>d</td>") < page.index("<td>old</td>")
    assert "2 item(s) failed" in page and "1 of them (listed last)" in page


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------


def test_end_to_end_cam(tmp_path: Path, one_thread: None) -> None:
    import lamcam.zoo
    from lamcam.batch import CAMJob as Job
    from lamcam.batch import find_inputs, run_job

    job = Job(find_inputs([str(lamcam.zoo.samples()[0].parent)]), "shapes_resnet",
              ["gradcam", "gradcam++"])
    s = run_job(job, tmp_path, progress=False)
    assert s.report == tmp_path / "report.html"
    page = s.report.read_text()
    assert section_titles(page) == ["Overview", "Methods", "Plots", "Full table"]
    cells = table_rows(page)
    assert "mean pointing game" in headers(page)[1]
    col = headers(page)[1].index("mean pointing game")
    for m in ("gradcam", "gradcam++"):
        pg = [r["pointing_game"] for r in s.rows if r["method"] == m and r["pointing_game"] is not None]
        assert pg, m
        assert cells[m][col] == g3(statistics.fmean(pg))
        assert cells[m][1] == str(s.items)
    check_images(tmp_path, page)


def test_end_to_end_lam(tmp_path: Path, one_thread: None) -> None:
    from lamcam import zoo
    from lamcam.batch import find_inputs, run_job

    job = LAMSurvey(find_inputs([str(zoo.sr_samples()[0]["lr"])]), ["sr_fsrcnn"], windows="edges:2",
                    window=16, steps=4)
    s = run_job(job, tmp_path, progress=False)
    page = s.report.read_text()
    assert section_titles(page) == ["Overview", "Models", "Plots", "Full table"]
    di = [r["diffusion_index"] for r in s.rows]
    assert table_rows(page)["sr_fsrcnn"][:5] == ["sr_fsrcnn", "2", "0", g3(statistics.fmean(di)),
                                                 g3(statistics.median(di))]
    assert check_images(tmp_path, page) == ["report/lam_di.png", "report/lam_di_psnr.png"]
