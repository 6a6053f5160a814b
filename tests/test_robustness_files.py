"""Hostile files (issue 9): safetensors files that lie, and checkpoints that lie to zoo.load.

Every malformed file must raise a ValueError naming the file (``ZooError`` for ``zoo.load``),
quickly and without allocating what the file claims. Memory is measured in a subprocess as the
growth of the peak resident set size (``VmHWM`` in ``/proc/self/status``, reset before each
scenario through ``/proc/self/clear_refs``), so it counts torch's C++ allocations and the pages
of memory-mapped files too; those tests are skipped where ``/proc`` cannot do that.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import lamcam.zoo as zoo
from lamcam import _safetensors as st
from lamcam.zoo import registry
from lamcam.zoo.classifiers import ShapesResNet, ShapesVGG

MiB = 2**20


def _raw(header: dict | bytes, body: bytes = b"", length: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + body


def _entry(dtype: object = "U8", shape: object = (1,), offsets: object = (0, 1)) -> dict:
    shape = list(shape) if isinstance(shape, tuple) else shape
    offsets = list(offsets) if isinstance(offsets, tuple) else offsets
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


# ------------------------------------------------------------------------------------------
# malformed and lying safetensors files
# ------------------------------------------------------------------------------------------
MALFORMED = {
    "absurd header length": (_raw(b"{}", length=2**62), "exceeds"),
    "header length beyond the file": (_raw(b"{}", length=4096), "only 2 follow"),
    "header length zero": (_raw(b"", length=0) + b"{}", "invalid JSON"),
    "header not JSON": (_raw(b"{nope}"), "invalid JSON"),
    "header not UTF-8": (_raw(b"\xff\xfe\xfd\xfc"), "UTF-8"),
    "header a JSON array": (_raw(b"[1, 2]"), "not a JSON object"),
    "header a JSON string": (_raw(b'"abc"'), "invalid JSON"),
    "recursion bomb (arrays)": (_raw(b"[" * 100_000), "invalid JSON"),
    "recursion bomb (in an entry)": (_raw(b'{"a": ' + b"[" * 100_000), "nested too deeply"),
    "recursion bomb (objects)": (_raw(b'{"a": ' * 50_000), "nested too deeply"),
    "entry not an object": (_raw({"a": 3}), "invalid type"),
    "dtype not a string": (_raw({"a": _entry(dtype=5)}, b"0"), "invalid type"),
    "dtype unknown": (_raw({"a": _entry(dtype="Q7")}, b"0"), "unsupported dtype"),
    "dtype torch lacks": (
        _raw({"a": _entry(dtype="F6_E2M3", shape=(4,), offsets=(0, 3))}, b"000"),
        "unsupported dtype",
    ),
    "shape a string": (_raw({"a": _entry(shape="1")}, b"0"), "invalid type"),
    "shape negative": (_raw({"a": _entry(shape=(-1,), offsets=(0, 0))}), "-1"),
    "shape float": (_raw({"a": _entry(shape=(1.5,))}, b"0"), "floating point"),
    "shape overflows": (
        _raw({"a": _entry(dtype="F32", shape=(2**62, 2**62), offsets=(0, 0))}),
        "overflow",
    ),
    "offsets floats": (_raw({"a": _entry(offsets=(0.0, 1.0))}, b"0"), "floating point"),
    "offsets not a list": (_raw({"a": _entry(offsets="0-1")}, b"0"), "invalid type"),
    "offsets huge": (_raw({"a": _entry(offsets=(0, 2**64 + 1))}, b"0"), "invalid"),
    "offsets reversed": (_raw({"a": _entry(offsets=(1, 0))}, b"0"), "invalid offset"),
    "offsets out of range": (
        _raw({"a": _entry(shape=(4,), offsets=(8, 12))}, b"0000"),
        "invalid offset",
    ),
    "offsets overlap": (
        _raw({"a": _entry(shape=(2,), offsets=(0, 2)), "b": _entry(shape=(2,), offsets=(1, 3))},
             b"000"),
        "invalid offset",
    ),
    "size does not match shape": (
        _raw({"a": _entry(dtype="F32", shape=(2,), offsets=(0, 4))}, b"0000"),
        "does not match dtype and shape",
    ),
    "truncated data": (
        _raw({"a": _entry(dtype="F32", shape=(4,), offsets=(0, 16))}, b"0000"),
        "truncated",
    ),
    "metadata not str -> str": (_raw({"__metadata__": {"k": [1]}}), "expected a string"),
    "field missing": (_raw({"a": {"dtype": "U8", "shape": [1]}}, b"0"), "missing field"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_safetensors_raise_value_error_naming_the_file(tmp_path: Path, case: str) -> None:
    data, expected = MALFORMED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    # F6 is a valid dtype of the format, so the header alone is fine; torch cannot hold it
    readers = (st.load_file,) if case == "dtype torch lacks" else (st.load_file, st.read_metadata)
    for fn in readers:
        t0 = time.perf_counter()
        with pytest.raises(ValueError) as exc:
            fn(path)
        assert time.perf_counter() - t0 < 1.0
        assert type(exc.value) is ValueError  # not RecursionError/TypeError/SafetensorError
        msg = str(exc.value)
        assert msg.startswith(f"{path}: not a valid safetensors file: "), msg
        assert expected in msg, msg


def test_package_errors_are_chained(tmp_path: Path) -> None:
    from safetensors import SafetensorError

    path = tmp_path / "bad.safetensors"
    path.write_bytes(_raw(b"[" * 100_000))
    with pytest.raises(ValueError) as exc:
        st.load_file(path)
    assert isinstance(exc.value.__cause__, SafetensorError)


def test_fuzzed_files_load_or_raise_value_error(tmp_path: Path) -> None:
    """Random byte flips, cuts and insertions: a ValueError or a load, never anything else."""
    good = safetensors.torch.save(
        {"a": torch.arange(10.0), "b": torch.ones(2, 3, dtype=torch.int64)}, {"k": "v"}
    )
    rng = random.Random(1234)
    path = tmp_path / "f.safetensors"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            op, i = rng.random(), rng.randrange(max(len(data), 1))
            if op < 0.6:
                data[i] = rng.randrange(256)
            elif op < 0.8:
                del data[i:]
            else:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        path.write_bytes(bytes(data))
        try:
            st.read_metadata(path)
            st.load_file(path)
            outcomes["loaded"] += 1
        except ValueError as e:
            assert str(path) in str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100 and outcomes["loaded"] > 10, outcomes


@pytest.mark.parametrize(("tag", "dtype"), [("F8_E4M3", "float8_e4m3fn"),
                                             ("F8_E5M2", "float8_e5m2")])
def test_float8_files_load(tmp_path: Path, tag: str, dtype: str) -> None:
    dt = getattr(torch, dtype)
    values = torch.tensor([[0.0, 0.5, -1.0], [2.0, -448.0 if tag == "F8_E4M3" else -4096.0, 3.5]])
    t = values.to(dt)
    path = tmp_path / "f8.safetensors"
    safetensors.torch.save_file({"w": t}, str(path))  # written by the package
    header = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert header["w"]["dtype"] == tag
    loaded = st.load_file(path)["w"]
    assert loaded.dtype == dt and loaded.shape == (2, 3)
    assert torch.equal(loaded.float(), values)
    # and lamcam writes them too, readable by the package
    st.save_file({"w": t}, path)
    assert torch.equal(safetensors.torch.load_file(str(path))["w"].float(), values)


def test_missing_and_non_regular_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        st.load_file(tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="not a regular file"):
        st.load_file(tmp_path)


# ------------------------------------------------------------------------------------------
# lying checkpoints for zoo.load
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def warm() -> None:
    """First meta-device build and spandrel import cost ~1 s once per process; not measured."""
    zoo.load("shapes_resnet")
    with pytest.raises(zoo.ZooError):
        registry._build_or_spandrel(
            {"x.weight": torch.zeros(2)}, {}, arch=None, name="x", src="warm-up"
        )


def _fc_file(path: Path, shape: tuple[int, int]) -> Path:
    nbytes = 4 * shape[0] * shape[1]
    path.write_bytes(_raw({"fc.weight": _entry("F32", shape, (0, nbytes))}, b"\0" * nbytes))
    return path


def _refused_quickly(path: Path, match: str, **kw: object) -> zoo.ZooError:
    t0 = time.perf_counter()
    with pytest.raises(zoo.ZooError, match=match) as exc:
        zoo.load(path, **kw)
    assert time.perf_counter() - t0 < 1.0
    assert str(path) in str(exc.value)
    return exc.value


@pytest.mark.usefixtures("warm")
def test_80_byte_checkpoint_with_huge_fc_is_refused_without_building(
    tmp_path: Path, monkeypatch
) -> None:
    path = _fc_file(tmp_path / "fc.safetensors", (0, 6000))
    assert path.stat().st_size <= 90
    built = []
    real_vgg = registry._ARCHS["ShapesVGG"].builder

    def spy(**config):  # records the device every ShapesVGG is built on
        built.append(torch.empty(0).device.type)
        return real_vgg(**config)

    spec = dataclasses.replace(registry._ARCHS["ShapesVGG"], builder=spy)
    monkeypatch.setitem(registry._ARCHS, "ShapesVGG", spec)
    _refused_quickly(path, "cannot tell the architecture")
    _refused_quickly(path, "'num_classes' = 0 is not a valid size", arch="ShapesVGG")
    _refused_quickly(path, "'blocks' = 0 is not a valid size", arch="ShapesResNet")
    # one class: a valid config (width 1500, 0.9 G elements) that is only ever built on meta
    path = _fc_file(tmp_path / "fc1.safetensors", (1, 6000))
    _refused_quickly(path, "cannot tell the architecture")
    _refused_quickly(path, "do not fit architecture 'ShapesVGG': 37 missing keys", arch="ShapesVGG")
    assert built and set(built) == {"meta"}


@pytest.mark.usefixtures("warm")
@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"blocks": 20000}, "registered more than 1,472 modules.*only 56 tensors"),
        ({"blocks": 10**30}, "registered more than"),
        ({"width": 10**6}, "MAX_MODEL_ELEMENTS = 1,073,741,824"),
        ({"blocks": -3}, "'blocks' = -3 is not a valid size"),
        ({"width": float("nan")}, "not finite"),
        ({"blocks": "20000"}, "cannot build 'ShapesResNet'.*TypeError"),
        ({"bogus": 1}, "cannot build 'ShapesResNet'.*unexpected keyword"),
    ],
)
def test_lying_metadata_config_is_refused_quickly(tmp_path: Path, config: dict, match: str) -> None:
    path = tmp_path / "r.safetensors"
    meta = {"arch": "ShapesResNet", "config": json.dumps(config)}
    st.save_file(ShapesResNet().state_dict(), path, metadata=meta)
    err = _refused_quickly(path, match)
    assert "ShapesResNet" in str(err)


def test_config_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.pth"
    state = ShapesResNet().state_dict()
    for config, match in [
        ({"blocks": [1] * 3}, "cannot build"),
        ({1: 2}, "keys are not all strings"),
        ({"blocks": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}},
         "nested too deeply"),
    ]:
        torch.save({"state_dict": state, "meta": {"arch": "ShapesResNet", "config": config}}, path)
        _refused_quickly(path, match)
    torch.save({"state_dict": state, "meta": {"arch": ["ShapesResNet"]}}, path)
    _refused_quickly(path, "not an architecture name")


def test_builder_exception_with_empty_message_becomes_zoo_error(tmp_path: Path) -> None:
    def broken(**config):
        raise ValueError()

    path = tmp_path / "x.safetensors"
    st.save_file({"w": torch.zeros(2)}, path, metadata={"arch": "Broken_test"})
    zoo.register_arch("Broken_test", broken, task="classification")
    try:
        err = _refused_quickly(path, r"cannot build 'Broken_test'.*ValueError: \(no message\)")
        assert isinstance(err.__cause__, ValueError)
    finally:
        registry._ARCHS.pop("Broken_test", None)


def test_empty_and_garbage_pth_become_zoo_errors(tmp_path: Path) -> None:
    for name, data in [("empty.pth", b""), ("stop.pth", b"."), ("zeros.pth", b"\0" * 64)]:
        path = tmp_path / name
        path.write_bytes(data)
        err = _refused_quickly(path, "cannot read checkpoint")  # was IndexError for empty.pth
        assert "torch.load(weights_only=True)" in str(err)


def test_infer_config_failure_becomes_zoo_error(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    st.save_file(ShapesVGG().state_dict(), path)
    err = _refused_quickly(path, r"cannot infer the config of architecture 'EDSR'.*KeyError",
                           arch="EDSR")
    assert isinstance(err.__cause__, KeyError)


def test_nested_json_metadata_is_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "v.safetensors"
    ref = zoo.load("shapes_vgg")
    bomb = "[" * 100_000
    st.save_file(ref.state_dict(), path, metadata={"arch": "ShapesVGG", "config": bomb,
                                                   "classes": bomb})
    model = zoo.load(path)  # an unreadable config is ignored: the config is inferred instead
    assert model.lamcam_meta["config"] == {"num_classes": 6, "width": 32}
    assert model.lamcam_meta["classes"] == [f"class_{i}" for i in range(6)]
    st.save_file(ref.state_dict(), path, metadata={"arch": "ShapesVGG", "classes": "7"})
    assert len(zoo.load(path).lamcam_meta["classes"]) == 6


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_pickle_payload_is_refused_and_not_run(tmp_path: Path) -> None:
    target = tmp_path / "PWNED"
    raw = tmp_path / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"state_dict": {}, "x": _Evil(target)}, protocol=2))
    zipped = tmp_path / "evil_zip.pth"
    torch.save({"state_dict": ShapesVGG().state_dict(), "x": _Evil(target)}, zipped)
    for path in (raw, zipped):
        for kw in ({}, {"arch": "ShapesVGG"}):
            err = _refused_quickly(path, "cannot read checkpoint", **kw)
            assert "weights_only" in str(err)
    assert not target.exists()


def test_zip_bomb_pth_is_refused_before_torch_load(tmp_path: Path, monkeypatch) -> None:
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2 * MiB)}, plain)  # 8 MiB of zeros
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert bomb.stat().st_size < 100_000
    # it is a real checkpoint: torch.load alone would inflate it
    assert torch.load(bomb, weights_only=True)["w"].numel() == 2 * MiB
    calls = []
    monkeypatch.setattr(registry.torch, "load", lambda *a, **k: calls.append(a))
    err = _refused_quickly(bomb, "zip bomb")
    assert "MAX_PTH_INFLATION" in str(err) and not calls


def test_model_size_limit_names_the_constant(monkeypatch) -> None:
    monkeypatch.setattr(registry, "MAX_MODEL_ELEMENTS", 100_000)
    with pytest.raises(zoo.ZooError, match=r"MAX_MODEL_ELEMENTS = 100,000"):
        zoo.load("shapes_vgg")
    monkeypatch.undo()
    assert zoo.load("shapes_vgg").lamcam_meta["num_params"] > 100_000


def test_huge_sparse_checkpoint_refused_before_building(tmp_path: Path) -> None:
    """A valid header for 2**30 + 8 elements in a sparse file (no disk): refused, not built."""
    n = 2**30 + 8
    path = tmp_path / "huge.safetensors"
    header = _raw({"fc.weight": _entry("U8", (n,), (0, n))})
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + n)
    _refused_quickly(path, r"holds 1,073,741,832 tensor elements.*MAX_MODEL_ELEMENTS")
    _refused_quickly(path, "MAX_MODEL_ELEMENTS", arch="ShapesVGG")
    _refused_quickly(path, "MAX_MODEL_ELEMENTS", arch="spandrel")
    path.unlink()


def test_every_registered_model_loads_its_weights() -> None:
    for name in zoo.list_models():
        model = zoo.load(name)
        assert model.lamcam_meta["name"] == name and not model.training
        stored = st.load_file(zoo.info(name)["weights_file"])
        state = model.state_dict()
        assert state.keys() == stored.keys(), name
        assert all(torch.equal(state[k], stored[k]) for k in state), name
        assert all(p.device.type == "cpu" for p in model.parameters())


# ------------------------------------------------------------------------------------------
# time and memory, measured in a subprocess
# ------------------------------------------------------------------------------------------
_MEASURE = textwrap.dedent(
    """
    import json, sys, time
    import torch
    import lamcam.zoo as zoo
    from lamcam import _safetensors as st
    from lamcam.zoo import registry

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024

    zoo.load("shapes_resnet")  # warm-up: imports, first meta-device build, spandrel import
    try:
        registry._build_or_spandrel({"x": torch.zeros(1)}, {}, arch=None, name="x", src="w")
    except zoo.ZooError:
        pass
    out = {}
    for name, kind, path, kw in json.loads(sys.argv[1]):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # peak RSS := current RSS
        base, t0, checksum = status("VmRSS"), time.perf_counter(), None
        try:
            if kind == "load_file":
                tensors = st.load_file(path)
                # touch every page: one float per 4 KiB
                checksum = sum(float(t.view(-1)[::1024].double().sum()) for t in tensors.values())
            else:
                zoo.load(path, **kw)
            error = None
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        out[name] = {"error": error, "seconds": time.perf_counter() - t0, "checksum": checksum,
                     "peak_mb": status("VmHWM") - base}
    print(json.dumps(out))
    """
)


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "VmHWM" in Path("/proc/self/status").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    if not _can_reset_peak():
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    d = tmp_path_factory.mktemp("measured")
    gib2 = 2 * 1024**3
    absurd = d / "absurd.safetensors"  # 2 GiB sparse file claiming a 2**62-byte header
    with absurd.open("wb") as f:
        f.write(struct.pack("<Q", 2**62))
        f.truncate(gib2)
    big_header = d / "header90.safetensors"  # a 90 MB "header" of zeros, within the limits
    with big_header.open("wb") as f:
        f.write(struct.pack("<Q", 90_000_000))
        f.truncate(gib2)
    n = 64 * MiB  # float32 elements: 256 MiB of real (non-zero) data
    valid = d / "valid256.safetensors"
    h = json.dumps({"w": _entry("F32", (n,), (0, 4 * n))}).encode()
    h += b" " * (-len(h) % 8)
    chunk = torch.arange(MiB, dtype=torch.float32).numpy().tobytes()
    with valid.open("wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _ in range(n // MiB):
            f.write(chunk)
    fc0 = _fc_file(d / "fc0.safetensors", (0, 6000))
    fc1 = _fc_file(d / "fc1.safetensors", (1, 6000))
    blocks = d / "blocks.safetensors"
    st.save_file(ShapesResNet().state_dict(), blocks,
                 metadata={"arch": "ShapesResNet", "config": json.dumps({"blocks": 20000})})
    huge = d / "huge.safetensors"  # valid header for 2**30 + 8 elements, sparse
    header = _raw({"fc.weight": _entry("U8", (2**30 + 8,), (0, 2**30 + 8))})
    with huge.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + 2**30 + 8)
    scenarios = [
        ("absurd", "load_file", str(absurd), {}),
        ("header90", "load_file", str(big_header), {}),
        ("valid256", "load_file", str(valid), {}),
        ("fc0", "zoo", str(fc0), {}),
        ("fc0_vgg", "zoo", str(fc0), {"arch": "ShapesVGG"}),
        ("fc1", "zoo", str(fc1), {}),
        ("fc1_vgg", "zoo", str(fc1), {"arch": "ShapesVGG"}),
        ("blocks", "zoo", str(blocks), {}),
        ("huge", "zoo", str(huge), {}),
    ]
    try:
        res = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(scenarios)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        for p in d.iterdir():
            p.unlink()
    out["valid256"]["expected_checksum"] = float(
        torch.arange(MiB, dtype=torch.float64)[::1024].sum() * (n // MiB)
    )
    out["valid256"]["file_mb"] = (len(h) + 8 + 4 * n) / MiB
    return out


def test_absurd_header_on_2gib_sparse_file_costs_nothing(measured: dict) -> None:
    r = measured["absurd"]
    assert r["error"] and "exceeds the 100000000-byte limit" in r["error"]
    assert r["seconds"] < 0.5 and r["peak_mb"] < 20, r  # before issue 9: 2 GiB read, 5 s


def test_header_within_limits_costs_at_most_the_header(measured: dict) -> None:
    r = measured["header90"]
    assert r["error"] and r["error"].startswith("ValueError") and "invalid JSON" in r["error"]
    assert r["seconds"] < 1.0 and r["peak_mb"] < 150, r  # the package reads the 90 MB header


def test_valid_256_mib_file_loads_without_a_copy(measured: dict) -> None:
    r = measured["valid256"]
    assert r["error"] is None and r["checksum"] == r["expected_checksum"], r
    assert r["peak_mb"] < 1.5 * r["file_mb"], r  # before issue 9: 2x the file (read + copy)
    assert r["seconds"] < 5, r


@pytest.mark.parametrize("scenario", ["fc0", "fc0_vgg", "fc1", "fc1_vgg", "blocks", "huge"])
def test_lying_checkpoints_refused_in_bounded_memory(measured: dict, scenario: str) -> None:
    r = measured[scenario]
    assert r["error"] and r["error"].startswith("ZooError"), r
    assert r["seconds"] < 1.0 and r["peak_mb"] < 50, r  # before issue 9: 6 GB and 7.8 GB
