"""lamcam batch: inputs, windows, the CAM job and the LAM survey on both engines.

Expected values come from the library called directly (GradCAM, LAM, the metrics) or by hand;
the Ray engine runs on a real local Ray (``ray.init(num_cpus=2)``) and must give the local
engine's rows, row by row.
"""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lamcam
from lamcam import zoo
from lamcam.batch import VOLATILE, CAMJob, InputError, LAMSurvey, find_inputs, read_table, run_job
from lamcam.batch.windows import edge_energy, edge_windows, grid_windows, parse_windows
from lamcam.cli import main
from lamcam.metrics.localisation import (
    energy_pointing_game,
    instance_coverage,
    iou_at,
    pointing_game,
)

pytest.importorskip("pyarrow")

SAMPLES = zoo.samples()[0].parent
SR = Path(zoo.sr_samples()[0]["lr"]).parent


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture
def shapes(tmp_path):
    """The six bundled shapes images (with masks), plus a corrupt one."""
    d = tmp_path / "shapes"
    d.mkdir()
    for p in SAMPLES.glob("*.png"):
        shutil.copy(p, d / p.name)
    (d / "9_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00nope" * 20)
    return d


# --------------------------------------------------------------------------------------------
# inputs and windows
# --------------------------------------------------------------------------------------------


def test_inputs_from_folder_glob_and_manifests(tmp_path):
    entries = find_inputs([str(SAMPLES)])
    assert [Path(e.image).name for e in entries] == sorted(p.name for p in SAMPLES.glob("*.png")
                                                           if not p.stem.endswith("_mask"))
    assert all(e.mask and e.mask.endswith(Path(e.image).stem + "_mask.png") for e in entries)
    globbed = find_inputs([str(SAMPLES / "*_c*.png")])  # circle, cross and their masks match
    assert [Path(e.image).name for e in globbed] == ["0_circle.png", "3_cross.png"]
    sr = find_inputs([str(SR)])
    assert [Path(e.image).name for e in sr] == ["brick_lr.png", "chelsea_lr.png", "rocket_lr.png"]
    assert [Path(e.hr).name for e in sr] == ["brick_hr.png", "chelsea_hr.png", "rocket_hr.png"]

    (tmp_path / "a.png").write_bytes((SR / "brick_lr.png").read_bytes())
    (tmp_path / "list.csv").write_text("image,hr,id\na.png,%s,first\n" % (SR / "brick_hr.png"))
    (tmp_path / "list.jsonl").write_text(json.dumps({"image": "a.png", "mask": "m.png"}) + "\n")
    csv_e, = find_inputs([str(tmp_path / "list.csv")])
    assert csv_e.image == str((tmp_path / "a.png").resolve()) and csv_e.key == "first"
    assert csv_e.hr == str(SR / "brick_hr.png")
    jl, = find_inputs([str(tmp_path / "list.jsonl")])
    assert jl.mask == str((tmp_path / "m.png").resolve()) and jl.key == jl.image
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(InputError, match="'image' column"):
        find_inputs([str(tmp_path / "bad.csv")])
    with pytest.raises(InputError, match="no such file"):
        find_inputs([str(tmp_path / "nothing_here")])


def test_grid_windows_cover_the_image_to_its_edges():
    assert grid_windows((40, 50), 16, 16) == [(r, c) for r in (0, 16, 24) for c in (0, 16, 32, 34)]
    assert parse_windows("1,2\n3,4") == [(1, 2), (3, 4)]
    with pytest.raises(ValueError, match="must fit"):
        grid_windows((8, 8), 16, 4)


def test_edge_windows_are_the_highest_energy_non_overlapping_windows():
    img = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(0))
    g = edge_energy(img)
    chosen = edge_windows(img, 3, 8, scale=4, margin=8)
    cand = {(r, c): float(g[r:r + 8, c:c + 8].sum()) for r in range(8, 33, 4) for c in range(8, 33, 4)}
    assert len(chosen) == 3
    first = max(cand, key=lambda k: (cand[k], -k[0], -k[1]))
    assert chosen[0][:2] == first and math.isclose(chosen[0][2], cand[first], rel_tol=1e-9)
    for i, (r, c, e) in enumerate(chosen):
        assert math.isclose(e, cand[(r, c)], rel_tol=1e-9)
        free = [k for k in cand if all(abs(k[0] - r2) >= 8 or abs(k[1] - c2) >= 8
                                       for r2, c2, _ in chosen[:i])]
        assert e >= max(cand[k] for k in free) - 1e-9  # greedy: best among the still-free ones


# --------------------------------------------------------------------------------------------
# CAM job, local engine
# --------------------------------------------------------------------------------------------


