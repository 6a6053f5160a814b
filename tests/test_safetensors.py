"""Tests of lamcam._safetensors: round trips, compatibility with the official package, errors.

lamcam reads and writes through the official ``safetensors`` package; these tests check the
layer around it (atomic writes, argument checks, one ValueError per malformed file). Hostile
files (absurd header lengths, recursion bombs, memory use) are in tests/test_robustness_files.py.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from lamcam import _safetensors as st

REQUIRED_TAGS = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
]  # fmt: skip


def _example(dtype: torch.dtype, shape: tuple[int, ...] = (3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 100).to(dtype)
    info = torch.iinfo(dtype)
    lo, hi = max(info.min, -(2**62)), min(info.max, 2**62)
    t = torch.randint(lo, hi, shape, generator=g, dtype=torch.int64)
    return t.to(dtype)


def _all_tensors() -> dict[str, torch.Tensor]:
    tensors = {f"t_{tag}": _example(dt) for tag, dt in st.DTYPES.items()}
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["big.nested.name"] = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    tensors["non_contiguous"] = torch.arange(12.0).reshape(3, 4).t()
    return tensors


def test_all_required_dtypes_supported() -> None:
    assert set(REQUIRED_TAGS) <= set(st.DTYPES)


def test_round_trip_every_dtype(tmp_path: Path) -> None:
    tensors = _all_tensors()
    path = tmp_path / "x.safetensors"
    st.save_file(tensors, path, metadata={"arch": "Net", "classes": json.dumps(["a", "b"])})
    loaded = st.load_file(path)
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype, name
        assert loaded[name].shape == t.shape, name
        assert torch.equal(loaded[name], t), name
        assert loaded[name].is_contiguous()
    assert st.read_metadata(path) == {"arch": "Net", "classes": '["a", "b"]'}
    # loaded tensors own writable memory
    loaded["t_F32"] += 1


def test_layout_header_padded_and_tensors_aligned(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    st.save_file(_all_tensors(), path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    for entry in header.values():
        size = torch.empty((), dtype=st.DTYPES[entry["dtype"]]).element_size()
        assert entry["data_offsets"][0] % size == 0


def test_no_metadata_gives_empty_dict(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    st.save_file({"a": torch.ones(2)}, path)
    assert st.read_metadata(path) == {}
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert "__metadata__" not in json.loads(raw[8 : 8 + n])


def test_tied_weights_are_written_separately(tmp_path: Path) -> None:
    """The package refuses tensors sharing memory; save_file copies them instead."""
    w = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "tied.safetensors"
    st.save_file({"enc.weight": w, "dec.weight": w, "view": w[0]}, path)
    loaded = st.load_file(path)
    assert torch.equal(loaded["enc.weight"], w) and torch.equal(loaded["dec.weight"], w)
    assert torch.equal(loaded["view"], w[0])


def test_loaded_tensors_do_not_change_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    st.save_file({"a": torch.zeros(4)}, path)
    before = path.read_bytes()
    st.load_file(path)["a"].add_(1)
    assert path.read_bytes() == before
    assert torch.equal(st.load_file(path)["a"], torch.zeros(4))


@pytest.fixture()
def official():
    import safetensors.torch

    return safetensors.torch


def test_official_reads_ours(tmp_path: Path, official) -> None:
    tensors = _all_tensors()
    path = tmp_path / "ours.safetensors"
    st.save_file(tensors, path, metadata={"x": "1"})
    loaded = official.load_file(str(path))
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"x": "1"}


def test_we_read_official(tmp_path: Path, official) -> None:
    tensors = {k: v.contiguous() for k, v in _all_tensors().items()}
    path = tmp_path / "theirs.safetensors"
    official.save_file(tensors, str(path), metadata={"y": "2", "json": '{"a": [1, 2]}'})
    loaded = st.load_file(path)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    assert st.read_metadata(path) == {"y": "2", "json": '{"a": [1, 2]}'}


# ------------------------------------------------------------------------------------------
# corrupt input
# ------------------------------------------------------------------------------------------
def _good_bytes() -> bytes:
    import safetensors.torch

    return safetensors.torch.save(
        {"a": torch.arange(10.0), "b": torch.ones(2, 2, dtype=torch.int64)}
    )


def _with_header(header: dict, body: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


CORRUPT = {
    "empty file": (b"", "too short"),
    "short prefix": (b"\x01\x02\x03", "too short"),
    "huge header length": (struct.pack("<Q", 2**40) + b"{}", "exceeds"),
    "header longer than file": (struct.pack("<Q", 500) + b'{"a": 1}', "truncated"),
    "not json": (struct.pack("<Q", 6) + b"{nope}", "invalid JSON"),
    "not an object": (struct.pack("<Q", 2) + b"[]", "JSON object"),
    "binary header": (struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "UTF-8"),
    "bad dtype": (
        _with_header({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, b"0000"),
        "unsupported dtype",
    ),
    "size mismatch": (
        _with_header({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"0000"),
        "does not match dtype and shape",
    ),
    "truncated data": (
        _with_header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"0000"),
        "truncated",
    ),
    "hole": (
        _with_header({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}, b"0000"),
        "hole",
    ),
    "overlap": (
        _with_header(
            {
                "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]},
            },
            b"000",
        ),
        "invalid offset for tensor `b`",
    ),
    "bad shape": (
        _with_header({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}),
        "integer `-1`",
    ),
    "missing field": (
        _with_header({"a": {"dtype": "U8", "shape": [1]}}, b"0"),
        "missing field `data_offsets`",
    ),
    "bad metadata": (_with_header({"__metadata__": {"a": 1}}), "expected a string"),
    "trailing garbage": (_good_bytes() + b"xx", "extra bytes"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_files_raise_clear_value_error(tmp_path: Path, case: str) -> None:
    data, expected = CORRUPT[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a valid safetensors file") as exc:
        st.load_file(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert expected in msg, msg
    # the same error, from the header alone
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        st.read_metadata(path)
    # what the package said is chained (the checks before it need no package error)
    if case not in PRECHECKED:
        assert exc.value.__cause__ is not None


PRECHECKED = {"empty file", "short prefix", "huge header length", "header longer than file"}


def test_every_truncation_of_a_good_file_is_a_value_error(tmp_path: Path) -> None:
    data = _good_bytes()
    path = tmp_path / "t.safetensors"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=str(path)):
            st.load_file(path)
    path.write_bytes(data)
    assert torch.equal(st.load_file(path)["a"], torch.arange(10.0))


def test_read_metadata_validates_too(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(_good_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        st.read_metadata(path)
    path.write_bytes(b"1234")
    with pytest.raises(ValueError, match="too short"):
        st.read_metadata(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        st.load_file(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------------
# writing: validation and atomicity
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tensors", "metadata", "exc"),
    [
        ({"a": [1, 2]}, None, TypeError),
        ({1: torch.ones(1)}, None, TypeError),
        ({"a": torch.ones(1, dtype=torch.complex64)}, None, ValueError),
        ({"__metadata__": torch.ones(1)}, None, ValueError),
        ({"a": torch.ones(2, device="meta")}, None, ValueError),
        ({"a": torch.eye(2).to_sparse()}, None, ValueError),
        ({"a": torch.ones(1)}, {"k": 3}, TypeError),
    ],
)
def test_invalid_input_rejected_and_nothing_written(
    tmp_path: Path, tensors: dict, metadata: dict | None, exc: type
) -> None:
    path = tmp_path / "out.safetensors"
    st.save_file({"keep": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(exc):
        st.save_file(tensors, path, metadata)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_write_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.safetensors"
    st.save_file({"old": torch.zeros(2)}, path)

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(st.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        st.save_file({"new": torch.ones(2)}, path)
    monkeypatch.undo()
    assert list(st.load_file(path)) == ["old"]
    assert os.listdir(tmp_path) == ["out.safetensors"]


def test_overwrite_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    st.save_file({"a": torch.zeros(2)}, path)
    st.save_file({"b": torch.ones(2)}, path)
    assert list(st.load_file(path)) == ["b"]
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
