"""Study plumbing (resume, clean restart, atomic publishing) and the studies' checkable pieces.

The studies themselves are run by hand and their outputs committed (docs/results.md); their
``--quick`` end-to-end runs are marked slow.
"""

from __future__ import annotations

import math

import pytest
import torch

from studies import _common as C


def test_resume_and_clean_restart(tmp_path):
    calls = []

    def work(i):
        calls.append(i)
        return {"i": i, "sq": i * i}

    run = C.StudyRun("s", {"n": 3}, root=tmp_path)
    assert run.cached("u0", lambda: work(0)) == {"i": 0, "sq": 0}
    with pytest.raises(KeyboardInterrupt):  # interrupted while computing unit 1: nothing stored
        run.cached("u1", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert not run.has("u1") and not list((tmp_path / "s" / "units").glob(".*tmp"))
    logs = []
    again = C.StudyRun("s", {"n": 3}, root=tmp_path, log=logs.append)
    assert "resuming: 1 unit" in logs[0]
    assert again.cached("u0", lambda: work(99)) == {"i": 0, "sq": 0}  # not recomputed
    again.cached("u1", lambda: work(1))
    assert calls == [0, 1]
    # a different configuration never mixes with the stored units
    other = C.StudyRun("s", {"n": 4}, root=tmp_path, log=logs.append)
    assert "starting clean (the configuration changed)" in logs[-1]
    assert not other.has("u0")
    fresh = C.StudyRun("s", {"n": 4}, root=tmp_path, log=logs.append)
    fresh.cached("u0", lambda: work(5))
    C.StudyRun("s", {"n": 4}, root=tmp_path, fresh=True, log=logs.append)
    assert "--fresh" in logs[-1]
    # a corrupt config counts as another configuration
    (tmp_path / "s" / "config.json").write_text("{not json")
    (tmp_path / "s" / "units" / "x.json").write_text("{}")
    C.StudyRun("s", {"n": 4}, root=tmp_path, log=logs.append)
    assert "no valid config" in logs[-1]


def test_tensors_and_keys(tmp_path):
    run = C.StudyRun("t", {"a": 1}, root=tmp_path)
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    out = run.cached_tensors("model/seed 0", lambda: sd)
    assert torch.equal(out["w"], sd["w"])
    assert run.has_tensors("model/seed 0") and not run.has_tensors("model/seed 1")
    # keys that sanitise alike stay distinct
    run.save("a/b", 1)
    run.save("a_b", 2)
    assert (run.load("a/b"), run.load("a_b")) == (1, 2)
    with pytest.raises(KeyError, match="not finished"):
        run.load("nope")
    assert run.seconds() >= 0.0


def test_publish_replaces_only_its_section(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = tmp_path / "docs"
    C.publish("sanity", "## B\n\nfirst\n", docs=docs, files={"x.csv": "a,b\n1,2\n"})
    fig = plt.figure()
    C.publish("cam_compare", "## A\n\n\n\ntext\n", docs=docs, figures={"f.png": fig})
    C.publish("zzz_custom", "## Z\n", docs=docs)
    C.publish("sanity", "## B\n\nsecond\n", docs=docs, files={"y.csv": "c\n"})
    text = (docs / "results.md").read_text()
    assert text.startswith("# Results")
    assert text.index("## A") < text.index("## B") < text.index("## Z")  # STUDY_ORDER, then others
    assert "second" in text and "first" not in text
    assert "\n\n\n" not in text
    assert (docs / "results" / "cam_compare" / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (docs / "results" / "sanity").iterdir()) == ["y.csv"]  # old assets gone
    assert not [p for p in (docs / "results").iterdir() if p.name.startswith(".")]


def test_tables():
    md = C.md_table(["a", "b"], [[1, 0.12345], ["x", float("nan")]], digits=2)
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.12 |", "| x | n/a |"]
    assert C.csv_text(["a"], [[0.1234567890123]]) == "a\n0.1234567890123\n"


def test_study_arguments(tmp_path):
    p = C.study_parser("demo", "d")
    args = p.parse_args(["--quick", "--root", str(tmp_path)])
    assert C.setup_from_args(args) == tmp_path / "quick-docs"
    args = p.parse_args([])
    assert str(C.setup_from_args(args)) == "docs"
    assert C.command_line("demo", ["--fresh"]) == "python -m studies.demo --fresh"


# ---- pieces of the studies with known answers -----------------------------------------------
def test_lam_zoo_windows_and_periodicity():
    from lamcam.zoo.shapes import sample_rng
    from studies.lam_zoo import KINDS, periodicity, pick_windows, synthetic_hr

    hr = torch.zeros(3, 96, 96)
    hr[:, 40:44, 20:70] = 1.0  # one bright bar: the windows must sit on its edges
    wins = pick_windows(hr, 3, window=16, margin=16, scale=4)
    assert len(wins) == 3
    energies = [e for _, _, e in wins]
    assert energies == sorted(energies, reverse=True) and energies[0] > 0
    for i, (r, c, _) in enumerate(wins):
        assert r % 4 == 0 and c % 4 == 0 and 16 <= r <= 96 - 32 and 16 <= c <= 96 - 32
        assert r <= 43 and r + 16 > 40  # overlaps the bar's rows
        for r2, c2, _ in wins[i + 1:]:
            assert abs(r - r2) >= 16 or abs(c - c2) >= 16
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    grating = torch.cos(2 * math.pi * (xx / 8)).expand(3, -1, -1)
    noise = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    assert periodicity(grating, 40, 40) > 0.9
    assert periodicity(noise, 40, 40) < 0.2
    for k in KINDS:
        img = synthetic_hr(k, sample_rng(1, 0), size=64)
        assert img.shape == (3, 64, 64) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert periodicity(synthetic_hr("stripes", sample_rng(1, 0)), 120, 120) > periodicity(
        synthetic_hr("dead-leaves", sample_rng(1, 0)), 120, 120)
    with pytest.raises(ValueError, match="unknown kind"):
        synthetic_hr("plaid", sample_rng(1, 0))


def test_sanity_control_and_balanced_shapes():
    from studies.cam_compare import balanced_shapes
    from studies.sanity import _verdict, sobel_magnitude

    ramp = torch.arange(8.0).repeat(8, 1).expand(1, 3, 8, 8)  # d/dx = 1 → Sobel 8 inside
    s = sobel_magnitude(ramp)
    assert torch.allclose(s[0, 1:-1, 1:-1], torch.full((6, 6), 8.0))
    assert _verdict([1.0, 0.6, 0.4, 0.1, 0.05]) == (0.4, 0.05, True)
    assert _verdict([1.0, 0.9, 0.6, 0.3, 0.1])[2] is False
    x, y, masks = balanced_shapes(2)
    assert x.shape == (8, 3, 64, 64) and y.shape == (8,)
    assert [m.shape[0] for m in masks] == [1, 2, 3, 4, 1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cam_compare", "sanity", "lam_zoo"])
def test_quick_study_end_to_end(name, tmp_path):
    import importlib

    mod = importlib.import_module(f"studies.{name}")
    assert mod.main(["--quick", "--root", str(tmp_path), "--threads", "1"]) == 0
    text = (tmp_path / "quick-docs" / "results.md").read_text()
    assert f"<!-- study:{name}:begin -->" in text and "What it shows" in text