def test_cam_job_rows_are_the_librarys_numbers(shapes, tmp_path):
    job = CAMJob(find_inputs([str(shapes)]), "shapes_resnet", ["gradcam", "gradcam++"],
                 save_maps=True, save_overlays=True)
    s = run_job(job, tmp_path / "out", report=False)
    assert (s.items, s.processed, s.failed) == (7, 7, 1)
    assert "9_broken.png" in next(iter(s.errors)) and "cannot load image" in next(iter(s.errors.values()))
    table = read_table(s.table)
    assert _strip(table) == _strip(s.rows)
    model = zoo.load("shapes_resnet")
    classes = model.lamcam_meta["classes"]
    ok = [r for r in table if r["status"] == "ok"]
    assert len(ok) == 12
    for r in ok:
        x = lamcam.io.load_image(r["image"])
        cls = lamcam.GradCAM if r["method"] == "gradcam" else lamcam.GradCAMPlusPlus
        res = cls(model, layer="layer3")(x[None])
        m = res.maps[0].double()
        assert r["target_index"] == int(res.targets[0]) and r["target_class"] == classes[r["target_index"]]
        assert r["score"] == pytest.approx(float(res.scores[0]), rel=1e-6)
        assert r["map_mean"] == pytest.approx(float(m.mean()), rel=1e-6)
        assert r["map_area50"] == pytest.approx(float((m >= 0.5).double().mean()), abs=1e-12)
        masks = lamcam.io.load_instance_masks(r["mask"])
        assert r["n_instances"] == masks.shape[0]
        assert r["pointing_game"] == float(pointing_game(m, masks.any(0)))
        assert r["energy_pointing"] == pytest.approx(energy_pointing_game(m, masks.any(0)), rel=1e-6)
        assert r["iou50"] == pytest.approx(iou_at(m, masks.any(0), 0.5), rel=1e-6)
        assert r["instance_coverage"] == pytest.approx(instance_coverage(m, masks), rel=1e-6)
        saved = np.load(tmp_path / "out" / r["map_file"])
        np.testing.assert_allclose(saved, res.maps[0].numpy(), atol=1e-6)
        assert Image.open(tmp_path / "out" / r["overlay_file"]).size == (64, 64)
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_rerun_resumes_retries_failures_and_restarts_on_a_new_configuration(shapes, tmp_path):
    out = tmp_path / "out"
    job = CAMJob(find_inputs([str(shapes)]), "shapes_resnet", ["gradcam"])
    first = run_job(job, out, report=False)
    assert first.failed == 1
    again = run_job(job, out, report=False)
    assert (again.skipped, again.processed, again.failed) == (6, 1, 1)  # only the failure retried
    shutil.copy(SAMPLES / "0_circle.png", shapes / "9_broken.png")  # fixed
    fixed = run_job(job, out, report=False)
    assert (fixed.skipped, fixed.processed, fixed.failed) == (6, 1, 0)
    assert len(read_table(out / "results.parquet")) == 7
    notes = []
    other = CAMJob(job.inputs, "shapes_resnet", ["gradcam++"])
    fresh = run_job(other, out, report=False, say=notes.append)
    assert fresh.skipped == 0 and fresh.processed == 7
    assert any("configuration changed (methods)" in n for n in notes)
    assert len(read_table(out / "previous" / "results.parquet")) == 7


def test_interrupted_run_leaves_a_whole_table_and_resumes(shapes, tmp_path, monkeypatch):
    from lamcam.batch import jobs

    (shapes / "9_broken.png").unlink()
    out = tmp_path / "out"
    job = CAMJob(find_inputs([str(shapes)]), "shapes_resnet", ["gradcam"])
    real = jobs.Worker.rows
    calls = {"n": 0}

    def stop_at_third(self, item):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, item)

    monkeypatch.setattr(jobs.Worker, "rows", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, out, report=False, chunk=1)
    assert [r["item_id"] for r in read_table(out / "results.parquet")] == [
        e.key for e in job.inputs[:2]]
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(jobs.Worker, "rows", real)
    done = run_job(job, out, report=False)
    assert (done.skipped, done.processed, done.failed) == (2, 4, 0)


def test_cli_batch_cam_exit_status_and_summary(shapes, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["batch", "cam", str(shapes), "--model", "shapes_resnet", "--methods", "gradcam",
                 "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "7 item(s), 0 done earlier, 7 processed, 1 failed" in captured.out
    assert "9_broken.png" in captured.err and "a rerun retries them" in captured.err
    assert (out / "report.html").is_file()
    (shapes / "9_broken.png").unlink()
    assert main(["batch", "cam", str(shapes), "--model", "shapes_resnet", "--methods", "gradcam",
                 "--out", str(out)]) == 0
    assert main(["batch", "cam", str(shapes), "--model", "shapes_resnet", "--methods", "nope",
                 "--out", str(out)]) == 2
    assert main(["batch", "cam", str(shapes), "--model", "shapes_resnet", "--layer", "layr3",
                 "--out", str(out)]) == 2
    assert "lamcam layers shapes_resnet" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# LAM survey, local engine
# --------------------------------------------------------------------------------------------


def test_lam_survey_rows_are_lams_numbers_with_local_psnr(tmp_path):
    inputs = find_inputs([str(SR / "chelsea_lr.png")])
    job = LAMSurvey(inputs, ["sr_fsrcnn"], windows="list:100,84;0,0;250,250", steps=6)
    s = run_job(job, tmp_path / "out", report=False)
    assert (s.items, s.failed) == (3, 1)
    bad = next(r for r in s.rows if r["status"] == "failed")
    assert (bad["row"], bad["col"]) == (250, 250) and "window" in bad["error"]
    lr = lamcam.io.load_image(SR / "chelsea_lr.png")
    hr = lamcam.io.load_image(SR / "chelsea_hr.png")
    lam = lamcam.LAM(zoo.load("sr_fsrcnn"), steps=6, progress=False)
    for r in (r for r in s.rows if r["status"] == "ok"):
        ref = lam(lr, r["row"], r["col"], 16)
        assert r["diffusion_index"] == ref.diffusion_index and r["pixels95"] == ref.pixels95
        assert r["completeness_error"] == pytest.approx(ref.completeness_error, rel=1e-12)
        a = ref.sr.clamp(0, 1)[:, r["row"]:r["row"] + 16, r["col"]:r["col"] + 16].double()
        b = hr[:, r["row"]:r["row"] + 16, r["col"]:r["col"] + 16].double()
        assert r["local_psnr"] == pytest.approx(10 * math.log10(1 / float(((a - b) ** 2).mean())))
        assert (r["scale"], r["lr_height"], r["window"], r["steps"], r["sigma"]) == (4, 64, 16, 6, 1.2)


# --------------------------------------------------------------------------------------------
# Ray: the same rows
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_local_rows_with_a_failure_and_a_resumed_run(local_ray, shapes,
                                                                          tmp_path):
    cam = CAMJob(find_inputs([str(shapes)]), "shapes_vgg", ["gradcam", "gradcam++"],
                 target="top2")
    local = run_job(cam, tmp_path / "local", threads=1, report=False)
    on_ray = run_job(cam, tmp_path / "ray", engine="ray", workers=2, batch_size=2, report=False)
    assert on_ray.failed == local.failed == 1
    assert _strip(on_ray.rows) == _strip(local.rows)  # row by row, every column but timing
    assert len({r["worker"] for r in on_ray.rows if r["status"] == "ok"}) >= 1
    shutil.copy(SAMPLES / "3_cross.png", shapes / "9_broken.png")
    resumed = run_job(cam, tmp_path / "ray", engine="ray", workers=2, batch_size=2, report=False)
    assert (resumed.skipped, resumed.processed, resumed.failed) == (6, 1, 0)
    again = run_job(cam, tmp_path / "local", threads=1, report=False)
    assert _strip(resumed.rows) == _strip(again.rows)

    survey = LAMSurvey(find_inputs([str(SR)]), ["sr_fsrcnn", "sr_edsr"], windows="edges:1",
                       steps=4)
    a = run_job(survey, tmp_path / "lam-local", threads=1, report=False)
    b = run_job(survey, tmp_path / "lam-ray", engine="ray", workers=2, batch_size=2, report=False)
    assert a.processed == b.processed == 6 and a.failed == b.failed == 0
    assert _strip(a.rows) == _strip(b.rows)


def test_windows_that_cannot_be_chosen_fail_every_model_and_gone_inputs_leave_the_table(
        shapes, tmp_path):
    inputs = find_inputs([str(SR / "chelsea_lr.png")])
    job = LAMSurvey(inputs, ["sr_fsrcnn", "sr_edsr"], windows="grid:8", window=512)
    s = run_job(job, tmp_path / "lam", report=False)
    assert s.failed == 2 and {r["model"] for r in s.rows} == {"sr_fsrcnn", "sr_edsr"}
    assert all("must fit" in r["error"] for r in s.rows)

    cam = CAMJob(find_inputs([str(shapes)]), "shapes_resnet", ["gradcam"])
    assert run_job(cam, tmp_path / "cam", report=False).failed == 1
    (shapes / "9_broken.png").unlink()
    cam = CAMJob(find_inputs([str(shapes)]), "shapes_resnet", ["gradcam"])
    again = run_job(cam, tmp_path / "cam", report=False)
    assert (again.skipped, again.processed, again.failed) == (6, 0, 0)
    assert len(read_table(again.table)) == 6  # the removed input's failure is no longer listed
